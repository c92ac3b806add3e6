r"""Rao–Blackwellised statistics of layered continuous networks (docs/mathematics.md,
"Conditional expectations").

In a layered network the units of one layer interact only with the two neighbouring layers,
so given the layers of one parity (odd or even) the units of the other parity are independent,
each with the one-dimensional law of :mod:`thermoeqprop.estimators._unit_tables`. The
parameter derivatives of the energy are linear in each unit's activation, and the squared-error
cost is a sum of one term per output unit, so every per-draw quantity the thermal estimators
average has an exact conditional expectation given one parity class:

- ``E[∂θE | other class]`` is ``∂θ`` of the interaction energy with the averaged class's
  activations replaced by ``m₁(u)`` (no two averaged units share a coupling);
- ``E[C | ·] = Σ_o ½(m₂ − 2 y_o m₁ + y_o²)`` when the output layer is averaged, and
  ``E[C ∂θE | ·]`` follows from ``E[C ρ_o] = E[C] m₁ + D_o`` with
  ``D_o = Cov(c_o, ρ_o | ·) = ½[(m₃ − m₁m₂) − 2 y_o (m₂ − m₁²)]``; when the output layer is
  not averaged C is simply a factor.

Replacing a draw's value by its conditional expectation leaves every mean unchanged and
never increases a variance (Rao–Blackwell). Both conditionings are computed and mixed per
parameter with fixed weights (each is exact, so any fixed mixture is): a layer's biases and the
input weights take the conditioning that averages their own layer, couplings between two
layers take half of each. The output layer is averaged only in the free phase (β = 0) and for
the squared-error cost: a nudged output unit, or a cost that couples the outputs, has no
one-field law.

The series keep the shape and meaning of :func:`~thermoeqprop.estimators._statistics.
draw_statistics`: the covariance series is the influence function
``a_d − c̄ g_d − ḡ (c_d − c̄)`` of ``mean(a) − mean(c) mean(g)`` (``a = E[C∂θE | ·]``,
``c = E[C | ·]``, ``g = E[∂θE | ·]``), batch-meaned, so its mean is the estimate and its MCSE
the estimate's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.estimators._unit_tables import field_bound, unit_moments
from thermoeqprop.models.costs import SquaredError
from thermoeqprop.models.layered import LayeredNetwork, split_layers
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = [
    "check_rao_blackwell",
    "conditional_activation",
    "conditional_statistics",
    "mixing_weights",
    "plan",
    "uses_conditional",
]


def conditional_activation(model) -> str | None:
    """The activation whose one-unit law is tabulated for ``model``, or None if the model's
    units have no such law (not a layered continuous network, or a box-bounded activation)."""
    if isinstance(model, QuadraticNetwork):
        return "linear"
    if isinstance(model, LayeredNetwork) and model.activation in ("sigmoid", "tanh", "linear"):
        return model.activation
    return None


def check_rao_blackwell(model, rao_blackwell) -> None:
    """Validate an estimator's ``rao_blackwell`` setting for ``model`` (None, True, False)."""
    if not (rao_blackwell is None or isinstance(rao_blackwell, bool)):
        raise ValueError(f"rao_blackwell must be None, True or False, got {rao_blackwell!r}")
    if rao_blackwell and not (conditional_activation(model) and plan(model, 0.0)):
        raise ValueError(
            "rao_blackwell=True needs a layered continuous network with a 'sigmoid', 'tanh' "
            "or 'linear' activation and a layer to average (a hidden layer, or outputs under "
            f"the squared-error cost); got {model!r}: pass rao_blackwell=None or False"
        )


def uses_conditional(model, rao_blackwell, beta) -> bool:
    """Whether a phase at nudge ``beta`` gets conditional expectations."""
    if rao_blackwell is False or conditional_activation(model) is None:
        return False
    return bool(plan(model, float(beta)))


def plan(model, beta: float) -> tuple[tuple[int, ...], ...]:
    """The conditionings available, each the tuple of averaged layers (1 … L, outputs L).

    The class without the output layer can always be averaged (if it has layers); the class
    with it only at β = 0 and for the squared-error cost.
    """
    depth = len(model.layer_sizes) - 1
    out_class = tuple(k for k in range(depth, 0, -2))[::-1]
    other = tuple(k for k in range(depth - 1, 0, -2))[::-1]
    out_ok = beta == 0 and isinstance(model.cost, SquaredError)
    return tuple(c for c, ok in ((other, bool(other)), (out_class, out_ok)) if ok)


def block_weights(model, conditionings) -> tuple[tuple[float, ...], ...]:
    """Per parameter block, in ravel order (biases b_1 … b_L, then weights W_0 … W_{L−1}), the
    weight of each conditioning; they sum to 1 over conditionings.

    A layer's bias, and the input weights of the first layer, take the conditionings that
    average that layer; couplings between layers k and k + 1 split evenly between the
    conditionings that average either of them; a block no conditioning averages splits evenly
    over all.
    """
    depth = len(model.layer_sizes) - 1
    touched = [(k + 1,) for k in range(depth)] + [
        (1,) if k == 0 else (k, k + 1) for k in range(depth)
    ]
    out = []
    for layers in touched:
        hits = np.array([any(k in c for k in layers) for c in conditionings], float)
        if not hits.any():
            hits[:] = 1.0
        out.append(tuple(float(h) for h in hits / hits.sum()))
    return tuple(out)


def mixing_weights(model, params, conditionings) -> np.ndarray:
    """:func:`block_weights` expanded to every parameter: (len(conditionings), P)."""
    leaves = jax.tree_util.tree_leaves(params)
    blocks = block_weights(model, conditionings)
    return np.concatenate(
        [np.repeat(np.asarray(w)[:, None], np.size(leaf), axis=1)
         for w, leaf in zip(blocks, leaves, strict=True)],
        axis=1,
    )  # fmt: skip


def conditional_statistics(model, params, states, x, targets, wanted, window, beta, temperature,
                           collapsed=False, draw_weights=None, row_weights=None):  # fmt: skip
    """The series of :func:`~thermoeqprop.estimators._statistics.draw_statistics`, with every
    draw replaced by its conditional expectations (returns the same tuple of arrays).

    Args:
        model: A layered continuous network (:func:`conditional_activation` is not None).
        params: Parameters.
        states: (batch, chain, draw, n) states.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        wanted: ``(energy_grad, covariance)`` flags.
        window: Draws averaged into one series entry.
        beta: The phase's nudging strength (the output layer is averaged only at 0).
        temperature: T of the draws.
        collapsed: The states hold draws of the output's parity class only (collapsed
            sampling, :mod:`thermoeqprop.estimators._collapsed`): average the other class
            alone, whose entries are never read.
        draw_weights: (batch, chain, draw) importance weights ``ω`` with mean 1 over each
            example's draws (:mod:`thermoeqprop.estimators._importance`), collapsed only:
            the series become the influence functions of the self-normalised estimates
            (docs/mathematics.md, "Importance sampling"); None weighs every draw alike.
        row_weights: (batch,) weight of each row of the batch in its means, mean 1 over the
            rows: rows that repeat one example with draws of their own, each weighted by
            ``rows / (examples · copies)``, so that the series' means are the mean over the
            examples of each one's mean over its copies (docs/mathematics.md, "Neyman
            allocation"); None weighs every row alike.
    """
    if draw_weights is not None and not collapsed:
        raise ValueError("draw_weights need collapsed draws (the outputs' class kept)")
    activation = conditional_activation(model)
    bound = field_bound(params, x, activation) if activation != "linear" else 0.0
    moments = unit_moments(activation, temperature, bound, states.dtype)
    conditionings = plan(model, beta)[:1] if collapsed else plan(model, beta)
    weights = block_weights(model, conditionings)
    given = None
    if draw_weights is not None:  # the collapsed class: hidden layers only
        given = _hidden_means(model, conditionings[0], moments, params, states, x)
    return _conditional(model, conditionings, tuple(wanted), window, weights, moments, params,
                        states, x, targets, draw_weights, given, row_weights)  # fmt: skip


def _layered_series(acts, x, omega, spread, shape, blocks):
    """Per-entry sums ``Σ_{b, d ∈ entry} ω_bd ∂θI(a_bd) / (B w)`` of the interaction energy
    ``I = −Σ_k a_k W_k a_{k+1} − Σ_k b_k a_k`` (``a_0 = x``), plus the output coupling
    ``−Σ (a_{L−1} W_{L−1} + b_L)·D`` when ``spread`` (D) is given: explicit outer products, one
    matrix product per coupling.

    Args:
        acts: Activations ``[a_1 … a_L]``, each (B, C, D, n_l).
        x: Inputs (B, n_0).
        omega: (B, C, D) weights.
        spread: (B, C, D, n_L) or None.
        shape: ``(B, C, K, window)``.
        blocks: Which parameter blocks to compute, by ravel index (biases b_1 … b_L are
            0 … L − 1, weights W_0 … W_{L−1} are L … 2L − 1).

    Returns:
        ``{block: (C·K, block size) entries}``.
    """
    b, c, k, window = shape

    def entries(a):  # (B, C, D, …) -> (C·K, B, w, …)
        return jnp.swapaxes(a.reshape(b, c * k, window, *a.shape[3:]), 0, 1)

    w = entries(omega)[..., None]
    depth = len(acts)
    left = [None] + [entries(a) for a in acts]  # left[l] = a_l per entry
    d = None if spread is None else entries(spread)
    out = {}
    for index in blocks:
        if index < depth:  # b_{index + 1}
            total = jnp.sum(w * left[index + 1], axis=(1, 2))
            if index == depth - 1 and d is not None:
                total += jnp.sum(d, axis=(1, 2))
        else:  # W_j couples layers j and j + 1
            j = index - depth
            right = left[j + 1]
            extra = d if (j == depth - 1 and d is not None) else None
            if j == 0:
                total = jnp.einsum("bi,ebj->eij", x, jnp.sum(w * right, axis=2))
                if extra is not None:
                    total += jnp.einsum("bi,ebj->eij", x, jnp.sum(extra, axis=2))
            else:
                total = jnp.einsum("ebwi,ebwj->eij", w * left[j], right)
                if extra is not None:
                    total += jnp.einsum("ebwi,ebwj->eij", left[j], extra)
        out[index] = -total.reshape(c * k, -1) / (b * window)
    return out


def _example_means(acts, x, blocks, omega=None):
    """``{block: (B, block size)}`` per-example means over all draws of ``∂θI``, or of
    ``ω ∂θI`` with weights ``omega`` (B, C, D)."""
    per = [a.reshape(a.shape[0], -1, a.shape[-1]) for a in acts]  # (B, C·D, n_l)
    w = 1.0 if omega is None else omega.reshape(omega.shape[0], -1, 1)
    depth = len(per)
    out = {}
    for index in blocks:
        if index < depth:
            mean = jnp.mean(w * per[index], axis=1)
        elif index == depth:
            mean = x[:, :, None] * jnp.mean(w * per[0], axis=1)[:, None, :]
        else:
            j = index - depth
            mean = jnp.einsum("bdi,bdj->bij", w * per[j - 1], per[j]) / per[j].shape[1]
        out[index] = -mean.reshape(mean.shape[0], -1)
    return out


def _entry_sums(values, entries):
    """(B, C, D) values summed over each entry's draws: (C·K, B)."""
    b, c, d = values.shape
    return jnp.swapaxes(values.reshape(b, c * entries, d // entries).sum(axis=2), 0, 1)


def _layer_moments(model, moments, params, acts, x, layer):
    """``(m₁, m₂, m₃)`` of every unit of ``layer`` given its neighbours' activations."""
    i, depth = layer - 1, len(acts)
    below = x[:, None, None, :] if i == 0 else acts[i - 1]
    field = below @ params["weights"][i] + params["biases"][i]
    if i + 1 < depth:
        field = field + acts[i + 1] @ params["weights"][i + 1].T
    return moments(field)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hidden_means(model, layers, moments, params, states, x):
    """``{layer: m₁}`` of hidden ``layers``, computed in a call of their own: weighted
    statistics read each ``m₁`` in several products, and inside one compiled call XLA repeated
    the table look-ups for each of them (4 × 13 ms a batch on the main job, against one pass
    here)."""
    rho = model.rho if isinstance(model, LayeredNetwork) else (lambda s: s)
    acts = [rho(s) for s in split_layers(states, model.layer_sizes[1:])]
    return {layer: _layer_moments(model, moments, params, acts, x, layer)[0] for layer in layers}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _conditional(model, conditionings, wanted, window, weights, moments, params, states, x,
                 targets, omega=None, given=None, rows=None):  # fmt: skip
    b, c, d, _ = states.shape
    # Row weights scale each row's share of every batch sum (the factors that carry a draw's
    # own values; the per-row means they are centred by are left as they are).
    r = jnp.ones((b,), states.dtype) if rows is None else rows
    k = d // window
    sizes = model.layer_sizes[1:]
    depth = len(sizes)
    rho = model.rho if isinstance(model, LayeredNetwork) else (lambda s: s)
    acts = [rho(s) for s in split_layers(states, sizes)]
    y = targets[:, None, None, :]
    exact_cost = jax.vmap(jax.vmap(jax.vmap(model.cost_fn, in_axes=(0, None)),
                                   in_axes=(0, None)))(states, targets)  # fmt: skip
    shape = (b, c, k, window)
    num_blocks = len(weights)
    grads, covs, costs, outputs = {}, {}, [], None
    # Σ_{d ∈ entry} (ω_bd − 1) per entry and example: what self-normalising adds (C·K, B)
    excess = None if omega is None else _entry_sums(omega - 1.0, k) * r

    def accumulate(into, series, share):
        for index, value in series.items():
            into[index] = into.get(index, 0.0) + share[index] * value

    for j, averaged in enumerate(conditionings):
        # Blocks this conditioning contributes to (a zero weight costs nothing).
        share = {i: weights[i][j] for i in range(num_blocks) if weights[i][j] > 0}
        cond_acts, spread, cost = list(acts), None, exact_cost
        for layer in averaged:
            i = layer - 1
            if given is not None and layer in given:
                cond_acts[i] = given[layer]
                continue
            # only m1 is kept for hidden layers (the rest is dead)
            m1, m2, m3 = _layer_moments(model, moments, params, acts, x, layer)
            cond_acts[i] = m1
            if layer == depth:
                cost = jnp.sum(0.5 * (m2 - 2 * y * m1 + y**2), axis=-1)
                spread = 0.5 * ((m3 - m1 * m2) - 2 * y * (m2 - m1**2))
                outputs = jnp.mean(m1, axis=(1, 2))
        if omega is not None:  # self-normalised: ω C + (1 − ω) C̄_b, C̄_b the weighted mean
            mean_cost = jnp.mean(omega * cost, axis=(1, 2), keepdims=True)
            costs.append(omega * cost + (1.0 - omega) * mean_cost)
        else:
            mean_cost = jnp.mean(cost, axis=(1, 2), keepdims=True)
            costs.append(cost)
        if wanted[0]:
            ones = jnp.ones((b, c, d), states.dtype) if omega is None else omega
            series = _layered_series(cond_acts, x, ones * r[:, None, None], None, shape, share)
            if omega is not None:  # plus Σ_{b, d ∈ entry} (1 − ω_bd) ḡ_b
                means = _example_means(cond_acts, x, share, omega)
                series = {i: series[i] - excess @ means[i] / (b * window) for i in share}
            accumulate(grads, series, share)
        if wanted[1]:
            centred = cost - mean_cost
            if omega is not None:
                centred = omega * centred
            rowed = centred * r[:, None, None]
            rowed_spread = None if spread is None else spread * r[:, None, None, None]
            weighted = _layered_series(cond_acts, x, rowed, rowed_spread, shape, share)
            # minus Σ_{b, d ∈ entry} (C − C̄_b) ⟨E[∂θE | ·]⟩_b, one product of the weights' sums
            sums = _entry_sums(rowed, k)
            means = _example_means(cond_acts, x, share, omega)
            series = {i: weighted[i] - sums @ means[i] / (b * window) for i in share}
            if omega is not None:  # minus Σ_{b, d ∈ entry} (ω_bd − 1) Ĉov_b
                covariances = _example_means(cond_acts, x, share, centred)
                series = {i: series[i] - excess @ covariances[i] / (b * window)
                          for i in share}  # fmt: skip
            accumulate(covs, series, share)

    def joined(series):  # blocks in ravel order, as (C, K, P)
        return jnp.concatenate([series[i] for i in range(num_blocks)], axis=1).reshape(c, k, -1)

    energy_grad = joined(grads) if grads else None
    covariance = joined(covs) if covs else None
    cost = costs[-1]  # the last conditioning averages the outputs whenever one does
    if outputs is None:
        outputs = jax.vmap(jax.vmap(jax.vmap(model.output)))(states)
        if omega is not None:
            outputs = omega[..., None] * outputs
        outputs = jnp.mean(outputs, axis=(1, 2))
    cost = jnp.mean(r[:, None, None] * cost, axis=0)
    return energy_grad, covariance, cost.reshape(c, k, window).mean(axis=2), outputs

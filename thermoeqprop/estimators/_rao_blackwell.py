r"""Rao–Blackwellised statistics of spin networks.

The mathematics: docs/mathematics.md#rao-blackwellised-spin-estimators.

The spins of a spin network split into classes of mutually uncoupled spins (the odd and the
even layers of a :class:`~thermoeqprop.models.LayeredSpinNetwork`, the colour blocks of a
:class:`~thermoeqprop.models.SpinNetwork`). Given the other classes, the spins of one class
are independent with means :math:`m_i = \tanh(φ_i/T)`, :math:`φ = −∇_s F_β` (exact for the
multilinear :math:`F_β = E + βC`). Every sampled quantity of the thermal estimators is
replaced by its conditional expectation given all classes but one; the estimates of the
classes are mixed per parameter (:func:`parameter_shares`):

.. math::
    b = E[C \mid ·] = C(\tilde s),\quad g = E[∂_θE \mid ·] = ∂_θE(\tilde s),\quad
    a = E[C\,∂_θE \mid ·] = b\,g + ∂_θE(\tilde s + v) − ∂_θE(\tilde s),

with :math:`\tilde s` the state whose averaged class is replaced by its means and
:math:`v_o = −y_o (1 − m_o^2)` on the averaged output spins (the :math:`s_o^2 = 1` term of
:math:`C\,∂_θE`; zero when the outputs are given). The per-draw series keep the influence
function of the plain ones (:func:`~thermoeqprop.estimators._statistics.point_statistics`),
so the MCSE from their ESS is the estimate's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from thermoeqprop.estimators._conditional import check_rao_blackwell
from thermoeqprop.estimators._sampling import collapsed_spin_parity
from thermoeqprop.estimators._statistics import DrawStatistics, point_statistics, wanted_series
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.layered import split_layers
from thermoeqprop.models.spin import LayeredSpinNetwork

__all__ = [
    "check_option",
    "conditional_moments",
    "class_points",
    "class_view",
    "parameter_shares",
    "independent_classes",
    "rao_blackwell_statistics",
    "resolve_rao_blackwell",
    "spin_statistics",
    "summed_class",
    "summed_means",
    "supports_rao_blackwell",
]

SUPPORTED = (
    "spin networks (LayeredSpinNetwork, SpinNetwork) with the squared-error cost, whose "
    "E + βC is multilinear in every spin"
)


def supports_rao_blackwell(model: EnergyModel) -> bool:
    """Whether ``model`` has the structure the conditional expectations need: ±1 spins in
    classes of mutually uncoupled spins and a multilinear ``E + βC``."""
    return bool(model.is_spin and model.multilinear and model.blocks)


def resolve_rao_blackwell(option: bool | None, model: EnergyModel) -> bool:
    """The estimators' ``rao_blackwell`` option: None is on wherever it is supported.

    Raises:
        ValueError: ``option`` is not None, True or False, or is True for a model without the
            structure (:func:`supports_rao_blackwell`).
    """
    if option is not None and not isinstance(option, bool):
        raise ValueError(f"rao_blackwell must be None, True or False, got {option!r}")
    supported = supports_rao_blackwell(model)
    if option and not supported:
        raise ValueError(
            f"rao_blackwell=True is not supported for {type(model).__name__} with cost "
            f"{model.cost!r}; it is supported for {SUPPORTED}"
        )
    return supported if option is None else option


def check_option(model: EnergyModel, rao_blackwell) -> None:
    """The estimators' ``rao_blackwell`` check: spin networks here (:func:`resolve_rao_blackwell`),
    other models by :func:`~thermoeqprop.estimators._conditional.check_rao_blackwell`."""
    if model.is_spin:
        resolve_rao_blackwell(rao_blackwell, model)
    else:
        check_rao_blackwell(model, rao_blackwell)


def independent_classes(model: EnergyModel) -> tuple[tuple[int, ...], ...]:
    """Classes of mutually uncoupled spins: the layers of even and of odd index of a layered
    network (two classes, the largest conditionally independent sets), else the model's
    blocks (a colouring of its graph)."""
    if isinstance(model, LayeredSpinNetwork):
        layers = model.blocks
        classes = [sum(layers[parity::2], ()) for parity in (0, 1)]
        return tuple(c for c in classes if c)
    return tuple(tuple(block) for block in model.blocks)


@functools.lru_cache(maxsize=64)
def _masks(model: EnergyModel) -> tuple[np.ndarray, np.ndarray]:
    """``(K, n)`` class membership and the ``(K,)`` flags of the classes holding outputs."""
    classes = independent_classes(model)
    masks = np.zeros((len(classes), model.state_size), dtype=bool)
    for k, members in enumerate(classes):
        masks[k, list(members)] = True
    holds_outputs = masks[:, list(model.output_units)].any(axis=1)
    return masks, holds_outputs


@functools.lru_cache(maxsize=64)
def parameter_shares(model: EnergyModel) -> np.ndarray:
    """``(K, P)``: the weight of each class's conditioning in each raveled parameter.

    A parameter takes the classes of the spins its ``∂θE`` holds, in equal shares: a field or
    an input weight the class of its spin, a coupling half of each of its two spins' classes
    (the conditioning that averages a parameter's own spins removes most of its noise;
    measured in docs/mathematics.md#rao-blackwellised-spin-estimators).
    """
    masks, _ = _masks(model)
    class_of = np.argmax(masks, axis=0)  # (n,)
    if isinstance(model, LayeredSpinNetwork):
        layers = [np.asarray(b) for b in model.blocks]
        pairs = [
            np.broadcast_arrays(a[:, None], b[None, :])
            for a, b in zip(layers, layers[1:], strict=False)
        ]
        first_layer = np.tile(layers[0], model.num_inputs)  # W_in (inputs, first layer)
    else:
        pairs = [np.asarray(model.edges, dtype=int).reshape(-1, 2).T]
        first_layer = np.asarray(model.input_edges, dtype=int).reshape(-1, 2)[:, 1]
    spins = np.arange(model.state_size)
    # Ravel order: couplings, fields, input weights; (first, second) spin of each parameter.
    first = np.concatenate([np.ravel(i) for i, _ in pairs] + [spins, first_layer])
    second = np.concatenate([np.ravel(j) for _, j in pairs] + [spins, first_layer])
    shares = np.zeros((masks.shape[0], first.size))
    np.add.at(shares, (class_of[first], np.arange(first.size)), 0.5)
    np.add.at(shares, (class_of[second], np.arange(first.size)), 0.5)
    return shares


def class_points(model, params, state, x, target, beta, temperature, classes=None):
    """The conditional-mean states of one state, one per class.

    Args:
        model: A supported spin network (:func:`supports_rao_blackwell`).
        params: Parameters.
        state: (n,) spins ±1.
        x: (num_inputs,) input.
        target: (num_outputs,) target.
        beta: Nudge of the law the state was drawn from.
        temperature: T > 0.
        classes: Indices of the classes to average (default: all, in order).

    Returns:
        ``(s̃ (K, n), C(s̃) (K,), s̃ + v (K, n))``: class κ replaced by its means
        ``tanh(φ/T)``, the cost there (``E[C | ·]``), and ``s̃`` shifted by
        ``v_o = −y_o (1 − m_o²)`` on the averaged outputs (equal to ``s̃`` for a class
        without outputs).
    """
    masks, _ = _masks(model)
    masks = masks if classes is None else masks[list(classes)]
    outputs = np.asarray(model.output_units)
    # φ = −∂F_β/∂s: for a multilinear F_β, spin i's field depends only on the other classes,
    # so one gradient at the state gives every class's conditional fields.
    field = -jax.grad(model.total_energy, argnums=1)(params, state, x, target, beta)
    mean = jnp.tanh(field / temperature)
    tilde = jnp.where(masks, mean, state)  # (K, n)
    costs = jax.vmap(model.cost_fn, in_axes=(0, None))(tilde, target)  # (K,)
    # s_o² = 1: E[C s_o] = m_o E[C] − y_o (1 − m_o²) for an averaged output spin o.
    spread = jnp.zeros_like(state).at[outputs].set(-target * (1.0 - mean[outputs] ** 2))
    return tilde, costs, tilde + masks * spread


def class_view(model, k: int, tilde, costs, shifted, row: int | None = None):
    """Class ``k``'s evaluation points and weights (any leading axes ``…``): ``g = Σ_j u_j
    ∂θE(z_j)``, ``a = Σ_j α_j ∂θE(z_j)`` are ``E[∂θE | ·]`` and ``E[C ∂θE | ·]``.

    ``row``: where class ``k`` sits in the views (default ``k``; 0 for views of
    ``class_points(..., classes=(k,))``).

    Returns:
        ``(points (…, m, n), u (m,), α (…, m), b (…))``: ``m = 1`` (``s̃``, ``α = b``) for a
        class without outputs, ``m = 2`` (``s̃`` and ``s̃ + v``, ``α = (b − 1, 1)``) with them.
    """
    _, holds_outputs = _masks(model)
    row = k if row is None else row
    point, cost = tilde[..., row, :], costs[..., row]
    if not holds_outputs[k]:
        return point[..., None, :], np.ones(1), cost[..., None], cost
    points = jnp.stack([point, shifted[..., row, :]], axis=-2)
    return points, np.array([1.0, 0.0]), jnp.stack([cost - 1.0, jnp.ones_like(cost)], -1), cost


def conditional_moments(model, params, state, x, target, beta, temperature, averaged: int):
    """``(E[C | ·], E[∂θE | ·], E[C ∂θE | ·])`` given every class but class ``averaged``,
    from :func:`class_points` and :func:`class_view` (the code the estimators run), for
    checks against a sum over the averaged class; raveled ``(P,)`` gradients."""
    views = class_points(model, params, state, x, target, beta, temperature)
    points, u, alpha, cost = class_view(model, averaged, *views)
    flat, unravel = ravel_pytree(params)

    def grad_at(weights):
        energies = jax.vmap(model.energy, in_axes=(None, 0, None))
        return jax.grad(lambda fp: jnp.sum(weights * energies(unravel(fp), points, x)))(flat)

    return cost, grad_at(jnp.asarray(u, flat.dtype)), grad_at(alpha)


def spin_statistics(estimator, params, states, x, targets, beta, window, collapsed=False):
    """A sampled estimator's Rao–Blackwellised statistics of a phase at nudge ``beta`` if
    its model is a spin network and its ``rao_blackwell`` option resolves on, else None.
    ``collapsed``: the states hold one class only (``samplers.layered_collapsed_gibbs``), so
    only the conditioning given that class applies."""
    model = estimator.model
    if not (model.is_spin and resolve_rao_blackwell(estimator.rao_blackwell, model)):
        return None
    return rao_blackwell_statistics(
        model, params, states, x, targets, beta, estimator.temperature,
        estimator.needed_series, window, summed_class(model) if collapsed else None,
    )  # fmt: skip


def summed_class(model: EnergyModel) -> int:
    """The index in :func:`independent_classes` of the class that collapsed sampling of a
    layered spin network sums out (the other parity than ``collapsed_spin_parity``)."""
    return 1 - collapsed_spin_parity(model)


@functools.partial(jax.jit, static_argnums=0)
def summed_means(model, params, states, x, temperature):
    """States (…, n) of collapsed sampling (the summed class's entries 0) with the summed
    class replaced by its conditional means ``tanh(φ/T)`` given the drawn class, free phase."""
    target = jnp.zeros(model.num_outputs, states.dtype)
    k = summed_class(model)

    def filled(state, x_b):
        return class_points(model, params, state, x_b, target, 0.0, temperature, (k,))[0][0]

    lead = states.shape[1:-1]
    flat = states.reshape(states.shape[0], -1, states.shape[-1])
    out = jax.vmap(jax.vmap(filled, in_axes=(0, None)))(flat, x)
    return out.reshape(states.shape[:1] + lead + states.shape[-1:])


def rao_blackwell_statistics(
    model: EnergyModel,
    params,
    states,
    x,
    targets,
    beta,
    temperature,
    series: tuple[str, ...],
    draws_per_entry: int = 1,
    averaged: int | None = None,
) -> DrawStatistics:
    """:class:`DrawStatistics` from conditional expectations, on device.

    The same series as :func:`~thermoeqprop.estimators._statistics.draw_statistics` (same
    shapes and windows, means that are consistent estimates of the same quantities) with every
    draw replaced by its conditional expectations given all classes but ``κ``, for each class
    ``κ``: ``energy_grad`` the mean of ``g^κ``, ``covariance`` the series
    ``a^κ_d − b̄^κ g^κ_d − (b^κ_d − b̄^κ) ḡ^κ`` whose mean is ``ā^κ − b̄^κ ḡ^κ``, mixed per
    parameter by :func:`parameter_shares`; ``cost`` of ``b`` and the outputs from the classes
    that average the outputs.

    Args:
        model: A supported spin network (:func:`supports_rao_blackwell`).
        params: Parameters.
        states: (batch, chain, draw, n) states drawn from ``p_β`` at ``temperature``.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        beta: The nudge the states were drawn with (0 for the free phase).
        temperature: T > 0 of the law the states were drawn from.
        series: Which of ``"energy_grad"`` and ``"covariance"`` to compute.
        draws_per_entry: Consecutive draws averaged into one entry; must divide the draws.
        averaged: None mixes every class's conditioning (above); a class index uses only the
            conditioning that averages that class (given the others), as collapsed sampling
            needs: its states hold the other classes only.

    Cost: one gradient of ``F_β`` in the state per draw for the means, and one energy
    gradient per class and draw (two for a class holding outputs: 3 for a layered network)
    where the plain series take one, all as products over every state at once (parameter
    blocks a class has no share in are skipped for the layered network); compiled once per
    model, shapes and settings (``beta`` and ``temperature`` are traced).
    """
    wanted = wanted_series(series, states.shape[2], draws_per_entry)
    dtype = states.dtype
    out = _rao_blackwell_statistics(
        model, params, states, x, targets, jnp.asarray(beta, dtype),
        jnp.asarray(temperature, dtype), wanted, draws_per_entry, averaged,
    )  # fmt: skip
    return DrawStatistics(*out, draws_per_entry=draws_per_entry)


def layered_grad_sums(model: LayeredSpinNetwork, params, needed=None):
    """``Σ_{b,j} w_bj ∂θE(z_bj)`` per entry for the layered energy, as matrix products.

    ``∂E/∂h = −z``, ``∂E/∂W_in = −x ⊗ z_1``, ``∂E/∂J_k = −z_k ⊗ z_{k+1}``: the weighted sums
    over an entry's examples and points are contractions of the weighted layers with their
    neighbours, in the parameters' ravel order (the ``grad_sums`` of
    :func:`~thermoeqprop.estimators._statistics.point_statistics`; automatic
    differentiation of the energy gives the same sums, about twice as slowly). ``needed``:
    one flag per parameter leaf (ravel order); a leaf not needed is left at zero.
    """
    leaves = jax.tree_util.tree_leaves(params)
    needed = (True,) * len(leaves) if needed is None else needed

    def grad_sums(points, weights, x):  # (E, B, p, n), (E, B, p), (B, I) -> (E, P)
        layers = split_layers(points, model.layer_sizes[1:])
        weighted = [weights[..., None] * layer for layer in layers]
        # One maker per leaf, in ravel order (couplings J_1 …, fields, input weights).
        makers = [
            (lambda k=k: -_outer_sums(weighted[k], layers[k + 1])) for k in range(len(layers) - 1)
        ] + [
            lambda: -jnp.concatenate([jnp.sum(w, axis=(1, 2)) for w in weighted], axis=-1),
            lambda: -_outer_sums(x[None, :, None, :], jnp.sum(weighted[0], axis=2)[:, :, None]),
        ]
        out = [
            make() if keep else jnp.zeros((points.shape[0], *np.shape(leaf)), points.dtype)
            for make, keep, leaf in zip(makers, needed, leaves, strict=True)
        ]
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in out], axis=1)

    return grad_sums


#: Largest ``a × b`` block summed by broadcasting instead of a batched matrix product: for
#: blocks this small XLA's CPU batched products are slower than a fused multiply-and-reduce
#: (the 9-spin network's statistics: 12 ms against 25 ms for 4 × 4000 draws of 4 examples).
SMALL_BLOCK = 1024


def _outer_sums(left, right):
    """``Σ_{b,p} left ⊗ right``: (E, B, P, a), (E, B, P, c) → (E, a, c) (``B`` or ``P`` may
    be 1 in ``left``, broadcast)."""
    if left.shape[-1] * right.shape[-1] <= SMALL_BLOCK:
        return jnp.sum(left[..., :, None] * right[..., None, :], axis=(1, 2))
    if left.shape[0] == 1 and left.shape[2] == 1:  # the inputs: one per example
        return jnp.einsum("ba,ebpi->eai", left[0, :, 0], right)
    return jnp.einsum("ebpi,ebpl->eil", left, right)


def _grad_sums(model, params, shares):
    """The matrix-product sums for the layered energy itself (not a subclass's own energy),
    skipping the parameter leaves whose ``shares`` (P,) are all zero."""
    if isinstance(model, LayeredSpinNetwork) and type(model).energy is LayeredSpinNetwork.energy:
        sizes = np.cumsum([0] + [np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)])
        needed = tuple(
            bool(np.any(shares[a:b] > 0)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        return layered_grad_sums(model, params, needed)
    return None


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _rao_blackwell_statistics(model, params, states, x, targets, beta, temperature, wanted,
                              window, averaged=None):  # fmt: skip
    classes = None if averaged is None else (averaged,)  # collapsed: that class's views only

    def one(state, x_b, y_b):
        return class_points(model, params, state, x_b, y_b, beta, temperature, classes)

    per_example = jax.vmap(jax.vmap(one, in_axes=(0, None, None)), in_axes=(0, None, None))
    # Computed once and kept: fused into each consumer they were recomputed (1.8 times slower).
    views = jax.lax.optimization_barrier(jax.vmap(per_example)(states, x, targets))
    masks, _ = _masks(model)
    shares = parameter_shares(model)
    # The cost and outputs from the classes that average them (each output from its own).
    output_class = masks[:, np.asarray(model.output_units)]  # (K, outputs)
    cost_share = output_class.mean(axis=1)
    if averaged is not None:  # one conditioning: every parameter, the cost and outputs
        shares = np.zeros_like(shares)
        shares[averaged] = 1.0
        output_class = np.zeros_like(output_class)
        output_class[averaged] = True
        cost_share = np.zeros_like(cost_share)
        cost_share[averaged] = 1.0
    energy_grad = covariance = cost = output = 0.0
    for k in range(masks.shape[0]) if averaged is None else (averaged,):
        points, u, alpha, b = class_view(model, k, *views, row=None if averaged is None else 0)
        if not wanted[1]:  # the shifted point serves only the covariance (its u is 0)
            points, u, alpha = points[..., :1, :], u[:1], alpha[..., :1]
        series = point_statistics(
            model, params, points, x, u, alpha, b, wanted, window,
            _grad_sums(model, params, shares[k]),
        )  # fmt: skip
        share = jnp.asarray(shares[k], states.dtype)
        if wanted[0]:
            energy_grad = energy_grad + share * series[0]
        if wanted[1]:
            covariance = covariance + share * series[1]
        cost = cost + cost_share[k] * series[2]
        output = output + jnp.asarray(output_class[k], states.dtype) * series[3]
    return (energy_grad if wanted[0] else None, covariance if wanted[1] else None, cost,
            output)  # fmt: skip

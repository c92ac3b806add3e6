r"""Rao–Blackwellised statistics of spin networks.

The mathematics: docs/mathematics.md#rao-blackwellised-spin-estimators.

The spins of a spin network split into classes of mutually uncoupled spins (the odd and the
even layers of a :class:`~thermoeqprop.models.LayeredSpinNetwork`, the colour blocks of a
:class:`~thermoeqprop.models.SpinNetwork`). Given the other classes, the spins of one class
are independent with means :math:`m_i = \tanh(φ_i/T)`, :math:`φ = −∇_s F_β` (exact for the
multilinear :math:`F_β = E + βC`). Every sampled quantity of the thermal estimators is
replaced by its conditional expectation given the other classes, averaged over the classes:

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
from thermoeqprop.estimators._statistics import DrawStatistics, point_statistics, wanted_series
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.layered import split_layers
from thermoeqprop.models.spin import LayeredSpinNetwork

__all__ = [
    "check_option",
    "conditional_moments",
    "conditional_points",
    "independent_classes",
    "rao_blackwell_statistics",
    "resolve_rao_blackwell",
    "spin_statistics",
    "supports_rao_blackwell",
]

SUPPORTED = (
    "spin networks (LayeredSpinNetwork, SpinNetwork) with the squared-error cost, whose "
    "E + βC is multilinear in every spin"
)


def supports_rao_blackwell(model: EnergyModel) -> bool:
    """Whether ``model`` has the structure the conditional expectations need: ±1 spins in
    classes of mutually uncoupled spins and a multilinear ``E + βC``."""
    return (
        bool(getattr(model, "is_spin", False))
        and bool(getattr(model, "multilinear", False))
        and bool(getattr(model, "blocks", None))
    )


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
        cost = getattr(model, "cost", None)
        raise ValueError(
            f"rao_blackwell=True is not supported for {type(model).__name__}"
            + (f" with cost {cost!r}" if cost is not None else "")
            + f"; it is supported for {SUPPORTED}"
        )
    return supported if option is None else option


def check_option(model: EnergyModel, rao_blackwell) -> None:
    """The estimators' ``rao_blackwell`` check: spin networks here (:func:`resolve_rao_blackwell`),
    other models by :func:`~thermoeqprop.estimators._conditional.check_rao_blackwell`."""
    if getattr(model, "is_spin", False):
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


def conditional_points(model, params, state, x, target, beta, temperature):
    """The evaluation points and weights of one state, averaged over the classes.

    For each of the K classes, :math:`\\tilde s^κ` (class κ replaced by its conditional means);
    for each class holding outputs, also :math:`\\tilde s^κ + v^κ`. With ``m`` points ``z_j``
    the conditional expectations averaged over the classes are ``g = Σ_j u_j ∂θE(z_j)``,
    ``a = Σ_j α_j ∂θE(z_j)`` and ``b = mean_κ C(\\tilde s^κ)``.

    Args:
        model: A supported spin network (:func:`supports_rao_blackwell`).
        params: Parameters.
        state: (n,) spins ±1.
        x: (num_inputs,) input.
        target: (num_outputs,) target.
        beta: Nudge of the law the state was drawn from.
        temperature: T > 0.

    Returns:
        ``(points (m, n), u (m,), α (m,), b ())``, ``m = K +`` number of classes with outputs.
    """
    masks, holds_outputs = _masks(model)
    num_classes = masks.shape[0]
    outputs = np.asarray(model.output_units)
    # φ = −∂F_β/∂s: for a multilinear F_β, spin i's field depends only on the other classes,
    # so one gradient at the state gives every class's conditional fields.
    field = -jax.grad(model.total_energy, argnums=1)(params, state, x, target, beta)
    mean = jnp.tanh(field / temperature)
    tilde = jnp.where(masks, mean, state)  # (K, n)
    costs = jax.vmap(model.cost_fn, in_axes=(0, None))(tilde, target)  # (K,)
    # s_o² = 1: E[C s_o] = m_o E[C] − y_o (1 − m_o²) for an averaged output spin o.
    spread = jnp.zeros_like(state).at[outputs].set(-target * (1.0 - mean[outputs] ** 2))
    with_outputs = np.flatnonzero(holds_outputs)
    shifted = tilde[with_outputs] + masks[with_outputs] * spread
    points = jnp.concatenate([tilde, shifted])
    share = 1.0 / num_classes
    u = jnp.concatenate([jnp.full(num_classes, share), jnp.zeros(len(shifted))])
    alpha = jnp.concatenate(
        [share * (costs - holds_outputs), jnp.full(len(shifted), share, costs.dtype)]
    )
    return points, u.astype(state.dtype), alpha, jnp.mean(costs)


def conditional_moments(model, params, state, x, target, beta, temperature, averaged: int):
    """``(E[C | ·], E[∂θE | ·], E[C ∂θE | ·])`` given every class but class ``averaged``.

    The one-class form of :func:`conditional_points` (the same code, with the class's weight
    1), for checks against a sum over the averaged class; raveled ``(P,)`` gradients.
    """
    masks, holds_outputs = _masks(model)
    points, u, alpha, _ = conditional_points(model, params, state, x, target, beta, temperature)
    num_classes = masks.shape[0]
    keep = [averaged]
    if holds_outputs[averaged]:
        keep.append(num_classes + int(np.sum(holds_outputs[:averaged])))
    keep = np.asarray(keep)
    flat, unravel = ravel_pytree(params)

    def grad_at(weights):
        energies = jax.vmap(model.energy, in_axes=(None, 0, None))
        return jax.grad(lambda fp: jnp.sum(weights * energies(unravel(fp), points[keep], x)))(flat)

    g = grad_at(num_classes * u[keep])
    a = grad_at(num_classes * alpha[keep])
    cost = model.cost_fn(points[averaged], target)
    return cost, g, a


def spin_statistics(estimator, params, states, x, targets, beta, window):
    """A sampled estimator's Rao–Blackwellised statistics of a phase at nudge ``beta`` if
    its model is a spin network and its ``rao_blackwell`` option resolves on, else None."""
    model = estimator.model
    if not (model.is_spin and resolve_rao_blackwell(estimator.rao_blackwell, model)):
        return None
    return rao_blackwell_statistics(
        model, params, states, x, targets, beta, estimator.temperature,
        estimator.needed_series, window,
    )  # fmt: skip


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
) -> DrawStatistics:
    """:class:`DrawStatistics` from conditional expectations, on device.

    The same series as :func:`~thermoeqprop.estimators._statistics.draw_statistics` (same
    shapes and windows, means that are consistent estimates of the same quantities) with every
    draw replaced by the average over the classes of its conditional expectations given the
    other classes: ``energy_grad`` the mean of ``g``, ``covariance`` the series
    ``a_d − b̄ g_d − (b_d − b̄) ḡ`` whose mean is ``ā − b̄ ḡ``, ``cost`` of ``b``, outputs of
    the conditional means.

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

    Cost: one gradient of ``F_β`` in the state per draw for the means, and ``m = K + 1``
    (3 for a layered network) energy gradients per draw where the plain series take one, all
    as products over every state at once; compiled once per model, shapes and settings
    (``beta`` and ``temperature`` are traced).
    """
    wanted = wanted_series(series, states.shape[2], draws_per_entry)
    dtype = states.dtype
    out = _rao_blackwell_statistics(
        model, params, states, x, targets, jnp.asarray(beta, dtype),
        jnp.asarray(temperature, dtype), wanted, draws_per_entry,
    )  # fmt: skip
    return DrawStatistics(*out, draws_per_entry=draws_per_entry)


def layered_grad_sums(model: LayeredSpinNetwork, params):
    """``Σ_{b,j} w_bj ∂θE(z_bj)`` per entry for the layered energy, as matrix products.

    ``∂E/∂h = −z``, ``∂E/∂W_in = −x ⊗ z_1``, ``∂E/∂J_k = −z_k ⊗ z_{k+1}``: the weighted sums
    over an entry's examples and points are contractions of the weighted layers with their
    neighbours, in the parameters' ravel order (the ``grad_sums`` of
    :func:`~thermoeqprop.estimators._statistics.point_statistics`; automatic
    differentiation of the energy gives the same sums, about twice as slowly).
    """
    treedef = jax.tree_util.tree_structure(params)

    def grad_sums(points, weights, x):  # (E, B, p, n), (E, B, p), (B, I) -> (E, P)
        layers = split_layers(points, model.layer_sizes[1:])
        weighted = [weights[..., None] * layer for layer in layers]
        first = jnp.einsum("ebpi->ebi", weighted[0])
        grads = {
            "couplings": tuple(
                -jnp.einsum("ebpi,ebpl->eil", weighted[k], layers[k + 1])
                for k in range(len(layers) - 1)
            ),
            "fields": -jnp.concatenate([jnp.sum(w, axis=(1, 2)) for w in weighted], axis=-1),
            "input_weights": -jnp.einsum("ba,ebi->eai", x, first),
        }
        leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_unflatten(
            treedef, jax.tree_util.tree_leaves(grads)
        ))  # fmt: skip
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)

    return grad_sums


def _grad_sums(model, params):
    """The matrix-product sums for the layered energy itself (not a subclass's own energy)."""
    if isinstance(model, LayeredSpinNetwork) and type(model).energy is LayeredSpinNetwork.energy:
        return layered_grad_sums(model, params)
    return None


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _rao_blackwell_statistics(model, params, states, x, targets, beta, temperature, wanted,
                              window):  # fmt: skip
    def one(state, x_b, y_b):
        return conditional_points(model, params, state, x_b, y_b, beta, temperature)

    per_example = jax.vmap(jax.vmap(one, in_axes=(0, None, None)), in_axes=(0, None, None))
    # Computed once and kept: fused into each consumer it was recomputed (1.8 times slower).
    points, u, alpha, costs = jax.lax.optimization_barrier(
        jax.vmap(per_example)(states, x, targets)
    )
    if not wanted[1]:  # the shifted points serve only the covariance (their u is 0)
        num_classes = len(independent_classes(model))
        points, u, alpha = (
            points[..., :num_classes, :],
            u[..., :num_classes],
            alpha[..., :num_classes],
        )
    return point_statistics(
        model, params, points, x, u[0, 0, 0], alpha, costs, wanted, window,
        _grad_sums(model, params),
    )  # fmt: skip

"""The statistics behind a sampled thermal estimate, computed on the device.

From states ``(batch, chain, draw, n)``: the per-draw (or per-window) series whose means are
the estimates (:func:`draw_statistics`), and from them the estimate with its MCSE, ESS and
R-hat in one pass of :func:`samplers.mean_diagnostics_many` (:class:`Combined`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import samplers
from thermoeqprop.models._base import EnergyModel

__all__ = [
    "Combined",
    "DrawStatistics",
    "GradientSeries",
    "SERIES",
    "draw_statistics",
    "parameter_names",
    "series_window",
]

# Largest (chain, entry, parameter) series kept per estimate, in elements (8 MiB of float64):
# beyond it, consecutive draws are averaged into windows (batch means), which keeps the
# estimate and its MCSE but not every draw; never fewer than MIN_SERIES_LENGTH entries. The
# statistics and diagnostics of a batch cost about one pass over memory per step, so their time
# follows the series' size: for the main job at 2 × 450 draws of 9,610 parameters, 150 windows
# of 3 draws (2²² elements) took 58 + 56 ms a batch, 50 windows of 9 (2²⁰) 51 + 10.5 ms
# (benchmarks/variance_reduction.py, section pieces).
SERIES_BUDGET = 2**20
MIN_SERIES_LENGTH = 64
# The same for the series of ``estimate_with_series`` (one batch an epoch in ``train``, saved
# for ArviZ): every draw up to 256 MiB of float64. Windows of draws lower the number of entries
# a split R-hat compares, and with it the largest R-hat's floor over thousands of components:
# for 9,610 independent components of 2 chains, about 1.05 at 150 entries against 1.015 at 450.
# Its ESS and MCSE still come from the windows a call would use (``ess_budget``), so the last
# batch's MCSE is the one its call would report, and its diagnostics cost no more.
DIAGNOSTIC_SERIES_BUDGET = 2**25


class GradientSeries(NamedTuple):
    """The per-draw series behind a sampled estimate.

    Attributes:
        gradient: (chain, entry, P) series whose mean is the raveled gradient estimate
            (covariance: the scaled centred products; nudged: the scaled difference of the two
            phases' ``∂θE``, draw by draw). Each entry is one draw, or, for runs longer than
            ``DIAGNOSTIC_SERIES_BUDGET`` elements, the mean of ``draws_per_entry``
            consecutive draws (batch means: the same mean, and ESS and R-hat of the means).
        cost: (chain, entry) batch-mean cost.
        parameter_names: P names, one per raveled parameter (see :func:`parameter_names`).
        sampler_traces: The ``samplers.Trace`` of every sampled phase and round.
        draws_per_entry: Consecutive draws averaged into one entry (1: every draw).
        ess: (P,) ESS of the mean of each component, in draws (NaN: never changes), from the
            same diagnostics pass as the estimate's MCSE; None where not computed.
        rhat: (P,) split R-hat of each component (NaN: never changes); None likewise.
    """

    gradient: np.ndarray
    cost: np.ndarray
    parameter_names: list[str]
    sampler_traces: list[Any]
    draws_per_entry: int = 1
    ess: np.ndarray | None = None
    rhat: np.ndarray | None = None


def parameter_names(params) -> list[str]:
    """One readable name per raveled parameter, e.g. ``weights[0][3,5]``, in ravel order."""
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        stem = "".join(
            f"[{k.idx}]"
            if isinstance(k, jax.tree_util.SequenceKey)
            else f"{k.key}"
            if isinstance(k, jax.tree_util.DictKey)
            else str(k)
            for k in path
        )
        shape = np.shape(leaf)
        if not shape:
            names.append(stem)
            continue
        for index in np.ndindex(*shape):
            names.append(f"{stem}[{','.join(map(str, index))}]")
    return names


class DrawStatistics(NamedTuple):
    """Series whose means are the thermal estimates (batch means, raveled params).

    Entries are draws, or means of ``draws_per_entry`` consecutive draws (``E = D /
    draws_per_entry`` entries per chain). A series that was not asked for is ``None``.

    Attributes:
        energy_grad: (chain, E, P): ``mean_b ∂θE(s_bcd; x_b)``.
        covariance: (chain, E, P): ``mean_b (C_bcd − C̄_b)(∂θE(s_bcd) − ⟨∂θE⟩_b)``; its mean
            is the batch-mean sample covariance ``Cov(C, ∂θE)``, and as a series it is the
            covariance's influence function, so its MCSE is the covariance's.
        cost: (chain, E): ``mean_b C(s_bcd; y_b)``.
        output: (batch, num_outputs): ``⟨output⟩`` per example.
        draws_per_entry: Draws averaged into one entry.
        control_mcse2: With control variates: the sum over components of the squared MCSE
            of the series without the controls (one round of draws; None after several rounds
            are joined, and without controls).
    """

    energy_grad: jax.Array | None
    covariance: jax.Array | None
    cost: jax.Array
    output: jax.Array
    draws_per_entry: int = 1
    control_mcse2: jax.Array | None = None


SERIES = ("energy_grad", "covariance")


def series_window(
    num_draws: int, num_chains: int = 1, num_params: int = 1, budget: int | None = None
) -> int:
    """Draws per series entry: 1 while ``chains × draws × parameters`` fits ``budget``
    (elements; None: :data:`SERIES_BUDGET`), else the smallest divisor of
    ``num_draws`` that brings it within the budget but leaves at least ``MIN_SERIES_LENGTH``
    entries per chain (1 if no divisor leaves between half that and the budget: such a length
    keeps every draw).

    Example:
        >>> series_window(50, 2, 9610), series_window(200, 8, 15010), series_window(211, 8, 15010)
        (1, 4, 1)
        >>> series_window(450, 2, 9610), series_window(450, 2, 9610, DIAGNOSTIC_SERIES_BUDGET)
        (9, 1)
    """
    budget = SERIES_BUDGET if budget is None else budget
    return samplers.batch_window(num_draws, num_chains, num_params, budget, MIN_SERIES_LENGTH)


def draw_statistics(
    model: EnergyModel,
    params,
    states,
    x,
    targets,
    series: tuple[str, ...] = SERIES,
    draws_per_entry: int = 1,
) -> DrawStatistics:
    """Compute :class:`DrawStatistics` of states (batch, chain, draw, n), on device.

    Args:
        model: The energy model.
        params: Parameters.
        states: (batch, chain, draw, n) states.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        series: Which of ``"energy_grad"`` and ``"covariance"`` to compute (the covariance
            estimator needs only the second, the nudged one only the first).
        draws_per_entry: Consecutive draws averaged into one entry; must divide the draws.

    Every series entry is the gradient of one weighted sum of energies over the batch and the
    entry's draws, so its cost is one pass over the states per series (for the layered
    networks, matrix products of all states with their neighbours' activations), and memory is
    O(chains × entries × parameters); the per-example means ``⟨∂θE⟩_b`` that centre the
    covariance are one more pass. Compiled once per model, shapes and settings.
    """
    wanted = wanted_series(series, states.shape[2], draws_per_entry)
    out = _draw_statistics(model, params, states, x, targets, wanted, draws_per_entry)
    return DrawStatistics(*out, draws_per_entry=draws_per_entry)


def wanted_series(series, num_draws: int, draws_per_entry: int) -> tuple[bool, ...]:
    """Flags for ``SERIES``, after checking the names and that the window divides the draws."""
    unknown = sorted(set(series) - set(SERIES))
    if unknown:
        raise ValueError(f"unknown series {unknown}; valid: {SERIES}")
    if not isinstance(draws_per_entry, int) or draws_per_entry < 1 or num_draws % draws_per_entry:
        raise ValueError(
            f"draws_per_entry must be a positive divisor of the {num_draws} draws per chain, "
            f"got {draws_per_entry!r}"
        )
    return tuple(s in series for s in SERIES)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _draw_statistics(model, params, states, x, targets, wanted, window):
    cost_of = jax.vmap(jax.vmap(jax.vmap(model.cost_fn, in_axes=(0, None)), in_axes=(0, None)))
    costs = cost_of(states, targets)  # (B, C, D)
    # One evaluation point per draw, the draw itself: g = ∂θE(s), a = C ∂θE(s), b = C.
    ones = jnp.ones((1,), states.dtype)
    return point_statistics(
        model, params, states[:, :, :, None, :], x, ones, costs[..., None], costs, wanted, window
    )


def point_statistics(model, params, points, x, mean_weights, product_weights, costs, wanted,
                     window, grad_sums=None):  # fmt: skip
    """The series of :class:`DrawStatistics` from evaluation points, inside a compiled call.

    Each draw ``d`` of example ``b`` stands for ``m`` points ``z_j`` (the draw itself, or the
    conditional-mean states of docs/mathematics.md#rao-blackwellised-spin-estimators); the
    series are built from the linear functionals, per draw,

        g_d = Σ_j u_j ∂θE(z_dj),   a_d = Σ_j α_dj ∂θE(z_dj),   b_d = costs_d,

    (for the draw itself ``u = 1``, ``α = C``: ``a = C ∂θE``): ``energy_grad`` is the
    entry mean of ``g``, ``covariance`` that of ``a_d − b̄_b g_d − (b_d − b̄_b) ḡ_b`` (the
    influence function of ``ā − b̄ ḡ``, centred by each example's means over all its chains
    and draws), ``cost`` that of ``b``, and the outputs ``Σ_j u_j output(z_j)``.

    Args:
        model: The energy model.
        params: Parameters.
        points: (B, C, D, m, n) evaluation points.
        x: Inputs (B, num_inputs).
        mean_weights: (m,) weights ``u``.
        product_weights: (B, C, D, m) weights ``α``.
        costs: (B, C, D) ``b``.
        wanted: Flags for ``SERIES``.
        window: Draws per series entry.
        grad_sums: ``grad_sums(points (E, B, p, n), weights (E, B, p), x) -> (E, P)``, the
            raveled ``Σ_{b,j} weights · ∂θE(points)`` of each ``E``, where a model's structure
            gives it faster than automatic differentiation; None differentiates the energy.

    Returns:
        ``(energy_grad, covariance, cost, output)`` as in :class:`DrawStatistics`.
    """
    flat, unravel = ravel_pytree(params)
    b, c, d, m, n = points.shape
    k = d // window

    def entries(values):  # (B, C, D, m, …) -> (C·K, B, w·m, …): the points of each entry
        grouped = values.reshape((b, c * k, window * m) + values.shape[4:])
        return jnp.swapaxes(grouped, 0, 1)

    windows = entries(points)  # (C·K, B, w·m, n): the points of each entry, all examples
    energies = jax.vmap(model.energy, in_axes=(None, 0, None))  # (p, n) points of one example

    def sums(weights, entry_points, xs=x):  # (E, B', p), (E, B', p, n), (B', …) -> (E, P)
        if grad_sums is not None:
            return grad_sums(entry_points, weights, xs)

        def entry_grad(w, z):  # ∂θ Σ w·E over the points of one entry, all its examples
            def weighted(flat_params):
                p = unravel(flat_params)
                return jnp.sum(w * jax.vmap(lambda z_b, x_b: energies(p, z_b, x_b))(z, xs))

            return jax.grad(weighted)(flat)

        return jax.vmap(entry_grad)(weights, entry_points)

    energy_grad = covariance = None
    u = jnp.broadcast_to(mean_weights.astype(flat.dtype), (b, c, d, m))
    if wanted[0]:
        energy_grad = sums(entries(u), windows).reshape(c, k, -1) / (b * window)
    if wanted[1]:
        mean_cost = jnp.mean(costs, axis=(1, 2), keepdims=True)  # b̄_b
        weights = product_weights - mean_cost[..., None] * u  # α − b̄_b u, (B, C, D, m)
        weighted = sums(entries(weights), windows) / (b * window)  # (CK, P)

        def mean_grad(u_b, z_b, x_b):  # ḡ_b = mean over all chains and draws of one example
            return sums(u_b[None, None] / (c * d), z_b[None, None], x_b[None])[0]

        mean_grads = jax.vmap(mean_grad)(
            u.reshape(b, c * d * m), points.reshape(b, c * d * m, n), x
        )  # (B, P)
        # Σ_{b,d∈entry} (b_d − b̄_b) ḡ_b, as one product of the centred costs' sums.
        centred = jnp.swapaxes((costs - mean_cost).reshape(b, c * k, window), 0, 1)
        covariance = weighted - jnp.sum(centred, axis=2) @ mean_grads / (b * window)
        covariance = covariance.reshape(c, k, -1)
    cost = jnp.mean(costs, axis=0).reshape(c, k, window).mean(axis=2)
    outputs = jax.vmap(jax.vmap(jax.vmap(jax.vmap(model.output))))(points)  # (B, C, D, m, o)
    output = jnp.einsum("bcdmo,m->bo", outputs, mean_weights.astype(outputs.dtype)) / (c * d)
    return energy_grad, covariance, cost, output


def _merge_rounds(rounds: list[DrawStatistics]) -> DrawStatistics:
    """Join rounds of the same chains along the draw axis (outputs: mean over rounds)."""
    if len(rounds) == 1:
        return rounds[0]

    def joined(name):
        parts = [getattr(r, name) for r in rounds]
        return None if parts[0] is None else jnp.concatenate(parts, axis=1)

    return DrawStatistics(
        joined("energy_grad"),
        joined("covariance"),
        joined("cost"),
        jnp.mean(jnp.stack([r.output for r in rounds]), axis=0),
        rounds[0].draws_per_entry,
    )


class Combined(NamedTuple):
    """A sampled estimate from its series, all on device.

    Attributes:
        grad: (P,) raveled gradient.
        stderr: (P,) its MCSE.
        loss: Mean cost.
        loss_stderr: Its MCSE.
        series: (chain, entry, P) series whose mean is ``grad``.
        ess: (P,) ESS of the mean of ``series`` in draws (entries × draws per entry); NaN for
            components that never change.
        rhat: (P,) split R-hat of ``series``; NaN for components that never change.
    """

    grad: jax.Array
    stderr: jax.Array
    loss: jax.Array
    loss_stderr: jax.Array
    series: jax.Array
    ess: jax.Array
    rhat: jax.Array


@functools.partial(jax.jit, static_argnums=(3,))
def _combined(series, stderr, cost, draws_per_entry):
    """The mean of ``series``, the ESS and R-hat of it, and the cost's mean and MCSE; the
    gradient's ``stderr`` is the series' MCSE when None is passed as ``stderr``."""
    diagnostics = samplers.mean_diagnostics_many(series, ess_budget=SERIES_BUDGET)
    cost_mcse = samplers.mean_diagnostics_many(cost[..., None]).mcse[0]
    return Combined(
        grad=jnp.mean(series, axis=(0, 1)),
        stderr=diagnostics.mcse if stderr is None else stderr,
        loss=jnp.mean(cost),
        loss_stderr=cost_mcse,
        series=series,
        ess=diagnostics.ess * draws_per_entry,
        rhat=diagnostics.rhat,
    )


def _mcse(series) -> jax.Array:
    """MCSE of the mean of (chain, entry, *event) series; 0 where a series is constant."""
    return samplers.mean_diagnostics_many(series).mcse


def _ess_rhat(combined: Combined) -> dict[str, jax.Array]:
    """Extremes and medians of the ESS and R-hat over the components that vary."""
    any_varying, summary = _ess_rhat_summary(combined.ess, combined.rhat)
    return summary if bool(any_varying) else {}


@jax.jit
def _ess_rhat_summary(ess, rhat):
    # Masked reductions, not ``ess[varying]``: a boolean index has a data-dependent shape, and
    # every new count of varying components compiled anew (10 compilations in 20 batches).
    varying = jnp.isfinite(ess)
    # Extremes over thousands of components of short chains are noisy: medians beside them
    # tell a few slow directions apart from chains that have not mixed at all.
    return jnp.any(varying), {
        "ess_min": jnp.min(jnp.where(varying, ess, jnp.inf)),
        "ess_median": jnp.nanmedian(jnp.where(varying, ess, jnp.nan)),
        "rhat_max": jnp.max(jnp.where(varying, rhat, -jnp.inf)),
        "rhat_median": jnp.nanmedian(jnp.where(varying, rhat, jnp.nan)),
    }

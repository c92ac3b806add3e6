r"""Equilibrium propagation at finite temperature, as inference (MATH.md §2).

The network's state follows :math:`p_β(s) ∝ \exp(-F_β(s)/T)`, :math:`F_β = E + βC`, and the
objective is the expected cost :math:`L_T = ⟨C⟩_0`. Two exact identities give its gradient:

- covariance, **no clamping**: :math:`dL_T/dθ = -\frac1T \mathrm{Cov}_0(C, ∂_θE)`, from samples
  of the free phase only (:class:`ThermalCovariance`);
- nudged: :math:`dL_T/dθ = ∂_β ⟨∂_θE⟩_β` at β = 0, estimated from sampled phases at ±β (or 0
  and β) (:class:`ThermalNudged`).

States are drawn by the ``samplers`` package (NUTS/HMC through NumPyro for continuous states,
block Gibbs or Metropolis for spins, optionally inside parallel tempering), many chains per
example, all examples of a batch in one compiled call. Every estimate carries a Monte Carlo
standard error per parameter from ArviZ's effective sample size of the per-draw series whose
mean is the estimate, and the sampler's diagnostics. :class:`ThermalExact` is the reference:
enumeration of all spin states, or the Gaussian closed form of the quadratic network.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import samplers
from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_positive
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = [
    "SAMPLING_METHODS",
    "Combined",
    "Sampling",
    "ThermalCovariance",
    "ThermalExact",
    "ThermalNudged",
    "GradientSeries",
    "DrawStatistics",
    "ThermalSamples",
    "draw_statistics",
    "draw_states",
    "parameter_names",
    "series_window",
]

SAMPLING_METHODS = ("auto", "nuts", "hmc", "gibbs", "metropolis")
START_METHODS = ("auto", "relaxed", "annealed", "dispersed")
MAX_ENUMERATED_SPINS = 20
# The sampler context is (params, x, targets, beta): parameters shared by all examples.
CONTEXT_AXES = (None, 0, 0, 0)
# Largest (chain, entry, parameter) series kept per estimate, in elements (32 MiB of float64):
# beyond it, consecutive draws are averaged into windows (batch means), which keeps the
# estimate and its MCSE but not every draw; never fewer than MIN_SERIES_LENGTH entries.
SERIES_BUDGET = 2**22
MIN_SERIES_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a thermal estimator draws network states.

    Args:
        method: ``"nuts"`` or ``"hmc"`` (NumPyro's kernels, continuous states), ``"gibbs"``
            (block heat-bath over the model's blocks) or ``"metropolis"`` (spins, any graph);
            ``"auto"`` picks NUTS for continuous states, block Gibbs for spin networks with
            blocks and Metropolis otherwise.
        num_chains: Chains per example (≥ 2, so that R-hat exists).
        num_samples: Recorded draws per chain and round.
        num_warmup: Discarded steps per round (NUTS/HMC adapt step size and mass during them).
        hmc_steps: Leapfrog steps per HMC trajectory (``"hmc"`` only).
        hmc_jitter: Relative jitter of the HMC step size after warm-up (``"hmc"`` only): each
            transition uses the adapted step size times a uniform factor in
            ``[1 − hmc_jitter, 1 + hmc_jitter]``, which breaks the resonances of a fixed
            trajectory length (``samplers.hmc``'s ``jitter``); 0 turns it off.
        tempering: Number of parallel-tempering replicas (0 = off); the ladder is geometric
            from T up to ``tempering_max_ratio × T`` and only the T replica is used.
        tempering_max_ratio: Top of the ladder relative to T.
        target_relative_stderr: If set, keep drawing rounds until the gradient's standard
            error relative to its norm falls under it, or ``max_rounds`` are spent; the
            diagnostics say which (``precision_reached``) and how many draws were used.
        max_rounds: Budget of rounds for ``target_relative_stderr``.
        init_scale: Spread of the chains' starts: in units of √T around the minimum for
            ``start="relaxed"``, absolute around the model's initial state for
            ``"dispersed"`` continuous chains (over-dispersed starts make R-hat meaningful).
        start: Where chains begin. ``"relaxed"``: at the minimum of ``F_β`` found by the
            T = 0 relaxation, jittered by ``init_scale·√T`` (warm starts that skip the
            descent from far away; a chain stays in the basin of that minimum unless the
            temperature lets it cross, so use tempering for multimodal problems);
            ``"annealed"``: cooled from ``anneal_from × T`` down to T in ``anneal_stages``
            geometric stages by the local kernel (``samplers.anneal``); ``"dispersed"``:
            random spins, or ``init_scale`` noise around the initial state. ``"auto"``:
            relaxed for continuous states, dispersed for spins.
        anneal_from: Start of the annealing schedule, as a multiple of T (> 1).
        anneal_stages: Number of annealing stages (two kernel steps each).
    """

    method: str = "auto"
    num_chains: int = 4
    num_samples: int = 200
    num_warmup: int = 200
    hmc_steps: int = 16
    hmc_jitter: float = 0.5
    tempering: int = 0
    tempering_max_ratio: float = 10.0
    target_relative_stderr: float | None = None
    max_rounds: int = 8
    init_scale: float = 0.5
    start: str = "auto"
    anneal_from: float = 20.0
    anneal_stages: int = 20

    def __post_init__(self):
        if self.method not in SAMPLING_METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; valid: {SAMPLING_METHODS}")
        for name, minimum in (
            ("num_chains", 2),
            ("num_samples", 4),
            ("num_warmup", 0),
            ("hmc_steps", 1),
            ("max_rounds", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
        if (
            isinstance(self.hmc_jitter, bool)
            or not isinstance(self.hmc_jitter, (int, float))
            or not 0 <= self.hmc_jitter < 1
        ):
            raise ValueError(f"hmc_jitter must be a number in [0, 1), got {self.hmc_jitter!r}")
        if self.tempering not in (0,) and (
            not isinstance(self.tempering, int) or self.tempering < 2
        ):
            raise ValueError(
                f"tempering must be 0 (off) or a number of replicas ≥ 2, got {self.tempering!r}"
            )
        if not self.tempering_max_ratio > 1:
            raise ValueError(f"tempering_max_ratio must be > 1, got {self.tempering_max_ratio!r}")
        if self.target_relative_stderr is not None:
            check_positive("target_relative_stderr", self.target_relative_stderr)
        check_positive("init_scale", self.init_scale, allow_zero=True)
        if self.start not in START_METHODS:
            raise ValueError(f"unknown start {self.start!r}; valid: {START_METHODS}")
        if self.start == "annealed" and self.tempering:
            raise ValueError(
                "start='annealed' cannot be combined with tempering (the replica ladder already "
                "carries configurations down from high temperature); use start='relaxed'"
            )
        if not self.anneal_from > 1:
            raise ValueError(f"anneal_from must be > 1, got {self.anneal_from!r}")
        if not isinstance(self.anneal_stages, int) or self.anneal_stages < 2:
            raise ValueError(f"anneal_stages must be an integer ≥ 2, got {self.anneal_stages!r}")

    def resolve_start(self, model: EnergyModel) -> str:
        if self.start == "auto":
            return "dispersed" if model.is_spin else "relaxed"
        if self.start == "relaxed" and model.is_spin:
            raise ValueError(
                "start='relaxed' needs continuous states; use 'annealed' or 'dispersed' for spins"
            )
        return self.start

    def resolve_method(self, model: EnergyModel) -> str:
        method = self.method
        if method == "auto":
            if not model.is_spin:
                return "nuts"
            return "gibbs" if getattr(model, "blocks", None) else "metropolis"
        if model.is_spin and method in ("nuts", "hmc"):
            raise ValueError(
                f"sampling method {method!r} needs continuous states; "
                f"{type(model).__name__} has spins: use 'gibbs' or 'metropolis'"
            )
        if not model.is_spin and method in ("gibbs", "metropolis"):
            raise ValueError(
                f"sampling method {method!r} needs spins; {type(model).__name__} has "
                "continuous states: use 'nuts' or 'hmc'"
            )
        if method == "gibbs" and not getattr(model, "blocks", None):
            raise ValueError("sampling method 'gibbs' needs a model with blocks; use 'metropolis'")
        return method


def _nudged_energy_fn(model: EnergyModel):
    def energy_fn(position, context):
        params, x, target, beta = context
        return model.total_energy(params, position, x, target, beta)

    return energy_fn


@functools.lru_cache(maxsize=64)
def _ising_form(model):
    """``context -> (couplings, fields)`` of a layered spin network (one object per model)."""

    def interaction_fn(context):
        params, x, target, beta = context
        return model.ising_form(params, x, target, beta)

    return interaction_fn


@functools.lru_cache(maxsize=64)
def _kernel(model: EnergyModel, sampling: Sampling) -> samplers.Kernel:
    """One kernel (hence one compilation) per model and sampling configuration."""
    kernel = _local_kernel(model, sampling)
    if sampling.tempering:
        kernel = samplers.parallel_tempering(kernel)
    return kernel


@functools.lru_cache(maxsize=64)
def _local_kernel(model: EnergyModel, sampling: Sampling) -> samplers.Kernel:
    energy_fn = _nudged_energy_fn(model)
    method = sampling.resolve_method(model)
    if method == "nuts":
        kernel = samplers.nuts(energy_fn, num_warmup=sampling.num_warmup)
    elif method == "hmc":
        kernel = samplers.hmc(
            energy_fn,
            num_warmup=sampling.num_warmup,
            num_steps=sampling.hmc_steps,
            trajectory_length=None,
            jitter=float(sampling.hmc_jitter),
        )
    elif method == "gibbs" and hasattr(model, "ising_form") and model.multilinear:
        # Dense layers: fields and energies as matrix products, one layer per block.
        kernel = samplers.layered_gibbs(_ising_form(model), model.layer_sizes[1:])
    elif method == "gibbs":
        # The networks' own energies are Ising energies without self-couplings: multilinear
        # by construction, so the driver need not probe them on every call.
        multilinear = bool(getattr(model, "multilinear", False))
        kernel = samplers.block_gibbs(energy_fn, model.blocks, check_energy=not multilinear)
    else:
        kernel = samplers.metropolis(energy_fn)
    return kernel


class ThermalSamples(NamedTuple):
    """States drawn at one temperature and nudge, with what the sampler reported.

    Attributes:
        states: (batch, chain, draw, n) states at the target temperature.
        trace: The ``samplers.Trace`` (with every replica when tempering).
        final_positions: Where the chains ended, to continue them in another round.
    """

    states: jax.Array
    trace: Any
    final_positions: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _relaxed_states(model, params, x, targets, beta):
    from thermoeqprop.estimators.zero_temperature import Relaxation, relax

    start = model.initial_state(x)
    return relax(model, params, x, targets, beta, start, Relaxation(tolerance=1e-6)).state


def _initial_positions(model, sampling, x, rng_key, params, targets, beta, temperature, context):
    batch = x.shape[0]
    shape = (batch, sampling.num_chains)
    if sampling.tempering:
        shape += (sampling.tempering,)
    shape += (model.state_size,)
    key_noise, key_anneal = jax.random.split(rng_key)
    start = sampling.resolve_start(model)
    if model.is_spin:
        positions = jnp.where(jax.random.bernoulli(key_noise, 0.5, shape), 1.0, -1.0)
    else:
        if start == "relaxed":
            base = _relaxed_states(model, params, x, targets, beta)
            scale = sampling.init_scale * np.sqrt(temperature)
        else:
            base, scale = model.initial_state(x), sampling.init_scale
        base = base.reshape((batch,) + (1,) * (len(shape) - 2) + (model.state_size,))
        positions = base + scale * jax.random.normal(key_noise, shape, dtype=base.dtype)
    if start == "annealed":
        schedule = samplers.geometric_schedule(
            sampling.anneal_from * temperature, temperature, sampling.anneal_stages
        )
        annealed = samplers.anneal(
            key_anneal,
            _local_kernel(model, sampling),
            positions,
            context,
            schedule,
            num_steps_per_temperature=2,
            batched=True,
            context_axes=CONTEXT_AXES,
        )
        positions = annealed.final_state.position
    return positions


def draw_states(
    model: EnergyModel,
    sampling: Sampling,
    params,
    x,
    targets,
    beta: float,
    temperature: float,
    rng_key,
    initial_positions=None,
) -> ThermalSamples:
    """Draw states of ``p_β(s | x) ∝ exp(−(E + βC)/T)`` for every example of a batch.

    Args:
        model: The energy model.
        sampling: Sampler settings.
        params: Parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs) (unused when ``beta`` is 0).
        beta: Nudging strength (0 for the free phase).
        temperature: T > 0, or an increasing ladder (R,) of temperatures: then one parallel-
            tempering run samples every rung (``sampling.tempering`` is set to R), the
            returned ``states`` are those of the first rung and ``trace.samples`` holds all
            rungs as (batch, chain, draw, R, n), so one run can serve a temperature sweep.
        rng_key: PRNG key.
        initial_positions: Chain starts (batch, chain[, replica], n); default: over-dispersed
            around the model's initial state (random spins for spin models).

    Returns:
        :class:`ThermalSamples`.
    """
    key_init, key_sample = jax.random.split(rng_key)
    ladder = None
    if np.ndim(temperature) == 1:
        ladder = np.asarray(temperature, dtype=float)
        if ladder.size < 2 or not np.all(np.isfinite(ladder)) or not np.all(ladder > 0):
            raise ValueError(
                f"a temperature ladder needs ≥ 2 finite temperatures > 0, got {ladder}"
            )
        if not np.all(np.diff(ladder) > 0):
            raise ValueError(f"a temperature ladder must be strictly increasing, got {ladder}")
        sampling = dataclasses.replace(sampling, tempering=len(ladder))
        temperature = float(ladder[0])
    batch = x.shape[0]
    # The parameters are shared by every example (CONTEXT_AXES): one copy, so the chains'
    # energies and gradients batch into matrix products over all examples and chains.
    context = (params, x, targets, jnp.full((batch,), beta, dtype=x.dtype))
    if initial_positions is None:
        initial_positions = _initial_positions(
            model, sampling, x, key_init, params, targets, beta, temperature, context
        )
    if ladder is None:
        ladder = temperature
        if sampling.tempering:
            ladder = samplers.geometric_ladder(
                temperature, sampling.tempering_max_ratio * temperature, sampling.tempering
            )
    ladder = jnp.asarray(ladder, dtype=x.dtype)
    trace = samplers.sample(
        key_sample,
        _kernel(model, sampling),
        initial_positions,
        context,
        ladder,
        num_samples=sampling.num_samples,
        num_warmup=sampling.num_warmup,
        batched=True,
        context_axes=CONTEXT_AXES,
    )
    states = trace.samples[..., 0, :] if sampling.tempering else trace.samples
    return ThermalSamples(states, trace, trace.final_state.position)


def _sampler_diagnostics(trace, tempering: bool) -> dict[str, jax.Array]:
    """Means (sums for divergences) of the sampler's per-step facts at the target T."""
    info = trace.info.local if tempering else trace.info
    reductions = {
        "acceptance_rate": ("acceptance_rate", jnp.mean),
        "is_divergent": ("divergences", jnp.sum),
        "flip_rate": ("flip_rate", jnp.mean),
        "num_integration_steps": ("mean_integration_steps", jnp.mean),
        "step_size": ("mean_step_size", jnp.mean),
    }
    out = {}
    for field, (name, reduce) in reductions.items():
        if hasattr(info, field):
            value = getattr(info, field)
            out[name] = reduce(value[..., 0] if tempering else value)
    if tempering:
        out["swap_rate_min"] = jnp.min(jnp.mean(trace.info.swap_probability, axis=(0, 1, 2)))
        out["round_trips"] = jnp.mean(trace.info.round_trips[..., -1])
    return out


class GradientSeries(NamedTuple):
    """The per-draw series behind a sampled estimate.

    Attributes:
        gradient: (chain, entry, P) series whose mean is the raveled gradient estimate
            (covariance: the scaled centred products; nudged: the scaled difference of the two
            phases' ``∂θE``, draw by draw). Each entry is one draw, or, for runs longer than
            ``SERIES_BUDGET`` elements, the mean of ``draws_per_entry``
            consecutive draws (batch means: the same mean, and ESS and R-hat of the means).
        cost: (chain, entry) batch-mean cost.
        parameter_names: P names, one per raveled parameter (see :func:`parameter_names`).
        sampler_traces: The ``samplers.Trace`` of every sampled phase and round.
        draws_per_entry: Consecutive draws averaged into one entry (1: every draw).
    """

    gradient: np.ndarray
    cost: np.ndarray
    parameter_names: list[str]
    sampler_traces: list[Any]
    draws_per_entry: int = 1


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
    """

    energy_grad: jax.Array | None
    covariance: jax.Array | None
    cost: jax.Array
    output: jax.Array
    draws_per_entry: int = 1


SERIES = ("energy_grad", "covariance")


def series_window(num_draws: int, num_chains: int = 1, num_params: int = 1) -> int:
    """Draws per series entry: 1 while ``chains × draws × parameters`` fits
    ``SERIES_BUDGET``, else the smallest divisor of ``num_draws`` that brings it within the
    budget but leaves at least ``MIN_SERIES_LENGTH`` entries per chain (1 if no divisor
    leaves between half that and the budget: such a length keeps every draw).

    Example:
        >>> series_window(50, 2, 9610), series_window(200, 8, 15010), series_window(211, 8, 15010)
        (1, 4, 1)
    """
    longest = max(MIN_SERIES_LENGTH, SERIES_BUDGET // max(1, num_chains * num_params))
    if num_draws <= longest:
        return 1
    window = next(w for w in range(1, num_draws + 1) if num_draws % w == 0 and
                  num_draws // w <= longest)  # fmt: skip
    return window if num_draws // window >= MIN_SERIES_LENGTH // 2 else 1


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
    unknown = sorted(set(series) - set(SERIES))
    if unknown:
        raise ValueError(f"unknown series {unknown}; valid: {SERIES}")
    num_draws = states.shape[2]
    if not isinstance(draws_per_entry, int) or draws_per_entry < 1 or num_draws % draws_per_entry:
        raise ValueError(
            f"draws_per_entry must be a positive divisor of the {num_draws} draws per chain, "
            f"got {draws_per_entry!r}"
        )
    out = _draw_statistics(
        model, params, states, x, targets, tuple(s in series for s in SERIES), draws_per_entry
    )
    return DrawStatistics(*out, draws_per_entry=draws_per_entry)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _draw_statistics(model, params, states, x, targets, wanted, window):
    flat, unravel = ravel_pytree(params)
    b, c, d, n = states.shape
    k = d // window
    cost_of = jax.vmap(jax.vmap(jax.vmap(model.cost_fn, in_axes=(0, None)), in_axes=(0, None)))
    costs = cost_of(states, targets)  # (B, C, D)
    # (C·K, B, w, n): the states of each series entry, all examples together.
    windows = jnp.transpose(states.reshape(b, c * k, window, n), (1, 0, 2, 3))
    energies = jax.vmap(model.energy, in_axes=(None, 0, None))  # (m, n) states of one example

    def entry_grad(weights, entry_states):  # (B, w), (B, w, n) -> ∂θ Σ weights·E / (B w)
        def weighted(flat_params):
            p = unravel(flat_params)
            e = jax.vmap(lambda s_b, x_b: energies(p, s_b, x_b))(entry_states, x)
            return jnp.sum(weights * e) / (b * window)

        return jax.grad(weighted)(flat)

    energy_grad = covariance = None
    if wanted[0]:
        uniform = jnp.ones((c * k, b, window), flat.dtype)
        energy_grad = jax.vmap(entry_grad)(uniform, windows).reshape(c, k, -1)
    if wanted[1]:
        centred = costs - jnp.mean(costs, axis=(1, 2), keepdims=True)  # C − C̄_b
        weights = jnp.transpose(centred.reshape(b, c * k, window), (1, 0, 2))  # (CK, B, w)
        weighted = jax.vmap(entry_grad)(weights, windows)  # (CK, P)

        def mean_grad(s_b, x_b):  # ⟨∂θE⟩_b over all chains and draws of one example
            return jax.grad(lambda fp: jnp.mean(energies(unravel(fp), s_b, x_b)))(flat)

        mean_grads = jax.vmap(mean_grad)(states.reshape(b, c * d, n), x)  # (B, P)
        # Σ_{b,d∈entry} (C − C̄_b) ⟨∂θE⟩_b, as one product of the weights' sums.
        covariance = weighted - jnp.sum(weights, axis=2) @ mean_grads / (b * window)
        covariance = covariance.reshape(c, k, -1)
    cost = jnp.mean(costs, axis=0).reshape(c, k, window).mean(axis=2)
    outputs = jax.vmap(jax.vmap(jax.vmap(model.output)))(states)
    return energy_grad, covariance, cost, jnp.mean(outputs, axis=(1, 2))


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
    diagnostics = samplers.mean_diagnostics_many(series)
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
    varying = jnp.isfinite(combined.ess)
    if not bool(jnp.any(varying)):
        return {}
    ess, rhat = combined.ess[varying], combined.rhat[varying]
    # Extremes over thousands of components of short chains are noisy: medians beside them
    # tell a few slow directions apart from chains that have not mixed at all.
    return {
        "ess_min": jnp.min(ess),
        "ess_median": jnp.median(ess),
        "rhat_max": jnp.max(rhat),
        "rhat_median": jnp.median(rhat),
    }


def _check_model(model, temperature):
    if not isinstance(model, EnergyModel):
        raise ValueError(f"model must be an EnergyModel, got {type(model).__name__}")
    check_positive("temperature", temperature)
    if getattr(model, "state_bounds", None) is not None and not model.is_spin:
        raise ValueError(
            f"{type(model).__name__} confines its states to a box ({model.state_bounds}); "
            "thermal sampling needs states in R^n: use a smooth activation such as 'sigmoid'"
        )


class _SampledEstimator(Estimator):
    """Shared machinery: rounds of sampling, statistics, diagnostics."""

    model: EnergyModel
    temperature: float
    sampling: Sampling

    def phases(self) -> tuple[float, ...]:
        """The nudging strengths β of the phases this estimator samples, in order."""
        raise NotImplementedError

    #: The :class:`DrawStatistics` series :meth:`combine` reads.
    needed_series: tuple[str, ...] = SERIES

    def combine(self, stats: list[DrawStatistics]) -> Combined:
        """Turn the :class:`DrawStatistics` of each phase (in :meth:`phases` order) into the
        estimate: a :class:`Combined` (raveled gradient, MCSE, loss, the series, ESS, R-hat)."""
        raise NotImplementedError

    def statistics(self, params, states, x, targets) -> DrawStatistics:
        """The :class:`DrawStatistics` this estimator needs, of states (batch, chain, draw,
        n); long runs average consecutive draws into windows (:func:`series_window`)."""
        num_params = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
        window = series_window(states.shape[2], states.shape[1], num_params)
        return draw_statistics(self.model, params, states, x, targets, self.needed_series, window)

    def _validated(self, params, x, targets):
        x, targets = self.model.validate_inputs(x, targets)
        return x, targets

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        return self._estimate(params, x, targets, rng_key)[0]

    def estimate_with_series(
        self, params, x, targets, rng_key
    ) -> tuple[GradientEstimate, GradientSeries]:
        """The estimate and the per-draw series whose means it is (for ArviZ diagnostics)."""
        estimate, combined, merged, traces = self._estimate(params, x, targets, rng_key)
        cost = np.mean([np.asarray(phase.cost) for phase in merged], axis=0)
        series = GradientSeries(
            np.asarray(combined.series),
            cost,
            parameter_names(params),
            traces,
            merged[0].draws_per_entry,
        )
        return estimate, series

    def _estimate(self, params, x, targets, rng_key):
        x, targets = self._validated(params, x, targets)
        phases = self.phases()
        _, unravel = ravel_pytree(params)
        collected: list[list[DrawStatistics]] = [[] for _ in phases]
        positions: list[Any] = [None for _ in phases]
        traces = []
        rounds = self.sampling.max_rounds if self.sampling.target_relative_stderr else 1
        reached = False
        for round_index in range(rounds):
            round_key = jax.random.fold_in(rng_key, round_index)
            for i, beta in enumerate(phases):
                drawn = draw_states(
                    self.model,
                    self.sampling,
                    params,
                    x,
                    targets,
                    beta,
                    self.temperature,
                    jax.random.fold_in(round_key, i),
                    positions[i],
                )
                positions[i] = drawn.final_positions
                traces.append(drawn.trace)
                collected[i].append(self.statistics(params, drawn.states, x, targets))
            merged = [_merge_rounds(phase) for phase in collected]
            combined = self.combine(merged)
            relative = jnp.linalg.norm(combined.stderr) / jnp.maximum(
                jnp.linalg.norm(combined.grad), 1e-300
            )
            target = self.sampling.target_relative_stderr
            if target is not None and float(relative) < target:
                reached = True
                break
        diagnostics = {
            "relative_stderr": relative,
            "rounds": jnp.asarray(round_index + 1),
            "num_draws_per_chain": jnp.asarray(
                combined.series.shape[1] * merged[0].draws_per_entry
            ),
            **_ess_rhat(combined),
        }
        if self.sampling.target_relative_stderr is not None:
            diagnostics["precision_reached"] = jnp.asarray(reached)
        for key, value in _sampler_diagnostics(traces[-1], bool(self.sampling.tempering)).items():
            diagnostics[key] = value
        estimate = GradientEstimate(
            grad=unravel(combined.grad),
            loss=combined.loss,
            stderr=unravel(combined.stderr),
            loss_stderr=combined.loss_stderr,
            diagnostics=diagnostics,
        )
        return estimate, combined, merged, traces

    def predict(self, params, x, rng_key) -> jax.Array:
        x, _ = self.model.validate_inputs(x)
        dummy = jnp.zeros((x.shape[0], self.model.num_outputs), x.dtype)
        drawn = draw_states(
            self.model, self.sampling, params, x, dummy, 0.0, self.temperature, rng_key
        )
        return jnp.mean(jax.vmap(jax.vmap(jax.vmap(self.model.output)))(drawn.states), axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class ThermalCovariance(_SampledEstimator):
    r"""The unclamped thermal gradient :math:`-rac1T \mathrm{Cov}_0(C, ∂_θE)`.

    Only the free phase is sampled: the output is never clamped or nudged; its thermal
    fluctuations explore the cost. Noise is O(1/√ESS) nearly independently of T.

    Args:
        model: A continuous (smooth) or spin energy model.
        temperature: T > 0.
        sampling: Sampler settings.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> est = ThermalCovariance(net, temperature=0.1)(
        ...     net.init_params(jax.random.key(0)), jnp.ones((2, 2)), jnp.ones((2, 1)),
        ...     jax.random.key(1))
        >>> est.stderr["weights"][0].shape
        (2, 3)
    """

    model: EnergyModel
    temperature: float = 0.05
    sampling: Sampling = Sampling()

    def __post_init__(self):
        _check_model(self.model, self.temperature)
        self.sampling.resolve_method(self.model)

    needed_series = ("covariance",)

    def phases(self):
        return (0.0,)

    def combine(self, merged):
        (free,) = merged
        series = -free.covariance / jnp.asarray(self.temperature, free.covariance.dtype)
        return _combined(series, None, free.cost, free.draws_per_entry)


@dataclasses.dataclass(frozen=True)
class ThermalNudged(_SampledEstimator):
    r"""The nudged thermal gradient :math:`[⟨∂_θE⟩_β − ⟨∂_θE⟩_{−β}]/(2β)` (or one-sided).

    The loss it reports is ``⟨C⟩_0`` from the free phase when one-sided, and the mean of the
    ±β phases' ``⟨C⟩`` (bias O(β²)) when symmetric. Its noise grows like √T/(β√ESS).

    Args:
        model: A continuous (smooth) or spin energy model.
        temperature: T > 0.
        beta: Nudging strength > 0.
        symmetric: Sample at ±β (bias O(β²)) instead of 0 and β (bias O(β)).
        sampling: Sampler settings.
    """

    model: EnergyModel
    temperature: float = 0.05
    beta: float = 0.1
    symmetric: bool = True
    sampling: Sampling = Sampling()

    def __post_init__(self):
        _check_model(self.model, self.temperature)
        check_positive("beta", self.beta)
        self.sampling.resolve_method(self.model)

    needed_series = ("energy_grad",)

    def phases(self):
        return (self.beta, -self.beta) if self.symmetric else (self.beta, 0.0)

    def combine(self, merged):
        high, low = merged
        scale = jnp.asarray(2 * self.beta if self.symmetric else self.beta, high.cost.dtype)
        g_high, g_low = high.energy_grad, low.energy_grad
        stderr = jnp.sqrt(_mcse(g_high) ** 2 + _mcse(g_low) ** 2) / scale
        cost = 0.5 * (high.cost + low.cost) if self.symmetric else low.cost
        # Independent phases: the per-draw difference is the series the diagnostics read.
        return _combined((g_high - g_low) / scale, stderr, cost, high.draws_per_entry)


@dataclasses.dataclass(frozen=True)
class ThermalExact(Estimator):
    r"""Exact :math:`dL_T/dθ` with :math:`L_T = ⟨C⟩_0`, by autodiff of an exact ``⟨C⟩``.

    Spin networks of up to 20 spins: enumeration of all :math:`2^n` states with weights by
    logsumexp. :class:`~thermoeqprop.models.QuadraticNetwork`: the Gaussian closed form.

    Compiled once per model and batch shape: the temperature (and the ``beta`` of
    :meth:`nudged_energy_grad`) is a traced argument, so a temperature sweep reuses the code.

    Args:
        model: A spin network (≤ 20 spins) or a quadratic network.
        temperature: T > 0.
    """

    model: EnergyModel
    temperature: float = 0.05

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        if isinstance(self.model, QuadraticNetwork):
            return
        if not self.model.is_spin:
            raise ValueError(
                f"ThermalExact needs a spin network or a QuadraticNetwork, got "
                f"{type(self.model).__name__}; use a sampled estimator"
            )
        if self.model.state_size > MAX_ENUMERATED_SPINS:
            raise ValueError(
                f"ThermalExact enumerates 2^n states; n = {self.model.state_size} spins exceeds "
                f"the limit of {MAX_ENUMERATED_SPINS} (2^{self.model.state_size} states)"
            )

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        x, targets = self.model.validate_inputs(x, targets)
        temperature = float(self.temperature)  # an int T would compile a second time
        loss, grad = _exact_loss_and_grad(self.model, params, x, targets, temperature)
        return GradientEstimate(grad=grad, loss=loss)

    def predict(self, params, x, rng_key=None) -> jax.Array:
        x, _ = self.model.validate_inputs(x)
        return _exact_output(self.model, params, x, float(self.temperature))

    def nudged_energy_grad(self, params, x, targets, beta) -> Any:
        r"""Exact :math:`⟨∂_θE⟩_β = ∂_θ A(β)` (batch mean), a pytree like ``params``.

        ``(nudged_energy_grad(β) − nudged_energy_grad(−β)) / 2β`` is exactly what
        :class:`ThermalNudged` estimates: comparing the two isolates its Monte Carlo error
        from its O(β²) bias.
        """
        x, targets = self.model.validate_inputs(x, targets)
        temperature = float(self.temperature)
        return _exact_free_energy_grad(self.model, params, x, targets, temperature, beta)

    def expected(self, params, x, observable, temperature=None):
        """Exact ``⟨observable(s)⟩`` (batch, …) under the free Gibbs law (spins only)."""
        t = self.temperature if temperature is None else temperature
        return _spin_average(self.model, params, x, t, observable)


def _spin_average(model, params, x, temperature, observable):
    n = model.state_size
    states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)  # (2^n, n)

    def per_example(x_b):
        energies = jax.vmap(model.energy, in_axes=(None, 0, None))(params, states, x_b)
        weights = jax.nn.softmax(-energies / temperature)
        values = jax.vmap(observable)(states)
        return jnp.tensordot(weights, values, axes=1)

    return jax.vmap(per_example)(x)


@functools.partial(jax.jit, static_argnums=0)
def _exact_output(model, params, x, temperature):
    if isinstance(model, QuadraticNetwork):
        mean, _ = model.gaussian_moments(params, x, temperature)
        return jax.vmap(model.output)(mean)
    return _spin_average(model, params, x, temperature, model.output)


@functools.partial(jax.jit, static_argnums=0)
def _exact_loss_and_grad(model, params, x, targets, temperature):
    def loss(p):
        if isinstance(model, QuadraticNetwork):
            return jnp.mean(model.expected_cost(p, x, targets, temperature))
        n = model.state_size
        states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)

        def per_example(x_b, y_b):
            energies = jax.vmap(model.energy, in_axes=(None, 0, None))(p, states, x_b)
            costs = jax.vmap(model.cost_fn, in_axes=(0, None))(states, y_b)
            return jnp.dot(jax.nn.softmax(-energies / temperature), costs)

        return jnp.mean(jax.vmap(per_example)(x, targets))

    return jax.value_and_grad(loss)(params)


@functools.partial(jax.jit, static_argnums=0)
def _exact_free_energy_grad(model, params, x, targets, temperature, beta):
    def free_energy(p):  # batch mean of A(β) = −T log Σ_s exp(−F_β(s)/T)
        if isinstance(model, QuadraticNetwork):
            k = model.num_outputs
            projector = jnp.zeros((model.state_size,)).at[-k:].set(1.0)
            precision = model.precision(p) + beta * jnp.diag(projector)
            pad = jnp.zeros((x.shape[0], model.state_size - k))
            linear = model.linear_term(p, x) + beta * jnp.concatenate([pad, targets], axis=1)
            quad = jnp.einsum("bi,bi->b", linear, jnp.linalg.solve(precision, linear.T).T)
            _, logdet = jnp.linalg.slogdet(precision)
            values = (
                0.5 * beta * jnp.sum(targets**2, axis=1) - 0.5 * quad + 0.5 * temperature * logdet
            )
            return jnp.mean(values)
        n = model.state_size
        states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)

        def per_example(x_b, y_b):
            nudged = jax.vmap(model.total_energy, in_axes=(None, 0, None, None, None))
            return -temperature * jax.nn.logsumexp(-nudged(p, states, x_b, y_b, beta) / temperature)

        return jnp.mean(jax.vmap(per_example)(x, targets))

    return jax.grad(free_energy)(params)

"""How the thermal estimators draw network states: :class:`Sampling`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

import samplers
from thermoeqprop._health import PARETO_K_MAX
from thermoeqprop._validation import check_positive
from thermoeqprop.models._base import EnergyModel

__all__ = ["SAMPLER_DTYPES", "SAMPLING_METHODS", "START_METHODS", "Sampling"]

# The sampler context is (params, x, targets, beta): parameters shared by all examples.
CONTEXT_AXES = (None, 0, 0, 0)
SAMPLING_METHODS = ("auto", "nuts", "hmc", "gibbs", "metropolis", "importance")
START_METHODS = ("auto", "relaxed", "annealed", "dispersed")
SAMPLER_DTYPES = (None, "float32")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a thermal estimator draws network states.

    Args:
        method: ``"nuts"`` or ``"hmc"`` (NumPyro's kernels, continuous states), ``"gibbs"``
            (block heat-bath over the model's blocks) or ``"metropolis"`` (spins, any graph);
            ``"auto"`` picks NUTS for continuous states and block Gibbs for spin networks
            (over the layers of a layered one, by matrix products; over a colouring of a
            graph), Metropolis only for a spin model without blocks. ``"importance"``:
            independent draws of collapsed sampling's kept class from an adapted Student-t
            proposal, weighted (docs/mathematics.md, "Importance sampling"; continuous
            layered networks with collapsed sampling only).
        num_chains: Chains per example (≥ 2, so that R-hat exists).
        num_samples: Recorded draws per chain and round (``"importance"``: per group of
            independent draws, ``num_chains`` groups).
        num_warmup: Discarded steps per round (NUTS/HMC adapt step size and mass during them;
            ``"importance"``: ``num_chains × num_warmup`` pilot draws in each of the rounds that
            adapt the proposal, which also enter the estimate: a group holds
            ``3 num_warmup + num_samples`` weighted draws).
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
            diagnostics say which (``precision_reached``) and how many rounds were drawn.
            With ``method="importance"`` and ``neyman_share`` > 0 a round after the first
            adds ``neyman_share · batch`` rows for the examples whose variance they lower
            most (docs/mathematics.md, "Neyman allocation", rounds of rows); otherwise it
            draws the batch again and joins the draws.
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
        collapse: Collapsed sampling of a layered continuous network (docs/mathematics.md,
            "Collapsed sampling"): HMC/NUTS draw only the parity class of layers that holds
            the outputs, from its exact marginal with the other class integrated out, and the
            estimators average the other class by conditional expectations. ``None`` (the
            default): wherever the estimator allows it (a hidden layer, a 'sigmoid', 'tanh'
            or 'linear' activation, ``rao_blackwell`` not False, no control variates, no
            tempering, no annealed start); ``True``: required (an error names what is
            missing); ``False``: every unit is sampled. For a layered spin network
            (docs/mathematics.md, "Collapsed spin sampling"), ``True`` draws the parity class
            with fewer spins from its exact marginal by single-spin heat bath
            (``samplers.layered_collapsed_gibbs``) and averages the other by conditional
            expectations; ``None`` keeps block Gibbs there.
        mode_jumps: With collapsed sampling, a Metropolis translation between the two T = 0
            minima of the outputs' marginal after every HMC/NUTS transition
            (docs/mathematics.md, "Mode jumps"; exact for any jump vector); ignored when every
            unit is sampled. Off by default: on the main job it costs 15–30 % more time per
            call for a gain at trained parameters that a default training run did not show
            (benchmarks/results/variance_reduction.md).
        dtype: The samplers' arithmetic: ``None`` (the default) in the inputs' dtype;
            ``"float32"``: chains, energies and their gradients in float32 (traced with
            64-bit types off), the draws returned in the inputs' dtype, so that every
            statistic of them is computed as before (docs/mathematics.md, "Float32
            sampling"). The chains then target the density as float32 evaluates it (on the
            main job a log-density error of at most about 2e-3, whose bias is far inside the
            Monte Carlo error); on a CPU its collapsed HMC draws about 1.3× faster.
        neyman_share: ``"importance"`` only: after a batch's draws, ``round(neyman_share ·
            batch)`` more rows of draws for the examples whose first draws vary most, each
            row one more independent copy of its example (docs/mathematics.md, "Neyman
            allocation"); 0 (the default) draws every example once.
        pareto_fallback: ``"importance"`` only: a row (example) whose weights' Pareto ``k̂``
            exceeds this is drawn again by collapsed HMC, one chain per group, and its
            importance draws are dropped (docs/mathematics.md, "Heavy-tailed weights: HMC in
            their place"); 0.7 is the limit above which the weights are not to be trusted.
            None (the default): never.
        pareto_smoothing: ``"importance"`` only: the statistics weight the draws by their
            Pareto-smoothed weights (PSIS; docs/mathematics.md, "Pareto smoothing"), which
            bound what a few large weights do to the estimate and its MCSE. None (the
            default): on with ``"importance"``; False: the raw weights.
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
    collapse: bool | None = None
    mode_jumps: bool = False
    dtype: str | None = None
    neyman_share: float = 0.0
    pareto_fallback: float | None = None
    # None rather than True: runs recorded before this field resume (absent key = null).
    pareto_smoothing: bool | None = None

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
        if not (self.collapse is None or isinstance(self.collapse, bool)):
            raise ValueError(f"collapse must be None, True or False, got {self.collapse!r}")
        if not isinstance(self.mode_jumps, bool):
            raise ValueError(f"mode_jumps must be True or False, got {self.mode_jumps!r}")
        if self.dtype not in SAMPLER_DTYPES:
            raise ValueError(f"dtype must be one of {SAMPLER_DTYPES}, got {self.dtype!r}")
        check_positive("neyman_share", self.neyman_share, allow_zero=True)
        if self.neyman_share and self.method != "importance":
            raise ValueError(
                f"neyman_share needs method='importance' (extra rows of independent draws), "
                f"got neyman_share={self.neyman_share!r} with method={self.method!r}"
            )
        if self.pareto_fallback is not None:
            fallback = self.pareto_fallback
            if (
                isinstance(fallback, bool)
                or not isinstance(fallback, (int, float))
                or np.isnan(fallback)
            ):
                raise ValueError(f"pareto_fallback must be None or a Pareto k-hat limit (a "
                                 f"number, e.g. 0.7), got {fallback!r}")  # fmt: skip
            if self.method != "importance":
                raise ValueError(
                    f"pareto_fallback needs method='importance' (it redraws rows whose "
                    f"importance weights are heavy-tailed), got pareto_fallback={fallback!r} "
                    f"with method={self.method!r}"
                )

        if not (self.pareto_smoothing is None or isinstance(self.pareto_smoothing, bool)):
            raise ValueError(f"pareto_smoothing must be None, True or False, got "
                             f"{self.pareto_smoothing!r}")  # fmt: skip
        if self.pareto_smoothing and self.method != "importance":
            raise ValueError(
                f"pareto_smoothing needs method='importance' (it smooths importance weights), "
                f"got pareto_smoothing=True with method={self.method!r}"
            )

    @property
    def smooths_weights(self) -> bool:
        """Whether the statistics use Pareto-smoothed importance weights."""
        return self.method == "importance" and self.pareto_smoothing is not False

    @property
    def tops_up(self) -> bool:
        """Whether the rounds of ``target_relative_stderr`` after the first add Neyman
        allocation's extra rows (importance sampling with ``neyman_share`` > 0) instead of
        a batch of draws."""
        return bool(self.target_relative_stderr and self.neyman_share
                    and self.method == "importance")  # fmt: skip

    def neyman_rows(self, batch: int) -> int:
        """Extra rows of draws a batch of ``batch`` examples gets (``neyman_share``)."""
        return int(round(self.neyman_share * batch))

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
            return "gibbs" if model.blocks else "metropolis"
        if model.is_spin and method in ("nuts", "hmc", "importance"):
            raise ValueError(
                f"sampling method {method!r} needs continuous states; "
                f"{type(model).__name__} has spins: use 'gibbs' or 'metropolis'"
            )
        if not model.is_spin and method in ("gibbs", "metropolis"):
            raise ValueError(
                f"sampling method {method!r} needs spins; {type(model).__name__} has "
                "continuous states: use 'nuts' or 'hmc'"
            )
        if method == "gibbs" and not model.blocks:
            raise ValueError("sampling method 'gibbs' needs a model with blocks; use 'metropolis'")
        return method


@functools.partial(jax.jit, static_argnums=0)
def _relaxed_states(model, params, x, targets, beta):
    from thermoeqprop.estimators.zero_temperature import Relaxation, relax

    start = model.initial_state(x)
    return relax(model, params, x, targets, beta, start, Relaxation(tolerance=1e-6)).state


def _initial_positions(
    model, sampling, x, rng_key, params, targets, beta, temperature, context, nudged=True
):
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
            _local_kernel(model, sampling, nudged),
            positions,
            context,
            schedule,
            num_steps_per_temperature=2,
            batched=True,
            context_axes=CONTEXT_AXES,
        )
        positions = annealed.final_state.position
    return positions


def _sampler_diagnostics(trace, tempering: bool) -> dict[str, jax.Array]:
    """Means (sums for divergences) of the sampler's per-step facts at the target T."""
    info = trace.info.local if tempering else trace.info
    reductions = {
        "acceptance_rate": ("acceptance_rate", jnp.mean),
        "is_divergent": ("divergences", jnp.sum),
        "flip_rate": ("flip_rate", jnp.mean),
        "num_integration_steps": ("mean_integration_steps", jnp.mean),
        "step_size": ("mean_step_size", jnp.mean),
        "jump_accepted": ("jump_rate", jnp.mean),
        "ess_fraction": ("importance_ess_min", jnp.min),
        "pareto_k": ("pareto_k_max", jnp.max),
        "redrawn": ("redrawn_share", jnp.mean),
        "divergences": ("divergences", jnp.sum),
    }
    out = {}
    for field, (name, reduce) in reductions.items():
        if hasattr(info, field):
            value = getattr(info, field)
            out[name] = reduce(value[..., 0] if tempering else value)
    if hasattr(info, "pareto_k"):  # the share of examples (rows) whose weights are unreliable
        out["pareto_k_share"] = jnp.mean(info.pareto_k > PARETO_K_MAX)  # the health table's limit
    if tempering:
        out["swap_rate_min"] = jnp.min(jnp.mean(trace.info.swap_probability, axis=(0, 1, 2)))
        out["round_trips"] = jnp.mean(trace.info.round_trips[..., -1])
    return out


# Energies and kernels: one kernel object (hence one compilation) per model, sampling
# configuration and energy.


def _nudged_energy_fn(model: EnergyModel):
    def energy_fn(position, context):
        params, x, target, beta = context
        return model.total_energy(params, position, x, target, beta)

    return energy_fn


def _free_energy_fn(model: EnergyModel):
    """``E`` alone, for estimators that only sample the free phase: the same context, but no
    cost term (and its gradient) evaluated and multiplied by β = 0 at every leapfrog step."""

    def energy_fn(position, context):
        params, x, _, _ = context
        return model.energy(params, position, x)

    return energy_fn


def collapsed_spin_parity(model: EnergyModel) -> int:
    """The parity (0: layers 1, 3, …; 1: layers 2, 4, …) of the layers that collapsed
    sampling of a layered spin network draws: the class with fewer spins (on a tie, the one
    holding the first layer). The other class is summed out exactly: its conditional
    expectations are what the estimators use, and the smaller the kept class, the fewer
    sequential updates a sweep takes (docs/mathematics.md, "Collapsed spin sampling")."""
    sizes = model.ising_layer_sizes
    return int(sum(sizes[1::2]) < sum(sizes[0::2]))


def collapsed_spin_count(model: EnergyModel) -> int:
    """The number of spins collapsed sampling draws (the class of
    :func:`collapsed_spin_parity`)."""
    return int(sum(model.ising_layer_sizes[collapsed_spin_parity(model) :: 2]))


@functools.lru_cache(maxsize=64)
def _ising_form(model):
    """``context -> (couplings, fields)`` of a layered spin network (one object per model)."""

    def interaction_fn(context):
        params, x, target, beta = context
        return model.ising_form(params, x, target, beta)

    return interaction_fn


@functools.lru_cache(maxsize=64)
def _kernel(model: EnergyModel, sampling: Sampling, nudged: bool = True) -> samplers.Kernel:
    """One kernel (hence one compilation) per model, sampling configuration and energy (with
    the cost term, ``nudged``, or the free energy alone)."""
    kernel = _local_kernel(model, sampling, nudged)
    if sampling.tempering:
        kernel = samplers.parallel_tempering(kernel)
    return kernel


@functools.lru_cache(maxsize=64)
def _local_kernel(model: EnergyModel, sampling: Sampling, nudged: bool = True) -> samplers.Kernel:
    energy_fn = _nudged_energy_fn(model) if nudged else _free_energy_fn(model)
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
    elif method == "gibbs" and sampling.collapse is True and model.ising_layer_sizes is not None:
        # One parity class of layers from its exact marginal, the other summed out.
        kernel = samplers.layered_collapsed_gibbs(
            _ising_form(model), model.ising_layer_sizes, collapsed_spin_parity(model)
        )
    elif method == "gibbs" and model.ising_layer_sizes is not None:
        # Dense layers: fields and energies as matrix products, one layer per block.
        kernel = samplers.layered_gibbs(_ising_form(model), model.ising_layer_sizes)
    elif method == "gibbs":
        # The networks' own energies are Ising energies without self-couplings: multilinear
        # by construction, so the driver need not probe them on every call.
        check = not model.multilinear
        kernel = samplers.block_gibbs(energy_fn, model.blocks, check_energy=check)
    elif method == "importance":
        raise ValueError(
            "sampling method 'importance' draws the outputs' class of collapsed sampling "
            "(a ThermalCovariance or ThermalNudged estimator's draw); sampling every unit "
            "needs 'hmc' or 'nuts'"
        )
    else:
        kernel = samplers.metropolis(energy_fn)
    return kernel

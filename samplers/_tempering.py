"""Parallel tempering (replica exchange) around any local kernel, with adaptive ladders.

Replicas live on a leading batch axis of the state, one per temperature slot, with the inverse
temperatures in the state (as NetKet's ``ParallelTemperingSampler`` keeps them). One step:

1. every replica takes ``local_steps`` steps (default 1) of the local kernel at its own
   temperature;
2. a parity ``p ∈ {0, 1}`` is chosen, and each neighbour pair ``(k, k+1)`` with
   ``k ≡ p (mod 2)`` swaps configurations with probability
   ``min(1, exp((β_k − β_{k+1}) (E_k − E_{k+1})))``, ``β = 1/T``.

How the parity is chosen is the ``swaps`` option:

- ``"deterministic"`` (the default): ``p = t mod 2`` for the chain's step counter ``t``
  (``TemperingState.iteration`` before the step), so even and odd pairs alternate. This is
  non-reversible parallel tempering (NRPT; Syed, Bouchard-Côté, Deligiannidis & Doucet,
  JRSS B 84, 2022): a configuration that has just moved up keeps moving up until a swap is
  rejected, so walkers cross the ladder in about ``R`` steps instead of diffusing over it in
  about ``R²``, and the round-trip rate tends to a positive limit ``1/(2 + 2Λ)`` as rungs are
  added (``Λ`` the communication barrier, :mod:`samplers._schedule`) instead of decaying like
  ``1/R``. Each step is still a composition of kernels that leave the joint distribution of
  all replicas invariant (the local steps, then one swap sweep of non-overlapping pairs), so
  the target at every rung is unchanged; the chain as a whole is periodic in ``t``.
- ``"stochastic"``: ``p`` is drawn with probability ½ at every step (reversible, the classic
  even/odd scheme), the package's behaviour before NRPT.

The deterministic scheme is the default because it measured better everywhere it was tried
(``benchmarks/tempering.py``, ``benchmarks/results/tempering.md``, same ladder, local kernel
and cost per step): 7.2× the round trips per step of the stochastic scheme on a tilted double
well under HMC (16 rungs), 7.0× on a 4 × 4 Ising lattice at T_c (16 rungs), and 11.8× on a
16 × 16 lattice at T_c under block Gibbs (64 rungs, two sweeps per swap step). The gain grows
with the number of rungs per unit of barrier, as the theory says.

Local steps per swap (``local_steps``): the round-trip rate ``1/(2 + 2Λ)`` assumes that
the local kernel decorrelates the energy of every replica between two swap sweeps. Where one
step does not (a block Gibbs sweep of a large Ising lattice near T_c), several local steps per
swap bring the rate closer to that limit, at proportionally more work per step. On the
16 × 16 lattice at T_c with 64 rungs (``benchmarks/results/tempering.md``) one sweep per swap
made 0.071 round trips per step, 24 % under ``1/(2 + 2Λ̂)`` = 0.093, and two sweeps 0.077,
18 % under; per second one sweep made more round trips. The reversible scheme gains nothing
from them there (0.0067 round trips per step with one sweep, 0.0065 and 0.0073 with two on
its two ladders): its walkers diffuse over the ladder whatever the local mixing.

The temperature (and any adaptation, such as an HMC step size) stays with its slot; only the
configuration fields named by the local kernel move. Each configuration is a *walker*; a round
trip is counted when a walker that has visited the lowest temperature and then the highest
returns to the lowest.

Adaptive ladder (warm-up only, then frozen): with log-temperature gaps ``g_k = log T_{k+1} −
log T_k``, each warm-up step updates ``log g_k += κ_t (a_k − mean(a))`` where ``a_k`` is the
swap acceptance probability of pair ``k`` (computed for every pair, proposed or not), then
rescales the gaps so that ``T_min`` and ``T_max`` stay fixed. Pairs that swap too rarely get
closer, so the rates even out (the fixed point of Vousden, Farr & Mandel, MNRAS 455, 2016,
with both ends of the ladder held). The gain ``κ_t = adaptation_rate / (1 + t / t_0)``,
``t_0 = num_warmup / 10``, decays so that the ladder settles before it is frozen. For a ladder
placed from the estimated communication barrier over rounds of sampling, see
:func:`samplers.optimise_schedule`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel, check_ladder, check_temperature, set_temperature

__all__ = [
    "SWAP_SCHEMES",
    "TemperingInfo",
    "TemperingState",
    "geometric_ladder",
    "parallel_tempering",
    "swap_acceptance",
]

SWAP_SCHEMES = ("deterministic", "stochastic")


class TemperingState(NamedTuple):
    """State of one parallel-tempering chain with ``R`` temperature slots.

    Attributes:
        replicas: The local kernel's state, every leaf with a leading axis ``(R,)``; slot ``k``
            is at temperature ``1 / inverse_temperatures[k]``.
        inverse_temperatures: ``β_k = 1/T_k``, shape ``(R,)``, decreasing (slot 0 is the
            lowest, target temperature).
        walker: Which walker (configuration label) occupies each slot, shape ``(R,)``.
        direction: Per walker, ``+1`` if the last end of the ladder it visited was the lowest
            temperature, ``−1`` if the highest, ``0`` if neither yet; shape ``(R,)``.
        round_trips: Completed lowest → highest → lowest round trips of all walkers, ``()``.
        iteration: Number of steps taken, ``()`` (the ladder adapts while ``< num_warmup``).
    """

    replicas: Any
    inverse_temperatures: jax.Array
    walker: jax.Array
    direction: jax.Array
    round_trips: jax.Array
    iteration: jax.Array

    @property
    def position(self) -> jax.Array:
        """Configurations at every temperature, shape ``(R, *event)``."""
        return self.replicas.position

    @property
    def energy(self) -> jax.Array:
        """Unscaled energies at every temperature, shape ``(R,)``."""
        return self.replicas.energy

    @property
    def temperature(self) -> jax.Array:
        """The ladder ``T_k = 1/β_k``, shape ``(R,)``."""
        return 1.0 / self.inverse_temperatures


class TemperingInfo(NamedTuple):
    """Facts about one parallel-tempering step.

    Attributes:
        local: The local kernel's info, every leaf with a leading axis ``(R,)``.
        swap_proposed: Which neighbour pairs ``(k, k+1)`` were proposed, ``(R−1,)`` bool.
        swap_accepted: Which proposed pairs swapped, ``(R−1,)`` bool.
        swap_probability: Acceptance probability of every neighbour pair, proposed or not,
            ``(R−1,)`` (a lower-variance estimate of the swap rate).
        temperatures: The ladder used in this step, ``(R,)`` (it changes during warm-up when
            the ladder adapts).
        round_trips: Cumulative round trips after this step, ``()``.
    """

    local: Any
    swap_proposed: jax.Array
    swap_accepted: jax.Array
    swap_probability: jax.Array
    temperatures: jax.Array
    round_trips: jax.Array


def geometric_ladder(
    min_temperature: float, max_temperature: float, num_temperatures: int
) -> jax.Array:
    """Geometric temperature ladder ``T_k = T_min (T_max/T_min)^(k/(R−1))``, increasing.

    Args:
        min_temperature: Lowest (target) temperature, > 0.
        max_temperature: Highest temperature, > ``min_temperature``.
        num_temperatures: Number of rungs ``R >= 2``.

    Returns:
        Array of shape ``(R,)``.

    Example:
        >>> geometric_ladder(1.0, 4.0, 3).tolist()
        [1.0, 2.0, 4.0]
    """
    lo = check_temperature(min_temperature, "min_temperature")
    hi = check_temperature(max_temperature, "max_temperature")
    if not isinstance(num_temperatures, int | np.integer) or num_temperatures < 2:
        raise ValueError(f"num_temperatures must be an integer >= 2, got {num_temperatures!r}.")
    if hi <= lo:
        raise ValueError(f"max_temperature must exceed min_temperature, got {hi!r} <= {lo!r}.")
    ladder = np.geomspace(lo, hi, num_temperatures)
    ladder[0], ladder[-1] = lo, hi
    return jnp.asarray(ladder)


def swap_acceptance(info: TemperingInfo) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair swap acceptance from recorded infos.

    Args:
        info: :class:`TemperingInfo` with leading axes ``(..., draw)`` on every leaf, as
            returned by the driver.

    Returns:
        ``(rate, mean_probability)``, each of shape ``(..., R−1)``: accepted over proposed
        swaps per pair, and the mean acceptance probability of each pair over the draws.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import metropolis, sample
        >>> kernel = parallel_tempering(metropolis(lambda s, c: -s[0] * s[1]))
        >>> trace = sample(jax.random.key(0), kernel, jnp.ones((2, 3, 2)), (),
        ...                jnp.array([1.0, 2.0, 4.0]), num_samples=50)
        >>> rate, probability = swap_acceptance(trace.info)
        >>> rate.shape, bool(jnp.all((probability > 0) & (probability <= 1)))
        ((2, 2), True)
    """
    proposed = np.asarray(info.swap_proposed).sum(axis=-2)
    accepted = np.asarray(info.swap_accepted).sum(axis=-2)
    rate = accepted / np.maximum(proposed, 1)
    return rate, np.asarray(info.swap_probability).mean(axis=-2)


@functools.lru_cache(maxsize=128)
def _parallel_tempering(
    kernel: Kernel,
    adapt_ladder: bool,
    num_warmup: int,
    adaptation_rate: float,
    chain_axis: str | None,
    swaps: str,
    local_steps: int,
) -> Kernel:
    fields = kernel.configuration_fields
    decay_steps = max(1.0, num_warmup / 10.0)

    def local_sweep(key: jax.Array, replicas: Any, context: Any, num_replicas: int):
        """``local_steps`` local steps of every replica; the info of the last."""
        step_all = jax.vmap(kernel.step, in_axes=(0, 0, None))
        if local_steps == 1:
            return step_all(jax.random.split(key, num_replicas), replicas, context)

        def body(replicas, keys):
            return step_all(keys, replicas, context)

        keys = jax.random.split(key, (local_steps, num_replicas))
        replicas, infos = jax.lax.scan(body, replicas, keys)
        return replicas, jax.tree_util.tree_map(lambda x: x[-1], infos)

    def init(position: jax.Array, context: Any, temperature: Any) -> TemperingState:
        position = jnp.asarray(position)
        temperature = jnp.asarray(temperature, dtype=position.dtype)
        num_replicas = temperature.shape[0]
        replicas = jax.vmap(kernel.init, in_axes=(0, None, 0))(position, context, temperature)
        walker = jnp.arange(num_replicas)
        return TemperingState(
            replicas=replicas,
            inverse_temperatures=1.0 / temperature,
            walker=walker,
            direction=jnp.where(walker == 0, 1, 0),
            round_trips=jnp.zeros((), dtype=walker.dtype),
            iteration=jnp.zeros((), dtype=walker.dtype),
        )

    def adapt(state: TemperingState, swap_probability: jax.Array) -> jax.Array:
        log_t = -jnp.log(state.inverse_temperatures)
        gaps = jnp.diff(log_t)
        if chain_axis is not None:
            # One ladder per target: average the swap rates of all chains of the target.
            swap_probability = jax.lax.pmean(swap_probability, chain_axis)
        gain = adaptation_rate / (1.0 + state.iteration / decay_steps)
        log_gaps = jnp.log(gaps) + gain * (swap_probability - jnp.mean(swap_probability))
        new_gaps = jnp.exp(log_gaps)
        new_gaps = new_gaps * (log_t[-1] - log_t[0]) / jnp.sum(new_gaps)
        new_log_t = log_t[0] + jnp.concatenate([jnp.zeros(1, log_t.dtype), jnp.cumsum(new_gaps)])
        new_log_t = new_log_t.at[-1].set(log_t[-1])  # hold both ends exactly
        beta = jnp.exp(-new_log_t)
        in_warmup = state.iteration < num_warmup
        return jnp.where(in_warmup, beta, state.inverse_temperatures)

    def step(rng_key: jax.Array, state: TemperingState, context: Any):
        key_local, key_parity, key_swap = jax.random.split(rng_key, 3)
        beta = state.inverse_temperatures
        num_replicas = beta.shape[0]
        replicas, local_info = local_sweep(key_local, state.replicas, context, num_replicas)
        energy = replicas.energy
        log_ratio = (beta[:-1] - beta[1:]) * (energy[:-1] - energy[1:])
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        swap_probability = jnp.exp(jnp.minimum(log_ratio, 0.0))
        if swaps == "deterministic":  # even pairs at even steps, odd pairs at odd steps
            parity = (state.iteration % 2).astype(jnp.int32)
        else:
            parity = jax.random.randint(key_parity, (), 0, 2)
        pairs = jnp.arange(num_replicas - 1)
        proposed = pairs % 2 == parity
        log_u = jnp.log(jax.random.uniform(key_swap, (num_replicas - 1,), dtype=beta.dtype))
        accepted = proposed & (log_u < log_ratio)
        zero = jnp.zeros(1, dtype=pairs.dtype)
        up = jnp.concatenate([accepted.astype(pairs.dtype), zero])  # slot k takes k+1
        down = jnp.concatenate([zero, accepted.astype(pairs.dtype)])  # slot k takes k-1
        source = jnp.arange(num_replicas) + up - down
        moved = {name: getattr(replicas, name)[source] for name in fields}
        replicas = replicas._replace(**moved)
        walker = state.walker[source]

        bottom, top = walker[0], walker[-1]
        completed = state.direction[bottom] == -1
        direction = state.direction.at[bottom].set(1)
        direction = direction.at[top].set(jnp.where(direction[top] == 1, -1, direction[top]))
        round_trips = state.round_trips + completed.astype(state.round_trips.dtype)

        if adapt_ladder:
            new_beta = adapt(state, swap_probability)
            replicas = jax.vmap(set_temperature)(replicas, 1.0 / new_beta)
        else:
            new_beta = beta
        new_state = TemperingState(
            replicas=replicas,
            inverse_temperatures=new_beta,
            walker=walker,
            direction=direction,
            round_trips=round_trips,
            iteration=state.iteration + 1,
        )
        info = TemperingInfo(
            local=local_info,
            swap_proposed=proposed,
            swap_accepted=accepted,
            swap_probability=swap_probability,
            temperatures=1.0 / beta,
            round_trips=round_trips,
        )
        return new_state, info

    per_swap = "" if local_steps == 1 else f", {local_steps} local steps per swap"

    def validate(positions: Any, context: Any, temperature: Any) -> None:
        ladder = check_ladder(temperature)
        x = np.asarray(positions)
        if x.ndim != 3 or x.shape[1] != ladder.shape[0]:
            raise ValueError(
                "parallel tempering needs one configuration per temperature: positions of "
                f"shape (chain, {ladder.shape[0]}, n) for a ladder of {ladder.shape[0]} "
                f"temperatures, got shape {x.shape}."
            )
        kernel.validate(x.reshape(-1, x.shape[-1]), context, float(ladder[0]))

    return Kernel(
        init=init,
        step=step,
        configuration_fields=(),  # replica exchange does not nest
        num_warmup=max(-(-kernel.num_warmup // local_steps), num_warmup if adapt_ladder else 0),
        validate=validate,
        name=f"parallel tempering ({kernel.name}, {swaps} swaps{per_swap})",
        chain_collectives=adapt_ladder and chain_axis is not None,
    )


def parallel_tempering(
    kernel: Kernel,
    *,
    adapt_ladder: bool = False,
    num_warmup: int = 0,
    adaptation_rate: float = 0.5,
    chain_axis: str | None = "chain",
    swaps: str = "deterministic",
    local_steps: int = 1,
) -> Kernel:
    """Replica exchange around any local kernel (HMC/NUTS, block Gibbs, Metropolis).

    The returned kernel's ``init(position, context, temperature)`` takes ``position`` of shape
    ``(R, *event)`` (one configuration per rung) and ``temperature``, the ladder, of shape
    ``(R,)``, strictly increasing: slot 0 is the target temperature. Its ``step(rng_key,
    state, context)`` returns ``(TemperingState, TemperingInfo)``. The driver therefore returns
    samples at every temperature, ``(chain, draw, R, *event)``, so one run serves a sweep.

    Args:
        kernel: The local kernel, run at every rung.
        adapt_ladder: Adapt the inner temperatures for even swap rates during the first
            ``num_warmup`` steps (both ends fixed), then freeze them.
        num_warmup: Number of ladder-adaptation steps (ignored unless ``adapt_ladder``).
        adaptation_rate: Initial gain ``κ_0`` of the ladder adaptation.
        chain_axis: With ``adapt_ladder``, the ``vmap`` axis name over chains whose swap rates
            are averaged (``lax.pmean``) so that all chains of one target share one adapted
            ladder. The drivers vmap chains under the name ``"chain"``; when stepping an
            adaptive kernel by hand, ``vmap`` with ``axis_name="chain"`` or pass ``None`` (each
            chain then adapts its own ladder).
        swaps: ``"deterministic"`` (non-reversible even/odd alternation, the default) or
            ``"stochastic"`` (reversible, a random parity per step); module docstring.
        local_steps: Steps of the local kernel per replica between two swap sweeps, >= 1
            (module docstring). The recorded local info is that of the last of them. Steps,
            warm-up and draws of the returned kernel count swap steps, so the local kernel
            adapts (HMC/NUTS) during the first ``⌈kernel.num_warmup / local_steps⌉`` of them.

    Returns:
        A :class:`Kernel`; its ``num_warmup`` is the larger of the local kernel's adaptation
        (in swap steps) and the ladder's.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import metropolis
        >>> kernel = parallel_tempering(metropolis(lambda s, c: -jnp.sum(s[1:] * s[:-1])))
        >>> ladder = geometric_ladder(0.5, 4.0, 4)
        >>> state = jax.jit(kernel.init)(jnp.ones((4, 6)), (), ladder)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, ())
        >>> state.position.shape, info.swap_accepted.shape
        ((4, 6), (3,))
    """
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplers.Kernel, got {type(kernel).__name__}.")
    if not isinstance(num_warmup, int) or num_warmup < 0:
        raise ValueError(f"num_warmup must be an integer >= 0, got {num_warmup!r}.")
    if adapt_ladder and num_warmup == 0:
        raise ValueError("adapt_ladder=True needs num_warmup > 0 adaptation steps, got 0.")
    if not adaptation_rate > 0:
        raise ValueError(f"adaptation_rate must be > 0, got {adaptation_rate!r}.")
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}.")
    return _parallel_tempering(
        kernel,
        bool(adapt_ladder),
        num_warmup,
        float(adaptation_rate),
        chain_axis,
        check_swaps(swaps),
        int(local_steps),
    )


def check_swaps(swaps: Any) -> str:
    """Return ``swaps`` if it names a swap scheme, else raise ``ValueError`` naming it."""
    if not isinstance(swaps, str) or swaps not in SWAP_SCHEMES:
        raise ValueError(
            f"swaps must be one of {', '.join(repr(s) for s in SWAP_SCHEMES)}, got {swaps!r}."
        )
    return swaps

"""Temperature ladders from the communication barrier, for non-reversible parallel tempering.

The *communication barrier* (Syed, Bouchard-Côté, Deligiannidis & Doucet, JRSS B 84, 2022)
measures how hard it is to move a configuration from the hottest rung to the target. Between
neighbouring inverse temperatures the rejection rate of a swap, ``r_k = 1 − E[min(1, e^{(β_k −
β_{k+1})(E_k − E_{k+1})})]``, is to first order the integral of a local barrier ``λ(β)`` over
``[β_{k+1}, β_k]``, so the cumulative rejections trace a function ``Λ(β) = ∫ λ``, increasing
from the hottest rung (``Λ = 0``) to the target (``Λ = Λ̂``, the global barrier). A ladder is
optimal for non-reversible PT when every pair has the same rejection ``Λ̂ / (R − 1)``; its
round-trip rate (round trips of all walkers per step) then approaches ``1 / (2 + 2Λ̂)`` as
``R`` grows, and is ``1 / (2 + 2 Σ_k r_k / (1 − r_k))`` for ``R`` rungs when the local kernel
decorrelates the energy in one step.

Construction used here (:func:`communication_barrier`, :func:`equalise_ladder`):

1. ``r_k = 1 − p̄_k`` with ``p̄_k`` the mean swap acceptance *probability* of pair ``(k, k+1)``
   over all chains and steps of a round (``TemperingInfo.swap_probability``, computed for
   every pair at every step whether it was proposed or not, so it has far less variance than
   counting accepted swaps).
2. ``Λ̂(β)`` is the piecewise-linear function of ``β`` through the points ``(β_j, Σ_{k ≥ j}
   r_k)``: zero at the hottest rung, ``Λ̂ = Σ_k r_k`` at the target. It is increasing in ``β``
   (each ``r_k`` is floored at ``10⁻⁶`` times the mean rejection so that it is strictly so and
   so invertible).
3. The new inverse temperatures solve ``Λ̂(β'_j) = (R − 1 − j) Λ̂ / (R − 1)`` (equal steps of
   the barrier between neighbours), found by inverting the piecewise-linear interpolant
   exactly (linear interpolation of ``β`` against the cumulative rejections). Both ends are
   held at their input values bit for bit.

:func:`optimise_schedule` repeats this over rounds of doubling length (the scheme of Syed et
al.): round ``n`` runs ``2ⁿ`` chunks of ``steps_per_chunk`` steps from the previous round's
final state, then moves the ladder. Chunks of one length compile once; a chain continues
through all chunks and rounds (walkers, round-trip bookkeeping and local adaptation carry
over) by :func:`resume_tempering`, and the warm-up of the local kernel runs once, before the
first round.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel, check_ladder, set_temperature
from samplers._driver import Trace, as_typed_key, check_num
from samplers._resume import is_tempering_kernel, resume_tempering
from samplers._tempering import TemperingState, check_swaps, parallel_tempering

__all__ = [
    "ScheduleResult",
    "ScheduleRound",
    "communication_barrier",
    "equalise_ladder",
    "optimise_schedule",
    "suggest_num_replicas",
]

_FLOOR = 1e-6  # relative floor of the per-pair rejections (keeps Λ̂(β) strictly increasing)


class ScheduleRound(NamedTuple):
    """What one round of :func:`optimise_schedule` measured (all NumPy).

    Attributes:
        temperatures: The ladder the round ran with, ``(R,)``.
        num_steps: Steps per chain in the round.
        swap_probability: Mean swap acceptance probability per pair over chains and steps,
            ``(R−1,)``.
        swap_rate: Accepted over proposed swaps per pair, ``(R−1,)``.
        rejection: ``1 − swap_probability``, the estimated ``r_k``, ``(R−1,)``.
        barrier: ``Λ̂ = Σ_k r_k``.
        cumulative_barrier: ``Λ̂(β_k)`` at every rung, ``(R,)``: 0 at the hottest rung, ``Λ̂``
            at the target (slot 0).
        round_trips: Round trips completed in the round, summed over chains.
        round_trip_rate: Round trips per step per chain (all walkers of a chain together).
        chain_round_trips: Round trips completed in the round by each chain, ``(chain,)``
            (their spread gives the standard error of the rate).
        seconds: Wall-clock time of the round (the first includes compilation and warm-up).
    """

    temperatures: np.ndarray
    num_steps: int
    swap_probability: np.ndarray
    swap_rate: np.ndarray
    rejection: np.ndarray
    barrier: float
    cumulative_barrier: np.ndarray
    round_trips: int
    round_trip_rate: float
    chain_round_trips: np.ndarray
    seconds: float


class ScheduleResult(NamedTuple):
    """What :func:`optimise_schedule` returns.

    Attributes:
        temperatures: The optimised ladder, ``(R,)`` increasing, ends equal to the input's:
            the equal-barrier ladder of the last round's estimate.
        rounds: One :class:`ScheduleRound` per round, in order.
        barrier: ``Λ̂`` of the last round.
        suggested_num_replicas: :func:`suggest_num_replicas` of that ``Λ̂``.
        kernel: The parallel-tempering kernel that ran (to continue with
            :func:`resume_tempering`).
        final_state: Its state after the last round, already moved to ``temperatures``;
            every leaf ``(chain, ...)``.
    """

    temperatures: np.ndarray
    rounds: tuple[ScheduleRound, ...]
    barrier: float
    suggested_num_replicas: int
    kernel: Kernel
    final_state: TemperingState


def _check_probabilities(temperatures: Any, swap_probability: Any) -> tuple[np.ndarray, ...]:
    ladder = check_ladder(temperatures)
    p = np.asarray(swap_probability, dtype=float)
    if p.shape != (ladder.shape[0] - 1,):
        raise ValueError(
            f"swap_probability must have one entry per neighbour pair, shape "
            f"({ladder.shape[0] - 1},) for a ladder of {ladder.shape[0]} temperatures; got "
            f"shape {p.shape}."
        )
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(
            f"swap_probability must lie in [0, 1]; swap_probability[{k}] = {float(p[k])!r}."
        )
    return ladder, p


def communication_barrier(temperatures: Any, swap_probability: Any) -> tuple[np.ndarray, float]:
    """Estimated cumulative communication barrier ``Λ̂(β_k)`` at every rung, and ``Λ̂``.

    Args:
        temperatures: The ladder, ``(R,)`` increasing.
        swap_probability: Mean swap acceptance probability of each neighbour pair, ``(R−1,)``
            (e.g. ``samplers.swap_acceptance(info)[1]`` averaged over chains).

    Returns:
        ``(cumulative, total)``: ``cumulative[k] = Σ_{j ≥ k} (1 − p_j)``, shape ``(R,)``, 0 at
        the hottest rung; ``total = cumulative[0]``.

    Example:
        >>> cumulative, total = communication_barrier([1.0, 2.0, 4.0], [0.5, 0.75])
        >>> cumulative.tolist(), total
        ([0.75, 0.25, 0.0], 0.75)
    """
    _, p = _check_probabilities(temperatures, swap_probability)
    rejection = 1.0 - p
    cumulative = np.concatenate([np.cumsum(rejection[::-1])[::-1], [0.0]])
    return cumulative, float(cumulative[0])


def equalise_ladder(temperatures: Any, swap_probability: Any) -> np.ndarray:
    """The ladder with equal estimated barrier between neighbours (module docstring, 1–3).

    Args:
        temperatures: The ladder the swap probabilities were measured on, ``(R,)``.
        swap_probability: Mean swap acceptance probability per pair, ``(R−1,)``.

    Returns:
        The new ladder, ``(R,)`` strictly increasing, with the input's two ends. If no pair
        ever rejected (``Λ̂ = 0``) there is nothing to equalise and the input is returned.

    Example:
        >>> equalise_ladder([1.0, 2.0, 4.0], [0.9, 0.1]).round(4).tolist()
        [1.0, 2.5714, 4.0]
    """
    ladder, p = _check_probabilities(temperatures, swap_probability)
    rejection = 1.0 - p
    if not np.any(rejection > 0):
        return ladder.copy()
    rejection = np.maximum(rejection, _FLOOR * rejection.mean())
    beta = 1.0 / ladder[::-1]  # increasing: hottest rung first
    cumulative = np.concatenate([[0.0], np.cumsum(rejection[::-1])])
    steps = np.linspace(0.0, cumulative[-1], ladder.shape[0])
    new_beta = np.interp(steps, cumulative, beta)
    new = 1.0 / new_beta[::-1]
    new[0], new[-1] = ladder[0], ladder[-1]
    return new


def suggest_num_replicas(barrier: float, max_rejection: float = 0.5) -> int:
    """Smallest number of rungs whose equalised ladder rejects at most ``max_rejection`` per pair.

    With ``R`` rungs on an equal-barrier ladder each pair rejects about ``Λ̂ / (R − 1)``, so
    this is ``⌈Λ̂ / max_rejection⌉ + 1`` (at least 2). The default 0.5 gives about ``2Λ̂ + 1``
    rungs: where rung steps cost the same and run one after another, the round trips per
    rung-step, ``1 / (R (2 + 2Λ̂ / (1 − Λ̂/(R−1))))``, peak near ``R − 1 = 2Λ̂`` for large
    ``Λ̂``. Where rungs run in parallel for free, more rungs help: with 0.2 the round-trip rate
    per step is within about 20 % of its ceiling ``1 / (2 + 2Λ̂)``.

    Example:
        >>> suggest_num_replicas(3.2), suggest_num_replicas(3.2, max_rejection=0.2)
        (8, 17)
    """
    if not 0 < max_rejection < 1:
        raise ValueError(f"max_rejection must be in (0, 1), got {max_rejection!r}.")
    if not (math.isfinite(barrier) and barrier >= 0):
        raise ValueError(f"barrier must be a finite number >= 0, got {barrier!r}.")
    return max(2, math.ceil(barrier / max_rejection - 1e-9) + 1)


@functools.lru_cache(maxsize=64)
def _init(kernel: Kernel):
    """``init`` of a tempering kernel over chains, compiled: ``(chain, R, *event)`` starts."""
    return jax.jit(jax.vmap(kernel.init, in_axes=(0, None, None)))


def _check_starts(position: Any) -> np.ndarray:
    x = np.asarray(position)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"position must be floating point (spins as ±1.0), got dtype {x.dtype}.")
    if not np.all(np.isfinite(x)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(
            f"the start position must be finite; position{list(idx)} = {float(x[idx])!r}."
        )
    return x


@jax.jit
def _with_ladder(state: TemperingState, temperatures: jax.Array) -> TemperingState:
    """Move every chain of ``state`` (leaves ``(chain, ...)``) to a new ladder."""
    dtype = state.inverse_temperatures.dtype
    ladder = temperatures.astype(dtype)

    def one(chain: TemperingState) -> TemperingState:
        replicas = jax.vmap(set_temperature)(chain.replicas, ladder)
        return chain._replace(replicas=replicas, inverse_temperatures=(1.0 / ladder).astype(dtype))

    return jax.vmap(one)(state)


class _Totals:
    """Sums of swap statistics over the chunks of one round."""

    def __init__(self, num_pairs: int):
        self.probability = np.zeros(num_pairs)
        self.accepted = np.zeros(num_pairs)
        self.proposed = np.zeros(num_pairs)
        self.steps = 0

    def add(self, trace: Trace) -> None:
        info = trace.info
        self.probability += np.asarray(info.swap_probability, dtype=float).sum(axis=(0, 1))
        self.accepted += np.asarray(info.swap_accepted).sum(axis=(0, 1))
        self.proposed += np.asarray(info.swap_proposed).sum(axis=(0, 1))
        self.steps += info.swap_probability.shape[1]


def optimise_schedule(
    rng_key: jax.Array,
    kernel: Kernel,
    position: Any,
    context: Any,
    temperatures: Any,
    *,
    num_rounds: int,
    steps_per_chunk: int = 64,
    swaps: str = "deterministic",
    local_steps: int = 1,
    num_warmup: int | None = None,
    max_rejection: float = 0.5,
    check_finite: bool = True,
) -> ScheduleResult:
    """Tune a parallel-tempering ladder to equal communication barrier between neighbours.

    Round ``n = 0 … num_rounds − 1`` runs ``2ⁿ · steps_per_chunk`` steps of
    ``parallel_tempering(kernel, swaps=swaps, local_steps=local_steps)`` on every chain,
    estimates the per-pair rejections from the mean swap acceptance probabilities, the barrier
    ``Λ̂(β)`` and ``Λ̂``, and moves the ladder to equal steps of ``Λ̂(β)`` (module docstring),
    both ends fixed.

    Chains are continued, never restarted. They start from ``kernel.init`` at ``position``;
    then every call is :func:`resume_tempering` (through :func:`samplers.sample`) for
    ``steps_per_chunk`` steps from the previous call's final state, so one compilation serves
    the whole run, and walkers, round trips and the step counter (the parity of deterministic
    swaps) carry over. The warm-up comes first: ``⌈num_warmup / steps_per_chunk⌉`` chunks,
    discarded, in which the local kernel adapts (HMC/NUTS: step size and mass matrix, on the
    initial ladder, while their own step counter is below their ``num_warmup``). A ladder change
    moves each slot's temperature with ``state.with_temperature`` (HMC rescales its mass
    matrix), as the adaptive ladder does; adapted step sizes stay with their slots.

    Args:
        rng_key: A key from ``jax.random.key``.
        kernel: The *local* kernel (HMC/NUTS, block Gibbs, Metropolis), not a tempering one.
        position: Starts, ``(chain, R, *event)``, as for :func:`samplers.sample`.
        context: The energy's second argument.
        temperatures: The initial ladder, ``(R,)`` strictly increasing (e.g.
            :func:`samplers.geometric_ladder`); its ends stay.
        num_rounds: Number of rounds, >= 1.
        steps_per_chunk: Steps per call of the driver, >= 1 (round 0 is one chunk).
            Each call checks its inputs and copies its records to the host, so chunks of a
            few tens of steps or more keep that overhead small.
        swaps: ``"deterministic"`` (non-reversible, the default) or ``"stochastic"``.
        local_steps: Local steps per replica between two swap sweeps
            (:func:`samplers.parallel_tempering`); every count of steps here counts swap steps.
        num_warmup: Warm-up steps before the rounds, at least the tempering kernel's
            ``num_warmup`` (``⌈kernel.num_warmup / local_steps⌉``, the default), rounded up to
            whole chunks.
        max_rejection: Passed to :func:`suggest_num_replicas`.
        check_finite: Raise if a chain's energy becomes NaN or infinite.

    Returns:
        A :class:`ScheduleResult`: the ladder, one :class:`ScheduleRound` per round, and the
        kernel and final state to sample on with :func:`resume_tempering`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import geometric_ladder, metropolis
        >>> result = optimise_schedule(
        ...     jax.random.key(0), metropolis(lambda s, c: -jnp.sum(s[1:] * s[:-1])),
        ...     jnp.ones((2, 4, 8)), (), geometric_ladder(0.5, 4.0, 4), num_rounds=2,
        ...     steps_per_chunk=16)
        >>> [r.num_steps for r in result.rounds], result.temperatures[[0, -1]].tolist()
        ([16, 32], [0.5, 4.0])
    """
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplers.Kernel, got {type(kernel).__name__}.")
    if is_tempering_kernel(kernel):
        raise ValueError(
            f"kernel must be the local kernel that tempering runs at every rung, got "
            f"{kernel.name!r}; optimise_schedule builds parallel_tempering(kernel, swaps=...)."
        )
    num_rounds = check_num(num_rounds, "num_rounds", 1)
    steps_per_chunk = check_num(steps_per_chunk, "steps_per_chunk", 1)
    ladder = check_ladder(temperatures)
    suggest_num_replicas(0.0, max_rejection)  # validates max_rejection before any sampling
    pt = parallel_tempering(kernel, swaps=check_swaps(swaps), local_steps=local_steps)
    if num_warmup is None:
        num_warmup = pt.num_warmup
    num_warmup = check_num(num_warmup, "num_warmup", pt.num_warmup)
    x = _check_starts(position)
    pt.validate(x, context, ladder)
    key_warmup, key_rounds = jax.random.split(as_typed_key(rng_key))
    state = _init(pt)(jnp.asarray(x), context, jnp.asarray(ladder, dtype=x.dtype))
    # Warm-up (the local kernel adapts while its own step counter is below its num_warmup):
    # whole chunks, discarded, so that every call runs the one compiled length.
    for c in range(math.ceil(num_warmup / steps_per_chunk)):
        state = resume_tempering(
            jax.random.fold_in(key_warmup, c),
            pt,
            state,
            context,
            num_samples=steps_per_chunk,
            check_finite=check_finite,
        ).final_state
    num_chains = state.walker.shape[0]
    rounds = []
    for n in range(num_rounds):
        start = time.perf_counter()
        totals = _Totals(ladder.shape[0] - 1)
        before = np.asarray(state.round_trips)
        for c in range(2**n):
            trace = resume_tempering(
                jax.random.fold_in(key_rounds, 2**n - 1 + c),
                pt,
                state,
                context,
                num_samples=steps_per_chunk,
                check_finite=check_finite,
            )
            state = trace.final_state
            totals.add(trace)
        probability = totals.probability / (totals.steps * num_chains)
        cumulative, barrier = communication_barrier(ladder, probability)
        chain_round_trips = np.asarray(state.round_trips) - before
        round_trips = int(chain_round_trips.sum())
        rounds.append(
            ScheduleRound(
                temperatures=ladder.copy(),
                num_steps=totals.steps,
                swap_probability=probability,
                swap_rate=totals.accepted / np.maximum(totals.proposed, 1),
                rejection=1.0 - probability,
                barrier=barrier,
                cumulative_barrier=cumulative,
                round_trips=round_trips,
                round_trip_rate=round_trips / (totals.steps * num_chains),
                chain_round_trips=chain_round_trips,
                seconds=time.perf_counter() - start,
            )
        )
        ladder = equalise_ladder(ladder, probability)
        state = _with_ladder(state, jnp.asarray(ladder))
    last = rounds[-1].barrier
    return ScheduleResult(
        temperatures=ladder,
        rounds=tuple(rounds),
        barrier=last,
        suggested_num_replicas=suggest_num_replicas(last, max_rejection),
        kernel=pt,
        final_state=state,
    )

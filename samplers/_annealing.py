"""Annealing: temperature schedules and a driver that cools chains towards T → 0.

The schedule is a traced array, so new schedule values (of the same length) reuse the compiled
code. At stage ``k`` every chain's state is set to temperature ``schedule[k]`` and takes
``num_steps_per_temperature`` kernel steps; the state is carried to the next stage. The final
states are equilibrated (approximately) at ``schedule[-1]`` and serve as warm starts for
:func:`samplers.sample` at that temperature, or as approximate minimisers as T → 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel, check_temperature, set_temperature
from samplers._driver import Trace, as_typed_key, check_num, prepare
from samplers._driver import check_finite as _check_finite
from samplers._placement import gather, per_device, shard

__all__ = ["anneal", "check_schedule", "geometric_schedule", "linear_schedule"]


def _ends(start: float, stop: float, num_stages: int) -> tuple[float, float, int]:
    start = check_temperature(start, "start")
    stop = check_temperature(stop, "stop")
    num_stages = check_num(num_stages, "num_stages", 1)
    return start, stop, num_stages


def geometric_schedule(start: float, stop: float, num_stages: int) -> jax.Array:
    """Geometric cooling ``T_k = start · (stop/start)^(k/(K−1))``, ``k = 0..K−1``.

    Args:
        start: First (hottest) temperature, > 0.
        stop: Last (target) temperature, > 0.
        num_stages: Number of temperatures ``K >= 1`` (``K = 1`` gives ``[stop]``).

    Returns:
        Array of shape ``(K,)`` with exact end points.

    Example:
        >>> geometric_schedule(4.0, 0.25, 3).tolist()
        [4.0, 1.0, 0.25]
    """
    start, stop, num_stages = _ends(start, stop, num_stages)
    if num_stages == 1:
        return jnp.asarray([stop])
    schedule = np.geomspace(start, stop, num_stages)
    schedule[0], schedule[-1] = start, stop
    return jnp.asarray(schedule)


def linear_schedule(start: float, stop: float, num_stages: int) -> jax.Array:
    """Linear cooling ``T_k = start + (stop − start) k/(K−1)``, ``k = 0..K−1``.

    Example:
        >>> linear_schedule(3.0, 1.0, 3).tolist()
        [3.0, 2.0, 1.0]
    """
    start, stop, num_stages = _ends(start, stop, num_stages)
    if num_stages == 1:
        return jnp.asarray([stop])
    return jnp.asarray(np.linspace(start, stop, num_stages))


def check_schedule(schedule: Any) -> np.ndarray:
    """Validate a user-given schedule: 1-D, non-empty, finite, every temperature > 0."""
    t = np.asarray(schedule, dtype=float)
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(
            f"schedule must be a non-empty 1-D array of temperatures, got shape {t.shape}."
        )
    bad = ~np.isfinite(t) | (t <= 0)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(
            "every temperature of the schedule must be finite and > 0; "
            f"schedule[{k}] = {float(t[k])!r}."
        )
    return t


def _anneal_chain(kernel: Kernel, num_steps: int, rng_key, position, context, schedule):
    state = kernel.init(position, context, schedule[0])
    first_bad = jnp.where(jnp.all(jnp.isfinite(state.energy)), -1, 0)
    num_stages = schedule.shape[0]
    keys = jax.random.split(rng_key, (num_stages, num_steps))

    def stage(carry, xs):
        state, bad, t = carry
        temperature, stage_keys = xs
        state = set_temperature(state, temperature)

        def one(carry, key):
            state, bad, t = carry
            state, info = kernel.step(key, state, context)
            t = t + 1
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(state.energy)), t, bad)
            return (state, bad, t), info

        (state, bad, t), info = jax.lax.scan(one, (state, bad, t), stage_keys)
        last_info = jax.tree_util.tree_map(lambda leaf: leaf[-1], info)
        return (state, bad, t), (state.position, last_info)

    (state, bad, _), (positions, info) = jax.lax.scan(
        stage, (state, first_bad, jnp.zeros((), first_bad.dtype)), (schedule, keys)
    )
    return positions, info, state, bad


@functools.lru_cache(maxsize=64)
def _compiled(kernel: Kernel, num_steps: int, batched: bool, axes, placement=None):
    run = functools.partial(_anneal_chain, kernel, num_steps)
    run = jax.vmap(run, in_axes=(0, 0, None, None), axis_name="chain")
    if batched:
        run = jax.vmap(run, in_axes=(0, 0, axes.tree(), None))
    return jax.jit(per_device(run, kernel, placement, axes))


def anneal(
    rng_key: jax.Array,
    kernel: Kernel,
    position: Any,
    context: Any = (),
    schedule: Any = None,
    *,
    num_steps_per_temperature: int = 1,
    batched: bool = False,
    context_axes: Any = 0,
    check_finite: bool = True,
) -> Trace:
    """Carry chains through a cooling schedule and return their final states.

    Compiles on first use (``jax.jit``), cached on ``(kernel, num_steps_per_temperature,
    batched)`` and shapes. Works with any local kernel whose state has a ``temperature`` field
    (HMC/NUTS, block Gibbs, Metropolis). An HMC/NUTS kernel adapts during its first
    ``kernel.num_warmup`` steps overall (keep that below the total number of steps); at each
    change of temperature its mass matrix is rescaled by ``T_new / T_old``
    (:meth:`HMCState.with_temperature`), so the adapted step size stays usable as T → 0.

    Layout (``C`` chains, ``K`` stages, a leading ``B`` only when ``batched``): ``position``
    ``([B,] C, n)``; ``Trace.samples`` ``([B,] C, K, n)``, the positions at the end of each
    stage; ``Trace.info`` the kernel's info of the last step of each stage, leaves
    ``([B,] C, K, ...)``; ``Trace.final_state`` the states at ``schedule[-1]`` (warm starts:
    pass ``trace.final_state.position`` to :func:`samplers.sample`); ``Trace.nonfinite_step``
    counts kernel steps from 1 (an error names the step and its stage as the draw);
    ``Trace.num_warmup`` is 0.

    Args:
        rng_key: A key from ``jax.random.key``.
        kernel: A local :class:`Kernel` (not parallel tempering).
        position: Start positions.
        context: The energy's second argument (leading batch axis when ``batched``).
        schedule: Temperatures, shape ``(K,)``, e.g. :func:`geometric_schedule`.
        num_steps_per_temperature: Kernel steps at each temperature, >= 1.
        batched: Whether ``position`` and ``context`` carry a leading batch axis.
        context_axes: Which context leaves carry the batch axis, as in :func:`sample`.
        check_finite: Raise :class:`NonFiniteEnergyError` if an energy became NaN or infinite.

    Returns:
        A :class:`samplers.Trace` (layout above).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import metropolis
        >>> kernel = metropolis(lambda s, c: -jnp.sum(s[1:] * s[:-1]))
        >>> trace = anneal(jax.random.key(0), kernel, -jnp.ones((2, 8)).at[:, ::2].set(1.0),
        ...                schedule=geometric_schedule(5.0, 0.05, 20), num_steps_per_temperature=5)
        >>> trace.samples.shape, float(jnp.max(trace.final_state.energy))
        ((2, 20, 8), -7.0)
    """
    if schedule is None:
        raise ValueError("anneal needs a schedule of temperatures, e.g. geometric_schedule(...).")
    t = check_schedule(schedule)
    num_steps = check_num(num_steps_per_temperature, "num_steps_per_temperature", 1)
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplers.Kernel, got {type(kernel).__name__}.")
    if kernel.name.startswith("parallel tempering"):
        raise ValueError("anneal needs a local kernel; parallel tempering holds a whole ladder.")
    x, batch_size, num_chains, axes = prepare(
        kernel, position, context, float(t[0]), batched, 1, context_axes=context_axes
    )
    keys = jax.random.split(
        as_typed_key(rng_key), (batch_size, num_chains) if batched else num_chains
    )
    args, placement = shard(
        dict(
            rng_key=keys,
            position=jnp.asarray(x),
            context=context,
            temperature=jnp.asarray(t, dtype=x.dtype),
        ),
        batched,
        batch_size,
        num_chains,
        axes=axes,
    )
    run = _compiled(kernel, num_steps, bool(batched), axes, placement)
    samples, info, state, bad = gather(
        run(args["rng_key"], args["position"], args["context"], args["temperature"]), placement
    )
    trace = Trace(samples, info, state, bad, 0)
    if check_finite:
        _check_finite(trace, steps_per_draw=num_steps)
    return trace

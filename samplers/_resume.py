"""Continue parallel-tempering chains from a saved state through :func:`samplers.sample`.

The driver starts every chain with ``kernel.init(position, ...)``; it has no argument for a
state. A state can still travel through it unchanged: the context is an arbitrary pytree passed
to ``init`` and ``step``, so :func:`resume_tempering` wraps the tempering kernel in one whose
``init`` returns the state it finds in the context and whose ``step`` hands the inner context
on. The state is per chain, the context per target, so each chain runs as its own target
(``batched=True``, one chain per target, the state's leaves batched and the user's context
shared, ``context_axes=(None, 0)``), and the trace is reshaped back to ``(chain, ...)``. One
compiled run serves every call with the same kernel, length and shapes.

Consequence of the layout: a ladder that adapts while resumed (``adapt_ladder=True`` with steps
of its warm-up left) averages swap rates over the chains of one target, here one chain, so each
chain would adapt its own; resume after the ladder's warm-up.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from samplers._base import Kernel
from samplers._driver import Trace, check_num, sample
from samplers._driver import check_finite as _check_finite
from samplers._tempering import TemperingState

__all__ = ["is_tempering_kernel", "resume_tempering"]


def is_tempering_kernel(kernel: Kernel) -> bool:
    """Whether ``kernel`` came from :func:`samplers.parallel_tempering`."""
    return kernel.configuration_fields == () and kernel.name.startswith("parallel tempering (")


@functools.lru_cache(maxsize=64)
def _resumed(kernel: Kernel) -> Kernel:
    def init(position: Any, context: Any, temperature: Any) -> TemperingState:
        return context[1]

    def step(rng_key: jax.Array, state: TemperingState, context: Any):
        return kernel.step(rng_key, state, context[0])

    def validate(positions: Any, context: Any, temperature: Any) -> None:
        kernel.validate(positions, context[0], temperature)

    return Kernel(
        init=init,
        step=step,
        configuration_fields=(),
        num_warmup=0,
        validate=validate,
        name=f"{kernel.name}, resumed",
        chain_collectives=kernel.chain_collectives,
    )


def resume_tempering(
    rng_key: jax.Array,
    kernel: Kernel,
    state: TemperingState,
    context: Any = (),
    *,
    num_samples: int,
    check_finite: bool = True,
) -> Trace:
    """Continue parallel-tempering chains from ``state`` (e.g. ``Trace.final_state``).

    Every chain goes on from its own state: configurations, walkers, round-trip bookkeeping,
    step counter (which sets the parity of deterministic swaps), its ladder and the local
    kernel's adaptation. No warm-up is run. Runs through :func:`samplers.sample` (module
    docstring); new states, keys and contexts of the same shapes reuse one compilation.

    Args:
        rng_key: A key from ``jax.random.key``.
        kernel: The :func:`samplers.parallel_tempering` kernel that produced ``state``.
        state: A :class:`TemperingState` with leaves ``(chain, ...)`` (not batched targets).
        context: The energy's second argument, shared by all chains.
        num_samples: Number of steps, all recorded, >= 1.
        check_finite: Raise :class:`samplers.NonFiniteEnergyError` if an energy became NaN or
            infinite (steps counted from the resumed start).

    Returns:
        A :class:`samplers.Trace` in the layout of :func:`samplers.sample` (``samples``
        ``(chain, draw, R, *event)``), with ``num_warmup = 0``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import metropolis, parallel_tempering, sample
        >>> kernel = parallel_tempering(metropolis(lambda s, c: -s[0] * s[1]))
        >>> ladder = jnp.array([1.0, 2.0])
        >>> first = sample(jax.random.key(0), kernel, jnp.ones((3, 2, 2)), (), ladder,
        ...                num_samples=5)
        >>> more = resume_tempering(jax.random.key(1), kernel, first.final_state,
        ...                         num_samples=4)
        >>> more.samples.shape, more.final_state.iteration.tolist()
        ((3, 4, 2, 2), [9, 9, 9])
    """
    if not isinstance(kernel, Kernel) or not is_tempering_kernel(kernel):
        name = kernel.name if isinstance(kernel, Kernel) else type(kernel).__name__
        raise ValueError(
            f"kernel must be a samplers.parallel_tempering kernel (the one that produced the "
            f"state), got {name!r}."
        )
    if not isinstance(state, TemperingState):
        raise ValueError(
            f"state must be a TemperingState (Trace.final_state of a tempering run), got "
            f"{type(state).__name__}."
        )
    num_samples = check_num(num_samples, "num_samples", 1)
    walker = np.shape(state.walker)
    if len(walker) != 2:
        raise ValueError(
            "state must hold one tempering state per chain, walker of shape (chain, R); got "
            f"shape {walker} (for batched targets, resume one target at a time)."
        )
    beta = np.asarray(state.inverse_temperatures, dtype=float)
    positions = np.asarray(state.position)[:, None]  # every chain its own target
    trace = sample(
        rng_key,
        _resumed(kernel),
        positions,
        (context, state),
        1.0 / beta[0],  # checked by the kernel's validation; the states carry their own
        num_samples=num_samples,
        num_warmup=0,
        batched=True,
        context_axes=(None, 0),
        check_finite=False,
    )
    trace = Trace(
        samples=trace.samples[:, 0],
        info=jax.tree_util.tree_map(lambda x: x[:, 0], trace.info),
        final_state=jax.tree_util.tree_map(lambda x: x[:, 0], trace.final_state),
        nonfinite_step=trace.nonfinite_step[:, 0],
        num_warmup=0,
    )
    if check_finite:
        _check_finite(trace)
    return trace

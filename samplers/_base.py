"""The kernel protocol shared by every sampler, and validation used at the public boundary.

Every sampler in this package is a :class:`Kernel`: a NamedTuple of pure functions

- ``init(position, context, temperature) -> State``
- ``step(rng_key, state, context) -> (State, Info)``

over NamedTuple states that carry at least ``position`` (the configuration), ``energy`` (the
unscaled energy ``E(position, context)``) and ``temperature``. The temperature lives in the
state, as a traced array, so that one compiled kernel serves every temperature and so that
parallel tempering can hold a ladder of them (NetKet keeps inverse temperatures in its state in
the same way). The ``context`` is an arbitrary pytree of arrays that is passed unchanged to the
energy function on every call; a new context value never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Kernel", "NonFiniteEnergyError"]

EnergyFn = Callable[[jax.Array, Any], jax.Array]


class NonFiniteEnergyError(FloatingPointError):
    """A chain produced a NaN or infinite energy; the message names the chain and the step."""


class Kernel(NamedTuple):
    """A Markov kernel over states of one chain, in the package's ``init``/``step`` form.

    Attributes:
        init: ``init(position, context, temperature) -> State``. ``position`` is one chain's
            configuration (shape ``event_shape``), ``temperature`` a positive scalar (a ladder of
            shape ``(num_temperatures,)`` for parallel tempering).
        step: ``step(rng_key, state, context) -> (State, Info)``; pure and jit/vmap-friendly.
        configuration_fields: Names of the state fields that belong to the configuration and
            travel with it when parallel tempering swaps configurations between temperatures
            (``position``, ``energy`` and any cached function of the position alone).
        num_warmup: Number of initial steps during which the kernel adapts itself (step size,
            mass matrix, temperature ladder); 0 for kernels without adaptation. Samples drawn
            during these steps are not from a fixed Markov kernel and must be discarded.
        validate: ``validate(positions, context, temperature)``, run by the driver on concrete
            arrays outside traced code; raises ``ValueError`` for input the kernel cannot
            sample (for example spins that are not ±1). ``positions`` stacks the starts of all
            chains (and targets), shape ``(num, *event)``; ``context`` is one target's.
        name: Short human-readable name, used in error messages and reports.
        run_chains: Optional whole-run implementation that :func:`samplers.sample` uses
            instead of scanning ``step``: ``run_chains(num_warmup, num_samples, batched,
            context_axes)`` returns ``run(keys, position, context, temperature) -> (samples,
            info, final_state, nonfinite_step)`` (keys ``([B,] C)``, positions
            ``([B,] C, *event)``; ``context_axes`` the per-leaf batch axes when batched, else
            None), which the driver jits and caches. It must give what scanning ``step`` with
            the same per-step keys gives (NUTS: the asynchronous route of
            :mod:`samplers._nuts_async`). ``None`` (the default): the driver scans ``step``.
            Wrappers that need synchronous steps (parallel tempering, annealing) use
            ``init``/``step`` and ignore it.
        chain_collectives: Whether ``step`` reduces over the chains of a target (a
            ``lax.pmean`` over the vmap axis ``"chain"``: parallel tempering's shared ladder
            adaptation). The driver then never splits one target's chains over devices into
            separate programs, where the reduction would see only its own device's chains.
    """

    init: Callable[..., Any]
    step: Callable[..., tuple[Any, Any]]
    configuration_fields: tuple[str, ...]
    num_warmup: int
    validate: Callable[..., None]
    name: str
    run_chains: Callable[..., Callable[..., Any]] | None = None
    chain_collectives: bool = False


def is_concrete(*arrays: Any) -> bool:
    """Whether every leaf is a concrete value (not a tracer), so that it may be inspected."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(arrays))


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """Return a concrete scalar temperature, or raise ``ValueError`` naming what was wrong."""
    t = np.asarray(temperature)
    if t.shape != ():
        raise ValueError(f"{name} must be a scalar, got an array of shape {t.shape}.")
    if not np.issubdtype(t.dtype, np.number) or np.iscomplexobj(t):
        raise ValueError(f"{name} must be a real number, got {temperature!r}.")
    value = float(t)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def check_ladder(temperatures: Any, name: str = "temperatures") -> np.ndarray:
    """Validate a temperature ladder: 1-D, at least 2 rungs, finite, > 0, strictly increasing."""
    t = np.asarray(temperatures, dtype=float)
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(
            f"{name} must be a 1-D array of at least 2 temperatures, got shape {t.shape}."
        )
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {t.tolist()}.")
    if np.any(np.diff(t) <= 0):
        bad = int(np.argmax(np.diff(t) <= 0))
        raise ValueError(
            f"{name} must be strictly increasing (lowest, target temperature first), but "
            f"{name}[{bad}]={float(t[bad])!r} >= {name}[{bad + 1}]={float(t[bad + 1])!r}; "
            f"got {t.tolist()}."
        )
    return t


def check_positions(positions: Any, event_ndim: int = 1) -> np.ndarray:
    """Validate concrete start positions of shape ``(num, *event)``: real, finite, right rank."""
    x = np.asarray(positions)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"position must be a floating-point array (spins as ±1.0), got dtype {x.dtype}."
        )
    if x.ndim != 1 + event_ndim:
        raise ValueError(
            f"each chain's position must have {event_ndim} dimension(s); got positions of "
            f"shape {x.shape} for (chain, *event)."
        )
    if not np.all(np.isfinite(x)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(
            f"position must be finite; chain {idx[0]} has "
            f"position{list(idx[1:])} = {float(x[idx])!r}."
        )
    return x


def set_temperature(state: Any, temperature: Any) -> Any:
    """Move one chain's state to a new temperature (``state.with_temperature`` if defined).

    Kernels whose adaptation depends on the temperature define ``with_temperature`` on their
    state (HMC rescales its mass matrix); otherwise only the ``temperature`` field changes.
    """
    method = getattr(state, "with_temperature", None)
    if method is not None:
        return method(temperature)
    return state._replace(temperature=jnp.asarray(temperature, dtype=state.temperature.dtype))


def no_validation(positions: Any, context: Any, temperature: Any) -> None:
    """Kernel ``validate`` that only checks the generic things (finite 1-D starts, T > 0)."""
    check_positions(positions)
    check_temperature(temperature)

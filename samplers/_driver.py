"""The chain driver: many chains (and many targets) in one compiled call, sharded over devices.

:func:`sample` validates its inputs on concrete arrays, then runs one ``jax.jit``-compiled
function: ``vmap`` over targets (optional) of ``vmap`` over chains of ``init`` and one
``lax.scan`` loop over the warm-up and sampling steps, or the kernel's own ``run_chains``
where it has one (NUTS: asynchronous chains, :mod:`samplers._nuts_async`). The compiled
function is cached on ``(kernel, num_warmup, num_samples, batched)`` and the placement over
devices, and takes ``rng_key``, ``position``, ``context`` and ``temperature`` as traced
arguments, so new values of any of them reuse it. On several devices each runs the loop of its
own block of targets (or chains) inside ``jax.shard_map`` (:mod:`samplers._placement`), with
no collective between them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel, NonFiniteEnergyError
from samplers._placement import gather, per_device, shard

__all__ = ["Trace", "check_finite", "sample"]


class Trace(NamedTuple):
    """What :func:`sample` returns.

    With ``C`` chains, ``D = num_samples`` draws and event shape ``E`` (``(n,)`` for local
    kernels, ``(R, n)`` for parallel tempering over ``R`` temperatures), and a leading ``B``
    only when ``batched=True``:

    Attributes:
        samples: Positions after each sampling step, ``([B,] C, D, *E)``.
        info: The kernel's Info NamedTuple; every leaf ``([B,] C, D, ...)``.
        final_state: The kernel's state after the last step; every leaf ``([B,] C, ...)``.
        nonfinite_step: ``([B,] C)`` int: the first step at which the chain's energy was NaN or
            infinite (0 = the start, ``1..num_warmup`` warm-up steps, ``num_warmup + d + 1`` =
            draw ``d``), or −1 if it stayed finite.
        num_warmup: Number of warm-up steps that were run and discarded.
    """

    samples: jax.Array
    info: Any
    final_state: Any
    nonfinite_step: jax.Array
    num_warmup: int


def _all_finite(energy: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(energy))


def _run_chain(
    kernel: Kernel, num_warmup: int, num_samples: int, rng_key, position, context, temperature
):
    # init inside the chains' vmap: fields that init makes alike for all chains (iteration
    # counters) stay shared, so NumPyro's cond on ``iteration < num_warmup`` stays a cond
    # (per-chain counters would turn it into a select computing the warm-up adaptation at
    # every step: HMC draws of the main job measured about 5 % slower that way).
    state = kernel.init(position, context, temperature)
    first_bad = jnp.where(_all_finite(state.energy), -1, 0)
    keys = jax.random.split(rng_key, num_warmup + num_samples)
    steps = jnp.arange(1, num_warmup + num_samples + 1)

    def track(bad, state, t):
        return jnp.where((bad < 0) & ~_all_finite(state.energy), t, bad)

    # One loop over warm-up and sampling steps alike (the kernel's step adapts while its own
    # counter says so), writing each step's draw into row ``t - 1 - num_warmup`` of the trace:
    # warm-up steps write row 0, which the first sampling step overwrites. Two loops (one per
    # phase, as before 2026-12-06) compile the kernel's step twice: with one, the same draws
    # bit for bit, steady calls as fast, and 5-26 % less compilation
    # (benchmarks/driver_loops.py, results in benchmarks/results/samplers.md).
    def draw(key, state):
        state, info = kernel.step(key, state, context)
        return state, (state.position, info)

    rows = jax.tree_util.tree_map(
        lambda a: jnp.zeros((num_samples, *a.shape), a.dtype),
        jax.eval_shape(draw, keys[0], state)[1],
    )

    def step(carry, xs):
        state, bad, rows = carry
        key, t = xs
        state, out = draw(key, state)
        row = jnp.maximum(t - 1 - num_warmup, 0)
        rows = jax.tree_util.tree_map(
            lambda r, v: jax.lax.dynamic_update_index_in_dim(r, v, row, 0), rows, out
        )
        return (state, track(bad, state, t), rows), None

    (state, bad, (samples, info)), _ = jax.lax.scan(step, (state, first_bad, rows), (keys, steps))
    return samples, info, state, bad


@functools.lru_cache(maxsize=64)
def _compiled(
    kernel: Kernel, num_warmup: int, num_samples: int, batched: bool, axes, placement=None
):
    if kernel.run_chains is not None:  # the kernel's own whole run (asynchronous NUTS)
        run = kernel.run_chains(num_warmup, num_samples, batched, axes.tree() if batched else None)
    else:
        run = functools.partial(_run_chain, kernel, num_warmup, num_samples)
        run = jax.vmap(run, in_axes=(0, 0, None, None), axis_name="chain")
        if batched:
            run = jax.vmap(run, in_axes=(0, 0, axes.tree(), None))
    return jax.jit(per_device(run, kernel, placement, axes))


class ContextAxes(NamedTuple):
    """The batch axis (0 or None) of every context leaf, in a hashable form (a cache key).

    ``leaves`` holds one entry per leaf of ``jax.tree_util.tree_leaves(context)`` and
    ``treedef`` is the context's own structure, so ``None`` nodes in the context (an HMC state
    without a trajectory length, say) stay empty subtrees rather than extra leaves.
    """

    leaves: tuple[int | None, ...]
    treedef: Any

    def tree(self):
        return jax.tree_util.tree_unflatten(self.treedef, self.leaves)


def context_axes_of(context: Any, context_axes: Any) -> ContextAxes:
    """Expand ``context_axes`` (0, None, or a pytree prefix of ``context`` of them) per leaf."""

    def expand(axis, subtree):
        if axis not in (0, None) or isinstance(axis, bool):
            raise ValueError(
                f"context_axes entries must be 0 (one value per target) or None (shared by "
                f"all targets), got {axis!r}."
            )
        return [axis] * len(jax.tree_util.tree_leaves(subtree))

    try:
        full = jax.tree_util.tree_map(expand, context_axes, context, is_leaf=lambda a: a is None)
    except ValueError as error:
        if "context_axes entries" in str(error):
            raise
        raise ValueError(
            "context_axes must be 0, None, or a pytree prefix of the context with 0 or None "
            f"at its leaves; got {context_axes!r} for a context of structure "
            f"{jax.tree_util.tree_structure(context)}."
        ) from None
    # One list of axes per prefix leaf, in the context's leaf order.
    leaves = jax.tree_util.tree_leaves(full, is_leaf=lambda a: a is None)
    return ContextAxes(tuple(leaves), jax.tree_util.tree_structure(context))


def as_typed_key(rng_key: Any) -> jax.Array:
    """Accept a new-style typed key or a legacy ``uint32[2]`` key; return a typed key."""
    rng_key = jnp.asarray(rng_key) if not isinstance(rng_key, jax.Array) else rng_key
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        if rng_key.shape != ():
            raise ValueError(
                f"rng_key must be a single key, got a key array of shape {rng_key.shape}."
            )
        return rng_key
    if rng_key.shape != (2,) or rng_key.dtype != jnp.uint32:
        raise ValueError(
            "rng_key must be a key from jax.random.key(seed) (or a legacy "
            f"jax.random.PRNGKey(seed)), got an array of dtype {rng_key.dtype} and shape "
            f"{rng_key.shape}."
        )
    return jax.random.wrap_key_data(rng_key)


def check_num(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def prepare(
    kernel: Kernel,
    position: Any,
    context: Any,
    temperature: Any,
    batched: bool,
    event_ndim: int,
    num_chains: int | None = None,
    context_axes: Any = 0,
):
    """Validate the driver's inputs on concrete values; return them as arrays.

    With ``num_chains`` given, ``position`` has no chain axis and is shared by all chains.
    ``context_axes`` (batched only) marks context leaves shared by all targets (None).

    Returns:
        ``(position, batch_size, num_chains, axes)`` with ``batch_size`` None unless batched
        and ``axes`` the :class:`ContextAxes` of the context.
    """
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplers.Kernel, got {type(kernel).__name__}.")
    x = np.asarray(position)
    lead = 2 if batched else 1
    if num_chains is not None:
        num_chains = check_num(num_chains, "num_chains", 1)
        if x.ndim != lead - 1 + event_ndim:
            layout = "(batch, *event)" if batched else "event"
            raise ValueError(
                f"with num_chains given, position is one start shared by all chains, of shape "
                f"{layout} with a {event_ndim}-D event; got shape {x.shape}."
            )
        x = np.broadcast_to(
            np.expand_dims(x, lead - 1), (*x.shape[: lead - 1], num_chains, *x.shape[lead - 1 :])
        )
    layout = "(batch, chain, *event)" if batched else "(chain, *event)"
    if x.ndim != lead + event_ndim:
        raise ValueError(
            f"position must have shape {layout} with a {event_ndim}-D event for the "
            f"{kernel.name} kernel, i.e. {lead + event_ndim} dimensions; got shape {x.shape}."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"position must be floating point (spins as ±1.0), got dtype {x.dtype}.")
    if 0 in x.shape:
        raise ValueError(f"position must not have an empty axis, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        where = f"target {idx[0]}, chain {idx[1]}" if batched else f"chain {idx[0]}"
        raise ValueError(
            f"the start position must be finite; {where} has "
            f"position{list(idx)} = {float(x[idx])!r}."
        )
    batch_size = x.shape[0] if batched else None
    num_chains = x.shape[1] if batched else x.shape[0]
    context_0 = context
    axes = context_axes_of(context, context_axes if batched else None)
    if batched:
        leaves = jax.tree_util.tree_leaves(context)
        if not leaves:
            raise ValueError("batched=True needs a context with a leading batch axis; got none.")
        for leaf, axis in zip(leaves, axes.leaves, strict=True):
            shape = np.shape(leaf)
            if axis == 0 and (len(shape) == 0 or shape[0] != batch_size):
                raise ValueError(
                    f"with batched=True every context leaf needs a leading batch axis of size "
                    f"{batch_size} (position.shape[0]), unless context_axes marks it shared "
                    f"(None); got a leaf of shape {shape}."
                )
        firsts = [
            leaf if a is None else leaf[0] for leaf, a in zip(leaves, axes.leaves, strict=True)
        ]
        context_0 = jax.tree_util.tree_unflatten(axes.treedef, firsts)
    kernel.validate(x.reshape(-1, *x.shape[lead:]), context_0, temperature)
    return x, batch_size, num_chains, axes


def check_finite(trace: Trace, steps_per_draw: int = 1) -> Trace:
    """Raise if any chain produced a NaN or infinite energy; otherwise return ``trace``.

    Args:
        trace: A :class:`Trace` from :func:`sample` (or anything with ``nonfinite_step`` and
            ``num_warmup``).
        steps_per_draw: Kernel steps per recorded draw (for :func:`samplers.anneal`, the
            steps per temperature; its draws are the stages).

    Raises:
        NonFiniteEnergyError: Naming every failing chain (and target) and the first step at
            which its energy was not finite.

    Example:
        >>> import numpy as np
        >>> trace = Trace(None, None, None, np.array([-1, 3]), num_warmup=0)
        >>> check_finite(trace)
        Traceback (most recent call last):
        ...
        samplers._base.NonFiniteEnergyError: 1 of 2 chains produced a NaN or infinite energy: \
chain 1: first non-finite energy at step 3 (draw 2). Their samples are not valid; pass \
check_finite=False to inspect the trace.
    """
    bad = np.asarray(trace.nonfinite_step)
    failing = np.argwhere(bad >= 0)
    if failing.size == 0:
        return trace
    lines = []
    for idx in failing[:10]:
        step = int(bad[tuple(idx)])
        where = f"target {idx[0]}, chain {idx[1]}" if bad.ndim == 2 else f"chain {idx[0]}"
        if step == 0:
            when = "at its start (step 0)"
        elif step <= trace.num_warmup:
            when = f"at warm-up step {step} of {trace.num_warmup}"
        else:
            draw = (step - trace.num_warmup - 1) // steps_per_draw
            when = f"at step {step} (draw {draw})"
        lines.append(f"{where}: first non-finite energy {when}")
    more = f" (and {len(failing) - 10} more)" if len(failing) > 10 else ""
    raise NonFiniteEnergyError(
        f"{len(failing)} of {bad.size} chains produced a NaN or infinite energy{more}: "
        + "; ".join(lines)
        + ". Their samples are not valid; pass check_finite=False to inspect the trace."
    )


def sample(
    rng_key: jax.Array,
    kernel: Kernel,
    position: Any,
    context: Any = (),
    temperature: Any = 1.0,
    *,
    num_samples: int,
    num_warmup: int | None = None,
    batched: bool = False,
    num_chains: int | None = None,
    context_axes: Any = 0,
    check_finite: bool = True,
) -> Trace:
    """Run many chains (optionally for a batch of targets) in one compiled call.

    Every chain starts from its own row of ``position`` with its own key (split from
    ``rng_key``), runs ``num_warmup`` steps that are discarded (the kernel adapts during its own
    ``kernel.num_warmup`` of them) and then ``num_samples`` recorded steps. This function
    compiles (``jax.jit``) on first use for a given kernel, ``num_warmup``, ``num_samples``,
    ``batched`` and input shapes; later calls with new values of ``rng_key``, ``position``,
    ``context`` or ``temperature`` reuse the compiled code. With several JAX devices, targets
    (or else chains, or else parallel-tempering replicas) are sharded over all of them with a
    ``jax.sharding.Mesh`` and ``NamedSharding``; targets and chains run inside
    ``jax.shard_map``, each device its own loops without waiting for the others (replicas, and
    chains of a kernel with ``chain_collectives``, are left to XLA's partitioner). Every chain
    gets the same key whatever the device count, so results agree up to floating-point
    reassociation (which continuous samplers amplify over many steps). After
    ``jax.distributed.initialize`` the mesh spans the devices of every process, each process
    running its own devices' blocks, and the outputs are all-gathered so that every process
    returns the whole trace (on its first local device); all processes must then pass the
    same inputs (a ``ValueError`` names those whose ``rng_key`` differs).

    Layout (``C`` chains, ``D = num_samples``, event ``E``: ``(n,)`` for a local kernel,
    ``(R, n)`` for parallel tempering; a leading ``B`` only when ``batched``):

    - ``position``: ``([B,] C, *E)``; ``context``: any pytree, every leaf with a leading ``B``
      when batched (one target per example), shared by all chains;
    - ``temperature``: a scalar ``T > 0`` (the ladder ``(R,)`` for parallel tempering), shared
      by all targets and chains;
    - ``Trace.samples``: ``([B,] C, D, *E)``; ``Trace.info`` leaves ``([B,] C, D, ...)``.

    The target of every chain is ``p(s) ∝ exp(−energy_fn(s, context_b) / T)``.

    Args:
        rng_key: A key from ``jax.random.key`` (a legacy ``PRNGKey`` is accepted).
        kernel: A :class:`Kernel`, e.g. from :func:`nuts`, :func:`block_gibbs`,
            :func:`parallel_tempering`.
        position: Start positions, finite, layout above.
        context: The energy's second argument.
        temperature: Temperature (or ladder), layout above.
        num_samples: Number of recorded draws per chain, >= 1.
        num_warmup: Discarded steps, at least ``kernel.num_warmup`` (the default).
        batched: Whether ``position`` and ``context`` carry a leading batch axis of targets.
        num_chains: If given, ``position`` has no chain axis (``([B,] *E)``) and every one of
            the ``num_chains`` chains starts from it; by default the chain axis of
            ``position`` sets the number of chains. Distinct starts make R-hat more telling.
        context_axes: With ``batched``, which context leaves carry the batch axis: ``0`` (all,
            the default), ``None`` (none), or a pytree prefix of ``context`` holding 0 or None
            per subtree, e.g. ``(None, 0)`` for ``(params, x)``. Shared leaves (None) are
            passed to every target's chains as they are, so a weight matrix shared by all
            targets stays one matrix and the chains' energies batch into matrix products,
            instead of one copy of it per target.
        check_finite: Raise :class:`NonFiniteEnergyError` if any chain's energy became NaN or
            infinite (with its chain, target and step).

    Returns:
        A :class:`Trace`.

    Raises:
        ValueError: For inputs the kernel cannot sample, naming the bad value.
        NonFiniteEnergyError: See ``check_finite``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from samplers import hmc
        >>> kernel = hmc(lambda s, c: 0.5 * jnp.sum((s - c) ** 2), num_warmup=50, num_steps=5)
        >>> trace = sample(jax.random.key(0), kernel, jnp.zeros((4, 2)), jnp.ones(2), 0.3,
        ...                num_samples=100)
        >>> trace.samples.shape, trace.info.acceptance_rate.shape
        ((4, 100, 2), (4, 100))
    """
    num_samples = check_num(num_samples, "num_samples", 1)
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplers.Kernel, got {type(kernel).__name__}.")
    num_warmup = kernel.num_warmup if num_warmup is None else num_warmup
    num_warmup = check_num(num_warmup, "num_warmup", 0)
    if num_warmup < kernel.num_warmup:
        raise ValueError(
            f"num_warmup={num_warmup} is shorter than the {kernel.name} kernel's adaptation "
            f"({kernel.num_warmup} steps), so draws would come from a kernel still adapting; "
            f"use num_warmup >= {kernel.num_warmup}."
        )
    event_ndim = np.ndim(temperature) + 1
    x, batch_size, num_chains, axes = prepare(
        kernel, position, context, temperature, batched, event_ndim, num_chains, context_axes
    )
    keys = jax.random.split(
        as_typed_key(rng_key), (batch_size, num_chains) if batched else num_chains
    )
    args, placement = shard(
        dict(
            rng_key=keys,
            position=jnp.asarray(x),
            context=context,
            temperature=jnp.asarray(temperature, dtype=x.dtype),
        ),
        batched,
        batch_size,
        num_chains,
        x.shape[-2] if event_ndim == 2 else None,
        axes=axes,
    )
    run = _compiled(kernel, num_warmup, num_samples, bool(batched), axes, placement)
    samples, info, state, bad = gather(
        run(args["rng_key"], args["position"], args["context"], args["temperature"]), placement
    )
    trace = Trace(samples, info, state, bad, num_warmup)
    if check_finite:
        _check_finite(trace)
    return trace


_check_finite = check_finite

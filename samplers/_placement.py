"""Where a run of many chains goes when JAX has several devices.

:func:`shard` places a run's inputs over a 1-D mesh of all devices, split along the targets,
else the chains, else the parallel-tempering replicas; :func:`per_device` wraps the compiled
run so that each device runs the loops of its own block alone (``jax.shard_map``); :func:`gather`
brings a run that spans several JAX processes (``jax.distributed``) back whole to every
process. Used by the chain driver (:func:`samplers.sample`) and by :func:`samplers.anneal`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DEVICES", "Placement", "gather", "per_device", "shard"]

#: The name of the 1-D device mesh's axis.
DEVICES = "devices"


class Placement(NamedTuple):
    """How :func:`shard` split a run over devices: which axis (``"batch"`` of targets,
    ``"chain"`` or ``"replica"``), its position in the inputs, and the 1-D mesh."""

    kind: str
    axis: int
    mesh: Mesh


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple) -> Mesh:
    """The 1-D mesh over ``devices``, built once (every call of the driver asks for it)."""
    return Mesh(np.asarray(devices), (DEVICES,))


def per_device(run, kernel: Any, placement: Placement | None, axes):
    """``run(keys, position, context, temperature)`` of ``kernel``'s chains, with every device
    running the loops of its own block of targets (or chains) alone, through ``jax.shard_map``.

    Left to XLA's partitioner, a sharded loop synchronises the devices at every iteration
    (the trip count of a ``while_loop``, such as NUTS's, becomes a cross-device reduction).
    The blocks are independent, so no collective is needed. Replicas (tempering swaps cross
    them) and chains of a kernel with cross-chain collectives (``Kernel.chain_collectives``)
    stay with the partitioner. One device, or nothing sharded: ``run`` unchanged.
    """
    if placement is None or placement.kind == "replica":
        return run
    if placement.kind == "chain" and kernel.chain_collectives:
        return run
    split = PartitionSpec(*([None] * placement.axis), DEVICES)
    whole = PartitionSpec()
    if placement.kind == "batch":
        context = jax.tree_util.tree_unflatten(
            axes.treedef, [split if axis == 0 else whole for axis in axes.leaves]
        )
    else:
        context = whole
    return jax.shard_map(
        run,
        mesh=placement.mesh,
        in_specs=(split, split, context, whole),
        out_specs=split,
        check_vma=False,
    )


def shard(
    arrays: dict[str, Any],
    batched: bool,
    batch_size: int | None,
    num_chains: int,
    num_replicas: int | None = None,
    *,
    axes: Any,
):
    """Place the inputs over all devices with a 1-D mesh (a no-op on one device).

    All devices means those of every JAX process after ``jax.distributed.initialize``: each
    process then holds only its own devices' blocks, cut from inputs that every process must
    pass alike (the same key, start and context), so every chain gets the key it gets in one
    process, whichever process runs it.

    The first of these axes whose size is a multiple of the device count is sharded: targets
    (when batched), else chains, else parallel-tempering replicas (then the keys, which have no
    replica axis, are replicated). If none divides, everything stays on the default device.
    :func:`per_device` then runs each block on its device. ``axes`` (from :func:`prepare`)
    says which context leaves follow the targets; the others, and the whole context when
    targets are not sharded, are replicated.

    Returns:
        The placed arrays and the :class:`Placement` (None when nothing is sharded).
    """
    devices = tuple(jax.devices())
    if len(devices) == 1:
        return arrays, None
    mesh = _mesh(devices)
    lead = 1 if batched else 0
    candidates = []
    if batched:
        candidates.append(("batch", 0, batch_size))
    candidates.append(("chain", lead, num_chains))
    if num_replicas is not None:
        candidates.append(("replica", lead + 1, num_replicas))
    chosen = next((c for c in candidates if c[2] % len(devices) == 0), None)
    if chosen is None:
        return arrays, None
    kind, axis, _ = chosen

    def spec(axis):
        return NamedSharding(mesh, PartitionSpec(*([None] * axis), DEVICES))

    replicated = NamedSharding(mesh, PartitionSpec())
    put = jax.device_put
    if mesh.is_multi_process:
        put = _put_global
        _check_same_key(arrays["rng_key"])
    out = dict(arrays)
    out["position"] = put(arrays["position"], spec(axis))
    out["rng_key"] = put(arrays["rng_key"], replicated if kind == "replica" else spec(axis))
    if kind == "batch":
        # Per-target leaves follow the targets; shared ones (context_axes None) are replicated.
        leaves, treedef = jax.tree_util.tree_flatten(arrays["context"])
        placed = [
            put(leaf, spec(0) if axis == 0 else replicated)
            for leaf, axis in zip(leaves, axes.leaves, strict=True)
        ]
        out["context"] = jax.tree_util.tree_unflatten(treedef, placed)
    else:
        out["context"] = put(arrays["context"], replicated)
    out["temperature"] = put(arrays["temperature"], replicated)
    return out, Placement(kind, axis, mesh)


def _put_global(tree: Any, sharding: NamedSharding):
    """``jax.device_put`` onto a mesh spanning several processes: each process builds only the
    blocks of its own devices from its copy of the value (no transfer between processes; JAX's
    own ``device_put`` would all-gather every input to check the copies agree)."""

    def put(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def _check_same_key(keys: jax.Array) -> None:
    """Raise unless every process passed the same chain keys (else the processes' blocks would
    come from different runs and the gathered result would be no run at all)."""
    from jax.experimental import multihost_utils

    data = np.asarray(jax.random.key_data(keys))
    every = np.asarray(multihost_utils.process_allgather(data[None], tiled=True))
    differing = [p for p in range(every.shape[0]) if not np.array_equal(every[p], every[0])]
    if differing:
        raise ValueError(
            f"every JAX process must pass the same rng_key (and start, context and "
            f"temperature) to a run sharded over processes; processes {differing} passed a key "
            f"other than process 0's. Derive keys from a seed shared by all processes, not "
            f"from jax.process_index()."
        )


def gather(outputs: Any, placement: Placement | None):
    """The outputs of a run sharded over several JAX processes, whole on every process.

    Each process holds only its own devices' blocks of a run's outputs; they are all-gathered
    (a collective over the mesh: Gloo on CPUs, NCCL on GPUs) and each process keeps its full
    copy on its first local device, so statistics, checks and estimators downstream run as in
    one process and every process gets the same estimate. In one process: unchanged.
    """
    if placement is None or not placement.mesh.is_multi_process:
        return outputs
    whole = _all_gather(placement.mesh)(outputs)
    return jax.tree_util.tree_map(lambda leaf: leaf.addressable_data(0), whole)


@functools.lru_cache(maxsize=8)
def _all_gather(mesh: Mesh):
    """The identity, compiled to leave every output replicated on every device of ``mesh``
    (built once per mesh, so a run repeated with the same shapes reuses its compilation)."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))

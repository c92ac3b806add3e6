"""Where a run of many chains goes when JAX has several devices.

:func:`shard` places a run's inputs over a 1-D mesh of all devices, split along the targets,
else the chains, else the parallel-tempering replicas; :func:`per_device` wraps the compiled
run so that each device runs the loops of its own block alone (``jax.shard_map``). Used by the
chain driver (:func:`samplers.sample`) and by :func:`samplers.anneal`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DEVICES", "Placement", "per_device", "shard"]

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
    out = dict(arrays)
    out["position"] = jax.device_put(arrays["position"], spec(axis))
    out["rng_key"] = jax.device_put(
        arrays["rng_key"], replicated if kind == "replica" else spec(axis)
    )
    if kind == "batch":
        # Per-target leaves follow the targets; shared ones (context_axes None) are replicated.
        leaves, treedef = jax.tree_util.tree_flatten(arrays["context"])
        placed = [
            jax.device_put(leaf, spec(0) if axis == 0 else replicated)
            for leaf, axis in zip(leaves, axes.leaves, strict=True)
        ]
        out["context"] = jax.tree_util.tree_unflatten(treedef, placed)
    else:
        out["context"] = jax.device_put(arrays["context"], replicated)
    out["temperature"] = jax.device_put(arrays["temperature"], replicated)
    return out, Placement(kind, axis, mesh)

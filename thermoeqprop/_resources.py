"""The memory a run needs, estimated before anything is allocated, and checked against this
machine: one place for ``train``, ``sweep`` and ``quantum`` (and
:func:`thermoeqprop.training.train`).

A run that does not fit used to end inside XLA (``--num-chains 100000000`` aborted the
process), in a ``MemoryError`` traceback (a hidden layer of 10⁸ units) or in the kernel's
out-of-memory kill (10⁹ quantum examples). The estimate is a sum of named parts, each the size
of arrays the run holds at once, counted conservatively (intermediate copies included as a
stated factor) but not padded beyond that:

- **states kept**: ``batch × chains × replicas × (draws + 1) × units`` per phase of a sampled
  estimate, times :data:`STATE_COPIES` (the states and the activations that differentiating
  the energies over them keeps); a relaxation at T = 0 keeps a few states per example;
- **gradient series**: at most ``SERIES_BUDGET`` elements per series (the estimators average
  draws into windows beyond it), two series;
- **parameters**: ``parameters × PARAMETER_COPIES`` (parameters, gradient, optimiser moments,
  the update and the checkpoint's host copy);
- **data**: the data set as float64 arrays, times :data:`DATA_COPIES` (generation and split);
- **quantum matrices**: ``COPIES`` dense ``2ⁿ × 2ⁿ`` matrices per example of a batch
  (Hamiltonian, eigenvectors, a product), at 16 bytes per complex entry.

The available memory is the host's ``MemAvailable`` (``/proc/meminfo``; the physical memory
where that is missing) and, on a GPU or TPU backend, the device's free memory when it reports
it (``memory_stats``). A run needing more is refused with one line naming the total, its
largest part, what this machine has and which options shrink it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "DATA_COPIES",
    "PARAMETER_COPIES",
    "QUANTUM_COPIES",
    "STATE_COPIES",
    "ResourceError",
    "available_memory_bytes",
    "check_memory",
    "check_run_memory",
    "check_sweep_memory",
    "estimator_run_bytes",
    "classical_run_bytes",
    "format_bytes",
    "quantum_run_bytes",
]

#: Copies of the kept states alive at once (the states and the activations of the energies'
#: gradient over them).
STATE_COPIES = 2
#: Copies of the parameters alive at once (parameters, gradient, Adam's two moments, the
#: update, a host copy for the checkpoint).
PARAMETER_COPIES = 6
#: Copies of the data set made while it is generated and split.
DATA_COPIES = 4
#: Dense matrices per example of a quantum batch (as the dense paths count them).
QUANTUM_COPIES = 4


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 1024**3


def _device_available() -> int | None:
    """Free memory of the first accelerator JAX uses, or None on CPU or when not reported."""
    import jax

    if jax.default_backend() == "cpu":
        return None
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def available_memory_bytes(device: bool = False) -> int:
    """Memory available to a run in bytes: the host's ``MemAvailable``, or with ``device``
    the smaller of that and the accelerator's free memory (when JAX runs on one)."""
    have = _host_available()
    if device:
        free = _device_available()
        if free is not None:
            have = min(have, free)
    return have


def classical_run_bytes(
    *,
    state_size: int,
    num_params: int,
    batch_size: int,
    itemsize: int = 8,
    num_chains: int = 0,
    num_samples: int = 0,
    replicas: int = 0,
    phases: int = 1,
    data_elements: int = 0,
) -> dict[str, int]:
    """The parts of a classical run's memory, in bytes (module docstring).

    ``num_chains = 0`` describes a relaxation at T = 0 (four states per example and phase).

    Example:
        >>> parts = classical_run_bytes(state_size=26, num_params=1210, batch_size=64,
        ...                             num_chains=2, num_samples=50)
        >>> parts["states kept"]  # 64 × 2 × 51 × 26 × 8 bytes × 2 copies
        2715648
    """
    if num_chains:
        per_example = num_chains * max(replicas, 1) * (num_samples + 1)
    else:
        per_example = 4
    states = batch_size * per_example * state_size * itemsize * phases * STATE_COPIES
    parts = {
        "states kept": states,
        "parameters": num_params * itemsize * PARAMETER_COPIES,
        "data": data_elements * 8 * DATA_COPIES,
    }
    if num_chains:
        from thermoeqprop.estimators._statistics import SERIES_BUDGET

        draws = num_chains * (num_samples + 1)
        parts["gradient series"] = 2 * min(draws * num_params, SERIES_BUDGET) * itemsize
    return parts


def quantum_run_bytes(
    *, num_qubits: int, num_params: int, batch_size: int, num_examples: int, num_inputs: int
) -> dict[str, int]:
    """The parts of a quantum run's memory, in bytes: dense matrices for each example of a
    batch (and of an evaluation batch of up to 400), parameters, data."""
    dimension = 1 << num_qubits
    matrices = max(batch_size, min(num_examples, 400)) * QUANTUM_COPIES * dimension**2 * 16
    return {
        "dense matrices": matrices,
        "parameters": num_params * 8 * PARAMETER_COPIES,
        "data": num_examples * (num_inputs + 2) * 8 * DATA_COPIES,
    }


def check_memory(parts: Mapping[str, int], levers: str, *, device: bool = True) -> None:
    """Raise :class:`ResourceError` (a ``ValueError``) when ``sum(parts)`` exceeds the available
    memory: one line with the total, the largest part, what is available, and ``levers``
    (what to reduce, e.g. ``"--num-chains, --batch-size or --num-samples"``)."""
    need = sum(int(v) for v in parts.values())
    have = available_memory_bytes(device=device)
    if need <= have:
        return
    name, largest = max(parts.items(), key=lambda item: item[1])
    raise ResourceError(
        f"this run needs about {format_bytes(need)} of memory ({name} {format_bytes(largest)}), "
        f"this machine has {format_bytes(have)} available; reduce {levers}"
    )


#: What shrinks each kind of run, as the commands name it.
LEVERS = {
    "sampled": "--num-chains, --num-samples, --batch-size or --hidden",
    "relaxed": "--batch-size or --hidden",
    "quantum": "--qubits, --batch-size or --num-examples",
}


def estimator_run_bytes(
    estimator, batch_size: int, num_params: int, num_examples: int, num_inputs: int
) -> tuple[dict[str, int], str]:
    """The parts of a run of ``estimator`` (:func:`classical_run_bytes` or
    :func:`quantum_run_bytes`) on batches of ``batch_size`` from ``num_examples`` examples of
    ``num_inputs`` features, and the kind of run (a key of :data:`LEVERS`)."""
    model = estimator.model
    if model.family == "quantum":
        parts = quantum_run_bytes(num_qubits=model.num_units, num_params=num_params,
                                  batch_size=batch_size, num_examples=num_examples,
                                  num_inputs=num_inputs)  # fmt: skip
        return parts, "quantum"
    import jax.numpy as jnp

    sampling = getattr(estimator, "sampling", None)
    sized = {"batch_size": batch_size, "num_params": num_params,
             "state_size": model.num_units,
             "itemsize": jnp.zeros(()).dtype.itemsize,
             "data_elements": num_examples * (num_inputs + 1)}  # fmt: skip
    if sampling is None or getattr(estimator, "temperature", None) is None:
        return classical_run_bytes(**sized, phases=3), "relaxed"
    parts = classical_run_bytes(**sized, num_chains=sampling.num_chains,
                                num_samples=sampling.num_samples,
                                replicas=sampling.tempering, phases=2)  # fmt: skip
    return parts, "sampled"


def check_run_memory(estimator, batch_size: int, num_params: int, dataset) -> None:
    """Refuse a training run of ``estimator`` on ``dataset`` that would not fit in memory."""
    examples = len(dataset.labels_train) + len(dataset.labels_test)
    parts, kind = estimator_run_bytes(estimator, batch_size, num_params, examples,
                                      dataset.num_features)  # fmt: skip
    check_memory(parts, LEVERS[kind])


def check_sweep_memory(model, params, samplings, num_examples: int, replicas: int) -> None:
    """Refuse a temperature sweep (:func:`thermoeqprop.sweep.temperature_sweep`) of
    ``model`` on ``num_examples`` examples that would not fit in memory: the largest of
    ``samplings`` (one per estimator), three phases, ``replicas`` rungs with tempering."""
    import jax

    leaves = jax.tree.leaves(params)
    for sampling in samplings:
        parts = classical_run_bytes(
            state_size=model.num_units,
            num_params=sum(int(leaf.size) for leaf in leaves),
            batch_size=num_examples,
            itemsize=leaves[0].dtype.itemsize if leaves else 8,
            num_chains=sampling.num_chains,
            num_samples=sampling.num_samples,
            replicas=replicas,
            phases=3,
        )
        check_memory(parts, LEVERS["sampled"].replace("--batch-size", "--num-examples"))


class ResourceError(ValueError):
    """A run that would need more memory than the machine has (refused before allocating)."""

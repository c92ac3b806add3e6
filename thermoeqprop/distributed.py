"""Sampling sharded over several JAX processes (several hosts) with ``jax.distributed``.

Every process runs the same script. :func:`initialize`, called first in each, joins them into
one JAX runtime, after which ``jax.devices()`` lists the devices of all processes and
``samplers.sample`` (so every thermal estimator and :func:`thermoeqprop.training.train`)
shards the examples, chains or tempering replicas of a run over all of them, each process
running its own devices' blocks. The outputs are all-gathered, so every process ends with the
whole run and computes the same estimate. A chain's key is cut from the run's key by the
chain's index, whichever process runs it: two processes with one device each give the draws of
one process with two devices (bit for bit on CPUs). See ``docs/distributed.md``.

Example (two processes on one machine, each given its ``process_id``)::

    from thermoeqprop import distributed
    distributed.initialize("localhost:12345", num_processes=2, process_id=0)  # 1 in the other
    ...  # the same estimator calls, with the same keys, in both processes
"""

from __future__ import annotations

import os

import jax

__all__ = ["ENVIRONMENT", "initialize", "is_main_process"]

#: The environment variables :func:`initialize` reads for the arguments not given to it.
ENVIRONMENT = {
    "coordinator_address": "THERMOEQPROP_COORDINATOR_ADDRESS",
    "num_processes": "THERMOEQPROP_NUM_PROCESSES",
    "process_id": "THERMOEQPROP_PROCESS_ID",
}


def _from_environment(name: str, value, minimum: int | None):
    if value is not None:
        given = value
    else:
        given = os.environ.get(ENVIRONMENT[name])
        if given is None:
            return None
    if minimum is None:
        if not isinstance(given, str) or given.count(":") < 1 or not given.rsplit(":", 1)[1]:
            raise ValueError(f"coordinator_address must be 'HOST:PORT', got {given!r}.")
        return given
    if isinstance(given, str) and given.strip().isdigit():
        given = int(given)
    if isinstance(given, bool) or not isinstance(given, int) or given < minimum:
        where = f" (from {ENVIRONMENT[name]})" if value is None else ""
        raise ValueError(f"{name}{where} must be an integer >= {minimum}, got {given!r}.")
    return given


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | list[int] | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Join this process to a multi-process JAX run; call it first, before any JAX computation.

    Arguments not given are read from ``THERMOEQPROP_COORDINATOR_ADDRESS``,
    ``THERMOEQPROP_NUM_PROCESSES`` and ``THERMOEQPROP_PROCESS_ID``; whatever is still missing
    JAX detects itself where it can (Slurm's ``srun``, Open MPI's ``mpirun``, Kubernetes), so on
    Slurm a bare ``initialize()`` suffices. On CPUs the processes' collectives use Gloo.

    Args:
        coordinator_address: ``HOST:PORT`` of process 0, reachable from every process.
        num_processes: The number of processes, >= 1.
        process_id: This process's index, ``0 <= process_id < num_processes``.
        local_device_ids: The GPUs this process uses (by default all that it sees).
        initialization_timeout: Seconds to wait for all processes to join.

    Raises:
        ValueError: For an argument (or environment variable) out of range, naming it.
        RuntimeError: When JAX has already run a computation in this process.
    """
    address = _from_environment("coordinator_address", coordinator_address, None)
    count = _from_environment("num_processes", num_processes, 1)
    index = _from_environment("process_id", process_id, 0)
    if count is not None and index is not None and index >= count:
        raise ValueError(
            f"process_id must be below num_processes ({count}), got process_id={index}."
        )
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        address,
        count,
        index,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )


def is_main_process() -> bool:
    """Whether this is process 0, the one that should write results (all hold the same)."""
    return jax.process_index() == 0

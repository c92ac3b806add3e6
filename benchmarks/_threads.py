"""Thread settings for the benchmarks, applied before JAX (and NumPy's BLAS) are imported.

    import _threads
    THREAD_ENV = _threads.apply(sys.argv[1:], x64=True)
    import jax  # after

XLA sizes its CPU thread pool from the CPUs the process may run on, so with ``--threads N``
below that the process is also pinned to the first N of them (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import os


def thread_settings(argv: list[str], x64: bool) -> dict[str, str]:
    """Environment for ``--threads N`` (default: every core this process may use); ``x64``
    False sets ``THERMOEQPROP_X64=0`` (the package's float32 throughput mode)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=None)
    available = sorted(os.sched_getaffinity(0))
    threads = parser.parse_known_args(argv)[0].threads or len(available)
    threads = max(1, min(threads, len(available)))
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    eigen = "true" if threads > 1 else "false"
    xla = os.environ.get("XLA_FLAGS", "")
    return {
        "XLA_FLAGS": f"{xla} --xla_cpu_multi_thread_eigen={eigen} "
        f"intra_op_parallelism_threads={threads}".strip(),
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "BENCH_THREADS": str(threads),
        "THERMOEQPROP_X64": "1" if x64 else "0",
    }


def apply(argv: list[str], x64: bool) -> dict[str, str]:
    """:func:`thread_settings`, written into ``os.environ``; returns them for the report."""
    settings = thread_settings(argv, x64)
    os.environ.update(settings)
    return settings

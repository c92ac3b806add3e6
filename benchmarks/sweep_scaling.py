"""A temperature sweep on Dask against the same sweep in one process, on this machine's cores.

The sweep: 16 temperatures × 4 seeds of the covariance estimator on a layered spin network
(block Gibbs, enumeration reference), each estimate one Dask task (64 tasks, and 16 more that
join each temperature's into its files), written to a results folder as a user's sweep is.
Serial: ``temperature_sweep`` in this process with the package's defaults (one XLA CPU device
per core, every core's threads: today's behaviour).
Dask: ``temperature_sweep(client=...)`` on an embedded ``LocalCluster`` of ``--workers``
processes with one thread, one XLA thread and one CPU device each
(:func:`thermoeqprop.sweep._dask.worker_environment`).

Protocol: the cluster's start-up is timed; then one sweep of each kind compiles (reported
apart: each worker compiles its own programs); then ``--reps`` interleaved repetitions,
serial, Dask, serial, Dask, … (each in a fresh results folder); medians and ranges, the
speed-up per repetition (serial / Dask of the same repetition, so load that drifts between
repetitions cancels) and its median. Per-task overhead, three ways: a round trip of an empty
task (``--empty`` of them submitted at once, wall time / count), and in the sweep itself,
(workers × Dask wall time − Σ task compute time) / tasks, where a task's compute time is its
estimate's ``wall_time``: the time a worker is not computing an estimate, per task (scheduling,
transfers, joining and encoding each temperature's files, start and end of the sweep not
overlapping); and the
calling process's own CPU time per Dask sweep (what it spends recording the workers' results),
which load on the machine changes little.

    flock /tmp/thermoeqprop-bench.lock python benchmarks/sweep_scaling.py [--workers 2]
        [--reps 3] [--hidden 8] [--num-samples 2000] [--num-warmup 200] [--empty 200]
        [--threads N] [--quick] [--output FILE]

Threads: ``--threads N`` (default: all cores this process may use) sets XLA_FLAGS and
OMP/OpenBLAS/MKL threads of this (serial) process before JAX is imported; the workers get one
of each whatever it is. float64 (the package's default). The load average is recorded before
and after: on a shared machine a speed-up measured under load says little.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _threads
from _report import append_run

HEADER = (
    "# A temperature sweep on Dask (local cluster) against one process\n\n"
    "Written by `benchmarks/sweep_scaling.py` (protocol in its docstring); newest run last.\n\n"
)
TEMPERATURES = [float(t) for t in (0.3 * 1.25**k for k in range(16))]
SEEDS = [0, 1, 2, 3]


def _noop(i: int) -> int:
    return i


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=8, help="hidden spins (2 in, 2 out)")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--num-warmup", type=int, default=200)
    parser.add_argument("--empty", type=int, default=200, help="empty tasks for the round trip")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="400 draws, 1 repetition")
    parser.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "sweep_scaling.md")
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.num_samples, args.reps = 400, 1
    return args


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main(argv: list[str], thread_env: dict[str, str]) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from distributed import as_completed, get_task_stream

    from thermoeqprop.estimators import Sampling
    from thermoeqprop.models import SpinNetwork
    from thermoeqprop.sweep import temperature_sweep
    from thermoeqprop.sweep._dask import sweep_client

    args = parse(argv)
    load_before = os.getloadavg()
    net = SpinNetwork.layered((2, args.hidden, 2))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 2))
    targets = net.encode_labels(jnp.array([0, 1, 1, 0]))
    sampling = Sampling(
        num_chains=args.num_chains, num_samples=args.num_samples, num_warmup=args.num_warmup
    )
    scratch = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    count = iter(range(10**6))
    caller = []  # CPU seconds of this process during each Dask sweep

    def sweep(client):
        tic, cpu = time.perf_counter(), time.process_time()
        ds = temperature_sweep(
            net, params, x, targets, TEMPERATURES, estimators=["covariance"], seeds=SEEDS,
            sampling=sampling, client=client, results_dir=scratch / f"run{next(count)}",
        )  # fmt: skip
        if client is not None:
            caller.append(time.process_time() - cpu)
        return time.perf_counter() - tic, ds

    def joining(stream) -> float:
        """Seconds the workers spent joining units and encoding their files."""
        return sum(
            part["stop"] - part["start"]
            for record in stream.data
            if "-unit:" in str(record["key"])
            for part in record["startstops"]
            if part["action"] == "compute"
        )

    tic = time.perf_counter()
    with sweep_client(f"local:{args.workers}") as client:
        startup = time.perf_counter() - tic
        first_serial, serial_ds = sweep(None)
        first_dask, dask_ds = sweep(client)
        serial_times, dask_times, task_seconds, unit_seconds = [], [], [], []
        for _ in range(args.reps):
            seconds, _ = sweep(None)
            serial_times.append(seconds)
            with get_task_stream(client) as stream:
                seconds, ds = sweep(client)
            dask_times.append(seconds)
            unit_seconds.append(joining(stream))
            task_seconds.append(float(ds.wall_time.sum()))
        tic = time.perf_counter()
        for future in as_completed(client.map(_noop, range(args.empty), pure=False),
                                   loop=client.loop):  # fmt: skip
            future.result()
        empty = (time.perf_counter() - tic) / args.empty
    load_after = os.getloadavg()

    tasks = len(TEMPERATURES) * len(SEEDS)
    speedups = [s / d for s, d in zip(serial_times, dask_times, strict=True)]
    overheads = [
        (args.workers * d - c) / tasks for d, c in zip(dask_times, task_seconds, strict=True)
    ]
    diff = float(np.abs(serial_ds.gradient - dask_ds.gradient).max())
    lines = [
        f"## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
        + (" (--quick)" if args.quick else ""),
        "",
        "```",
        "python benchmarks/sweep_scaling.py " + shlex.join(argv),
        "```",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), Python {platform.python_version()}, "
        f"JAX {jax.__version__}; serial process: {jax.device_count()} CPU devices, "
        + ", ".join(f"{k}={v}" for k, v in thread_env.items() if k != "BENCH_THREADS"),
        "- load average (1, 5, 15 min) before: "
        + ", ".join(f"{v:.2f}" for v in load_before)
        + "; after: "
        + ", ".join(f"{v:.2f}" for v in load_after),
        f"- sweep: LayeredSpinNetwork (2, {args.hidden}, 2) ({net.state_size} spins), 4 "
        f"examples, covariance estimator, {len(TEMPERATURES)} temperatures "
        f"({TEMPERATURES[0]:g}–{TEMPERATURES[-1]:.3g}) × {len(SEEDS)} seeds = {tasks} tasks; "
        f"{args.num_chains} chains × ({args.num_warmup} warm-up + {args.num_samples} draws), "
        "block Gibbs; results folder written",
        f"- Dask: local:{args.workers} (processes, 1 thread each); cluster start-up "
        f"{startup:.2f} s",
        f"- first sweep (compilation included): serial {first_serial:.2f} s, Dask "
        f"{first_dask:.2f} s",
        "",
        "| repetition | serial (s) | Dask (s) | speed-up | Σ task compute (s) | "
        "overhead per task (s) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {s:.2f} | {d:.2f} | {s / d:.2f}× | {c:.2f} | {o:.3f} |"
            for i, (s, d, c, o) in enumerate(
                zip(serial_times, dask_times, task_seconds, overheads, strict=True)
            )
        ),
        "",
        f"- medians (range): serial {spread(serial_times)} s, Dask {spread(dask_times)} s, "
        f"speed-up {spread(speedups)}× (target ≥ 1.7× on 2 cores)",
        f"- per-task overhead: {spread(overheads)} s in the sweep "
        f"((workers × Dask wall − Σ task compute) / {tasks}); an empty task's round trip "
        f"{1e3 * empty:.2f} ms ({args.empty} submitted at once); this (calling) process's "
        f"CPU time per Dask sweep {spread(caller[1:])} s, "
        f"{1e3 * statistics.median(caller[1:]) / tasks:.1f} ms per task; the workers' time "
        f"joining units and encoding their files (parts, series) {spread(unit_seconds)} s per "
        "sweep (a serial sweep does the same in its one process)",
        f"- largest |Δ gradient| between the serial and the Dask sweep: {diff:.3g} "
        + (
            "(identical)"
            if diff == 0
            else "(the serial process shards its chains over "
            f"{jax.device_count()} devices, each worker runs them on one: XLA rounds the two "
            "programs differently; with THERMOEQPROP_CPU_DEVICES=1 they are identical)"
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    append_run(args.output, HEADER, text + "\n")


if __name__ == "__main__":
    # Only here: the workers are spawned processes that import this file as __mp_main__,
    # and must keep the one thread each that the cluster gives them.
    main(sys.argv[1:], _threads.apply(sys.argv[1:], x64=True))

"""Sweeps on Dask: one task per (estimator, seed, temperature), or per tempered run.

:func:`temperature_sweep` with ``client=`` runs here. The grid is cut into tasks, each what
:func:`thermoeqprop.sweep._grid.task_records` computes: one estimator at one seed and one
temperature, or with tempering the one run of an estimator and seed that serves the whole grid.
Each unit (a temperature, or with tempering a seed) has one more task that depends on its
tasks: it joins them into the unit's part and makes the bytes of the unit's files, exactly as
a serial sweep writes them (``parts/UNIT.nc``, ``series/UNIT_EST.nc``). The workers compute and
encode; this process, which holds the results folder's lock, only writes the bytes they send:
every finished task as it arrives (``tasks/NAME.npz``, atomic and checksummed through
:class:`~thermoeqprop.results.RunFolder`), then each unit's files (its task files are then
removed), and the joined ``sweep.nc`` once at the end, or when the sweep is interrupted (a
serial sweep rewrites it after every unit; here that would keep this process busy while the
workers wait to be read). An interrupted sweep therefore resumes, serially or on any cluster,
without redoing a finished task, and a finished folder is the same whichever way it was
computed.

A task's keys derive from (seed, estimator, temperature index) alone and the parts are joined
in grid order, so the gathered Dataset is identical, bit for bit, to a serial sweep's with the
same seeds (wall times aside) when the workers run the same JAX programs as this process: the
same precision (checked: a worker with another ``jax_enable_x64`` refuses the task) and the
same CPU device count (the embedded cluster gives each worker one device; a serial sweep in a
process with several devices shards its chains, which XLA may round differently). So the
folder of a sweep on Dask records the workers' device count, not this process's
(:func:`worker_device_count`, asked before the folder is opened; a worker with another count
refuses its task): a serial resume is refused unless it runs on as many devices, and then
gives the same bits.

A task that raises is retried (``retries``); a task whose worker dies (killed, out of memory)
is rescheduled by Dask on another worker, up to ``distributed.scheduler.allowed-failures``
times, and a finished task whose result died with its worker before its unit was joined is
recomputed. The sweep's plan (model, parameters, data) travels once, as a task of its own that
Dask recomputes if every worker holding it dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

import thermoeqprop
from thermoeqprop._files import arrays_bytes
from thermoeqprop.results import CheckpointError, RunFolder, read_arrays
from thermoeqprop.sweep._folder import unit_files
from thermoeqprop.sweep._grid import Plan, assemble_unit, task_records

__all__ = [
    "DEFAULT_RETRIES",
    "parse_cluster",
    "run_units",
    "sweep_client",
    "worker_device_count",
    "worker_environment",
]

#: How often a task that raised is retried (worker deaths: Dask's ``allowed-failures``).
DEFAULT_RETRIES = 2
TASKS = "tasks"
_LOCAL = re.compile(r"local:(\d+)")


def parse_cluster(cluster: str) -> tuple[str, Any]:
    """``("local", N)`` for ``"local:N"``, ``("address", cluster)`` for a scheduler address
    such as ``"tcp://HOST:PORT"``; ``ValueError`` naming what is valid otherwise."""
    text = str(cluster).strip()
    match = _LOCAL.fullmatch(text)
    if match and int(match.group(1)) >= 1:
        return "local", int(match.group(1))
    if re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", text) and not text.startswith("local"):
        return "address", text
    raise ValueError(
        f"cluster must be 'local:N' (N ≥ 1 worker processes on this machine) or a Dask "
        f"scheduler's address such as 'tcp://HOST:PORT', got {cluster!r}"
    )


def worker_environment() -> dict[str, str]:
    """The environment of the embedded cluster's workers: one CPU device, one XLA thread and
    one BLAS thread each (N workers on N cores, not N × N threads), and this process's
    precision."""
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"(--xla_cpu_multi_thread_eigen|intra_op_parallelism_threads)=\S+", "", flags)
    return {
        "THERMOEQPROP_CPU_DEVICES": "1",
        "XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen=false".strip(),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "THERMOEQPROP_X64": "1" if jax.config.jax_enable_x64 else "0",
    }


@contextlib.contextmanager
def sweep_client(client) -> Iterator[Any]:
    """The Dask client a sweep runs on: ``client`` itself (left open), or for ``"local:N"``
    an embedded ``LocalCluster`` of N worker processes with one thread each on 127.0.0.1, or
    for a scheduler address a client connected to it; those two are closed afterwards.

    Meanwhile dask's default scheduler is its local threads: this process writes the
    results folder's netCDF files itself, and xarray would otherwise take a *distributed*
    lock for each, keyed on the in-memory buffer it writes to, which the scheduler refuses.
    """
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(scheduler="threads"):
        if isinstance(client, Client):
            yield client
            return
        kind, value = parse_cluster(client)
        if kind == "address":
            with Client(value, set_as_default=False) as connected:
                yield connected
            return
        with (
            LocalCluster(
                n_workers=value,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",  # a free port: never a clash with another cluster
                env=worker_environment(),
            ) as cluster,
            Client(cluster, set_as_default=False) as local,
        ):
            yield local


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: estimator ``e`` at seed index ``s`` and temperature indices ``t_idx``."""

    unit: str
    e: int
    s: int
    t_idx: tuple[int, ...]
    name: str


def plan_tasks(plan: Plan, units) -> list[Task]:
    """The tasks of ``units`` ((name, temperature indices, seed indices) each), unit by unit."""
    out = []
    for unit, t_idx, s_idx in units:
        for e, spec in enumerate(plan.specs):
            slug = re.sub(r"[^A-Za-z0-9.+-]", "_", spec.label)
            for s in s_idx:
                if plan.tempering:
                    out.append(Task(unit, e, s, tuple(t_idx), f"{unit}_{slug}"))
                else:
                    out += [Task(unit, e, s, (t,), f"{unit}_seed{s:03d}_{slug}") for t in t_idx]
    return out


def _hold(plan: Plan) -> Plan:
    return plan


def _device_count() -> int:
    return jax.device_count()


def worker_device_count(client) -> int:
    """The JAX device count of every worker of ``client``'s cluster, which the sweep's folder
    records (its estimates shard their chains over those devices); ``ValueError`` if the
    workers differ or there are none."""
    counts = client.run(_device_count)
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"the Dask workers have different JAX device counts ({counts or 'no workers'}); "
            "a sweep's estimates must all shard alike: give every worker the same "
            "THERMOEQPROP_CPU_DEVICES"
        )
    return next(iter(counts.values()))


def compute_task(
    plan: Plan, e: int, s: int, t_idx, x64: bool, version: str, devices: int | None = None
) -> bytes:
    """A task, on a worker: :func:`task_records` after checking that the worker computes as
    this process would (version, precision, and ``devices``, the device count the results
    folder records), as the bytes of its file ``tasks/NAME.npz``."""
    if thermoeqprop.__version__ != version:
        raise RuntimeError(
            f"this Dask worker has thermoeqprop {thermoeqprop.__version__}, the sweep "
            f"{version}; install the same version on every worker"
        )
    if bool(jax.config.jax_enable_x64) != x64:
        raise RuntimeError(
            f"this Dask worker computes in {'float64' if not x64 else 'float32'}, the sweep "
            f"in {'float64' if x64 else 'float32'}; set THERMOEQPROP_X64 alike on the workers"
        )
    if devices is not None and jax.device_count() != devices:
        raise RuntimeError(
            f"this Dask worker has {jax.device_count()} JAX device(s), the sweep's folder "
            f"records {devices}; set THERMOEQPROP_CPU_DEVICES={devices} on every worker"
        )
    return arrays_bytes(_task_arrays(*task_records(plan, e, s, list(t_idx))))


def unit_task(plan: Plan, unit: str, t_idx, s_idx, keys, *results):
    """A unit, on a worker, from the bytes of its tasks (``keys``: their (estimator, seed
    index)): its Dataset part and the bytes of its files (:func:`unit_files`)."""
    done = {
        key: _task_result(_arrays(data), len(t_idx))
        for key, data in zip(keys, results, strict=True)
    }
    part, series = assemble_unit(plan, t_idx, s_idx, done)
    return part, unit_files(unit, plan, part, series)


def _task_arrays(records, pairs) -> dict[str, np.ndarray]:
    arrays = {
        f"record{k}.{name}": np.asarray(value)
        for k, record in enumerate(records)
        for name, value in record.items()
        if value is not None  # no per-draw series (exact expectations, shots)
    }
    return arrays | {f"pairs.{name}": np.asarray(v) for name, v in (pairs or {}).items()}


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files if name != "checksum"}


def _task_result(arrays: dict[str, np.ndarray], count: int):
    records: list[dict[str, Any]] = [{"series": None, "cost_series": None} for _ in range(count)]
    pairs: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        head, _, name = key.partition(".")
        if head == "pairs":
            pairs[name] = value
        else:
            records[int(head.removeprefix("record"))][name] = value
    return records, (pairs or None)


def _saved_task(folder: RunFolder, task: Task) -> bytes | None:
    """The bytes of a finished task's file (checksum verified), or None."""
    path = folder / TASKS / f"{task.name}.npz"
    if not path.exists():
        return None
    try:
        read_arrays(path)
    except CheckpointError:
        raise ValueError(
            f"finished task {str(path)!r} is truncated or corrupted; delete it to recompute "
            "that task"
        ) from None
    return path.read_bytes()


def run_units(
    client,
    plan: Plan,
    folder: RunFolder | None,
    units,
    advance: Callable[[int], None],
    finish: Callable[[str, Any], None],
    meanwhile: Callable[[], Any] | None = None,
    retries: int = DEFAULT_RETRIES,
    devices: int | None = None,
) -> None:
    """Run ``units`` on ``client``'s cluster: each task, then each unit's part and files, on
    the workers; here the files are written as they arrive and ``finish(unit, part)`` is
    called once each unit is saved (in the order units complete). ``meanwhile()`` runs here
    while the cluster computes (the sweep's exact references). A worker whose device count
    is not ``devices`` (the folder's) refuses its tasks."""
    from distributed import as_completed

    tasks = plan_tasks(plan, units)
    if folder is not None:
        (folder / TASKS).mkdir(exist_ok=True)
        wanted = {f"{task.name}.npz" for task in tasks}
        for path in (folder / TASKS).iterdir():  # tasks of units finished since, or cut short
            if path.name not in wanted:
                path.unlink()
    token = uuid.uuid4().hex[:8]
    held = client.submit(_hold, plan, key=f"thermoeqprop-sweep-{token}-plan", pure=False)
    futures: dict[Any, Task | str] = {}
    kept = [held]  # the saved tasks' bytes, scattered to the cluster
    for unit, t_idx, s_idx in units:
        mine = [task for task in tasks if task.unit == unit]
        inputs = []
        for task in mine:
            saved = _saved_task(folder, task) if folder is not None else None
            if saved is None:
                future = client.submit(
                    compute_task, held, task.e, task.s, task.t_idx,
                    bool(jax.config.jax_enable_x64), thermoeqprop.__version__, devices,
                    key=f"thermoeqprop-sweep-{token}-{task.name}", retries=retries, pure=False,
                )  # fmt: skip
                futures[future] = task
            else:
                advance(len(task.t_idx))
                future = client.scatter(saved, hash=False)
                kept.append(future)
            inputs.append(future)
        future = client.submit(
            unit_task, held, unit, t_idx, s_idx, [(task.e, task.s) for task in mine], *inputs,
            key=f"thermoeqprop-sweep-{token}-unit:{unit}", retries=retries, pure=False,
        )  # fmt: skip
        futures[future] = unit
    try:
        if meanwhile is not None:
            meanwhile()
        finished: set[str] = set()
        for future in as_completed(list(futures), loop=client.loop):
            result = future.result()
            what = futures.pop(future)
            future.release()
            if isinstance(what, Task):
                if folder is not None and what.unit not in finished:
                    folder.write_bytes(f"{TASKS}/{what.name}.npz", result)
                advance(len(what.t_idx))
                continue
            part, files = result
            finished.add(what)
            if folder is not None:
                for name, data in files.items():  # the part, which marks it finished, last
                    folder.write_bytes(name, data)
                for task in tasks:
                    if task.unit == what:
                        (folder / TASKS / f"{task.name}.npz").unlink(missing_ok=True)
            finish(what, part)
    finally:
        client.cancel([*futures, *kept])

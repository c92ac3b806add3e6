"""Temperature sweeps on Dask: the same Dataset as a serial sweep, a killed worker losing
nothing, task-by-task resumption, the command line's --cluster.

Everything runs on one LocalCluster on 127.0.0.1 (two worker processes of one thread each),
started and stopped by a module fixture; nothing reaches beyond localhost. No statistical
check here: the Dask sweep must equal the serial one bit for bit (wall times aside), which
tests/test_sweep.py checks against the exact references. The workers inherit this process's
settings (one CPU device, float64), so both run the same XLA programs.
"""

import json
import os
import signal
import sys

import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from distributed import WorkerPlugin, get_task_stream

import thermoeqprop
from thermoeqprop.cli import main
from thermoeqprop.estimators import Sampling
from thermoeqprop.models import SpinNetwork
from thermoeqprop.sweep import load_sweep, temperature_sweep
from thermoeqprop.sweep._dask import (
    compute_task,
    parse_cluster,
    sweep_client,
    worker_device_count,
)

SAMPLING = Sampling(num_chains=4, num_samples=200, num_warmup=100)
GRID = [0.5, 1.0, 2.0]
KWARGS = dict(estimators=["covariance", "nudged"], seeds=[0, 1], sampling=SAMPLING)

# The plugin below travels to the workers by value: they need not import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillOnce(WorkerPlugin):
    """Kills its worker process (SIGKILL: nothing of the worker's own handling runs) when a
    task whose key contains ``match`` starts executing, the first time only (marker file)."""

    def __init__(self, match: str, marker: str):
        self.match, self.marker = match, marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and self.match in str(key) and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def client():
    with sweep_client("local:2") as running:
        yield running


@pytest.fixture(scope="module")
def problem():
    net = SpinNetwork.layered((2, 3, 2))  # 5 spins, 17 parameters
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 2))
    return net, params, x, net.encode_labels(jnp.array([0, 1, 1]))


@pytest.fixture(scope="module")
def serial(problem):
    return temperature_sweep(*problem, GRID, **KWARGS)


def ran(stream, units: bool = False) -> list[str]:
    """The tasks a sweep ran (by name, its plan left out), from a task stream that may also
    hold tasks of an earlier, cancelled sweep still finishing (keys carry a sweep's token);
    ``units``: the units it assembled instead."""
    keys = [str(t["key"]).split("-", 3) for t in stream.data]
    (token,) = {key[2] for key in keys if key[3] == "plan"}
    names = [key[3] for key in keys if key[2] == token and key[3] != "plan"]
    if units:
        return sorted(name.removeprefix("unit:") for name in names if name.startswith("unit:"))
    return sorted(name for name in names if not name.startswith("unit:"))


def same(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_identical(a.drop_vars("wall_time"), b.drop_vars("wall_time"))


def test_a_worker_killed_mid_sweep_loses_nothing(client, problem, serial, tmp_path):
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce("T001_seed001_nudged", str(marker)), name="kill-once")
    try:
        folder = tmp_path / "sweep"
        result = temperature_sweep(*problem, GRID, **KWARGS, client=client, results_dir=folder)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists(), "a worker must have been killed"
    assert int(marker.read_text()) not in client.run(os.getpid).values()  # it stayed dead
    same(result, serial)
    same(load_sweep(folder), serial)
    assert sorted(p.name for p in (folder / "parts").iterdir()) == ["T000.nc", "T001.nc", "T002.nc"]
    assert list((folder / "tasks").iterdir()) == []  # complete units keep no task files
    assert len(list((folder / "series").iterdir())) == 6


class Interrupt(Exception):
    pass


def interrupted_sweep(client, problem, folder):
    """``folder`` after a sweep on ``client`` stopped once its first unit was saved."""

    def stop(unit, part):
        raise Interrupt(unit)

    with pytest.raises(Interrupt):
        temperature_sweep(*problem, GRID, **KWARGS, client=client, results_dir=folder,
                          callback=stop)  # fmt: skip
    return folder


def test_an_interrupted_sweep_resumes_without_redoing_finished_tasks(client, problem, serial,
                                                                       tmp_path):  # fmt: skip
    folder = interrupted_sweep(client, problem, tmp_path / "sweep")
    parts = {p.stem for p in (folder / "parts").iterdir()}
    tasks = {p.stem for p in (folder / "tasks").iterdir()}
    assert len(parts) == 1 and all(not name.startswith(tuple(parts)) for name in tasks)
    # On a cluster sweep.nc is written at the end, or as here when the sweep is stopped.
    assert load_sweep(folder).sizes["temperature"] == 1
    with get_task_stream(client) as stream:
        resumed = temperature_sweep(*problem, GRID, **KWARGS, client=client, results_dir=folder)
    every = {f"T{t:03d}_seed{s:03d}_{e}" for t in range(3) for s in range(2)
             for e in ("covariance", "nudged_0.1")}  # fmt: skip
    unfinished = {name for name in every if name[:4] not in parts}
    # Neither finished units nor finished tasks run again.
    assert ran(stream) == sorted(unfinished - tasks)
    assert ran(stream, units=True) == sorted({name[:4] for name in unfinished})
    same(resumed, serial)
    same(load_sweep(folder), serial)


def test_a_tempered_sweep_is_one_task_per_run(client, problem):
    kwargs = KWARGS | {"seeds": [2], "tempering": True}
    serial = temperature_sweep(*problem, GRID, **kwargs)
    with get_task_stream(client) as stream:
        distributed = temperature_sweep(*problem, GRID, **kwargs, client=client)
    assert ran(stream) == ["seed000_covariance", "seed000_nudged_0.1"]
    same(distributed, serial)
    assert np.all(np.isfinite(distributed.global_barrier.values))


def test_the_command_line_runs_on_a_local_cluster(tmp_path, capsys):
    args = ["sweep", "--model", "spin", "--hidden", "3", "--dataset", "random",
            "--num-examples", "3", "--seeds", "0", "--num-chains", "2", "--num-samples", "100",
            "--num-warmup", "50", "--temperatures", "0.5", "1.0", "--no-progress"]  # fmt: skip
    here, there = tmp_path / "here", tmp_path / "there"
    assert main([*args, "--results-dir", str(here)]) == 0
    assert main([*args, "--results-dir", str(there), "--cluster", "local:1"]) == 0
    a, b = load_sweep(here), load_sweep(there)
    # Where a sweep runs is not part of its identity (options.PRESENTATION): not recorded.
    assert "cluster" not in json.loads(b.attrs.pop("config"))["command_line"]
    assert "cluster" not in json.loads(a.attrs.pop("config"))["command_line"]
    same(a, b)
    assert "z_rms" in capsys.readouterr().out


@pytest.mark.parametrize("cluster", ["local:0", "local", "2", "localhost:8786", "local:two"])
def test_a_bad_cluster_is_named(problem, cluster, tmp_path):
    with pytest.raises(ValueError, match="cluster must be 'local:N'"):
        temperature_sweep(*problem, GRID, **KWARGS, client=cluster, results_dir=tmp_path)
    assert not (tmp_path / "config.json").exists()  # refused before the folder is touched
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")


def test_a_worker_unlike_this_process_refuses_its_task(problem):
    # A worker with another thermoeqprop, or another precision, would return other numbers.
    with pytest.raises(RuntimeError, match="thermoeqprop 0.1.0, the sweep 9.9"):
        compute_task(None, 0, 0, (0,), True, "9.9")
    with pytest.raises(RuntimeError, match="computes in float64, the sweep in float32"):
        compute_task(None, 0, 0, (0,), False, thermoeqprop.__version__)
    # … and so would one that shards its chains over another number of devices.
    with pytest.raises(RuntimeError, match=r"has 1 JAX device\(s\), the sweep's folder records 2"):
        compute_task(None, 0, 0, (0,), True, thermoeqprop.__version__, 2)


def test_the_folder_records_the_workers_device_count(client, problem, tmp_path):
    """A Dask sweep's estimates shard over the workers' devices: its folder records their
    count, and a resume that would compute on another count is refused, naming both."""
    assert worker_device_count(client) == 1  # the embedded cluster: one device per worker
    folder = interrupted_sweep(client, problem, tmp_path / "sweep")
    config = json.loads((folder / "config.json").read_text())
    assert config["environment"]["device_count"] == 1
    config["environment"]["device_count"] = 2  # as if written by workers with 2 devices each
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"written on 2 cpu device\(s\) and this run computes "
                       r"on 1 cpu device\(s\).*THERMOEQPROP_CPU_DEVICES=2"):  # fmt: skip
        temperature_sweep(*problem, GRID, **KWARGS, client=client, results_dir=folder)

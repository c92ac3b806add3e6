"""Sampling sharded over two JAX processes (``thermoeqprop.distributed``) on localhost.

Two worker processes join one JAX runtime through ``THERMOEQPROP_*`` environment variables
and a free local port (CPU collectives over Gloo), one CPU device each; a third process runs
the same calls alone on two CPU devices. The test starts the three, waits with a timeout, and
kills what it started if anything fails. Each worker runs WORKER: a thermal estimate of a
9-spin layered network with Metropolis chains, sharded by example, and parallel tempering of a
7-spin Ising model with one chain, sharded by replica (its swaps cross the processes), each
recorded with how it was placed; then a run whose processes pass different keys, which must
fail on both.

Checks: both processes hold the same (whole) results; they are those of one process with two
devices, bit for bit (a chain's key depends on its index, not on which process runs it); the
estimate agrees with enumeration within 4 MCSE per component (26 components,
about 6.3e-5 each to fail by chance under a normal approximation), its RMS z lies within the
bounds of tests/pooled_z.py (at most 7e-4 per side), and the magnetisations agree with
enumeration within 5 MCSE at every temperature (28 checks, 5.7e-7 each): a false-failure
budget below 4e-3. (The RMS z bounds were (0.3, 2.0), argued as if the 26 components were
independent; their errors hold 3.4 effective components (``samplers.effective_components``),
and at that an honest RMS z falls outside those bounds with probability 2.9 %.)
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pooled_z
import pytest
from xla_test_flags import with_flags

import samplers

ROOT = Path(__file__).resolve().parents[1]
SAMPLER_TESTS = ROOT / "tests" / "samplers"
sys.path.insert(0, str(SAMPLER_TESTS))  # the Ising model of the samplers' tests
from samplers_testing import assert_within_mcse, ising_energy, random_ising  # noqa: E402

LADDER = (1.0, 1.4, 2.0, 2.8)
TIMEOUT = 400  # seconds, against a hang: on a loaded 2-core machine the three take minutes

WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path[:0] = [{tests!r}, {tests_root!r}]
    from thermoeqprop import distributed
    if os.environ.get("THERMOEQPROP_NUM_PROCESSES"):
        distributed.initialize()
    import jax, jax.numpy as jnp, numpy as np
    import samplers, samplers._driver as driver
    from samplers_testing import ising_energy, random_ising
    from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact
    from thermoeqprop.models import SpinNetwork

    placed = []
    gather = driver.gather
    def recording(outputs, placement):
        placed.append([placement.kind, placement.mesh.is_multi_process])
        return gather(outputs, placement)
    driver.gather = recording

    net = SpinNetwork.layered((3, 4, 2), init_gain=0.8)
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1, 0]))
    sampling = Sampling(method="metropolis", num_chains=4, num_samples=500, num_warmup=100)
    estimate, series = ThermalCovariance(net, 1.0, sampling).estimate_with_series(
        params, x, targets, jax.random.key(20))
    exact = ThermalExact(net, 1.0)(params, x, targets)
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])

    couplings, fields = random_ising(7, seed=0)
    pt = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    ladder = jnp.array({ladder!r})
    spins = samplers.sample(jax.random.key(42), pt, jnp.ones((4, 4, 7)), (couplings, fields),
                            ladder, num_samples=600)
    single = samplers.sample(jax.random.key(43), pt, jnp.ones((1, 4, 7)), (couplings, fields),
                             ladder, num_samples=40)
    refused = None
    if jax.process_count() > 1:
        try:
            samplers.sample(jax.random.key(jax.process_index()), pt, jnp.ones((1, 4, 7)),
                            (couplings, fields), ladder, num_samples=5)
        except ValueError as error:
            refused = str(error)
    np.savez({path!r} + f"-{{jax.process_index()}}.npz", grad=flat(estimate.grad),
             stderr=flat(estimate.stderr), exact=flat(exact.grad),
             dof=samplers.effective_components(series.gradient),
             spins=np.asarray(spins.samples), single=np.asarray(single.samples))
    print(json.dumps(dict(devices=jax.device_count(), local=jax.local_device_count(),
                          processes=jax.process_count(), placed=placed, refused=refused)))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(path: Path, **env) -> subprocess.Popen:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES") and not k.startswith("THERMOEQPROP_")
    }
    clean.update(env, JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1", XLA_FLAGS=with_flags(""))
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    script = WORKER.format(tests=str(SAMPLER_TESTS), tests_root=str(SAMPLER_TESTS.parent),
                           ladder=LADDER, path=str(path))  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen]) -> list[dict]:
    """Wait for every process (killing all that still run on a failure); their JSON lines."""
    reports = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return reports


@pytest.mark.skipif(
    "jax_cpu_collectives_implementation" not in jax.config.values,
    reason="this jaxlib has no CPU collectives for several processes",
)
def test_two_processes_sample_as_one_process_with_two_devices(tmp_path):
    port = free_port()
    pair = [
        start(
            tmp_path / "pair",
            THERMOEQPROP_CPU_DEVICES="1",
            THERMOEQPROP_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            THERMOEQPROP_NUM_PROCESSES="2",
            THERMOEQPROP_PROCESS_ID=str(index),
        )
        for index in range(2)
    ]
    alone = start(tmp_path / "alone", THERMOEQPROP_CPU_DEVICES="2")
    first, second, single = finish([*pair, alone])

    # Examples (shard_map), then replicas (XLA's partitioner: the swaps are collectives between
    # the processes) sharded over both processes' devices, then gathered.
    placed = [["batch", True], ["chain", True], ["replica", True]]
    for report in first, second:
        assert report | dict(refused=None) == dict(
            devices=2, local=1, processes=2, placed=placed, refused=None
        )
        assert "processes [1] passed a key other than process 0's" in report["refused"]
    assert single == dict(
        devices=2, local=2, processes=1, placed=[[k, False] for k, _ in placed], refused=None
    )
    runs = [np.load(tmp_path / name) for name in ("pair-0.npz", "pair-1.npz", "alone-0.npz")]
    for name in ("grad", "stderr", "spins", "single"):
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
        np.testing.assert_array_equal(runs[0][name], runs[2][name], err_msg=name)

    run = runs[0]
    z = (run["grad"] - run["exact"]) / run["stderr"]
    assert z.size == 26 and np.max(np.abs(z)) < 4.0, z
    # Honest standard errors: the RMS z within the bounds of its law, whose degrees of freedom
    # the components' correlation sets (tests/pooled_z.py; 3.4 here, not 26).
    low, high = pooled_z.rms_bounds([z.size], [float(run["dof"])], tail=1e-4)
    assert low < float(np.sqrt(np.mean(z**2))) < high, (low, z, high)
    couplings, fields = random_ising(7, seed=0)
    for k, temperature in enumerate(LADDER):
        exact = samplers.enumerate_spins(ising_energy, 7, (couplings, fields), temperature).mean
        what = f"PT over 2 processes, T={temperature}"
        assert_within_mcse(run["spins"][:, :, k], exact, 5.0, what)


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (dict(num_processes=0), {}, "num_processes must be an integer >= 1, got 0"),
        (dict(process_id=-1), {}, "process_id must be an integer >= 0, got -1"),
        (
            {},
            {"THERMOEQPROP_NUM_PROCESSES": "two"},
            "num_processes (from THERMOEQPROP_NUM_PROCESSES) must be an integer >= 1, got 'two'",
        ),
        (
            dict(num_processes=2, process_id=2),
            {},
            "process_id must be below num_processes (2), got process_id=2",
        ),
        (dict(coordinator_address="localhost"), {}, "must be 'HOST:PORT', got 'localhost'"),
    ],
)
def test_initialize_names_a_bad_argument(monkeypatch, arguments, environment, message):
    from thermoeqprop import distributed

    for name in distributed.ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        distributed.initialize(**arguments)
    assert jax.process_count() == 1

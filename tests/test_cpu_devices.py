"""The CPU split into one XLA device per core at import (thermoeqprop/__init__.py), in subprocesses.

The suite itself runs with ``THERMOEQPROP_CPU_DEVICES=1`` (tests/conftest.py: pytest-xdist
already puts a worker on every core), so the default is checked here in fresh processes: the
device count it picks, the variable that sets it and its error, and a thermal estimate whose
chains are sharded over 2 devices, against the Gaussian closed form of the quadratic network
(tests/README.md) within 4 MCSE per component (26 components, about 6.3e-5 each to fail by
chance under a normal approximation) and with an RMS z-score within the bounds of
tests/pooled_z.py (at most 7e-4 per side), and an importance estimate whose rows are all drawn
again by chains sharded likewise (``pareto_fallback``) within 4.5 MCSE per component (26 × 6.8e-6):
a false-failure budget below 4e-3.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pooled_z
from xla_test_flags import with_flags

#: The false-failure budget per run of this module, as stated above (26 components at 4 MCSE,
#: and the RMS z); tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 4e-3

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("THERMOEQPROP_CPU_DEVICES", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES")
    }
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    clean["XLA_FLAGS"] = with_flags("")  # the suite's compile flags, no device count
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_import_gives_one_cpu_device_per_core_up_to_four():
    cores = len(os.sched_getaffinity(0))
    count = "import jax, thermoeqprop; print(jax.device_count())"
    assert run(count).stdout.split() == [str(min(cores, 4))]
    assert run(count, THERMOEQPROP_CPU_DEVICES="3").stdout.split() == ["3"]
    assert run(count, THERMOEQPROP_CPU_DEVICES="1").stdout.split() == ["1"]
    # A count the user gave JAX itself wins, and a backend already started is left alone.
    assert run(count, JAX_NUM_CPU_DEVICES="2", THERMOEQPROP_CPU_DEVICES="3").stdout.split() == ["2"]
    started = "import jax; jax.numpy.ones(1); import thermoeqprop; print(jax.device_count())"
    assert run(started, THERMOEQPROP_CPU_DEVICES="3").stdout.split() == ["1"]
    bad = run(count, THERMOEQPROP_CPU_DEVICES="two")
    assert bad.returncode != 0
    assert "THERMOEQPROP_CPU_DEVICES must be 'auto' or an integer >= 1, got 'two'" in bad.stderr


SHARDED_ESTIMATE = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact, draw_states
    from thermoeqprop.models import QuadraticNetwork
    import samplers

    assert jax.device_count() == 2, jax.devices()
    net = QuadraticNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1, 0]))
    sampling = Sampling(method="hmc", num_chains=4, num_samples=1000, num_warmup=300)
    drawn = draw_states(net, sampling, params, x, targets, 0.0, 1.0, jax.random.key(3),
                        nudged=False)
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
    estimate, series = ThermalCovariance(net, 1.0, sampling).estimate_with_series(
        params, x, targets, jax.random.key(20))
    exact = ThermalExact(net, 1.0)(params, x, targets)
    # Importance sampling with every row drawn again by HMC (pareto_fallback below every k̂):
    # five rows padded to eight, the chains sharded over the devices, joined with the
    # importance draws on the device the inputs are committed to (as training puts them).
    fallback = Sampling(method="importance", num_chains=4, num_samples=500, num_warmup=100,
                        pareto_fallback=-10.0)
    x5, targets5 = jnp.concatenate([x, x[:1]]), jnp.concatenate([targets, targets[:1]])
    committed = jax.device_put((params, x5, targets5), jax.devices()[0])
    redrawn = ThermalCovariance(net, 1.0, fallback)(*committed, jax.random.key(21))
    exact5 = ThermalExact(net, 1.0)(params, x5, targets5)
    print(json.dumps(dict(
        redrawn_share=float(redrawn.diagnostics["redrawn_share"]),
        z_redrawn=((flat(redrawn.grad) - flat(exact5.grad)) / flat(redrawn.stderr)).tolist(),
        dof=samplers.effective_components(series.gradient),
        trace_devices=len(drawn.trace.samples.sharding.device_set),
        state_devices=len(drawn.states.sharding.device_set),
        z=((flat(estimate.grad) - flat(exact.grad)) / flat(estimate.stderr)).tolist(),
    )))
"""


def test_thermal_estimate_sharded_over_two_devices_matches_the_closed_form():
    result = run(SHARDED_ESTIMATE, THERMOEQPROP_CPU_DEVICES="2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # The sampler ran on both devices; the statistics on the gathered states, on one.
    assert out["trace_devices"] == 2 and out["state_devices"] == 1
    z = np.asarray(out["z"])
    assert z.size == 26 and np.max(np.abs(z)) < 4.0, z
    # Honest standard errors: neither inflated (z all near 0) nor too small, within the bounds
    # of the RMS z's law, which the components' correlation sets (tests/pooled_z.py).
    low, high = pooled_z.rms_bounds([z.size], [out["dof"]], tail=1e-4)
    assert low < float(np.sqrt(np.mean(z**2))) < high, (low, z, high, out["dof"])
    # Every row's importance draws replaced by collapsed HMC chains drawn over both devices.
    assert out["redrawn_share"] == 1.0
    z = np.asarray(out["z_redrawn"])
    assert z.size == 26 and np.max(np.abs(z)) < 4.5, z

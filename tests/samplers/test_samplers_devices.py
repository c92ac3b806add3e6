"""Sharding over several devices: 4 fake CPU devices in a subprocess against one device here.

The subprocess runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``: NUTS on a
batch of 4 Gaussian targets with 2 chains each (sharded by target, i.e. by example; the same
run as the session fixture ``nuts_gaussian``), parallel tempering over Metropolis with 4
chains (sharded by chain) and with 1 chain of 4 replicas (sharded by replica). It checks that
the outputs live on all 4 devices and writes the draws to a file; this process reruns the same
calls on its single device.

Agreement in distribution: for every Gaussian mean, |mean_4 − mean_1| < 5 sqrt(MCSE_4² +
MCSE_1²), and both agree with the exact mean A⁻¹b within 5 MCSE (36 checks); the spin
magnetisations of the 4-device tempering run agree with enumeration at every temperature
within 5 MCSE (28 checks). False-failure budget: 64 checks at about 5.7e-7 each under a
normal approximation, below 1e-4 in all.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from samplers_testing import (
    assert_within_mcse,
    ising_energy,
    random_ising,
)
from xla_test_flags import with_flags

import samplers

#: The false-failure budget per run of this module, as stated above (64 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 1e-4

ROOT = Path(__file__).resolve().parents[2]
K = 5.0
LADDER = (1.0, 1.4, 2.0, 2.8)


def run_tempering():
    """The parallel-tempering runs compared across device counts (also run by the subprocess)."""
    couplings, fields = random_ising(7, seed=0)
    pt = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    ladder = jnp.array(LADDER)
    spins = samplers.sample(
        jax.random.key(42), pt, jnp.ones((4, 4, 7)), (couplings, fields), ladder, num_samples=600
    )
    single = samplers.sample(
        jax.random.key(43), pt, jnp.ones((1, 4, 7)), (couplings, fields), ladder, num_samples=50
    )
    # Ladder adaptation averages the swap rates of a target's chains (a pmean over "chain"):
    # its chains stay in one program when sharded, so all of them end on one shared ladder.
    adaptive = samplers.parallel_tempering(
        samplers.metropolis(ising_energy), adapt_ladder=True, num_warmup=100
    )
    adapted = samplers.sample(
        jax.random.key(44),
        adaptive,
        jnp.ones((4, 4, 7)),
        (couplings, fields),
        ladder,
        num_samples=20,
    )
    return dict(spins=spins, single=single, adapted=adapted)


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path[:0] = [{root!r}, {tests!r}, {shared!r}]
    import numpy as np
    from samplers_testing import batched_gaussian_nuts
    from test_samplers_devices import run_tempering

    assert jax.device_count() == 4, jax.devices()
    out = run_tempering()
    out["gauss"] = batched_gaussian_nuts()[0]
    # Targets, chains and replicas respectively are split over the 4 devices.
    expected = dict(
        gauss=(1, 2, 1000, 3), spins=(1, 600, 4, 7), single=(1, 50, 1, 7), adapted=(1, 20, 4, 7)
    )
    for name, shard_shape in expected.items():
        samples = out[name].samples
        assert len(samples.sharding.device_set) == 4, (name, samples.sharding)
        assert samples.sharding.shard_shape(samples.shape) == shard_shape, (name, samples.sharding)
    np.savez(
        {path!r},
        gauss=np.asarray(out["gauss"].samples),
        spins=np.asarray(out["spins"].samples),
        single=np.asarray(out["single"].samples),
        ladders=np.asarray(out["adapted"].final_state.inverse_temperatures),
    )
    print("sharded over", jax.device_count(), "devices")
    """
)


def test_four_devices_agree_in_distribution_with_one(tmp_path, nuts_gaussian):
    path = tmp_path / "four_devices.npz"
    env = dict(os.environ, XLA_FLAGS=with_flags("--xla_force_host_platform_device_count=4"))
    env["JAX_PLATFORMS"] = "cpu"
    here = Path(__file__).parent  # its helpers, and tests/ for the seed_offset they import
    script = SCRIPT.format(root=str(ROOT), tests=str(here), shared=str(here.parent),
                           path=str(path))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded over 4 devices" in result.stdout
    four = np.load(path)

    assert jax.device_count() == 1
    one, a, b = nuts_gaussian
    for target in range(4):
        exact = np.linalg.solve(a[target], b[target])
        draws_1, draws_4 = np.asarray(one.samples[target]), four["gauss"][target]
        assert_within_mcse(draws_1, exact, K, f"NUTS target {target} on 1 device")
        assert_within_mcse(draws_4, exact, K, f"NUTS target {target} on 4 devices")
        mcse = np.hypot(samplers.mcse_mean(draws_1), samplers.mcse_mean(draws_4))
        assert np.all(np.abs(draws_1.mean(axis=(0, 1)) - draws_4.mean(axis=(0, 1))) < K * mcse)
    # The tempering runs (chains and replicas sharded) against enumeration; on one device the
    # same kernels are checked in test_samplers_tempering.py.
    couplings, fields = random_ising(7, seed=0)
    for k, temperature in enumerate(LADDER):
        exact = samplers.enumerate_spins(ising_energy, 7, (couplings, fields), temperature).mean
        assert_within_mcse(four["spins"][:, :, k], exact, K, f"PT on 4 devices, T={temperature}")
    assert four["single"].shape == (1, 50, 4, 7)
    ladders = four["ladders"]  # (chain, R): one adapted ladder, the same for every chain
    assert ladders.shape == (4, 4) and not np.allclose(ladders[0], 1 / np.asarray(LADDER))
    np.testing.assert_array_equal(ladders, np.broadcast_to(ladders[0], ladders.shape))
    assert set(np.unique(four["single"])) <= {-1.0, 1.0}

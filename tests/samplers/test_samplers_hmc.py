"""HMC and NUTS (NumPyro's kernels) against the Gaussian closed form.

Reference: E(s) = ½ sᵀ A s − bᵀ s on R³ (README.md), exact mean A⁻¹b and covariance T A⁻¹.
Statistics: the 3 means and the 6 distinct covariance entries, estimated from the draws of
(s_i − μ_i)(s_j − μ_j) with the exact μ, per target.

False-failure budget: every check is |estimate − exact| < 5 MCSE (ArviZ bulk ESS). There are
45 such checks in this module; under a normal approximation each fails by chance with
probability 5.7e-7, so the module's budget is below 1e-4 even allowing for the few percent
uncertainty of the estimated MCSE. Each test also shows it can fail: the same draws are
compared with the answer at a 25% higher temperature and must be rejected. The
recompilation test is deterministic (it counts JAX's backend_compile events).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import GAUSSIAN_A, GAUSSIAN_B, assert_within_mcse, gaussian_energy

import samplers

K = 5.0
TEMPERATURE = 0.5


def gaussian_statistics(samples, mean):
    centred = np.asarray(samples) - mean
    i, j = np.triu_indices(mean.shape[0])
    return np.concatenate([np.asarray(samples), centred[..., i] * centred[..., j]], axis=-1)


def exact_statistics(a, b, temperature):
    ref = samplers.gaussian_reference(a, b, temperature)
    i, j = np.triu_indices(a.shape[0])
    return np.asarray(ref.mean), np.concatenate(
        [np.asarray(ref.mean), np.asarray(ref.covariance)[i, j]]
    )


def check_moments(samples, a, b, what):
    mean, exact = exact_statistics(a, b, TEMPERATURE)
    stats = gaussian_statistics(samples, mean)
    assert_within_mcse(stats, exact, K, what)
    # Power: the covariance at 1.25 T must be rejected by the same test.
    _, wrong = exact_statistics(a, b, 1.25 * TEMPERATURE)
    with pytest.raises(AssertionError):
        assert_within_mcse(stats, wrong, K, what)


def test_nuts_gaussian_moments_batch_of_targets_in_one_call(nuts_gaussian):
    # Four targets (different A and b: one per "example"), 2 chains each, one compiled call
    # (samplers_testing.batched_gaussian_nuts).
    trace, a, b = nuts_gaussian
    assert trace.samples.shape == (4, 2, 1000, 3)
    assert trace.info.acceptance_rate.shape == (4, 2, 1000)
    assert not np.any(trace.info.is_divergent)
    # Adaptation happened: the adapted step size differs from NumPyro's initial 1.0 and is
    # frozen after warm-up.
    step_size = np.asarray(trace.info.step_size)
    assert np.all(step_size == step_size[..., :1])
    assert not np.allclose(step_size, 1.0)
    for target in range(4):
        check_moments(trace.samples[target], a[target], b[target], f"NUTS target {target}")


def test_hmc_gaussian_moments():
    kernel = samplers.hmc(gaussian_energy, num_warmup=300, trajectory_length=2.0)
    start = jnp.zeros((4, 3)) + jnp.array([-2.0, -1.0, 1.0, 2.0])[:, None]
    trace = samplers.sample(
        jax.random.key(12),
        kernel,
        start,
        (GAUSSIAN_A, GAUSSIAN_B),
        TEMPERATURE,
        num_samples=1000,
    )
    assert trace.samples.shape == (4, 1000, 3)
    mean_accept = float(np.mean(trace.info.acceptance_rate))
    assert 0.6 < mean_accept < 0.98, mean_accept
    check_moments(trace.samples, GAUSSIAN_A, GAUSSIAN_B, "HMC")


COMPILES = {"active": False, "events": []}
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: (
        COMPILES["events"].append(name)
        if COMPILES["active"] and "backend_compile" in name
        else None
    )
)


def test_nuts_new_temperature_and_data_reuse_the_compiled_call(nuts_gaussian):
    # The session's NUTS run compiled the driver; a new temperature, new targets (context
    # values), new starts and a new key must run without any XLA compilation.
    trace, a, b = nuts_gaussian
    key, start = jax.random.key(99), jnp.ones((4, 2, 3))  # made before counting
    COMPILES["events"].clear()
    COMPILES["active"] = True
    try:
        again = samplers.sample(
            key,
            samplers.nuts(gaussian_energy, num_warmup=300),
            start,
            (2.0 * a, -b),
            1.7,
            num_samples=1000,
            batched=True,
        )
        jax.block_until_ready(again.samples)
    finally:
        COMPILES["active"] = False
    assert COMPILES["events"] == []
    # ...and the new values were used: the means moved to (2A)⁻¹(−b).
    np.testing.assert_allclose(
        np.asarray(again.samples[0]).mean(axis=(0, 1)),
        np.linalg.solve(2.0 * a[0], -b[0]),
        atol=0.2,
    )

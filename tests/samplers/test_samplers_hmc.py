"""HMC and NUTS (NumPyro's kernels) against the Gaussian closed form, and HMC's step-size jitter.

Reference: E(s) = ½ sᵀ A s − bᵀ s (README.md), exact mean A⁻¹b and covariance T A⁻¹: on R³
with the README's A and b; on R¹⁰ with A = diag(1, …, 30) (ten evenly spaced precisions) and
b = 0; on R¹ with A = 1, b = 0. Statistics: the means and the distinct covariance entries,
estimated from the draws of (s_i − μ_i)(s_j − μ_j) with the exact μ, per target.

False-failure budget: every moment check is |estimate − exact| < 5 MCSE (ArviZ bulk ESS).
There are 112 such checks in this module (45 on R³, 65 on R¹⁰, 2 on R¹); under a normal
approximation each fails by chance with probability 5.7e-7, so the module's budget is below
1e-4 even allowing for the few percent uncertainty of the estimated MCSE. Each test also shows
it can fail: the same draws are compared with the answer at a 25% higher temperature and must
be rejected. The resonance test also bounds ESS and R-hat on either side: over 20 other seeds
of the same run the un-jittered kernel's smallest ESS per draw was 0.004–0.026 and its largest
R-hat 1.056–1.38, the jittered kernel's 0.23–0.30 and 1.008–1.015, against the bounds 0.05,
1.03 and 0.15, 1.03. The recompilation, closed-orbit and warm-up tests are deterministic (up
to rounding).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_counting import COMPILES
from samplers_testing import (
    GAUSSIAN_A,
    GAUSSIAN_B,
    assert_within_mcse,
    batched_gaussian_nuts,
    gaussian_energy,
)

import samplers

#: The false-failure budget per run of this module, as stated above (112 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 1e-4

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
    # Power: the covariance at 1.5 T must be rejected by the same test. (At 1.25 T, 2 chains
    # of 1,000 NUTS draws left one target's wrong covariance within 5 MCSE at 3 of 20 fresh
    # seed sets of tests/false_failure_budget.py.)
    _, wrong = exact_statistics(a, b, 1.5 * TEMPERATURE)
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


# Compilations and cache requests during a counted call: tests/compile_counting.py.


def test_nuts_new_temperature_and_data_reuse_the_compiled_call(nuts_gaussian):
    # Once the session's NUTS run has compiled the driver, a new temperature, new targets
    # (context values), new starts and a new key must run without any XLA compilation. That run
    # may have been made in another module, and a module that ends above 3 GiB makes its worker
    # forget its compiled programs (tests/conftest.py), which failed this test in a full run: so
    # the run is made again here first (from memory, or compiled again).
    trace, a, b = nuts_gaussian
    batched_gaussian_nuts()
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


# --- Step-size jitter ------------------------------------------------------------------------

DIAGONAL_A = np.diag(np.linspace(1.0, 30.0, 10))
DIAGONAL_B = np.zeros(10)


def test_fixed_length_hmc_resonates_and_jitter_breaks_it():
    # Once the diagonal mass matrix is adapted, every direction of this Gaussian oscillates
    # at about the same frequency (up to the error of the estimated masses), and 8 leapfrog
    # steps of the adapted size come close to a half or a full period of some of them: those
    # directions are flipped or brought back at every transition and their second moments
    # barely decorrelate, while the acceptance rate stays high.
    start = jnp.zeros((8, 10)) + jnp.linspace(-2.0, 2.0, 8)[:, None]
    results = {}
    for jitter in (0.0, 0.5):
        kernel = samplers.hmc(gaussian_energy, num_warmup=200, num_steps=8, jitter=jitter)
        trace = samplers.sample(
            jax.random.key(13),
            kernel,
            start,
            (DIAGONAL_A, DIAGONAL_B),
            TEMPERATURE,
            num_samples=500,
        )
        stats = gaussian_statistics(trace.samples, np.zeros(10))
        ess_per_draw = samplers.ess_bulk(stats) / (8 * 500)
        results[jitter] = (trace, float(np.min(ess_per_draw)), float(np.max(samplers.rhat(stats))))
    _, ess_off, _ = results[0.0]
    trace, ess_on, rhat_on = results[0.5]
    # How near resonance the adapted step comes depends on the draws: over seed sets 0–20
    # (keys 13 + k × 1,000,003) the smallest ESS per draw was 0.004–0.022 without jitter
    # but 0.084 at one set, and 0.24–0.30 with it but 0.146 at another; jitter raised it
    # 3.5- to 68-fold, and R-hat with jitter stayed below 1.019.
    assert ess_on > 2 * ess_off, (ess_off, ess_on)
    assert ess_on > 0.1 and rhat_on < 1.05, (ess_on, rhat_on)
    check_moments(trace.samples, DIAGONAL_A, DIAGONAL_B, "jittered HMC, 10-D")


def test_closed_leapfrog_orbit_freezes_fixed_length_hmc_and_jitter_frees_it():
    # E = ½ s², T = 0.5, unit mass: a leapfrog step of size ε turns the phase plane (in
    # suitably scaled coordinates) by θ with cos θ = 1 − ω²ε²/2, ω² = 1/T. With θ = π/4,
    # eight steps are the identity map: every proposal returns to its start exactly (energy
    # error 0, accepted) and a chain never moves, whatever its start.
    omega = 1.0 / np.sqrt(TEMPERATURE)
    step_size = float(np.sqrt(2.0 - np.sqrt(2.0)) / omega)
    a, b = np.eye(1), np.zeros(1)
    start = jnp.array([[-1.5], [-0.5], [0.5], [1.5]])
    traces = {}
    for jitter in (0.0, 0.5):
        kernel = samplers.hmc(
            gaussian_energy,
            num_warmup=0,
            step_size=step_size,
            num_steps=8,
            adapt_step_size=False,
            adapt_mass_matrix=False,
            jitter=jitter,
        )
        traces[jitter] = samplers.sample(
            jax.random.key(14), kernel, start, (a, b), TEMPERATURE, num_samples=4000
        )
    frozen = np.asarray(traces[0.0].samples)
    np.testing.assert_allclose(frozen, np.broadcast_to(start[:, None, :], frozen.shape), atol=1e-9)
    assert np.all(np.asarray(traces[0.0].info.acceptance_rate) > 1 - 1e-9)
    assert float(np.max(samplers.rhat(gaussian_statistics(traces[0.5].samples, b)))) < 1.01
    check_moments(traces[0.5].samples, a, b, "jittered HMC on a closed orbit")


def run_kernel_by_hand(kernel, num_steps):
    """``num_steps`` steps of one chain of the R³ Gaussian from a fixed start and fixed keys."""

    @jax.jit
    def run(keys):
        state = kernel.init(jnp.array([1.0, -1.0, 0.5]), (GAUSSIAN_A, GAUSSIAN_B), TEMPERATURE)

        def body(state, key):
            state, info = kernel.step(key, state, (GAUSSIAN_A, GAUSSIAN_B))
            return state, (state, info)

        return jax.lax.scan(body, state, keys)[1]

    return run(jax.random.split(jax.random.key(15), num_steps))


@pytest.mark.parametrize("length", ["num_steps", "trajectory_length"])
def test_jitter_leaves_warmup_adaptation_unchanged(length):
    # Same keys with and without jitter: warm-up (NumPyro's dual averaging and mass-matrix
    # windows) must go bit for bit the same way, and the adapted step size and mass matrix
    # must stay frozen afterwards while the integrator's step size (num_steps) or the
    # integration time (trajectory_length) is jittered.
    num_warmup, num_steps, jitter = 60, 100, 0.5
    options = {"num_steps": 5} if length == "num_steps" else {"trajectory_length": 2.0}
    runs = {
        j: run_kernel_by_hand(
            samplers.hmc(gaussian_energy, num_warmup=num_warmup, jitter=j, **options), num_steps
        )
        for j in (0.0, jitter)
    }
    (off, info_off), (on, info_on) = runs[0.0], runs[jitter]
    # NumPyro's adapt state carries a PRNG key: compare its bits.
    off, on = (
        jax.tree.map(
            lambda x: (
                jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
            ),
            state,
        )
        for state in (off, on)
    )
    pairs = zip(jax.tree.leaves((off, info_off)), jax.tree.leaves((on, info_on)), strict=True)
    for leaf_off, leaf_on in pairs:
        np.testing.assert_array_equal(
            np.asarray(leaf_off)[:num_warmup], np.asarray(leaf_on)[:num_warmup]
        )
    for state in (off, on):
        for leaf in jax.tree.leaves(state.adapt_state):
            leaf = np.asarray(leaf)
            np.testing.assert_array_equal(
                leaf[num_warmup:], np.broadcast_to(leaf[num_warmup - 1], leaf[num_warmup:].shape)
            )
    adapted = float(off.adapt_state.step_size[num_warmup - 1])
    assert adapted != 1.0  # dual averaging moved it from its initial value
    assert not np.allclose(
        np.asarray(on.position[num_warmup:]), np.asarray(off.position[num_warmup:])
    )
    used = np.asarray(info_on.step_size)
    if length == "num_steps":
        assert np.all(np.asarray(info_on.num_integration_steps) == 5)
        np.testing.assert_array_equal(np.asarray(info_off.step_size)[num_warmup:], adapted)
        factor = used[num_warmup:] / adapted
    else:
        # NumPyro runs ⌈L/ε⌉ steps of L/⌈L/ε⌉: the jittered integration time is step × count.
        time = used * np.asarray(info_on.num_integration_steps)
        np.testing.assert_allclose(time[:num_warmup], 2.0, rtol=1e-12)
        factor = time[num_warmup:] / 2.0
        assert len(np.unique(np.asarray(info_on.num_integration_steps)[num_warmup:])) > 1
    assert np.all((factor >= 1 - jitter) & (factor <= 1 + jitter))
    assert np.ptp(factor) > jitter  # spread over the interval, not stuck at 1


@pytest.mark.parametrize("jitter", [-0.1, 1.0, True, "0.5"])
def test_hmc_rejects_a_bad_jitter(jitter):
    with pytest.raises(ValueError, match="jitter must be a number in"):
        samplers.hmc(gaussian_energy, num_warmup=0, num_steps=3, jitter=jitter)


def _transitions(sample_kernel, state, model_args, count):
    step = jax.jit(lambda s: sample_kernel(s, model_args=model_args))
    out = []
    for _ in range(count):
        state = step(state)
        out.append(
            jax.tree.map(
                lambda x: np.asarray(
                    jax.random.key_data(x)
                    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                    else x
                ),
                state,
            )
        )
    return out


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(
    "length, num_warmup",
    [
        ({"num_steps": 8}, 0),  # unrolled integrator, no adaptation
        ({"num_steps": 40}, 60),  # above MAX_UNROLLED_STEPS: a loop, as NumPyro's
        ({"trajectory_length": 1.3}, 60),  # ⌈L/ε⌉ steps: a loop
    ],
)
def test_written_out_hmc_transition_is_numpyros(dense, length, num_warmup):
    # The package's HMC transition (fast Threefry draws, unrolled fixed-length integrator)
    # against NumPyro's own sample_kernel, from the same state and keys, transition after
    # transition, warm-up adaptation included: the same numbers up to rounding. Where the
    # integrator is unrolled XLA may contract multiply-adds across steps, which warm-up's
    # step-size adaptation would amplify, so that case compares fixed kernels (num_warmup 0).
    from numpyro.infer.hmc import hmc as numpyro_hmc

    from samplers._hmc_transition import MAX_UNROLLED_STEPS, hmc_sample_kernel

    assert length.get("num_steps", 0) != 40 or 40 > MAX_UNROLLED_STEPS
    precision = jnp.diag(jnp.linspace(0.5, 4.0, 5))

    def potential_fn_gen(shift, temperature):
        return lambda z: (0.5 * z @ precision @ z + jnp.sum(jnp.cos(z + shift))) / temperature

    options = {"num_steps": None, "trajectory_length": None, **length}
    init_kernel, numpyro_kernel = numpyro_hmc(potential_fn_gen=potential_fn_gen, algo="HMC")
    model_args = (0.3, 0.7)
    state = init_kernel(
        jnp.ones(5), num_warmup, model_args=model_args, rng_key=jax.random.key(3),
        step_size=0.1, dense_mass=dense, **options,
    )  # fmt: skip
    ours = hmc_sample_kernel(
        potential_fn_gen, num_warmup=num_warmup, num_steps=options["num_steps"],
        target_accept_prob=0.8, adapt_step_size=True, adapt_mass_matrix=True, dense_mass=dense,
    )  # fmt: skip
    count = 100
    expected = _transitions(numpyro_kernel, state, model_args, count)
    got = _transitions(ours, state, model_args, count)
    for t, (a, b) in enumerate(zip(expected, got, strict=True)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12, err_msg=f"transition {t}")
    accepted = np.mean([s.accept_prob for s in got])
    assert 0.3 < accepted < 1.0  # proposals moved, and some were rejected
    if num_warmup:
        assert float(got[-1].adapt_state.step_size) != 0.1  # adaptation ran

"""The package's contracts: kernel protocol, no recompilation, layouts, ArviZ, bad input.

Most tests here are deterministic. The ESS test compares ArviZ's ESS of an AR(1) process with
its known value within 25%, about 8 standard deviations of the estimator at this size (false
failure probability far below 1e-6); the annealing test asserts a ground state reached with
probability close to 1 by slow cooling of a 12-spin chain (a failure would mean a bug).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import double_well_energy, gaussian_energy, ising_energy, layered_network

import samplers
from samplers._driver import prepare

# ---------------------------------------------------------------------------------------------
# One parametrised test of every sampler's init/step signature and behaviour.

COUPLINGS, FIELDS, BLOCKS = layered_network()
SPIN_CONTEXT = (jnp.asarray(COUPLINGS), jnp.asarray(FIELDS))
GAUSS_CONTEXT = (jnp.eye(3) * 2.0, jnp.ones(3))


def spin_start(num):
    return jax.random.rademacher(jax.random.key(5), (num, 10), dtype=float)


KERNELS = {
    "nuts": lambda: (
        samplers.nuts(gaussian_energy, num_warmup=5),
        jnp.zeros(3),
        GAUSS_CONTEXT,
        0.7,
    ),
    "hmc": lambda: (
        samplers.hmc(gaussian_energy, num_warmup=5, num_steps=3),
        jnp.zeros(3),
        GAUSS_CONTEXT,
        0.7,
    ),
    # NumPyro's adaptation works in the default dtype; a float32 start must not break it.
    "hmc(float32 start)": lambda: (
        samplers.hmc(gaussian_energy, num_warmup=5, num_steps=3),
        jnp.zeros(3, dtype=jnp.float32),
        GAUSS_CONTEXT,
        0.7,
    ),
    "block_gibbs": lambda: (
        samplers.block_gibbs(ising_energy, BLOCKS),
        spin_start(1)[0],
        SPIN_CONTEXT,
        1.3,
    ),
    "metropolis": lambda: (samplers.metropolis(ising_energy), spin_start(1)[0], SPIN_CONTEXT, 1.3),
    # NUTS inside tempering runs in benchmarks/samplers_bench.py; HMC compiles faster here.
    "tempering(hmc)": lambda: (
        samplers.parallel_tempering(samplers.hmc(gaussian_energy, num_warmup=5, num_steps=3)),
        jnp.zeros((3, 3)),
        GAUSS_CONTEXT,
        jnp.array([0.5, 1.0, 2.0]),
    ),
    "tempering(gibbs, adaptive)": lambda: (
        samplers.parallel_tempering(
            samplers.block_gibbs(ising_energy, BLOCKS), adapt_ladder=True, num_warmup=5
        ),
        spin_start(3),
        SPIN_CONTEXT,
        jnp.array([0.5, 1.0, 2.0]),
    ),
    "tempering(metropolis)": lambda: (
        samplers.parallel_tempering(samplers.metropolis(ising_energy)),
        spin_start(3),
        SPIN_CONTEXT,
        jnp.array([0.5, 1.0, 2.0]),
    ),
}


def as_numpy(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def shapes_and_dtypes(tree):
    return jax.tree_util.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_protocol(name):
    kernel, position, context, temperature = KERNELS[name]()
    assert isinstance(kernel, samplers.Kernel)
    assert list(inspect.signature(kernel.init).parameters) == ["position", "context", "temperature"]
    assert list(inspect.signature(kernel.step).parameters) == ["rng_key", "state", "context"]
    assert list(inspect.signature(kernel.validate).parameters) == [
        "positions",
        "context",
        "temperature",
    ]
    kernel.validate(np.asarray(position)[None], context, temperature)

    # Two chains, vmapped under the drivers' axis name (adaptive ladders average over it).
    positions = jnp.stack([position, position])
    init = jax.jit(jax.vmap(kernel.init, in_axes=(0, None, None)))
    step = jax.jit(jax.vmap(kernel.step, in_axes=(0, 0, None), axis_name="chain"))
    state = init(positions, context, temperature)
    for field in ("position", "energy", "temperature"):
        assert hasattr(state, field)
    assert set(kernel.configuration_fields) <= set(state._fields)
    keys = jax.random.split(jax.random.key(0), 2)
    new_state, info = step(keys, state, context)
    # A step preserves the state's pytree structure, shapes and dtypes (so lax.scan can carry
    # it), returns an Info NamedTuple, and is a pure function of its key.
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert shapes_and_dtypes(new_state) == shapes_and_dtypes(state)
    assert hasattr(info, "_fields") and type(info).__name__.endswith("Info")
    again, _ = step(keys, state, context)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(as_numpy(a), as_numpy(b)), again, new_state
    )
    # The cached energy is the energy of the position, unscaled by the temperature.
    energy_fn = gaussian_energy if "nuts" in name or "hmc" in name else ising_energy
    flat = new_state.position.reshape(-1, new_state.position.shape[-1])
    energies = jax.vmap(energy_fn, in_axes=(0, None))(flat, context)
    np.testing.assert_allclose(new_state.energy.reshape(-1), energies, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.temperature[0], temperature, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# No recompilation when temperature, context, keys or starts change.

TRACES = {"count": 0}


def counting_energy(position, context):
    TRACES["count"] += 1  # runs once per trace, never at run time
    return gaussian_energy(position, context)


def counting_spin_energy(position, context):
    TRACES["count"] += 1
    return ising_energy(position, context)


def test_new_temperature_or_context_does_not_recompile():
    # NumPyro's HMC goes through the same potential generator as NUTS (samplers._hmc._build)
    # and compiles several times faster.
    nuts = samplers.hmc(counting_energy, num_warmup=10, num_steps=3)
    context = (jnp.stack([jnp.eye(3), 2 * jnp.eye(3)]), jnp.ones((2, 3)))

    def run_nuts(seed, temperature, scale):
        ctx = (context[0] * scale, context[1] * scale)
        return samplers.sample(
            jax.random.key(seed),
            nuts,
            jnp.zeros((2, 2, 3)) + seed,
            ctx,
            temperature,
            num_samples=5,
            batched=True,
        )

    gibbs_pt = samplers.parallel_tempering(samplers.block_gibbs(counting_spin_energy, BLOCKS))

    def run_pt(seed, ladder, scale):
        return samplers.sample(
            jax.random.key(seed),
            gibbs_pt,
            jnp.ones((2, 3, 10)),
            (SPIN_CONTEXT[0] * scale, SPIN_CONTEXT[1]),
            jnp.asarray(ladder),
            num_samples=5,
        )

    metropolis = samplers.metropolis(counting_spin_energy)

    def run_anneal(seed, schedule, scale):
        return samplers.anneal(
            jax.random.key(seed),
            metropolis,
            jnp.ones((2, 10)),
            (SPIN_CONTEXT[0] * scale, SPIN_CONTEXT[1]),
            schedule,
            num_steps_per_temperature=2,
        )

    run_nuts(0, 0.5, 1.0)
    run_pt(0, [0.5, 1.0, 2.0], 1.0)
    run_anneal(0, samplers.geometric_schedule(3.0, 0.1, 4), 1.0)
    traced = TRACES["count"]
    assert traced > 0
    first = run_nuts(1, 2.5, 0.5)
    run_pt(1, [0.2, 0.7, 5.0], 2.0)
    run_anneal(1, samplers.linear_schedule(9.0, 0.5, 4), 3.0)
    run_anneal(2, jnp.array([4.0, 1.0, 2.0, 0.3]), 3.0)
    assert TRACES["count"] == traced, "a new temperature, context or schedule retraced"
    # ...and the new values were used: T = 2.5 gives a visibly wider spread than T = 0.5.
    assert float(jnp.std(first.samples)) > 0.8


# ---------------------------------------------------------------------------------------------
# Layouts and ArviZ.


def test_layouts_and_inference_data(nuts_gaussian):
    trace, _, _ = nuts_gaussian
    assert trace.samples.shape == (4, 2, 1000, 3)  # (batch, chain, draw, n)
    assert trace.info.energy.shape == (4, 2, 1000)
    assert trace.final_state.position.shape == (4, 2, 3)
    assert trace.nonfinite_step.shape == (4, 2)
    idata = samplers.to_inference_data(trace)
    assert idata.posterior["position"].dims == ("chain", "draw", "target", "unit")
    stats = set(idata.sample_stats.data_vars)
    assert {"diverging", "energy", "potential_energy", "acceptance_rate", "step_size"} <= stats
    np.testing.assert_array_equal(
        idata.posterior["position"].values, np.moveaxis(np.asarray(trace.samples), 0, 2)
    )

    ladder = jnp.array([0.5, 1.0, 2.0])
    pt = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    pt_trace = samplers.sample(
        jax.random.key(4), pt, jnp.ones((2, 3, 10)), SPIN_CONTEXT, ladder, num_samples=6
    )
    assert pt_trace.samples.shape == (2, 6, 3, 10)  # (chain, draw, temperature, n)
    idata = samplers.to_inference_data(pt_trace)
    assert idata.posterior["position"].dims == ("chain", "draw", "temperature", "unit")
    np.testing.assert_allclose(idata.posterior["temperature"].values, ladder)
    assert idata.sample_stats["swap_accepted"].dims == ("chain", "draw", "pair")
    assert idata.sample_stats["acceptance_rate"].dims == ("chain", "draw", "temperature")
    assert idata.sample_stats["round_trips"].dims == ("chain", "draw")
    table = samplers.summary(pt_trace)
    assert len(table) == 30 and "ess_bulk" in table.columns


def ar1(rng, rho, shape):
    x = np.zeros(shape)
    noise = rng.normal(size=shape) * np.sqrt(1 - rho**2)
    x[:, 0] = rng.normal(size=(shape[0], *shape[2:]))
    for t in range(1, shape[1]):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def test_array_diagnostics_match_ar1_theory_and_vectorise():
    rng = np.random.default_rng(0)
    rho = 0.8
    x = ar1(rng, rho, (4, 4000, 2, 3))
    expected_ess = x.shape[0] * x.shape[1] * (1 - rho) / (1 + rho)
    ess = samplers.ess_bulk(x)
    assert ess.shape == (2, 3)
    np.testing.assert_allclose(ess, expected_ess, rtol=0.25)
    np.testing.assert_allclose(samplers.mcse_mean(x), 1 / np.sqrt(expected_ess), rtol=0.25)
    assert samplers.ess_tail(x).shape == (2, 3)
    assert np.all(samplers.rhat(x) < 1.01)
    # Elementwise over the event dimensions, the same as one element at a time.
    np.testing.assert_allclose(ess[1, 2], samplers.ess_bulk(x[..., 1, 2]), rtol=1e-12)
    shifted = x.copy()
    shifted[0] += 3.0
    assert np.all(samplers.rhat(shifted) > 1.1)
    with pytest.raises(ValueError, match="chain >= 2"):
        samplers.rhat(x[:1])
    with pytest.raises(ValueError, match="at least 4 draws"):
        samplers.ess_bulk(x[:, :3])


def test_num_chains_broadcasts_one_start():
    kernel = samplers.metropolis(ising_energy)
    trace = samplers.sample(
        jax.random.key(2), kernel, jnp.ones(10), SPIN_CONTEXT, 1.0, num_samples=4, num_chains=5
    )
    assert trace.samples.shape == (5, 4, 10)
    assert len({tuple(row) for row in np.asarray(trace.samples[:, -1])}) > 1  # own keys
    # With a batch of targets, one start per target is shared by that target's chains.
    context = (jnp.stack([SPIN_CONTEXT[0]] * 2), jnp.stack([SPIN_CONTEXT[1]] * 2))
    starts = np.stack([np.ones(10), -np.ones(10)])
    x, batch_size, num_chains, _ = prepare(kernel, starts, context, 1.0, True, 1, num_chains=5)
    assert (x.shape, batch_size, num_chains) == ((2, 5, 10), 2, 5)
    np.testing.assert_array_equal(x[1, 3], -np.ones(10))


def test_shared_context_leaves_equal_per_target_copies():
    """context_axes=(None, 0): the couplings are one array for every target, the fields one
    row per target; the chains draw bit for bit what per-target copies of the couplings give,
    for sample and anneal alike."""
    kernel = samplers.block_gibbs(ising_energy, tuple((i,) for i in range(10)))
    fields = jnp.stack([SPIN_CONTEXT[1], -SPIN_CONTEXT[1], 0.5 * SPIN_CONTEXT[1]])
    copies = (jnp.stack([SPIN_CONTEXT[0]] * 3), fields)
    starts = jnp.ones((3, 4, 10))
    shared = samplers.sample(
        jax.random.key(3), kernel, starts, (SPIN_CONTEXT[0], fields), 1.0,
        num_samples=20, batched=True, context_axes=(None, 0),
    )  # fmt: skip
    copied = samplers.sample(
        jax.random.key(3), kernel, starts, copies, 1.0, num_samples=20, batched=True
    )
    np.testing.assert_array_equal(shared.samples, copied.samples)
    schedule = samplers.geometric_schedule(2.0, 0.5, 4)
    annealed = [
        samplers.anneal(
            jax.random.key(4), kernel, starts, context, schedule, batched=True, context_axes=axes
        ).samples  # fmt: skip
        for context, axes in (((SPIN_CONTEXT[0], fields), (None, 0)), (copies, 0))
    ]
    np.testing.assert_array_equal(*annealed)
    with pytest.raises(ValueError, match="unless context_axes marks it shared"):
        samplers.sample(jax.random.key(3), kernel, starts, (SPIN_CONTEXT[0], fields), 1.0,
                        num_samples=4, batched=True)  # fmt: skip
    with pytest.raises(ValueError, match="must be 0 .* or None .*got 1"):
        samplers.sample(jax.random.key(3), kernel, starts, copies, 1.0, num_samples=4,
                        batched=True, context_axes=(1, 0))  # fmt: skip
    with pytest.raises(ValueError, match="pytree prefix of the context"):
        samplers.sample(jax.random.key(3), kernel, starts, copies, 1.0, num_samples=4,
                        batched=True, context_axes=(None, 0, 0))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Annealing.


def test_annealing_reaches_ground_state_and_warm_starts():
    n = 12

    def chain_energy(s, coupling):
        return -coupling * jnp.sum(s[1:] * s[:-1])

    start = jax.random.rademacher(jax.random.key(6), (4, n), dtype=float)
    schedule = samplers.geometric_schedule(5.0, 0.05, 30)
    np.testing.assert_allclose(np.asarray(schedule)[[0, -1]], [5.0, 0.05], rtol=1e-15)
    kernel = samplers.block_gibbs(chain_energy, (tuple(range(0, n, 2)), tuple(range(1, n, 2))))
    trace = samplers.anneal(
        jax.random.key(7), kernel, start, 1.0, schedule, num_steps_per_temperature=20
    )
    assert trace.samples.shape == (4, 30, n)  # (chain, stage, n)
    ground = -(n - 1) * 1.0
    np.testing.assert_allclose(trace.final_state.energy, ground)
    # Energies at the end of each stage fall as the temperature falls (on average over chains).
    energies = np.asarray(trace.info.energy).mean(0)
    assert energies[0] > energies[-1] + 5
    np.testing.assert_allclose(trace.final_state.temperature, 0.05)

    # Continuous: anneal HMC in the double well towards T -> 0, then warm-start sampling.
    hmc = samplers.hmc(double_well_energy, num_warmup=50, num_steps=10)
    cooled = samplers.anneal(
        jax.random.key(8),
        hmc,
        jnp.full((3, 2), 3.0),
        0.1,
        samplers.linear_schedule(2.0, 0.01, 10),
        num_steps_per_temperature=10,
    )
    x = np.asarray(cooled.final_state.position)
    assert np.all(np.abs(np.abs(x[:, 0]) - 1.0) < 0.1) and np.all(np.abs(x[:, 1]) < 0.3)
    warm = samplers.sample(
        jax.random.key(9), hmc, cooled.final_state.position, 0.1, 0.01, num_samples=20
    )
    assert np.all(np.sign(warm.samples[..., 0]) == np.sign(x[:, None, 0]))


# ---------------------------------------------------------------------------------------------
# Bad input.


def nan_start_energy(position, context):
    return 0.5 * jnp.sum(position**2) + jnp.log(position[0] + context)


def absorbing_energy(position, context):
    # log(Σs + n + c): when c = 0 the all-down state has energy −inf and absorbs the chain.
    return jnp.log(jnp.sum(position) + position.shape[0] + context)


def test_nonfinite_energy_is_reported_with_chain_and_step():
    kernel = samplers.metropolis(absorbing_energy)
    context = jnp.array([1.0, 0.0])  # target 0 healthy, target 1 absorbs at -inf
    with pytest.raises(
        samplers.NonFiniteEnergyError,
        match=r"target 1, chain 0: first non-finite energy at step \d+ \(draw \d+\)",
    ):
        samplers.sample(
            jax.random.key(0),
            kernel,
            jnp.ones((2, 3, 3)),
            context,
            1.0,
            num_samples=50,
            num_warmup=0,
            batched=True,
        )
    trace = samplers.sample(
        jax.random.key(0),
        kernel,
        jnp.ones((2, 3, 3)),
        context,
        1.0,
        num_samples=50,
        num_warmup=0,
        batched=True,
        check_finite=False,
    )
    bad = np.asarray(trace.nonfinite_step)
    assert np.all(bad[0] == -1) and np.all(bad[1] >= 1)
    energies = np.asarray(trace.info.energy[1])
    first = np.argmax(~np.isfinite(energies), axis=1)
    np.testing.assert_array_equal(bad[1], first + 1)  # step = draw + 1 with no warm-up

    with pytest.raises(
        samplers.NonFiniteEnergyError,
        match=r"chain \d: first non-finite energy at step \d+ \(draw \d\)",
    ):
        # Annealing names the kernel step and its stage (3 steps per stage here).
        samplers.anneal(
            jax.random.key(0),
            kernel,
            jnp.ones((2, 3)),
            0.0,
            jnp.ones(30),
            num_steps_per_temperature=3,
        )
    with pytest.raises(samplers.NonFiniteEnergyError, match=r"chain 1: .*at its start \(step 0\)"):
        samplers.sample(
            jax.random.key(0),
            samplers.hmc(nan_start_energy, num_warmup=0, num_steps=2),
            jnp.array([[0.5, 0.0], [-2.0, 0.0]]),
            1.0,
            1.0,
            num_samples=3,
        )


GOOD = dict(num_samples=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=0.0), r"temperature must be a finite number > 0, got 0.0"),
        (dict(temperature=-1.0), r"> 0, got -1.0"),
        (dict(temperature=float("nan")), r"> 0, got nan"),
        (dict(temperature=jnp.array([1.0, 2.0])), "with a 2-D event for the NUTS kernel"),
        (dict(position=jnp.zeros(3)), r"\(chain, \*event\).*got shape \(3,\)"),
        (
            dict(position=jnp.zeros((2, 3)).at[1, 2].set(jnp.inf)),
            r"chain 1 has position\[1, 2\] = inf",
        ),
        (dict(position=jnp.zeros((2, 3), dtype=jnp.int32)), "floating point"),
        (dict(num_samples=0), "num_samples must be an integer >= 1, got 0"),
        (dict(num_warmup=2), "num_warmup=2 is shorter than the NUTS kernel's adaptation"),
        (dict(rng_key=jnp.zeros(3)), "rng_key must be a key"),
        (dict(batched=True), "leading batch axis"),
        (dict(num_chains=4), r"one start shared by all chains.*got shape \(2, 3\)"),
        (dict(num_chains=0, position=jnp.zeros(3)), "num_chains must be an integer >= 1, got 0"),
    ],
)
def test_driver_rejects_bad_input(kwargs, match):
    args = dict(
        rng_key=jax.random.key(0),
        kernel=samplers.nuts(gaussian_energy, num_warmup=10),
        position=jnp.zeros((2, 3)),
        context=GAUSS_CONTEXT,
        temperature=1.0,
        **GOOD,
    )
    if kwargs.get("batched"):
        args["position"] = jnp.zeros((2, 2, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        samplers.sample(**args)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: samplers.geometric_ladder(2.0, 1.0, 3), "must exceed"),
        (lambda: samplers.geometric_ladder(1.0, 2.0, 1), "num_temperatures"),
        (lambda: samplers.geometric_schedule(1.0, 0.0, 3), "stop must be a finite number > 0"),
        (
            lambda: samplers.parallel_tempering(
                samplers.metropolis(ising_energy), adapt_ladder=True
            ),
            "num_warmup > 0",
        ),
        (lambda: samplers.hmc(gaussian_energy, num_warmup=-1), "num_warmup"),
        (lambda: samplers.hmc(gaussian_energy, num_warmup=0, num_steps=0), "num_steps"),
    ],
)
def test_constructors_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ladders_and_schedules_reject_bad_input():
    pt = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    with pytest.raises(
        ValueError, match=r"strictly increasing.*temperatures\[1\]=3.0 >= temperatures\[2\]=2.0"
    ):
        samplers.sample(
            jax.random.key(0),
            pt,
            jnp.ones((2, 3, 10)),
            SPIN_CONTEXT,
            jnp.array([1.0, 3.0, 2.0]),
            num_samples=2,
        )
    with pytest.raises(ValueError, match=r"finite and > 0"):
        samplers.sample(
            jax.random.key(0),
            pt,
            jnp.ones((2, 3, 10)),
            SPIN_CONTEXT,
            jnp.array([-1.0, 1.0, 2.0]),
            num_samples=2,
        )
    metropolis = samplers.metropolis(ising_energy)
    with pytest.raises(ValueError, match=r"schedule\[1\] = -0.5"):
        samplers.anneal(
            jax.random.key(0), metropolis, jnp.ones((2, 10)), SPIN_CONTEXT, jnp.array([1.0, -0.5])
        )
    with pytest.raises(ValueError, match="local kernel"):
        samplers.anneal(
            jax.random.key(0), pt, jnp.ones((2, 3, 10)), SPIN_CONTEXT, jnp.array([1.0, 0.5])
        )

"""Finite-temperature EP estimators against exact answers (docs/mathematics.md#thermal-ep).

References: enumeration of all 2^n spin states (n ≤ 16) and the Gaussian closed form of the
quadratic network (tests/README.md). Sampled estimates must agree with the exact gradient
within k = 4 Monte Carlo standard errors per component, MCSE from ArviZ's ESS.

False-failure budget: about 600 components are checked at 4 MCSE over the module; for
Gaussian errors with honest MCSEs P(|z| > 4) = 6.3e-5 each, so about 4 % of runs after a
change to sampling code would see a false failure (seeds are fixed: a given code version
either passes or fails reproducibly). The coverage tests check the RMS z-score over 10–12 runs
against the bounds of its law (tests/pooled_z.py), each side's tail 1e-4 nominal and at most
6e-4 (tests/samplers/test_batch_means.py): the 300+ z-values hold only about 30 independent
ones, since the components of one run share their draws (``samplers.effective_components``
about 3 of the spin network's 39). Bounds argued as if they were independent ([0.7, 1.4], and
under 12 % of |z| above 2) failed an honest MCSE in 2 of 12 seed sets; the fraction above 2
is not checked, since over so few independent values it says little that the RMS and
``|z| < K`` do not. In all, about 4.1 %. The problems are built under seed_offset.fixed: the
budget is about the samplers' draws.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pooled_z
import pytest
import seed_offset

import samplers
from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact, ThermalNudged
from thermoeqprop.models import LayeredNetwork, QuadraticNetwork, SpinNetwork

#: The false-failure budget per run of this module, as stated above (about 600 components at 4
#: MCSE, 4e-2, and two pooled RMS checks at 7e-4 each); tests/false_failure_budget.py measures
#: it on fresh seeds.
FALSE_FAILURE_BUDGET = 4.1e-2

K = 4.0
SPIN_SAMPLING = Sampling(num_chains=8, num_samples=1500, num_warmup=200)
NUTS_SAMPLING = Sampling(num_chains=4, num_samples=1000, num_warmup=300)


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def z_scores(estimate, exact_grad):
    stderr = flat(estimate.stderr)
    assert np.all(stderr > 0), "every component fluctuates, so every MCSE must be positive"
    return (flat(estimate.grad) - flat(exact_grad)) / stderr


def scaled(params, factor):
    return jax.tree_util.tree_map(lambda a: a * factor, params)


@pytest.fixture(scope="module")
@seed_offset.fixed
def spin_problem():
    net = SpinNetwork.layered((3, 4, 3, 2), init_gain=0.8)  # 9 spins, 39 parameters
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    return net, params, x, targets


@pytest.fixture(scope="module")
@seed_offset.fixed
def quadratic_problem():
    net = QuadraticNetwork((3, 4, 2))  # 6 units, 26 parameters
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    return net, params, x, targets


# Couplings shrink with T so that E/T stays of order one: at T = 0.05 with unit couplings the
# chains would sit in the ground state and every covariance would be exponentially small.
@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_spin_estimators_match_enumeration(spin_problem, temperature):
    net, params, x, targets = spin_problem
    factor = min(1.0, temperature / 0.5)
    params = scaled(params, factor)
    exact = ThermalExact(net, temperature)(params, x, targets)
    covariance = ThermalCovariance(net, temperature, SPIN_SAMPLING)(
        params, x, targets, jax.random.key(10)
    )
    # The nudge must stay small against the (scaled) energy, or its O(β²) bias shows.
    nudged = ThermalNudged(net, temperature, beta=0.05 * factor, sampling=SPIN_SAMPLING)(
        params, x, targets, jax.random.key(11)
    )
    for estimate in (covariance, nudged):
        z = z_scores(estimate, exact.grad)
        assert np.max(np.abs(z)) < K, z
        assert float(estimate.diagnostics["rhat_max"]) < 1.05
    loss_z = (float(covariance.loss) - float(exact.loss)) / float(covariance.loss_stderr)
    assert abs(loss_z) < K


@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_quadratic_estimators_match_closed_form(quadratic_problem, temperature):
    net, params, x, targets = quadratic_problem
    exact = ThermalExact(net, temperature)(params, x, targets)
    covariance = ThermalCovariance(net, temperature, NUTS_SAMPLING)(
        params, x, targets, jax.random.key(20)
    )
    nudged = ThermalNudged(net, temperature, beta=0.05, sampling=NUTS_SAMPLING)(
        params, x, targets, jax.random.key(21)
    )
    for estimate in (covariance, nudged):
        z = z_scores(estimate, exact.grad)
        assert np.max(np.abs(z)) < K, z
        assert float(estimate.diagnostics["divergences"]) == 0
        assert 0.6 < float(estimate.diagnostics["acceptance_rate"]) < 0.99
    loss_z = (float(covariance.loss) - float(exact.loss)) / float(covariance.loss_stderr)
    assert abs(loss_z) < K


@pytest.mark.parametrize(("method", "resolved"), [("metropolis", "metropolis"), ("auto", "gibbs")])
def test_sixteen_spin_graph_with_tempering(method, resolved):
    # A ring of 16 spins with chords: not layered; Metropolis, or block Gibbs over the graph's
    # colouring (what "auto" picks), inside parallel tempering.
    edges = [(i, (i + 1) % 16) for i in range(16)] + [(i, i + 8) for i in range(0, 8, 2)]
    net = SpinNetwork(
        num_inputs=2,
        num_spins=16,
        edges=tuple(edges),
        input_edges=((0, 0), (1, 5), (0, 9), (1, 12)),
        output_units=(15, 7),
        init_gain=0.6,
    )
    with seed_offset.fixed():
        params = net.init_params(jax.random.key(3))
        x = jax.random.uniform(jax.random.key(4), (2, 2))
    targets = net.encode_labels(jnp.array([0, 1]))
    sampling = Sampling(method, num_chains=8, num_samples=1500, num_warmup=200, tempering=3)
    assert sampling.resolve_method(net) == resolved
    exact = ThermalExact(net, 0.7)(params, x, targets)
    estimate = ThermalCovariance(net, 0.7, sampling)(params, x, targets, jax.random.key(30))
    z = z_scores(estimate, exact.grad)
    assert np.max(np.abs(z)) < K, z
    assert float(estimate.diagnostics["swap_rate_min"]) > 0.1


def test_exact_nudged_difference_has_beta_squared_bias(spin_problem, quadratic_problem):
    """[⟨∂θE⟩_β − ⟨∂θE⟩_{−β}]/2β, computed exactly, tends to dL_T/dθ as β²: the identity
    behind the nudged estimator, checked without any sampling."""
    for net, params, x, targets in (spin_problem, quadratic_problem):
        exact = ThermalExact(net, 0.5)
        grad = flat(exact(params, x, targets).grad)
        errors = []
        for beta in (0.1, 0.05, 0.025):
            nudged = flat(exact.nudged_gradient(params, x, targets, beta))
            errors.append(np.linalg.norm(nudged - grad) / np.linalg.norm(grad))
        slope = np.polyfit(np.log([0.1, 0.05, 0.025]), np.log(errors), 1)[0]
        assert abs(slope - 2.0) < 0.1, errors


def check_coverage(estimator, exact_grad, problem, seeds):
    """The RMS z-score of independent runs within the bounds of its law (pooled_z.py), set by
    each run's effective components (from its per-draw series)."""
    _, params, x, targets = problem
    z, dofs = [], []
    for seed in seeds:
        estimate, series = estimator.estimate_with_series(params, x, targets, jax.random.key(seed))
        z.append(z_scores(estimate, exact_grad))
        dofs.append(samplers.effective_components(series.gradient))
    z = np.concatenate(z)
    low, high = pooled_z.rms_bounds([z.size // len(dofs)] * len(dofs), dofs, tail=1e-4)
    rms = float(np.sqrt(np.mean(z**2)))
    assert low < rms < high, (low, rms, high, dofs)


def test_reported_mcse_is_honest_for_gibbs(spin_problem):
    net, params, x, targets = spin_problem
    exact = ThermalExact(net, 0.5)(params, x, targets)
    sampling = Sampling(num_chains=4, num_samples=300, num_warmup=50)
    check_coverage(ThermalCovariance(net, 0.5, sampling), exact.grad, spin_problem, range(100, 110))


def test_reported_mcse_is_honest_for_nuts(quadratic_problem):
    net, params, x, targets = quadratic_problem
    exact = ThermalExact(net, 0.2)(params, x, targets)
    sampling = Sampling(num_chains=4, num_samples=300, num_warmup=300)
    check_coverage(ThermalNudged(net, 0.2, 0.05, sampling=sampling), exact.grad,
                   quadratic_problem, range(200, 212))  # fmt: skip


def test_sampling_until_a_target_precision(spin_problem):
    net, params, x, targets = spin_problem
    base = Sampling(num_chains=4, num_samples=100, num_warmup=50, max_rounds=6)
    reached = ThermalCovariance(net, 0.5, dataclasses.replace(base, target_relative_stderr=0.3))(
        params, x, targets, jax.random.key(0)
    )
    assert bool(reached.diagnostics["precision_reached"])
    assert float(reached.relative_stderr()) < 0.3
    assert float(reached.diagnostics["relative_stderr"]) < 0.3
    budget = ThermalCovariance(
        net, 0.5, dataclasses.replace(base, target_relative_stderr=1e-4, max_rounds=2)
    )(params, x, targets, jax.random.key(0))
    assert not bool(budget.diagnostics["precision_reached"])
    assert int(budget.diagnostics["rounds"]) == 2
    assert int(budget.diagnostics["num_draws_per_chain"]) == 200


def test_series_for_diagnostics_keep_every_draw(spin_problem, monkeypatch):
    """Where a call averages windows of draws (its series would pass ``SERIES_BUDGET``),
    ``estimate_with_series`` keeps every draw: the same draws and gradient, a series of all
    of them (its R-hat then compares every draw, as ArviZ's), and an MCSE of the same size."""
    from thermoeqprop.estimators import _statistics

    net, params, x, targets = spin_problem
    estimator = ThermalCovariance(net, 0.5, Sampling(num_chains=2, num_samples=120, num_warmup=20))
    monkeypatch.setattr(_statistics, "SERIES_BUDGET", 2 * 60 * 39)  # 39 parameters
    call = estimator(params, x, targets, jax.random.key(3))
    estimate, series = estimator.estimate_with_series(params, x, targets, jax.random.key(3))
    assert int(call.diagnostics["draws_per_entry"]) == 2
    assert int(estimate.diagnostics["draws_per_entry"]) == 1
    assert series.gradient.shape[:2] == (2, 120) and series.draws_per_entry == 1
    assert int(call.diagnostics["num_draws_per_chain"]) == 120
    np.testing.assert_allclose(flat(estimate.grad), flat(call.grad), rtol=1e-12, atol=1e-14)
    # Batch means of 2 draws against every draw: two estimates of one MCSE.
    ratio = np.linalg.norm(flat(estimate.stderr)) / np.linalg.norm(flat(call.stderr))
    assert 0.8 < ratio < 1.25, ratio


@dataclasses.dataclass(frozen=True)
class CountingQuadratic(QuadraticNetwork):
    def energy(self, params, state, x):
        TRACES.append(1)  # runs when traced, never when compiled code runs
        return super().energy(params, state, x)


TRACES: list[int] = []


def test_new_temperature_or_data_does_not_recompile():
    net = CountingQuadratic((2, 3, 1))
    params = net.init_params(jax.random.key(0))
    sampling = Sampling(num_chains=2, num_samples=20, num_warmup=20)
    x = jnp.ones((2, 2))
    targets = jnp.ones((2, 1))
    ThermalCovariance(net, 0.1, sampling)(params, x, targets, jax.random.key(0))
    traced = len(TRACES)
    for temperature, scale in ((0.3, 2.0), (1.0, -1.0)):
        ThermalCovariance(net, temperature, sampling)(
            scaled(params, 1.1), scale * x, targets, jax.random.key(1)
        )
    assert len(TRACES) == traced


def test_batches_with_different_constant_components_do_not_recompile():
    """A zero input makes its couplings' gradient series constant (no ESS); batches with
    different numbers of such components reuse one compiled program (they once compiled the
    ESS summary anew for every count)."""
    net = LayeredNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    estimator = ThermalCovariance(net, 0.1, Sampling(num_chains=2, num_samples=20, num_warmup=20))
    targets = jnp.ones((2, 2))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, seconds, **_: compiles.append(name) if "backend_compile" in name else None
    )
    first = estimator(params, jnp.ones((2, 3)), targets, jax.random.key(0))
    assert np.isfinite(float(first.diagnostics["ess_min"]))
    before = len(compiles)
    for zeros in (1, 2):
        x = np.ones((2, 3))
        x[:, :zeros] = 0.0
        estimate = estimator(params, x, targets, jax.random.key(zeros))
        # the couplings of the zero inputs do not vary; the summary is over the others
        assert float(estimate.diagnostics["ess_min"]) > 0
    assert len(compiles) == before


def test_free_phase_kernel_draws_what_the_nudged_kernel_draws_at_zero_beta():
    """The covariance estimator samples E without the cost term (nudged=False): at β = 0 that
    is the same law, and for the same key the same states, bit for bit."""
    from thermoeqprop.estimators.thermal import draw_states

    net = LayeredNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    sampling = Sampling(method="hmc", num_chains=2, num_samples=20, num_warmup=20)
    x, targets = jnp.ones((2, 3)), jnp.ones((2, 2))
    nudged = draw_states(net, sampling, params, x, targets, 0.0, 0.1, jax.random.key(0))
    free = draw_states(net, sampling, params, x, targets, 0.0, 0.1, jax.random.key(0), nudged=False)
    np.testing.assert_array_equal(np.asarray(free.states), np.asarray(nudged.states))
    with pytest.raises(ValueError, match="beta must be 0, got 0.5"):
        draw_states(net, sampling, params, x, targets, 0.5, 0.1, jax.random.key(0), nudged=False)


def counting_copy(model, method):
    """An equal copy of ``model`` whose class is new, so that no code compiled for another
    model is reused, and whose ``method`` records every trace in the returned list."""
    traces = []

    def counted(self, *args):
        traces.append(1)  # runs when traced, never when compiled code runs
        return getattr(super(counting, self), method)(*args)

    counting = dataclasses.dataclass(frozen=True)(
        type("Counting" + type(model).__name__, (type(model),), {method: counted})
    )
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    return counting(**fields), traces


@pytest.mark.parametrize(("problem", "method"), [("spin_problem", "energy"),
                                                 ("quadratic_problem", "precision")])  # fmt: skip
def test_exact_reference_new_temperature_or_beta_does_not_recompile(problem, method, request):
    """A temperature sweep of the exact reference reuses its compiled code, with the results
    of code compiled afresh for the new temperature."""
    net, params, x, targets = request.getfixturevalue(problem)

    def results(model, temperature, beta):
        est = ThermalExact(model, temperature)
        return (
            est(params, x, targets),
            est.predict(params, x),
            est.nudged_energy_grad(params, x, targets, beta),
        )

    model, traces = counting_copy(net, method)
    before = results(model, 0.5, 0.1)
    traced = len(traces)
    assert traced > 0
    after = results(model, 0.3, 0.05)
    assert len(traces) == traced, "a new temperature or beta recompiled"
    assert not np.allclose(flat(after[0].grad), flat(before[0].grad))  # T was used
    fresh_model, fresh_traces = counting_copy(net, method)
    fresh = results(fresh_model, 0.3, 0.05)
    assert len(fresh_traces) > 0  # really compiled afresh
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(after), leaves(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


def test_predictions_are_thermal_averages_of_the_outputs(spin_problem):
    net, params, x, _ = spin_problem
    exact = ThermalExact(net, 0.5).predict(params, x)
    sampled = ThermalCovariance(net, 0.5, SPIN_SAMPLING).predict(params, x, jax.random.key(3))
    # 8000 draws of ±1 outputs: standard error below 0.02 even with autocorrelation time 3.
    np.testing.assert_allclose(sampled, exact, atol=0.08)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda n: ThermalCovariance(n, temperature=0.0), "temperature must be finite and > 0"),
        (lambda n: ThermalCovariance(n, temperature=-1.0), "temperature must be finite and > 0"),
        (lambda n: ThermalNudged(n, temperature=0.1, beta=0.0), "beta must be finite and > 0"),
        (lambda n: ThermalCovariance(n, 0.1, Sampling(method="gibbs")), "needs spins"),
        (lambda n: Sampling(method="langevin"), "unknown sampling method 'langevin'"),
        (lambda n: Sampling(num_chains=1), "num_chains must be an integer ≥ 2"),
        (lambda n: Sampling(tempering=1), "tempering must be 0"),
        (lambda n: ThermalExact(LayeredNetwork((2, 3, 1))), "spin network or a QuadraticNetwork"),
        (lambda n: ThermalExact(SpinNetwork.layered((2, 11, 10))), "exceeds the limit of 20"),
        (
            lambda n: ThermalCovariance(LayeredNetwork((2, 3, 1), activation="hard_sigmoid")),
            "use a smooth activation",
        ),
    ],
)
def test_bad_thermal_configuration_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build(QuadraticNetwork((2, 3, 1)))


def test_spin_sampler_mismatch_is_named():
    with pytest.raises(ValueError, match="needs continuous states"):
        ThermalCovariance(SpinNetwork.layered((2, 3, 1)), 0.1, Sampling(method="nuts"))


@pytest.mark.parametrize("start", ["relaxed", "annealed", "dispersed"])
def test_every_chain_start_gives_the_exact_gradient(quadratic_problem, start):
    net, params, x, targets = quadratic_problem
    exact = ThermalExact(net, 0.2)(params, x, targets)
    # NUTS_SAMPLING's warmup: the relaxed and dispersed starts then run the program that the
    # closed-form test above compiled (the start is an input to it); annealing compiles its own.
    sampling = dataclasses.replace(NUTS_SAMPLING, start=start)
    estimate = ThermalCovariance(net, 0.2, sampling)(params, x, targets, jax.random.key(40))
    z = z_scores(estimate, exact.grad)
    assert np.max(np.abs(z)) < K, z


def test_annealed_start_for_spins(spin_problem):
    net, params, x, targets = spin_problem
    exact = ThermalExact(net, 0.5)(params, x, targets)
    sampling = dataclasses.replace(SPIN_SAMPLING, start="annealed")
    estimate = ThermalCovariance(net, 0.5, sampling)(params, x, targets, jax.random.key(41))
    assert np.max(np.abs(z_scores(estimate, exact.grad))) < K


def test_bad_starts_are_named():
    with pytest.raises(ValueError, match="unknown start 'hot'"):
        Sampling(start="hot")
    with pytest.raises(ValueError, match="cannot be combined with tempering"):
        Sampling(start="annealed", tempering=3)
    with pytest.raises(ValueError, match=r"dtype must be one of \(None, 'float32'\), got 'f16'"):
        Sampling(dtype="f16")
    with pytest.raises(ValueError, match="needs continuous states"):
        Sampling(start="relaxed").resolve_start(SpinNetwork.layered((2, 3, 1)))


def test_one_tempering_run_serves_every_rung_of_a_ladder(spin_problem):
    from thermoeqprop.estimators.thermal import draw_states

    net, params, x, targets = spin_problem
    ladder = np.array([0.5, 0.8, 1.3])
    drawn = draw_states(net, SPIN_SAMPLING, params, x, targets, 0.0, ladder, jax.random.key(50))
    assert drawn.trace.samples.shape[3] == 3
    for rung, temperature in enumerate(ladder):
        estimator = ThermalCovariance(net, float(temperature), SPIN_SAMPLING)
        stats = estimator.statistics(params, drawn.trace.samples[:, :, :, rung, :], x, targets)
        grad, stderr, *_ = estimator.combine([stats])
        exact = flat(ThermalExact(net, float(temperature))(params, x, targets).grad)
        assert np.max(np.abs((grad - exact) / stderr)) < K
    with pytest.raises(ValueError, match="strictly increasing"):
        draw_states(net, SPIN_SAMPLING, params, x, targets, 0.0, ladder[::-1], jax.random.key(0))


@pytest.mark.parametrize("problem", ["spin_problem", "quadratic_problem"])
def test_float32_throughput_mode_matches_the_exact_gradient(problem, request):
    """x64 off (what THERMOEQPROP_X64=0 gives): states, statistics and diagnostics in float32,
    against the float64 exact gradient. Tolerance: K MCSE, plus float32 rounding of the
    accumulated sums (1e-4 of the largest exact component: sums of 10^4 draws of O(1) terms
    keep about 4 digits), which is below a tenth of the MCSE here, so the check stays a
    Monte Carlo one."""
    net, params, x, targets = request.getfixturevalue(problem)
    exact = ThermalExact(net, 0.5)(params, x, targets).grad
    rounding = 1e-4 * np.max(np.abs(flat(exact)))
    sampling = SPIN_SAMPLING if net.is_spin else NUTS_SAMPLING
    with jax.enable_x64(False):
        single = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
        x32, y32 = np.asarray(x, np.float32), np.asarray(targets, np.float32)
        estimates = [
            ThermalCovariance(net, 0.5, sampling)(single, x32, y32, jax.random.key(40)),
            ThermalNudged(net, 0.5, beta=0.05, sampling=sampling)(
                single, x32, y32, jax.random.key(41)
            ),
        ]
    for estimate in estimates:
        leaves = jax.tree_util.tree_leaves((estimate.grad, estimate.stderr, estimate.loss))
        assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
        stderr = flat(estimate.stderr)
        assert np.all(rounding < 0.1 * stderr)
        z = (flat(estimate.grad) - flat(exact)) / (stderr + rounding)
        assert np.max(np.abs(z)) < K, z

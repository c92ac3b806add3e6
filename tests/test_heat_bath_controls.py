"""Heat-bath control variates of collapsed spin sampling against enumeration
(docs/mathematics.md, "Heat-bath control variates").

``samplers.layered_collapsed_gibbs`` reports each update's innovation ``s_j − E[s_j | the
other kept spins]``; ``control_variates="heat_bath"`` regresses the estimators' series on them
(cross-fitted between two folds of chains). References: the innovations against the exact
conditional means of the kept class's marginal (enumeration of all states); the gradients by
enumeration (``ThermalExact``), the nudged one against its exact finite-β expectation.

False-failure budget. ``test_innovations_are_exact`` is deterministic given the draws (1e-10),
at T = 2, where a fifth of the updates being uncertain holds for any start (at T = 0.7 a chain
of the 2-spin class could sit in one configuration: 2 failures in seed sets 1–20).
``test_estimates_match_enumeration`` checks 2 estimators × (39 + 35) = 148 components at
K = 4 (P(|z| > 4) = 6.3e-5 each: 0.9 %; 2 seeds in the runs of tests/README.md's table);
``test_coverage_of_the_reported_mcse`` 200 independent runs per estimator, binomial standard
deviation of the coverage at most 1.5 %, against [0.90, 0.99] (below 0.5 % each, as in
tests/test_collapsed_spins.py);
``test_smaller_mcse_than_collapsed_alone`` rests on the exact asymptotic variances of
``benchmarks/_vr_collapsed_spins.py`` (MCSE ratio 1.74 over collapsed sampling alone and 4.9
over plain block Gibbs on the 9-spin network at T = 0.5), tested at 1.4 and 3.5 with MCSE
norms of 8 × 1500 draws per example, good to a few per cent.
``test_the_reported_gain_is_the_ratio_of_the_mcse_norms`` is exact given the draws (1e-10);
the estimator's gain was 1.52–1.60 over 40 seeds (keys 1000–1039), tested at > 1.2.
``test_temperature_sweep_with_heat_bath_controls`` checks 2 temperatures × 39 components at
K = 4.5 (6.8e-6 each: 0.05 %).
The problems are built under seed_offset.fixed: the budget is about the samplers' draws.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The problems and sampling of the collapsed-spin tests (the same networks).
from test_collapsed_spins import (
    BETA,
    COLLAPSED,
    T,
    coverage_over_runs,
    flat,
    problem,
    stderr_norms,
)

import samplers
from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact, ThermalNudged
from thermoeqprop.estimators.thermal import draw_states
from thermoeqprop.models import LayeredNetwork
from thermoeqprop.sweep import temperature_sweep

#: Measured on fresh seeds by tests/false_failure_budget.py (module docstring).
FALSE_FAILURE_BUDGET = 3.0e-2


@pytest.fixture(scope="module")
def nine_spins():
    return problem((3, 4, 3, 2))


@pytest.fixture(scope="module")
def one_output():
    return problem((3, 4, 3, 1))


@pytest.mark.parametrize("parity", [0, 1])
def test_innovations_are_exact(parity):
    temperature = 2.0  # a broad marginal: many uncertain updates whatever the chain's start
    """Every update's innovation is its new spin minus the exact conditional mean of that spin
    under the kept class's marginal, given the other kept spins at that moment (those updated
    earlier in the sweep from this draw, the later ones from the previous draw)."""
    rng = np.random.default_rng(0)
    sizes = (3, 2, 3)
    couplings = (jnp.asarray(rng.normal(0, 0.8, (3, 2))), jnp.asarray(rng.normal(0, 0.8, (2, 3))))
    fields = jnp.asarray(rng.normal(0, 0.5, 8))
    states = np.asarray(samplers.spin_states(jnp.arange(2**8), 8, dtype=float))
    energies = np.asarray(
        jax.vmap(lambda s: samplers.layered_ising_energy(s, couplings, fields))(states)
    )
    kept = [0, 1, 2, 5, 6, 7] if parity == 0 else [3, 4]
    weights = np.exp(-(energies - energies.min()) / temperature)
    bits = 2 ** np.arange(len(kept))
    marginal = np.bincount((states[:, kept] > 0) @ bits, weights, minlength=2 ** len(kept))

    kernel = samplers.layered_collapsed_gibbs(lambda c: c, sizes, parity)
    starts = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, (2, 8)), 1.0, -1.0)
    trace = samplers.sample(jax.random.key(2), kernel, starts, (couplings, fields), temperature,
                            num_samples=60, num_warmup=0)  # fmt: skip
    drawn = np.asarray(trace.samples)[..., kept]  # (chain, draw, k)
    innovations = np.asarray(trace.info.innovations)
    assert innovations.shape == drawn.shape
    checked = 0
    for chain in range(drawn.shape[0]):
        for t in range(1, drawn.shape[1]):
            for j in range(len(kept)):
                moment = np.concatenate([drawn[chain, t, :j], drawn[chain, t - 1, j:]])
                up, down = moment.copy(), moment.copy()
                up[j], down[j] = 1.0, -1.0
                p_up, p_down = (marginal[int((s > 0) @ bits)] for s in (up, down))
                mean = (p_up - p_down) / (p_up + p_down)
                want = drawn[chain, t, j] - mean
                np.testing.assert_allclose(innovations[chain, t, j], want, atol=1e-10)
                checked += 1
    assert checked == 2 * 59 * len(kept)
    # Some updates are uncertain: an innovation is not just ±(1 − |mean|) of sure spins.
    assert np.mean(np.abs(innovations) > 0.05) > 0.2


def cases(net, params, x, targets, sampling):
    return (
        (ThermalCovariance(net, T, sampling, control_variates="heat_bath"),
         flat(ThermalExact(net, T)(params, x, targets).grad)),
        (ThermalNudged(net, T, BETA, sampling=sampling, control_variates="heat_bath"),
         flat(ThermalExact(net, T).nudged_gradient(params, x, targets, BETA))),
    )  # fmt: skip


@pytest.mark.parametrize("which", ["nine_spins", "one_output"])
def test_estimates_match_enumeration(which, request):
    net, params, x, targets = request.getfixturevalue(which)
    for estimator, want in cases(net, params, x, targets, COLLAPSED):
        estimate = estimator(params, x, targets, jax.random.key(400))
        stderr = flat(estimate.stderr)
        assert np.all(stderr > 0)
        z = (flat(estimate.grad) - want) / stderr
        assert np.max(np.abs(z)) < 4.0, (type(estimator).__name__, z)


@pytest.mark.parametrize("kind", ["covariance", "nudged"])
def test_coverage_of_the_reported_mcse(nine_spins, kind):
    """200 independent runs of 4 chains × 200 draws (disjoint chains of one sampler call per
    phase, each run's coefficients fitted on its own two folds of 2 chains): the fraction of
    |estimate − exact| < 1.96 MCSE over runs and components."""
    net, params, x, targets = nine_spins
    (covariance, exact_cov), (nudged, exact_nudged) = cases(
        net, params, x, targets, Sampling(num_chains=4, num_samples=200, collapse=True)
    )
    if kind == "covariance":
        estimator, betas, exact = covariance, (0.0,), exact_cov
    else:
        estimator, betas, exact = nudged, (BETA, -BETA), exact_nudged
    coverage = coverage_over_runs(estimator, nine_spins, betas, exact, jax.random.key(78),
                                  innovations=True)  # fmt: skip
    assert 0.90 <= coverage <= 0.99, (kind, coverage)


def test_smaller_mcse_than_collapsed_alone(nine_spins):
    """At equal sweeps, against collapsed sampling without controls and plain block Gibbs."""
    net = nine_spins[0]
    block = Sampling(num_chains=8, num_samples=1500, num_warmup=200)
    estimators = {
        "plain": ThermalCovariance(net, T, block, rao_blackwell=False),
        "collapsed": ThermalCovariance(net, T, COLLAPSED),
        "heat-bath controls": ThermalCovariance(net, T, COLLAPSED, control_variates="heat_bath"),
    }
    norms = stderr_norms(estimators, nine_spins, jax.random.key(12))
    assert norms["collapsed"] / norms["heat-bath controls"] > 1.4, norms
    assert norms["plain"] / norms["heat-bath controls"] > 3.5, norms


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda net: ThermalCovariance(net, T, Sampling(), control_variates="heat_bath"),
         "needs a layered spin network and Sampling(collapse=True); got LayeredSpinNetwork "
         "with collapse=None"),
        (lambda net: ThermalCovariance(LayeredNetwork((2, 3, 1)), T,
                                       control_variates="heat_bath"),
         "got LayeredNetwork with collapse=None: for continuous states use 'zv1'"),
        (lambda net: ThermalCovariance(net, T, Sampling(num_chains=2, num_samples=30,
                                                        collapse=True),
                                       control_variates="heat_bath"),
         "needs at least 40 draws per half"),
        (lambda net: ThermalCovariance(net, T, Sampling(collapse=True), control_variates="zv3"),
         "unknown control_variates 'zv3'"),
    ],
)  # fmt: skip
def test_bad_settings_are_named(nine_spins, build, message):
    with pytest.raises(ValueError) as error:
        build(nine_spins[0])
    assert message in str(error.value)


def test_statistics_need_the_innovations(nine_spins):
    net, params, x, targets = nine_spins
    estimator = ThermalCovariance(net, T, COLLAPSED, control_variates="heat_bath")
    states = draw_states(net, COLLAPSED, params, x, targets, 0.0, T, jax.random.key(3)).states
    with pytest.raises(ValueError, match="needs the sampler's innovations of these draws"):
        estimator.statistics(params, states, x, targets)


def test_the_reported_gain_is_the_ratio_of_the_mcse_norms(nine_spins):
    """``control_variate_gain`` is the estimate's ‖MCSE‖ as its ``combine`` would give it
    from the fold-centred series without the controls, over the ‖MCSE‖ it reports (each by
    samplers.mcse_mean_many), for the covariance and the symmetric nudged estimator; and at
    T = 0.5 the controls gain (exact asymptotic ratio 1.74 over collapsed sampling alone,
    module docstring)."""
    from thermoeqprop.estimators._control_variates import chain_folds, gain

    net, params, x, targets = nine_spins
    covariance, nudged = (estimator for estimator, _ in cases(net, params, x, targets, COLLAPSED))
    checked = ((covariance, (0.0,), 1 / T), (nudged, (BETA, -BETA), 0.5 / BETA))
    for estimator, betas, scale in checked:
        merged, plain2, with2 = [], 0.0, 0.0
        for i, beta in enumerate(betas):
            drawn = draw_states(net, COLLAPSED, params, x, targets, beta, T, jax.random.key(21 + i))
            stats = estimator.statistics(params, drawn.states, x, targets, beta,
                                         drawn.trace.info.innovations)  # fmt: skip
            name = estimator.needed_series[0]
            plain = np.concatenate([
                np.asarray(getattr(estimator._series(params, drawn.states[:, a:b], x, targets,
                                                     beta, 1), name))
                for a, b in chain_folds(drawn.states.shape[1])
            ])  # fmt: skip
            plain2 += np.sum(np.asarray(samplers.mcse_mean_many(plain)) ** 2)
            with2 += np.sum(np.asarray(samplers.mcse_mean_many(getattr(stats, name))) ** 2)
            np.testing.assert_allclose(float(stats.control_mcse2), plain2 if i == 0 else
                                       plain2 - merged[0].control_mcse2, rtol=1e-10)  # fmt: skip
            merged.append(stats)
        combined = estimator.combine(merged)
        np.testing.assert_allclose(np.linalg.norm(combined.stderr), scale * np.sqrt(with2),
                                   rtol=1e-8)  # fmt: skip
        reported = float(gain(estimator, merged, combined)["control_variate_gain"])
        assert reported == pytest.approx(np.sqrt(plain2 / with2), rel=1e-8)
    # The estimator reports it (from draws of its own keys).
    estimate = covariance(params, x, targets, jax.random.key(21))
    assert float(estimate.diagnostics["control_variate_gain"]) > 1.2, estimate.diagnostics
    assert (
        "control_variate_gain"
        not in ThermalCovariance(net, T, COLLAPSED)(
            params, x, targets, jax.random.key(21)
        ).diagnostics
    )


def test_temperature_sweep_with_heat_bath_controls(nine_spins, tmp_path):
    """The sweep builds its named estimators with the controls, records them, and their
    estimates stay within their MCSEs of the exact gradient at every temperature."""
    net, params, x, targets = nine_spins
    sampling = Sampling(num_chains=4, num_samples=800, num_warmup=100, collapse=True)
    ds = temperature_sweep(net, params, x, targets, [0.5, 1.0], estimators=["covariance"],
                           seeds=[0], sampling=sampling, control_variates="heat_bath",
                           results_dir=tmp_path / "sweep")  # fmt: skip
    z = np.asarray(ds.z_score)
    assert np.all(np.isfinite(z)) and np.max(np.abs(z)) < 4.5, z
    config = json.loads((tmp_path / "sweep" / "config.json").read_text())
    assert config["control_variates"] == "heat_bath"
    with pytest.raises(ValueError, match="needs a layered spin network and Sampling"):
        temperature_sweep(net, params, x, targets, [0.5], estimators=["covariance"], seeds=[0],
                          control_variates="heat_bath")  # fmt: skip


def test_sweep_refuses_controls_an_estimator_does_not_take():
    from thermoeqprop.quantum import classifier_network

    net = classifier_network(2)
    params = net.init_params(jax.random.key(0))
    x, targets = jnp.ones((2, 2)), jnp.ones((2, 1))
    with pytest.raises(ValueError, match="the quantum 'covariance' estimator takes no control"):
        temperature_sweep(net, params, x, targets, [0.5], estimators=["covariance"], seeds=[0],
                          control_variates="zv1")  # fmt: skip

"""Collapsed spin sampling against enumeration (docs/mathematics.md, "Collapsed spin sampling").

``samplers.layered_collapsed_gibbs`` draws one parity class of a layered Ising energy from its
exact marginal (the other class summed out); the estimators with ``Sampling(collapse=True)``
average the summed class by its conditional expectations given the drawn one. References: the
marginal of the kept class and its free energy by a sum over all states; the gradients by
enumeration (``ThermalExact``), and for the nudged estimator its exact finite-β expectation.

False-failure budget. ``test_marginal_matches_enumeration`` checks 64 + 4 configuration
frequencies at K = 4.5 MCSE (P(|z| > 4.5) = 6.8e-6 each: 0.05 %);
``test_estimates_match_enumeration`` 2 seeds × 2 estimators × (39 + 35) = 296 components at
K = 4 (6.3e-5 each: 1.9 %); ``test_coverage_of_the_reported_mcse`` 200 independent runs per
estimator, whose coverage has binomial standard deviation at most 1.5 %, against [0.90, 0.99]
(below 0.5 % each, as in tests/test_rao_blackwell.py); ``test_smaller_mcse_than_block_gibbs``
rests on the exact asymptotic variances of ``benchmarks/_vr_collapsed_spins.py`` (MCSE ratio
2.8 against plain block Gibbs, 2.0 against its conditional expectations on the 9-spin network
at T = 0.5), tested at 2.0 and 1.4 with MCSE norms from 8 × 1500 draws per example, good to a
few per cent.
The problems are built under seed_offset.fixed: the budget is about the samplers' draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seed_offset
from jax.flatten_util import ravel_pytree

import samplers
from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact, ThermalNudged
from thermoeqprop.estimators._collapsed import collapses
from thermoeqprop.estimators.thermal import draw_states
from thermoeqprop.models import LayeredNetwork, SpinNetwork

#: Measured on fresh seeds by tests/false_failure_budget.py (module docstring).
FALSE_FAILURE_BUDGET = 3.0e-2

T = 0.5
BETA = 0.05
COLLAPSED = Sampling(num_chains=8, num_samples=1500, num_warmup=200, collapse=True)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@seed_offset.fixed
def problem(layer_sizes, batch=3):
    net = SpinNetwork.layered(layer_sizes, init_gain=0.8)
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (batch, layer_sizes[0]))
    targets = net.encode_labels(jnp.arange(batch) % net.num_classes)
    return net, params, x, targets


@pytest.fixture(scope="module")
def nine_spins():
    return problem((3, 4, 3, 2))  # 9 spins (classes of 6 and 3), 39 parameters


@pytest.fixture(scope="module")
def one_output():
    return problem((3, 4, 3, 1))  # 8 spins (classes of 5 and 3), one output spin


@seed_offset.fixed
def ising():
    """A layered Ising energy on layers (3, 2, 3) with strong couplings, and its states."""
    rng = np.random.default_rng(0)
    couplings = (jnp.asarray(rng.normal(0, 0.8, (3, 2))), jnp.asarray(rng.normal(0, 0.8, (2, 3))))
    fields = jnp.asarray(rng.normal(0, 0.5, 8))
    states = np.asarray(samplers.spin_states(jnp.arange(2**8), 8, dtype=float))
    energies = np.asarray(
        jax.vmap(lambda s: samplers.layered_ising_energy(s, couplings, fields))(states)
    )
    return (couplings, fields), states, energies


KEPT = {0: [0, 1, 2, 5, 6, 7], 1: [3, 4]}  # layers 1 and 3, or layer 2, of (3, 2, 3)


@pytest.mark.parametrize("parity", [0, 1])
def test_marginal_matches_enumeration(parity):
    context, states, energies = ising()
    kept = KEPT[parity]
    kernel = samplers.layered_collapsed_gibbs(lambda c: c, (3, 2, 3), parity)
    starts = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, (8, 8)), 1.0, -1.0)
    trace = samplers.sample(jax.random.key(2), kernel, starts, context, 0.7, num_samples=4000,
                            num_warmup=100)  # fmt: skip
    drawn = np.asarray(trace.samples)  # (chain, draw, 8)
    summed = [i for i in range(8) if i not in kept]
    assert np.all(drawn[..., summed] == 0) and np.all(np.abs(drawn[..., kept]) == 1)
    # Exact marginal of the kept spins, and each configuration's frequency with its MCSE.
    weights = np.exp(-(energies - energies.min()) / 0.7)
    weights /= weights.sum()
    bits = 2 ** np.arange(len(kept))
    exact = np.bincount((states[:, kept] > 0) @ bits, weights, minlength=2 ** len(kept))
    labels = (drawn[..., kept] > 0) @ bits  # (chain, draw)
    indicators = (labels[..., None] == np.arange(2 ** len(kept))).astype(float)
    diagnostics = samplers.mean_diagnostics_many(jnp.asarray(indicators))
    frequency = indicators.mean(axis=(0, 1))
    common = exact > 2e-3  # rarer ones may not be visited in 32,000 draws (MCSE 0)
    z = (frequency[common] - exact[common]) / np.asarray(diagnostics.mcse)[common]
    assert np.max(np.abs(z)) < 4.5, z
    assert np.all(frequency[~common] < 5e-3)
    # The recorded energy is the marginal free energy −T log Σ_summed exp(−E/T), exactly.
    final = np.asarray(trace.final_state.position)
    for chain in range(2):
        match = np.all(states[:, kept] == final[chain, kept], axis=1)
        free = -0.7 * np.log(np.sum(np.exp(-energies[match] / 0.7)))
        np.testing.assert_allclose(float(trace.final_state.energy[chain]), free, rtol=1e-10)


@pytest.mark.parametrize("which", ["nine_spins", "one_output"])
def test_estimates_match_enumeration(which, request):
    net, params, x, targets = request.getfixturevalue(which)
    cases = (
        (ThermalCovariance(net, T, COLLAPSED), flat(ThermalExact(net, T)(params, x, targets).grad)),
        (ThermalNudged(net, T, BETA, sampling=COLLAPSED),
         flat(ThermalExact(net, T).nudged_gradient(params, x, targets, BETA))),
    )  # fmt: skip
    for seed in range(2):
        for estimator, want in cases:
            assert collapses(estimator)
            estimate = estimator(params, x, targets, jax.random.key(300 + seed))
            stderr = flat(estimate.stderr)
            assert np.all(stderr > 0)
            z = (flat(estimate.grad) - want) / stderr
            assert np.max(np.abs(z)) < 4.0, (type(estimator).__name__, seed, z)


@pytest.mark.parametrize("kind", ["covariance", "nudged"])
def test_coverage_of_the_reported_mcse(nine_spins, kind):
    """200 independent runs of 4 chains × 200 draws (disjoint chains of one sampler call per
    phase): the fraction of |estimate − exact| < 1.96 MCSE over runs and components (the
    nudged estimator against its exact finite-β expectation)."""
    net, params, x, targets = nine_spins
    if kind == "covariance":
        estimator, betas = ThermalCovariance(net, T, Sampling(collapse=True)), (0.0,)
        exact = flat(ThermalExact(net, T)(params, x, targets).grad)
    else:
        estimator = ThermalNudged(net, T, BETA, sampling=Sampling(collapse=True))
        betas = (BETA, -BETA)
        exact = flat(ThermalExact(net, T).nudged_gradient(params, x, targets, BETA))
    coverage = coverage_over_runs(estimator, nine_spins, betas, exact, jax.random.key(77))
    assert 0.90 <= coverage <= 0.99, (kind, coverage)


def coverage_over_runs(estimator, problem, betas, exact, rng_key, innovations=False):
    """The fraction of |estimate − exact| < 1.96 MCSE over 200 independent runs of 4 chains ×
    200 collapsed draws (disjoint chains of one sampler call per phase, the phase at
    ``betas[i]`` drawn with ``fold_in(rng_key, i)``) and over components; ``innovations``
    passes each run's heat-bath innovations to the statistics."""
    net, params, x, targets = problem
    runs, chains = 200, 4
    sampling = Sampling(num_chains=runs * chains, num_samples=200, num_warmup=100, collapse=True)

    def grouped(a):  # (batch, runs·chains, …) -> (runs, batch, chains, …)
        return jnp.moveaxis(a.reshape(a.shape[0], runs, chains, *a.shape[2:]), 1, 0)

    drawn = []
    for i, beta in enumerate(betas):
        run = draw_states(net, sampling, params, x, targets, beta, T,
                          jax.random.fold_in(rng_key, i))  # fmt: skip
        drawn.append((grouped(run.states),
                      grouped(run.trace.info.innovations) if innovations else None))  # fmt: skip

    def one_run(phases):
        stats = [estimator.statistics(params, s, x, targets, b, innovations=d)
                 for (s, d), b in zip(phases, betas, strict=True)]  # fmt: skip
        combined = estimator.combine(stats)
        return combined.grad, combined.stderr

    grads, stderrs = jax.vmap(one_run)(drawn)
    return float(np.mean(np.abs(np.asarray(grads) - exact) < 1.96 * np.asarray(stderrs)))


def test_smaller_mcse_than_block_gibbs(nine_spins):
    """At equal sweeps, against plain block Gibbs and against its conditional expectations."""
    net = nine_spins[0]
    block = Sampling(num_chains=8, num_samples=1500, num_warmup=200)
    estimators = {
        "plain": ThermalCovariance(net, T, block, rao_blackwell=False),
        "rao-blackwell": ThermalCovariance(net, T, block),
        "collapsed": ThermalCovariance(net, T, COLLAPSED),
    }
    norms = stderr_norms(estimators, nine_spins, jax.random.key(11))
    assert norms["plain"] / norms["collapsed"] > 2.0, norms
    assert norms["rao-blackwell"] / norms["collapsed"] > 1.4, norms


def stderr_norms(estimators, problem, rng_key):
    """‖MCSE‖ of each estimator's estimate (by name) on ``problem``, all with ``rng_key``."""
    _, params, x, targets = problem
    return {name: np.linalg.norm(flat(estimator(params, x, targets, rng_key).stderr))
            for name, estimator in estimators.items()}  # fmt: skip


def test_predict_averages_the_summed_class(nine_spins):
    """The outputs (in the summed class here) by their conditional means, against the exact
    thermal means: the sampler's zeros would be off by the outputs' size."""
    net, params, x, targets = nine_spins
    sampling = Sampling(num_chains=4, num_samples=4000, num_warmup=100, collapse=True)
    estimator = ThermalCovariance(net, T, sampling)
    predicted = np.asarray(estimator.predict(params, x, jax.random.key(5)))
    states = np.asarray(samplers.spin_states(jnp.arange(2**9), 9, dtype=float))
    for b in range(x.shape[0]):
        energies = np.asarray(jax.vmap(lambda s, b=b: net.energy(params, s, x[b]))(states))
        weights = np.exp(-(energies - energies.min()) / T)
        exact = weights @ states[:, list(net.output_units)] / weights.sum()
        # Means of ±1 values over 16,000 nearly independent draws: sd below 0.01.
        np.testing.assert_allclose(predicted[b], exact, atol=0.04)
        assert np.all(np.abs(exact) > 0.1)


def test_default_keeps_block_gibbs_for_spins(nine_spins):
    net = nine_spins[0]
    assert not collapses(ThermalCovariance(net, T))
    assert collapses(ThermalCovariance(net, T, Sampling(collapse=True)))
    assert collapses(ThermalCovariance(LayeredNetwork((2, 3, 1)), T))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda net: ThermalCovariance(net, T, Sampling(collapse=True), rao_blackwell=False),
         "rao_blackwell=False"),
        (lambda net: ThermalCovariance(net, T, Sampling(method="metropolis", collapse=True)),
         "method 'auto' or 'gibbs' (got 'metropolis')"),
        (lambda net: ThermalCovariance(net, T, Sampling(tempering=3, collapse=True)),
         "tempering=3"),
        (lambda net: ThermalNudged(net, T, BETA, sampling=Sampling(collapse=True), coupled=True),
         "coupled=True"),
        (lambda net: ThermalCovariance(SpinNetwork(num_inputs=1, num_spins=3,
                                                   edges=((0, 1), (1, 2)),
                                                   input_edges=((0, 0),),
                                                   output_units=(2,)),
                                       T, Sampling(collapse=True)),
         "a layered spin network"),
    ],
)  # fmt: skip
def test_what_collapse_needs_is_named(nine_spins, build, message):
    with pytest.raises(ValueError, match="Sampling\\(collapse=True\\) needs") as error:
        build(nine_spins[0])
    assert message in str(error.value)


@pytest.mark.parametrize(
    "sizes, parity, message",
    [((3,), 0, "at least two"), ((3, 2), 2, "kept_parity must be 0 or 1"),
     ((3, 0), 1, "at least two positive")],
)  # fmt: skip
def test_sampler_arguments_are_checked(sizes, parity, message):
    with pytest.raises(ValueError, match=message):
        samplers.layered_collapsed_gibbs(lambda c: c, sizes, parity)

"""Coupled nudged phases (docs/mathematics.md, "Coupled phases"): the ±β phases run as pairs
of chains driven by common random numbers; each member is an exact chain for its own law, and
the MCSE is that of the paired difference series.

References: the exact finite difference ``[∂θA(β) − ∂θA(−β)]/(2β)`` of ``ThermalExact``, by
enumeration for a 9-spin layered network and by the Gaussian closed form for the quadratic
network (its nudged law is Gaussian too).

False-failure budget: estimates are compared at 4.5 MCSE per component (two-sided 6.8e-6 each;
39 + 17 components, two models); the coverage tests count 200 independent runs × all
components and accept [0.90, 0.99] (observed 0.939 spins, 0.973 quadratic with these seeds;
components of one run are correlated, so the band is wide). Mutation checks: the
independent-phase MCSE formula on coupled draws (observed median ratio to the paired MCSE 2.7
spins, 34 quadratic; coverage 1.0) and independent keys (variance of the difference series 6.6×
and 310× the coupled one) must miss by far more than the tolerance (checked > 1.5, > 0.99 and
> 2.25). Seeds are fixed.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.estimators import Sampling, ThermalExact, ThermalNudged
from thermoeqprop.estimators._statistics import DrawStatistics, _mcse
from thermoeqprop.estimators.thermal import draw_states
from thermoeqprop.models import QuadraticNetwork, SpinNetwork

K = 4.5


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def spin_problem():
    net = SpinNetwork.layered((3, 4, 3, 2), init_gain=0.5)  # 9 spins, 39 parameters
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    return net, params, x, net.encode_labels(jnp.arange(3) % net.num_classes), 0.5, 0.05


def quadratic_problem():
    net = QuadraticNetwork((2, 3, 2))  # 17 parameters
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 2))
    return net, params, x, jnp.ones((3, 2)), 0.1, 0.002


PROBLEMS = {"spins": spin_problem, "quadratic": quadratic_problem}


def exact_difference(net, params, x, targets, temperature, beta):
    exact = ThermalExact(net, temperature)
    high = flat(exact.nudged_energy_grad(params, x, targets, beta))
    low = flat(exact.nudged_energy_grad(params, x, targets, -beta))
    return (high - low) / (2 * beta)


RUNS, CHAINS = 200, 2


def sampling_for(net):
    """``RUNS`` groups of ``CHAINS`` chains (pairs) × 200 draws, in one sampler call."""
    method = "gibbs" if net.is_spin else "hmc"
    return Sampling(method=method, num_chains=RUNS * CHAINS, num_samples=200, num_warmup=100,
                    hmc_steps=8)  # fmt: skip


@pytest.mark.parametrize("which", PROBLEMS)
def test_coupled_estimate_matches_the_exact_finite_difference(which):
    """All 400 pairs of chains of one call: within 4.5 MCSE of the exact finite difference."""
    net, params, x, targets, temperature, beta = PROBLEMS[which]()
    want = exact_difference(net, params, x, targets, temperature, beta)
    estimator = ThermalNudged(net, temperature, beta, sampling=sampling_for(net), coupled=True)
    estimate = estimator(params, x, targets, jax.random.key(11))
    stderr = flat(estimate.stderr)
    assert np.all(stderr > 0)
    z = (flat(estimate.grad) - want) / stderr
    assert np.max(np.abs(z)) < K, (which, np.round(z, 2))


@functools.cache
def paired_runs(which, coupled=True):
    """The problem's energy-gradient series of both phases, (run, chain, draw, P) each:
    ``RUNS`` disjoint groups of ``CHAINS`` chains of one sampler call (coupled: one call on
    pairs; otherwise two calls with their own keys)."""
    net, params, x, targets, temperature, beta = PROBLEMS[which]()
    estimator = ThermalNudged(net, temperature, beta, coupled=coupled)
    sampling, key = sampling_for(net), jax.random.key(7)
    if coupled:
        drawn = draw_states(net, sampling, params, x, targets, (beta, -beta), temperature, key)
        phases = [drawn.states[..., 0, :], drawn.states[..., 1, :]]
    else:
        phases = [draw_states(net, sampling, params, x, targets, b, temperature,
                              jax.random.fold_in(key, i)).states
                  for i, b in enumerate((beta, -beta))]  # fmt: skip
    series = []
    for states, b in zip(phases, (beta, -beta), strict=True):
        runs = states.reshape(states.shape[0], RUNS, CHAINS, *states.shape[2:])

        def energy_grad(s, b=b):
            return estimator.statistics(params, s, x, targets, b).energy_grad

        series.append(jax.vmap(energy_grad)(jnp.moveaxis(runs, 1, 0)))
    return estimator, series


@pytest.mark.parametrize("which", PROBLEMS)
def test_coverage_of_the_paired_mcse(which):
    """200 independent runs of 2 pairs of chains × 200 draws: the paired MCSE covers the exact
    finite difference in 90–99 % of (run, component) cases at nominal 95 %; the MCSE computed
    as if the phases were independent over-covers (and is larger by far)."""
    net, params, x, targets, temperature, beta = PROBLEMS[which]()
    want = exact_difference(net, params, x, targets, temperature, beta)
    estimator, (high, low) = paired_runs(which)

    def one_run(h, lo):
        paired = estimator.combine([_stats(h), _stats(lo)])
        independent = jnp.sqrt(_mcse(h) ** 2 + _mcse(lo) ** 2) / (2 * beta)
        return paired.grad, paired.stderr, independent

    grads, stderrs, independent = (np.asarray(a) for a in jax.vmap(one_run)(high, low))
    error = np.abs(grads - want)
    coverage = float(np.mean(error < 1.96 * stderrs))
    assert 0.90 <= coverage <= 0.99, (which, coverage)
    # The mutation: phases treated as independent. Their MCSE ignores the pairs' correlation.
    ratio = float(np.median(independent / stderrs))
    assert ratio > 1.5, (which, ratio)
    assert float(np.mean(error < 1.96 * independent)) > 0.99


def _stats(series):
    cost = jnp.zeros(series.shape[:2], series.dtype)
    return DrawStatistics(series, None, cost, jnp.zeros((1, 1), series.dtype))


@pytest.mark.parametrize("which", PROBLEMS)
def test_shared_keys_are_what_shrinks_the_variance(which):
    """The difference series of coupled pairs has far less variance than that of the same
    phases drawn with their own keys (the mutation: keys not shared)."""
    variance = {}
    for coupled in (True, False):
        _, (high, low) = paired_runs(which, coupled)
        variance[coupled] = float(np.sum(np.var(np.asarray(high - low), axis=(0, 1, 2))))
    assert variance[False] / variance[True] > 2.25, (which, variance)


def test_options_are_checked():
    net, params, x, targets, temperature, beta = spin_problem()
    with pytest.raises(ValueError, match="coupled must be True or False"):
        ThermalNudged(net, temperature, beta, coupled=1)
    with pytest.raises(ValueError, match="tempering"):
        ThermalNudged(net, temperature, beta, sampling=Sampling(tempering=3), coupled=True)
    with pytest.raises(ValueError, match="control_variates"):
        ThermalNudged(QuadraticNetwork((2, 3, 2)), 0.1, beta, control_variates="zv1",
                      coupled=True)  # fmt: skip

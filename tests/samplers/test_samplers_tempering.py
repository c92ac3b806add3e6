"""Parallel tempering: exact mode weights of a double well, and a temperature sweep of spins.

References (README.md): the tilted double well E(x) = 5 (x² − 1)² + 0.1 x, whose exact
left-well weight at each temperature comes from adaptive quadrature of exp(−E/T) split at the
barrier top; the 7-spin random Ising graph at T = 1, 1.5, 2.25 by enumeration; a Curie–Weiss
ferromagnet of 16 spins (a phase transition at T = 1) for the adaptive ladder.

False-failure budget: 8 + 168 checks of |estimate − exact| < 5 MCSE (ArviZ bulk ESS), each
failing by chance with probability about 5.7e-7 under a normal approximation: below 2e-4 for
the module. The single-chain and ladder tests assert facts that hold with overwhelming
probability (HMC chains at a barrier of 5/T = 20 units of T change sides far less than a
hundredth as often as independent draws would, and their R-hat flags it; the
adapted swap rates are compared with margins many times their noise). The Ising graph is built
under ``seed_offset.fixed`` (samplers_testing): the budget is about the samplers' draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import (
    assert_within_mcse,
    double_well_barrier,
    double_well_energy,
    double_well_left_weight,
    exact_spin_statistics,
    ising_energy,
    random_ising,
    spin_statistics,
)

import samplers

#: The false-failure budget per run of this module, as stated above (176 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 2e-4

K = 5.0
LOW_TEMPERATURE = 0.25
TILT = 0.1


def test_single_hmc_chain_stays_in_its_mode():
    kernel = samplers.hmc(double_well_energy, num_warmup=300, num_steps=8)
    start = jnp.array([[-1.0]] * 4 + [[1.0]] * 4)
    trace = samplers.sample(
        jax.random.key(31), kernel, start, TILT, LOW_TEMPERATURE, num_samples=1000
    )
    left = np.asarray(trace.samples[..., 0] < double_well_barrier(), dtype=float)
    exact = double_well_left_weight(LOW_TEMPERATURE)
    assert 0.6 < exact < 0.8  # neither mode is negligible
    # Stuck: the chains change sides of the barrier less than a hundredth as often as
    # independent draws of the exact law would (2 w (1 − w) per draw: about 3,400 times in
    # these 8,000 draws). Not never: warm-up's early, long steps may carry a chain over (2 of
    # 4 chains at one seed set of 13 in tests/false_failure_budget.py), and one chain of 8
    # crossed during its draws at another.
    changes = int(np.abs(np.diff(left, axis=1)).sum())
    independent = 2 * exact * (1 - exact) * left.size
    assert changes < 0.01 * independent, (changes, independent)
    assert float(np.mean(trace.info.acceptance_rate)) > 0.6  # it is sampling, just stuck
    # Across chains, R-hat flags the failure.
    assert samplers.rhat(left) > 1.5


def test_parallel_tempering_recovers_exact_mode_weights():
    ladder = samplers.geometric_ladder(LOW_TEMPERATURE, 5.0, 8)
    kernel = samplers.parallel_tempering(
        samplers.hmc(double_well_energy, num_warmup=300, num_steps=8)
    )
    # Every chain starts in the minority (right) well at every temperature.
    start = jnp.ones((8, 8, 1))
    trace = samplers.sample(jax.random.key(32), kernel, start, TILT, ladder, num_samples=2000)
    assert trace.samples.shape == (8, 2000, 8, 1)  # (chain, draw, temperature, n)
    left = np.asarray(trace.samples[..., 0] < double_well_barrier(), dtype=float)
    exact = [double_well_left_weight(float(t)) for t in ladder]
    assert_within_mcse(left, exact, K, "left-well weight at every temperature")
    assert np.all(samplers.rhat(left) < 1.05)
    # Swap statistics are recorded per pair, and walkers travel the whole ladder.
    assert trace.info.swap_accepted.shape == (8, 2000, 7)
    rate, probability = samplers.swap_acceptance(trace.info)
    assert rate.shape == (8, 7) and np.all((rate > 0.3) & (rate < 1.0))
    np.testing.assert_allclose(rate.mean(0), probability.mean(0), atol=0.03)
    assert np.all(np.asarray(trace.final_state.round_trips) > 5)
    assert np.all(np.diff(np.asarray(trace.info.round_trips), axis=1) >= 0)


@pytest.mark.parametrize("local", ["metropolis", "gibbs"])
def test_parallel_tempering_samples_every_temperature_of_a_sweep(local):
    couplings, fields = random_ising(7, seed=0)
    context = (couplings, fields)
    if local == "metropolis":
        inner = samplers.metropolis(ising_energy)
    else:
        inner = samplers.block_gibbs(ising_energy, tuple((i,) for i in range(7)))
    ladder = jnp.array([1.0, 1.5, 2.25])
    start = jax.random.rademacher(jax.random.key(2), (4, 3, 7), dtype=float)
    trace = samplers.sample(
        jax.random.key(33),
        samplers.parallel_tempering(inner),
        start,
        context,
        ladder,
        num_samples=2500,
        num_warmup=100,
    )
    for k, temperature in enumerate(ladder):
        exact = exact_spin_statistics(
            samplers.enumerate_spins(ising_energy, 7, context, temperature)
        )
        stats = spin_statistics(trace.samples[:, :, k])
        assert_within_mcse(stats, exact, K, f"{local} PT at T={float(temperature)}")


def test_adaptive_ladder_evens_swap_rates_then_freezes():
    n = 16

    def curie_weiss(s, coupling):
        return -(coupling / n) * 0.5 * (jnp.sum(s) ** 2 - n)

    ladder = samplers.geometric_ladder(0.4, 4.0, 6)
    start = jnp.ones((4, 6, n))
    results = {}
    for adapt in (False, True):
        kernel = samplers.parallel_tempering(
            samplers.metropolis(curie_weiss), adapt_ladder=adapt, num_warmup=500
        )
        trace = samplers.sample(jax.random.key(34), kernel, start, 1.0, ladder, num_samples=400)
        results[adapt] = trace
    _, fixed = samplers.swap_acceptance(results[False].info)
    _, adapted = samplers.swap_acceptance(results[True].info)
    fixed, adapted = fixed.mean(0), adapted.mean(0)
    assert np.ptp(fixed) > 0.4, fixed  # the geometric ladder is badly uneven here
    assert np.ptp(adapted) < 0.15, adapted
    assert adapted.min() > fixed.min() + 0.2
    round_trips = {a: np.asarray(t.final_state.round_trips).sum() for a, t in results.items()}
    assert round_trips[True] > 1.3 * round_trips[False], round_trips
    temperatures = np.asarray(results[True].info.temperatures)  # (chain, draw, R)
    # Frozen after warm-up, shared by all chains, both ends held, still increasing.
    np.testing.assert_array_equal(
        temperatures, np.broadcast_to(temperatures[:1, :1], temperatures.shape)
    )
    final = temperatures[0, 0]
    np.testing.assert_allclose(final[[0, -1]], [0.4, 4.0], rtol=1e-12)
    assert np.all(np.diff(final) > 0)
    assert not np.allclose(final, ladder)


def test_round_trips_and_walkers_follow_the_swaps_exactly():
    # A constant energy makes every proposed swap accepted, so the walkers' moves are known:
    # with two rungs, k swaps give floor(k/2) round trips of walker 0 (it starts at the bottom)
    # plus floor((k-1)/2) of walker 1 (it must reach the bottom first).
    kernel = samplers.parallel_tempering(samplers.metropolis(lambda s, c: 0.0 * jnp.sum(s)))
    trace = samplers.sample(
        jax.random.key(35), kernel, jnp.ones((3, 2, 4)), (), jnp.array([1.0, 2.0]), num_samples=41
    )
    proposed = np.asarray(trace.info.swap_proposed)[..., 0]
    np.testing.assert_array_equal(np.asarray(trace.info.swap_accepted)[..., 0], proposed)
    np.testing.assert_array_equal(np.asarray(trace.info.swap_probability), 1.0)
    swaps = proposed.cumsum(axis=1)
    expected = swaps // 2 + np.maximum(swaps - 1, 0) // 2
    np.testing.assert_array_equal(np.asarray(trace.info.round_trips), expected)
    walker = np.asarray(trace.final_state.walker)
    np.testing.assert_array_equal(walker[:, 0], swaps[:, -1] % 2)
    np.testing.assert_array_equal(np.sort(walker, axis=1), [[0, 1]] * 3)

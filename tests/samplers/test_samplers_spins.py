"""Block Gibbs and Metropolis against exact enumeration.

References (README.md): a random Ising graph of 7 spins (about 60% of pairs coupled) and a
layered 3-4-3 network (couplings between adjacent layers only; the layers are the Gibbs
blocks), both at T = 1. Statistics: every ⟨s_i⟩ and every pair correlation ⟨s_i s_j⟩, i < j.

False-failure budget: 111 checks of |estimate − exact| < 5 MCSE (ArviZ bulk ESS); each fails by
chance with probability about 5.7e-7 under a normal approximation, so the module's budget is
below 1e-4. Each test also shows it can fail: the same draws are compared with the exact
answer at 1.25 T and must be rejected. The graphs are built under ``seed_offset.fixed``
(samplers_testing): the budget is about the samplers' draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import (
    assert_within_mcse,
    exact_spin_statistics,
    ising_energy,
    layered_network,
    random_ising,
    spin_statistics,
)

import samplers

#: The false-failure budget per run of this module, as stated above (111 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 1e-4

K = 5.0
TEMPERATURE = 1.0


def check_against_enumeration(samples, context, what):
    n = samples.shape[-1]
    stats = spin_statistics(samples)
    exact = exact_spin_statistics(samplers.enumerate_spins(ising_energy, n, context, TEMPERATURE))
    assert_within_mcse(stats, exact, K, what)
    wrong = exact_spin_statistics(
        samplers.enumerate_spins(ising_energy, n, context, 1.25 * TEMPERATURE)
    )
    with pytest.raises(AssertionError):
        assert_within_mcse(stats, wrong, K, what)


def random_start(key, shape):
    return jax.random.rademacher(key, shape, dtype=float)


@pytest.mark.parametrize("which", ["metropolis", "single-site gibbs"])
def test_random_graph_marginals_and_pair_correlations(which):
    couplings, fields = random_ising(7, seed=0)
    if which == "metropolis":
        kernel = samplers.metropolis(ising_energy)
    else:
        kernel = samplers.block_gibbs(ising_energy, tuple((i,) for i in range(7)))
    trace = samplers.sample(
        jax.random.key(21),
        kernel,
        random_start(jax.random.key(0), (4, 7)),
        (couplings, fields),
        TEMPERATURE,
        num_samples=2500,
        num_warmup=100,
    )
    assert trace.samples.shape == (4, 2500, 7)
    assert set(np.unique(np.asarray(trace.samples))) == {-1.0, 1.0}
    check_against_enumeration(trace.samples, (couplings, fields), which)


def test_layered_network_block_gibbs():
    couplings, fields, blocks = layered_network()
    kernel = samplers.block_gibbs(ising_energy, blocks)
    trace = samplers.sample(
        jax.random.key(22),
        kernel,
        random_start(jax.random.key(1), (4, 10)),
        (couplings, fields),
        TEMPERATURE,
        num_samples=2500,
        num_warmup=100,
    )
    # The recorded energy is the energy of the recorded state.
    energies = jax.vmap(jax.vmap(lambda s: ising_energy(s, (couplings, fields))))(trace.samples)
    np.testing.assert_allclose(trace.info.energy, energies, rtol=1e-12)
    check_against_enumeration(trace.samples, (couplings, fields), "layered block Gibbs")


def test_spin_energy_checks_reject_unsuitable_energies():
    couplings, fields, blocks = layered_network()
    context = (couplings, fields)
    samplers.check_spin_energy(ising_energy, 10, context, blocks)

    def self_interacting(s, c):
        return ising_energy(s, c) + 0.3 * s[4] ** 2

    with pytest.raises(ValueError, match="not multilinear.*unit 4"):
        samplers.check_spin_energy(self_interacting, 10, context, blocks)
    merged = (blocks[0] + blocks[1], blocks[2])  # layers 0 and 1 interact
    with pytest.raises(ValueError, match="block 0 is not conditionally independent"):
        samplers.check_spin_energy(ising_energy, 10, context, merged)
    # The driver runs the same checks before sampling.
    kernel = samplers.block_gibbs(self_interacting, blocks)
    with pytest.raises(ValueError, match="not multilinear"):
        samplers.sample(jax.random.key(0), kernel, jnp.ones((2, 10)), context, num_samples=5)
    with pytest.raises(ValueError, match="partition"):
        samplers.sample(
            jax.random.key(0),
            samplers.block_gibbs(ising_energy, blocks[:2]),
            jnp.ones((2, 10)),
            context,
            num_samples=5,
        )
    with pytest.raises(ValueError, match="disjoint; unit 3"):
        samplers.block_gibbs(ising_energy, ((0, 1, 2, 3), (3, 4)))
    with pytest.raises(ValueError, match=r"spins must be ±1.0; chain 1 has position\[2\] = 0.5"):
        samplers.sample(
            jax.random.key(0),
            samplers.metropolis(ising_energy),
            jnp.ones((2, 10)).at[1, 2].set(0.5),
            context,
            num_samples=5,
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("sampler", ["gibbs", "metropolis"])
def test_rates_follow_the_energy_dtype(dtype, sampler):
    # The mean of a boolean array is float32 in JAX even with x64 on (conftest.py turns it on).
    couplings, fields, blocks = layered_network()
    context = (jnp.asarray(couplings, dtype), jnp.asarray(fields, dtype))
    if sampler == "gibbs":
        kernel, rate = samplers.block_gibbs(ising_energy, blocks), "flip_rate"
    else:
        kernel, rate = samplers.metropolis(ising_energy), "acceptance_rate"
    start = random_start(jax.random.key(3), (2, 10)).astype(dtype)
    trace = samplers.sample(jax.random.key(4), kernel, start, context, TEMPERATURE, num_samples=5)
    values = getattr(trace.info, rate)
    assert trace.info.energy.dtype == dtype
    assert values.dtype == dtype
    assert np.all((0 <= values) & (values <= 1))


def _layered_form(couplings, fields, blocks):
    """The layered network's couplings as the matrices between adjacent layers."""
    return tuple(
        jnp.asarray(couplings[np.ix_(a, b)]) for a, b in zip(blocks[:-1], blocks[1:], strict=True)
    ), jnp.asarray(fields)


def test_layered_gibbs_matches_enumeration_and_tracks_its_energy():
    couplings, fields, blocks = layered_network()
    context = _layered_form(couplings, fields, blocks)
    kernel = samplers.layered_gibbs(lambda c: c, tuple(len(b) for b in blocks))
    trace = samplers.sample(
        jax.random.key(23),
        kernel,
        random_start(jax.random.key(2), (4, 10)),
        context,
        TEMPERATURE,
        num_samples=2500,
        num_warmup=100,
    )
    check_against_enumeration(trace.samples, (couplings, fields), "layered Gibbs")
    # The energy it carries is the energy of the state it holds, at every draw.
    energies = jax.vmap(jax.vmap(lambda s: ising_energy(s, (couplings, fields))))(trace.samples)
    np.testing.assert_allclose(trace.info.energy, energies, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"couplings of shapes \[\(3, 4\), \(4, 3\)\]"):
        samplers.sample(
            jax.random.key(0), kernel, random_start(jax.random.key(2), (2, 10)),
            (context[0][::-1], context[1]), TEMPERATURE, num_samples=4,
        )  # fmt: skip

"""Parallel tempering with several local steps per swap sweep (``local_steps``).

References (README.md, "Non-reversible tempering"): the 4 × 4 periodic Ising lattice under
checkerboard block Gibbs (exact ⟨m²⟩, ⟨|m|⟩, ⟨E⟩ by enumeration of 2¹⁶ states); an 8-D
Gaussian under an autoregressive local kernel x' = ρ x + √(1 − ρ²) √T ξ, which leaves
N(0, T I) invariant and keeps a correlation ρ per step, so that k steps keep ρᵏ: with ρᵏ ≈ 0
the round-trip rate of NRPT is 1/(2 + 2 Σ r_k/(1 − r_k)) (Syed et al. 2022, Theorem 1), with
ρ = 0.8 and one step it is far lower.

False-failure budget: 48 + 2 checks of |estimate − exact| < 5 MCSE (ArviZ bulk ESS), each
failing by chance with probability about 5.7e-7; the round-trip tolerances are at least 5
standard errors of the rate (stated beside them); the step counts are exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import assert_within_mcse, double_well_energy

import samplers
from samplers._base import Kernel, no_validation

#: The false-failure budget per run of this module, as stated above (50 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 3e-5

K = 5.0
L = 4


def lattice_energy(s, context):
    """Periodic L × L ferromagnet, J = 1: −Σ over nearest-neighbour bonds of s_i s_j."""
    g = s.reshape(L, L)
    return -jnp.sum(g * (jnp.roll(g, 1, 0) + jnp.roll(g, 1, 1)))


def checkerboard() -> tuple[tuple[int, ...], tuple[int, ...]]:
    index = np.arange(L * L).reshape(L, L)
    colour = np.add.outer(np.arange(L), np.arange(L)) % 2
    return tuple(int(i) for i in index[colour == 0]), tuple(int(i) for i in index[colour == 1])


def exact_lattice_statistics(temperature: float) -> np.ndarray:
    ref = samplers.enumerate_spins(
        lattice_energy,
        L * L,
        (),
        temperature,
        observable=lambda s: jnp.stack([jnp.mean(s) ** 2, jnp.abs(jnp.mean(s))]),
    )
    return np.append(np.asarray(ref.expectation), float(ref.mean_energy))


@pytest.mark.parametrize("swaps", ["deterministic", "stochastic"])
def test_several_local_sweeps_per_swap_keep_every_rung_exact(swaps):
    local = samplers.block_gibbs(lattice_energy, checkerboard())
    kernel = samplers.parallel_tempering(local, swaps=swaps, local_steps=3)
    assert kernel is samplers.parallel_tempering(local, swaps=swaps, local_steps=3)
    assert kernel.name == f"parallel tempering (block Gibbs, {swaps} swaps, 3 local steps per swap)"
    ladder = jnp.array([2.0, 2.269, 2.6, 3.0])
    start = jax.random.rademacher(jax.random.key(21), (6, 4, L * L), dtype=float)
    trace = samplers.sample(
        jax.random.key(22), kernel, start, (), ladder, num_samples=1500, num_warmup=30
    )
    m = jnp.mean(trace.samples, axis=-1)
    stats = np.asarray(jnp.stack([m**2, jnp.abs(m), trace.info.local.energy], axis=-1))
    exact = np.stack([exact_lattice_statistics(float(t)) for t in ladder])  # (R, 3)
    assert_within_mcse(stats, exact, K, f"⟨m²⟩, ⟨|m|⟩, ⟨E⟩ at every rung, {swaps}, 3 sweeps")
    wrong = np.stack([exact_lattice_statistics(1.25 * float(t)) for t in ladder])
    with pytest.raises(AssertionError):
        assert_within_mcse(stats[:, :, :1], wrong[:1], K, "at 1.25 T")


def test_local_steps_are_counted_by_the_local_kernel_and_its_warmup_in_swap_steps():
    local = samplers.hmc(double_well_energy, num_warmup=100, num_steps=4)
    kernel = samplers.parallel_tempering(local, local_steps=3)
    assert kernel.num_warmup == math.ceil(100 / 3)
    adaptive = samplers.parallel_tempering(local, local_steps=3, adapt_ladder=True, num_warmup=20)
    assert adaptive.num_warmup == 34  # the local kernel's 34 swap steps outlast the ladder's 20
    ladder = samplers.geometric_ladder(0.5, 4.0, 4)
    trace = samplers.sample(
        jax.random.key(23), kernel, jnp.ones((2, 4, 1)), 0.1, ladder, num_samples=10
    )
    np.testing.assert_array_equal(trace.final_state.iteration, 34 + 10)
    np.testing.assert_array_equal(trace.final_state.replicas.iteration, 3 * (34 + 10))
    more = samplers.resume_tempering(
        jax.random.key(24), kernel, trace.final_state, 0.1, num_samples=5
    )
    np.testing.assert_array_equal(more.final_state.replicas.iteration, 3 * (34 + 10 + 5))
    # The default, one step per swap, is the kernel of before.
    assert samplers.parallel_tempering(local) is samplers.parallel_tempering(local, local_steps=1)


class ARState(NamedTuple):
    position: jax.Array
    energy: jax.Array
    temperature: jax.Array


RHO, DIM, RUNGS = 0.8, 8, 8


def _ar_init(position, context, temperature):
    t = jnp.asarray(temperature, position.dtype)
    return ARState(position, 0.5 * jnp.sum(position**2), t)


def _ar_step(rng_key, state, context):
    noise = jax.random.normal(rng_key, state.position.shape, state.position.dtype)
    x = RHO * state.position + math.sqrt(1 - RHO**2) * jnp.sqrt(state.temperature) * noise
    return state._replace(position=x, energy=0.5 * jnp.sum(x**2)), ()


# Leaves N(0, T I) invariant with a correlation RHO between consecutive steps.
AUTOREGRESSIVE = Kernel(
    init=_ar_init,
    step=_ar_step,
    configuration_fields=("position", "energy"),
    num_warmup=0,
    validate=no_validation,
    name="autoregressive Gaussian",
)


def test_enough_local_steps_reach_the_round_trip_rate_of_perfect_local_exploration():
    # ρ²⁵ ≈ 0.004: 25 local steps per swap decorrelate the energy, so NRPT makes
    # 1/(2 + 2E) round trips per step, E = Σ r_k/(1 − r_k); one step (ρ = 0.8) makes far fewer.
    ladder = samplers.geometric_ladder(1.0, 16.0, RUNGS)
    start = jax.random.normal(jax.random.key(25), (16, RUNGS, DIM))
    rates, predicted, errors = {}, {}, {}
    for k in (1, 25):
        kernel = samplers.parallel_tempering(AUTOREGRESSIVE, local_steps=k)
        first = samplers.sample(jax.random.key(26), kernel, start, (), ladder, num_samples=200)
        trace = samplers.resume_tempering(
            jax.random.key(27), kernel, first.final_state, num_samples=4096
        )
        per_chain = np.asarray(trace.final_state.round_trips - first.final_state.round_trips)
        per_chain = per_chain / 4096
        rejection = 1.0 - np.asarray(trace.info.swap_probability).mean(axis=(0, 1))
        predicted[k] = 1.0 / (2.0 + 2.0 * np.sum(rejection / (1.0 - rejection)))
        rates[k] = per_chain.mean()
        errors[k] = per_chain.std(ddof=1) / np.sqrt(per_chain.size)
        # The ladder's rejections are a property of the rungs' laws, not of the local mixing.
        np.testing.assert_allclose(rejection, rejection.mean(), atol=0.02)
    # Tolerance: 5 standard errors of the 16 chains' mean rate, plus 2 % for the noise of E.
    tolerance = 5 * errors[25] + 0.02 * predicted[25]
    assert abs(rates[25] - predicted[25]) < tolerance, (rates, predicted, errors)
    assert rates[1] < predicted[1] - 5 * errors[1] - 0.2 * predicted[1], (rates, predicted)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_local_steps_are_named(bad):
    with pytest.raises(ValueError, match=rf"local_steps must be an integer >= 1, got {bad!r}"):
        samplers.parallel_tempering(AUTOREGRESSIVE, local_steps=bad)
    with pytest.raises(ValueError, match=r"local_steps must be an integer >= 1"):
        samplers.optimise_schedule(
            jax.random.key(0), AUTOREGRESSIVE, jnp.zeros((2, 3, 2)), (),
            jnp.array([1.0, 2.0, 4.0]), num_rounds=1, local_steps=bad,
        )  # fmt: skip

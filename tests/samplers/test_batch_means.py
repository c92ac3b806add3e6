"""``effective_components`` against the error correlation of a common-factor model, and the
pooled RMS z bounds of tests/pooled_z.py against the exact law they approximate.

The common-factor model ``x_i = a f + √(1 − a²) e_i`` with ``f`` and every ``e_i`` AR(1) of one
coefficient gives the means' errors the correlation ``ρ = a²`` between any two of the ``P``
components, so ``‖R‖²_F = P + P(P − 1) ρ²``. Over ``m`` batch means each off-diagonal estimate
has variance ``(1 − ρ²)² / (m − 1)`` and mean ``ρ − ρ(1 − ρ²) / 2(m − 1)`` to first order, so its
square's mean is ``ρ² + (1 − ρ²)(1 − 2ρ²) / (m − 1)`` (batch means of 30 draws of an AR(1)
of coefficient 0.5 are correlated by about 0.02 between neighbours, which the 5 % allowance on
that noise term covers). The test averages ``P² / ν̂ = ‖R̂‖²_F`` over 60 replicates and compares
it within 4 standard errors (deterministic: fixed NumPy seeds).

The bounds' tails are computed by simulating the exact law of the pooled sum of squared
z-scores, ``Σ_k Σ_i λ_ki χ²_1`` over the eigenvalues of each run's correlation, 2 × 10⁶ times.
Satterthwaite's two-moment fit is conservative below and too light above when one eigenvalue
dominates many small ones: at a nominal 1e-4 the upper tail measured 5.2e-4 for ten runs of 39
components at ρ = 0.5 (``test_thermal``'s spin coverage). The test accepts at most 1.5e-4 below
and 7e-4 above (at 2 × 10⁶ draws a count of 200 has standard deviation 14, one of 1,040 about
32); the modules that use the bounds count 6e-4 per side.
"""

import numpy as np
import pooled_z
import pytest

import samplers


def common_factor(rng, rho, chains=4, draws=900, size=12, phi=0.5):
    """Stationary AR(1) components sharing a factor: their means' errors correlate by rho."""
    noise = rng.normal(size=(chains, draws, size + 1))
    x = np.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * noise[:, t]
    common, own = x[..., :1], x[..., 1:]
    return np.sqrt(rho) * common + np.sqrt(1 - rho) * own


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_effective_components_of_a_common_factor_model(rho):
    rng = np.random.default_rng(7)
    size, chains, draws = 12, 4, 900
    batches = chains * (draws // int(np.sqrt(draws)))
    squared_norms = np.array(
        [size**2 / samplers.effective_components(common_factor(rng, rho)) for _ in range(60)]
    )
    noise = (1 - rho**2) * (1 - 2 * rho**2) / (batches - 1)
    expected = size + size * (size - 1) * (rho**2 + noise)
    stderr = squared_norms.std(ddof=1) / np.sqrt(squared_norms.size)
    allowance = 4 * stderr + 0.05 * size * (size - 1) * abs(noise)
    assert abs(squared_norms.mean() - expected) < allowance, (squared_norms.mean(), expected)


def test_disagreeing_chains_count_as_one_shared_error():
    rng = np.random.default_rng(3)
    independent = rng.normal(size=(4, 400, 10))
    assert samplers.effective_components(independent) > 8
    # Each chain off by its own amount in every component: the pooled means share that error.
    shifted = independent + 3.0 * rng.normal(size=(4, 1, 1))
    assert samplers.effective_components(shifted) < 1.5


def test_constant_components_are_left_out():
    rng = np.random.default_rng(4)
    varying = rng.normal(size=(2, 100, 5))
    with_constants = np.concatenate([varying, np.full((2, 100, 3), 0.7)], axis=2)
    assert samplers.effective_components(with_constants) == samplers.effective_components(varying)
    assert np.isnan(samplers.effective_components(np.full((2, 100, 3), 0.7)))


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 5)])
def test_too_few_draws_are_refused_with_the_shape(shape):
    with pytest.raises(ValueError, match=r"at least 4 draws per chain, got shape"):
        samplers.effective_components(np.zeros(shape))


def equicorrelated(size, rho):
    """Eigenvalues of the size × size correlation matrix with every off-diagonal rho."""
    return np.array([1 + (size - 1) * rho] + [1 - rho] * (size - 1))


# (runs, components, ρ): the sweep's quadratic (4 runs of 13 components moving nearly as one) and
# tempered spin runs, test_thermal's spin coverage, one run of one dominant mode, independence.
CASES = [(4, 13, 0.9), (3, 17, 0.6), (10, 39, 0.5), (1, 17, 0.99), (4, 13, 0.0)]


@pytest.mark.parametrize(("runs", "size", "rho"), CASES)
def test_pooled_rms_bounds_hold_their_tails(runs, size, rho):
    rng = np.random.default_rng(11)
    sims, tail = 2_000_000, 1e-4
    eigenvalues = equicorrelated(size, rho)
    # One run's Σ λ_i χ²_1 with one large eigenvalue and size − 1 equal ones: two χ² draws.
    total = np.zeros(sims)
    for _ in range(runs):
        total += eigenvalues[0] * rng.chisquare(1, sims)
        total += eigenvalues[1] * rng.chisquare(size - 1, sims) if size > 1 else 0.0
    rms = np.sqrt(total / (runs * size))
    dof = size**2 / np.sum(eigenvalues**2)
    low, high = pooled_z.rms_bounds([size] * runs, [dof] * runs, tail)
    assert np.mean(rms < low) < 1.5 * tail
    assert np.mean(rms > high) < 7 * tail


def test_pooled_dof_refuses_what_is_not_a_count():
    with pytest.raises(ValueError, match="positive counts and dofs"):
        pooled_z.pooled_dof([13, 13], [1.3, 0.0])

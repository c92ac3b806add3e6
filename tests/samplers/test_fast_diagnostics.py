"""The vectorised ESS/MCSE/R-hat agree with ArviZ's one-at-a-time computations."""

import arviz as az
import numpy as np
import pytest

from samplers import ess_mean_many, mcse_mean_many, rhat_split_many


def ar1(rng, phi, chains, draws, size):
    noise = rng.normal(size=(chains, draws, size))
    x = np.zeros_like(noise)
    for t in range(draws):
        x[:, t] = (phi * x[:, t - 1] if t else 0.0) + noise[:, t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9, 0.99, -0.5])
@pytest.mark.parametrize(("chains", "draws"), [(4, 200), (2, 51), (8, 1000), (3, 9)])
def test_agrees_with_arviz(phi, chains, draws):
    x = ar1(np.random.default_rng(7), phi, chains, draws, 6)
    ess = np.array([az.ess(x[:, :, i], method="mean") for i in range(6)])
    mcse = np.array([az.mcse(x[:, :, i], method="mean") for i in range(6)])
    np.testing.assert_allclose(ess_mean_many(x), ess, rtol=1e-10)
    np.testing.assert_allclose(mcse_mean_many(x), mcse, rtol=1e-10)


def test_split_rhat_flags_chains_that_disagree():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 500, 2))
    stuck = mixed + np.array([0.0, 0.0, 3.0, 3.0])[:, None, None]
    assert np.all(rhat_split_many(mixed) < 1.01)
    assert np.all(rhat_split_many(stuck) > 1.5)


def test_constant_series_and_bad_shapes():
    x = np.ones((2, 10, 3))
    np.testing.assert_array_equal(mcse_mean_many(x), 0.0)
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess_mean_many(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(chain, draw, \*event\)"):
        ess_mean_many(np.ones(5))

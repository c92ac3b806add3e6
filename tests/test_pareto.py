"""Pareto smoothing of importance weights (docs/mathematics.md, "Pareto smoothing"): the
smoothed weights against ArviZ's ``psislw``, the rows it leaves alone, the option's routes and
refusals, and what smoothing does to a self-normalised estimate whose weights are heavy-tailed
(an exact answer: a Gaussian second moment drawn from a narrower Gaussian).

The estimators with smoothing on (the default of importance sampling) are checked against
exact gradients, with the coverage of their MCSE, in tests/test_importance.py,
tests/test_allocation.py and tests/test_fallback.py.

False-failure budget: the checks against ArviZ, the rows left alone and the options are
deterministic. The heavy-tailed check compares two errors over 2,000 independent estimates
with fixed seeds; over 8 seeds at 1,000 estimates the ratio of root-mean-square errors was
0.50–0.78 (asserted under 0.9) and the smoothed bias 0.23–0.33 of its RMS error (asserted
under 0.45): its false-failure probability is far below 1e-3.
"""

import dataclasses

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conditional import TWO_UNIT_PARAMS, TWO_UNIT_X, TWO_UNIT_Y, TWO_UNITS

from thermoeqprop.estimators import Sampling, ThermalCovariance
from thermoeqprop.estimators._pareto import (
    normalised_weights,
    pareto_khat,
    pareto_smoothed,
    weights_of,
)
from thermoeqprop.estimators.thermal import _draw_weights

#: The false-failure budget per run of this module, as stated above.
FALSE_FAILURE_BUDGET = 1e-3


def _gpd_log_weights(shape, tail, seed=3):
    u = np.random.default_rng(seed).uniform(size=shape)
    return np.log((u ** (-tail) - 1.0) / tail)  # GPD(k = tail) draws, as log weights


@pytest.mark.parametrize("shape", [(4, 300), (3, 2, 500)])
@pytest.mark.parametrize("tail", [0.2, 0.6, 1.1])
def test_smoothed_weights_match_arviz(shape, tail):
    """Each row's draws (the axes after the first) smoothed as ArviZ's ``psislw`` smooths one
    vector of log weights, to rounding (both normalised)."""
    log_w = _gpd_log_weights(shape, tail)
    ours = np.asarray(pareto_smoothed(jnp.asarray(log_w))).reshape(shape[0], -1)
    for row, smoothed in zip(log_w.reshape(shape[0], -1), ours, strict=True):
        theirs, _ = az.psislw(row.copy())  # normalised: logsumexp 0
        got = smoothed - jax.scipy.special.logsumexp(smoothed)
        np.testing.assert_allclose(got, theirs, rtol=1e-7, atol=1e-9)


def test_smoothing_keeps_the_order_and_the_largest_weight():
    """Only the tail's ``M`` weights change, they keep their order, and none exceeds the
    largest raw weight (so the smoothed k̂ of a row is never larger)."""
    log_w = _gpd_log_weights((2, 400), 0.8)
    smoothed = np.asarray(pareto_smoothed(jnp.asarray(log_w)))
    for raw, new in zip(log_w, smoothed, strict=True):
        changed = np.flatnonzero(raw != new)
        assert 0 < changed.size <= 60  # M = ⌈min(400/5, 3√400)⌉ = 60
        assert set(changed) <= set(np.argsort(raw)[-60:])
        np.testing.assert_array_equal(np.argsort(raw[changed]), np.argsort(new[changed]))
        assert new.max() <= raw.max()
    assert np.all(np.asarray(pareto_khat(jnp.asarray(smoothed)))
                  <= np.asarray(pareto_khat(jnp.asarray(log_w))) + 1e-12)  # fmt: skip


def test_rows_without_a_tail_to_fit_keep_their_weights():
    """Weights of one value (a row drawn again by HMC) and rows of fewer than 21 draws are
    left as they are; the other rows of the same call are smoothed."""
    heavy = _gpd_log_weights((1, 300), 0.8)[0]
    log_w = jnp.asarray(np.stack([np.zeros(300), heavy]))
    smoothed = np.asarray(pareto_smoothed(log_w))
    np.testing.assert_array_equal(smoothed[0], 0.0)
    assert np.any(smoothed[1] != heavy)
    short = jnp.asarray(_gpd_log_weights((3, 20), 0.8))
    np.testing.assert_array_equal(np.asarray(pareto_smoothed(short)), np.asarray(short))


def test_smoothing_lowers_the_error_of_heavy_tailed_weights():
    """``E[x²] = 1`` under N(0, 1) from 400 draws of N(0, 0.75²): the weights' tail has k̂
    about 0.45. Over 2,000 independent estimates the smoothed weights' root-mean-square error
    is well under the raw weights' (measured 0.50–0.78 of it), at a bias that is a fraction
    of it (measured 0.23–0.33): PSIS trades a small bias for a large cut in variance."""
    scale, num_draws = 0.75, 400
    x = np.random.default_rng(11).normal(0.0, scale, size=(2000, num_draws))
    log_w = jnp.asarray(-(x**2) / 2 + x**2 / (2 * scale**2))
    errors = {}
    for smooth in (False, True):
        omega = np.asarray(weights_of(log_w, smooth))
        errors[smooth] = np.mean(omega * x**2, axis=1) - 1.0
    rms = {smooth: np.sqrt(np.mean(e**2)) for smooth, e in errors.items()}
    assert rms[True] < 0.9 * rms[False], rms
    assert abs(np.mean(errors[True])) < 0.45 * rms[True], (np.mean(errors[True]), rms)


def test_the_estimators_weigh_draws_by_the_smoothed_weights_unless_told_not_to():
    """``Sampling.pareto_smoothing``: None (the default) and True smooth, False keeps the raw
    weights; the HMC fallback's sampling carries no smoothing."""
    from thermoeqprop.estimators._fallback import fallback_sampling

    sampling = Sampling(method="importance", num_chains=2, num_samples=60, num_warmup=20)
    covariance = ThermalCovariance(TWO_UNITS, 0.1, sampling)
    drawn = covariance._drawer()(TWO_UNITS, sampling, TWO_UNIT_PARAMS, TWO_UNIT_X, TWO_UNIT_Y,
                                 0.0, 0.1, jax.random.key(0), nudged=False)  # fmt: skip
    log_w = drawn.trace.info.log_weights
    for value, smooth in ((None, True), (True, True), (False, False)):
        chosen = dataclasses.replace(sampling, pareto_smoothing=value)
        assert chosen.smooths_weights is smooth
        expected = normalised_weights(pareto_smoothed(log_w) if smooth else log_w)
        np.testing.assert_array_equal(np.asarray(_draw_weights(drawn, chosen.smooths_weights)),
                                      np.asarray(expected))  # fmt: skip
    assert not Sampling(method="hmc").smooths_weights
    assert fallback_sampling(dataclasses.replace(sampling, pareto_smoothing=True)).method == "hmc"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "hmc", "pareto_smoothing": True}, r"needs method='importance'"),
        ({"method": "importance", "pareto_smoothing": "yes"}, r"None, True or False, got 'yes'"),
    ],
)
def test_bad_smoothing_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**settings)

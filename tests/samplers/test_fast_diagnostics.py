"""The vectorised ESS/MCSE/R-hat agree with ArviZ's one-at-a-time computations (deterministic).

They are JAX functions: the tests also check that they run under a caller's ``jax.jit``, keep
float32 input in float32, and compile once per shape.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplers
from samplers import (
    MeanDiagnostics,
    ess_mean_many,
    mcse_mean_many,
    mean_diagnostics_many,
    rhat_rank_many,
    rhat_split_many,
)


def ar1(rng, phi, chains, draws, size):
    """AR(1) series x_t = phi x_{t-1} + noise, of shape (chains, draws, size)."""
    noise = rng.normal(size=(chains, draws, size))
    x = np.zeros_like(noise)
    for t in range(draws):
        x[:, t] = (phi * x[:, t - 1] if t else 0.0) + noise[:, t]
    return x


def arviz_diagnostics(x):
    """ArviZ's ESS and MCSE of the mean and split R-hat, one element of x at a time."""
    flat = x.reshape(*x.shape[:2], -1)
    columns = [flat[:, :, i] for i in range(flat.shape[2])]
    values = [
        [float(az.mcse(c, method="mean")) for c in columns],
        [float(az.ess(c, method="mean")) for c in columns],
        [float(az.rhat(c, method="split")) for c in columns],
    ]
    return MeanDiagnostics(*(np.reshape(v, x.shape[2:]) for v in values))


def check_against_arviz(x, rtol):
    ours = mean_diagnostics_many(x)
    reference = arviz_diagnostics(np.asarray(x, dtype=np.float64))
    for name, value, expected in zip(MeanDiagnostics._fields, ours, reference, strict=True):
        np.testing.assert_allclose(np.asarray(value), expected, rtol=rtol, err_msg=name)
    return ours


# Strongly anti-correlated to near-unit-root; 2/4/8 chains (and 3); odd and even draw counts,
# down to the minimum of 4 and to 5 (where the odd middle draw is dropped by the split).
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9, 0.99, 0.999, -0.5, -0.95])
@pytest.mark.parametrize(
    ("chains", "draws"),
    [(4, 200), (2, 51), (8, 1000), (3, 9), (2, 4), (8, 5), (4, 6), (2, 26), (2, 376)],
)
def test_agrees_with_arviz(phi, chains, draws):
    x = ar1(np.random.default_rng(7), phi, chains, draws, 6)
    ours = check_against_arviz(x, rtol=1e-8)
    assert all(value.dtype == jnp.float64 for value in ours)
    # The single-output functions give the same numbers as the shared pass.
    np.testing.assert_array_equal(ess_mean_many(x), ours.ess)
    np.testing.assert_array_equal(mcse_mean_many(x), ours.mcse)
    np.testing.assert_array_equal(rhat_split_many(x), ours.rhat)


@pytest.mark.parametrize("phi", [0.0, 0.9, -0.5])
def test_ess_budget_takes_ess_and_mcse_from_batch_means_and_rhat_from_every_draw(phi):
    # 2 chains × 300 draws × 6 elements = 3,600 numbers; a budget of 1,000 leaves at least 64
    # batches per chain: the smallest divisor of 300 giving at most 83 batches is 4 (75).
    x = ar1(np.random.default_rng(3), phi, 2, 300, 6)
    assert samplers.batch_window(300, 2, 6, 1000) == 4
    ours = mean_diagnostics_many(x, ess_budget=1000)
    means = x.reshape(2, 75, 4, 6).mean(axis=2)
    reference = arviz_diagnostics(means)
    np.testing.assert_allclose(ours.mcse, reference.mcse, rtol=1e-8)
    np.testing.assert_allclose(ours.ess, 4 * reference.ess, rtol=1e-8)  # counted in draws
    np.testing.assert_allclose(ours.rhat, arviz_diagnostics(x).rhat, rtol=1e-8)
    # Within the budget, every draw: the same numbers as without one.
    for value, whole in zip(mean_diagnostics_many(x, ess_budget=3600), mean_diagnostics_many(x),
                            strict=True):  # fmt: skip
        np.testing.assert_array_equal(value, whole)


def test_autocovariance_is_the_linear_one_at_odd_and_even_lengths():
    """Both transforms (tables up to DFT_MAX_DRAWS, FFT beyond), padded to odd 5-smooth
    lengths (3, 5, 25, 75, 125, 375 points) and even ones, against the direct sum over lags
    (one compilation per length: a few lengths of each kind)."""
    from samplers._fast_diagnostics import _mean_autocovariance

    rng = np.random.default_rng(3)
    for n in (2, 3, 12, 13, 38, 63, 64, 128, 129, 188, 2262):
        x = rng.normal(size=(2, 3, n))
        x -= x.mean(axis=2, keepdims=True)
        got = np.asarray(_mean_autocovariance(jnp.asarray(x)))
        lagged = [[np.dot(x[k, m, : n - lag], x[k, m, lag:]) for lag in range(n)]
                  for k in range(2) for m in range(3)]  # fmt: skip
        want = np.reshape(lagged, (2, 3, n)).mean(axis=1) / n
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"n = {n}")


@pytest.mark.parametrize("event", [(), (5,), (2, 3), (2, 1, 3)])
def test_event_dimensions_and_a_constant_element(event):
    rng = np.random.default_rng(3)
    size = int(np.prod(event))
    x = ar1(rng, 0.7, 4, 101, size) + 10.0  # an offset: the results are shift-invariant
    if size > 1:
        x[:, :, 1] = 0.1  # constant, at a value the means do not represent exactly
    x = x.reshape(4, 101, *event)
    ours = mean_diagnostics_many(x)
    assert all(np.shape(value) == event for value in ours)
    flat = [np.asarray(value).reshape(-1) for value in ours]
    reference = [np.reshape(value, -1) for value in arviz_diagnostics(x)]
    varying = np.arange(size) != 1 if size > 1 else np.ones(1, dtype=bool)
    for name, value, expected in zip(MeanDiagnostics._fields, flat, reference, strict=True):
        np.testing.assert_allclose(value[varying], expected[varying], rtol=1e-8, err_msg=name)
    if size > 1:
        # A constant element: MCSE 0 and R-hat NaN as ArviZ, but ESS NaN where ArviZ says
        # chain × draw (nothing to estimate; the callers treat NaN as "no information").
        mcse, ess, rhat = (value[1] for value in flat)
        assert mcse == 0.0 and np.isnan(ess) and np.isnan(rhat)


def test_split_rhat_flags_chains_that_disagree():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 500, 2))
    stuck = mixed + np.array([0.0, 0.0, 3.0, 3.0])[:, None, None]
    assert np.all(rhat_split_many(mixed) < 1.01)
    assert np.all(rhat_split_many(stuck) > 1.5)


def test_constant_series_and_bad_shapes():
    x = np.ones((2, 10, 3))
    np.testing.assert_array_equal(mcse_mean_many(x), 0.0)
    assert np.all(np.isnan(ess_mean_many(x)))
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess_mean_many(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(chain, draw, \*event\)"):
        ess_mean_many(np.ones(5))
    # Integer input is promoted to the default float, as NumPy's version did.
    assert mean_diagnostics_many(np.arange(40).reshape(2, 20)).ess.dtype == jnp.float64


def test_runs_inside_a_callers_jit():
    x = ar1(np.random.default_rng(11), 0.8, 4, 300, 7)

    @jax.jit
    def summary(series):
        diagnostics = mean_diagnostics_many(2.0 * series)
        return diagnostics.ess.min(), rhat_split_many(series).max(), mcse_mean_many(series)

    ess_min, rhat_max, mcse = summary(jnp.asarray(x))
    reference = arviz_diagnostics(x)
    np.testing.assert_allclose(ess_min, reference.ess.min(), rtol=1e-8)
    np.testing.assert_allclose(rhat_max, reference.rhat.max(), rtol=1e-8)
    np.testing.assert_allclose(mcse, reference.mcse, rtol=1e-8)
    with pytest.raises(ValueError, match="at least 4 draws"):  # still eager under tracing
        jax.jit(ess_mean_many)(jnp.ones((2, 3, 1)))


@pytest.mark.parametrize("phi", [0.0, 0.9, -0.5])
def test_float32_stays_float32(phi):
    x = ar1(np.random.default_rng(5), phi, 4, 400, 50).astype(np.float32)
    ours = mean_diagnostics_many(x)
    assert all(value.dtype == jnp.float32 for value in ours)
    # Against ArviZ in float64 on the same (float32-representable) values: the autocovariances
    # carry float32 rounding (eps ≈ 6e-8, grown by the FFT and by sums over 400 draws), and
    # Geyer's sums add up to ~100 of them: observed ≲ 3e-6, so 1e-4 leaves room. A truncation
    # point flipping on a pair sum within rounding of 0 would show as a far larger difference.
    check_against_arviz(x, rtol=1e-4)


# Every trace, XLA compilation and persistent-cache request (the suite runs with a persistent
# compilation cache, tests/conftest.py; a recompilation found there records only its request).
COMPILES = {"active": False, "events": []}


def _count_compile(name, *_, **__):
    if COMPILES["active"] and (
        "backend_compile" in name
        or "jaxpr_trace" in name
        or name == "/jax/compilation_cache/compile_requests_use_cache"
    ):
        COMPILES["events"].append(name)


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_compile)


def test_new_values_of_the_same_shape_do_not_recompile():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(2, 2, 37, 3))  # a shape no other test uses
    jax.block_until_ready(mean_diagnostics_many(first))
    jax.block_until_ready(ess_mean_many(first))
    cache_size = samplers._fast_diagnostics._diagnostics._cache_size()
    COMPILES["events"].clear()
    COMPILES["active"] = True
    try:
        again = jax.block_until_ready(mean_diagnostics_many(second))
        jax.block_until_ready(ess_mean_many(jnp.asarray(second)))  # NumPy or JAX: one entry
    finally:
        COMPILES["active"] = False
    assert COMPILES["events"] == []
    assert samplers._fast_diagnostics._diagnostics._cache_size() == cache_size
    np.testing.assert_allclose(again.ess, arviz_diagnostics(second).ess, rtol=1e-8)


def arviz_rank_rhat(x):
    """ArviZ's rank-normalised R-hat, one element of x at a time."""
    flat = x.reshape(*x.shape[:2], -1)
    values = [float(az.rhat(flat[:, :, i], method="rank")) for i in range(flat.shape[2])]
    return np.reshape(values, x.shape[2:])


# Heavy tails (Cauchy), ties (rounded draws), odd draw counts and the minimum of 4 draws,
# chains that disagree in location and in scale (the folded value catches the second).
# Both routes: NumPy input is ranked by NumPy's sorts on the host, JAX input by XLA's.
ROUTES = pytest.mark.parametrize("route", [np.asarray, jnp.asarray], ids=["host", "jax"])


@ROUTES
@pytest.mark.parametrize(("chains", "draws"), [(2, 50), (4, 201), (3, 9), (2, 4), (8, 5)])
def test_rank_rhat_agrees_with_arviz(chains, draws, route):
    rng = np.random.default_rng(13)
    x = ar1(rng, 0.6, chains, draws, 8)
    x[..., 1] = rng.standard_cauchy(size=(chains, draws))
    x[..., 2] = np.round(x[..., 2])  # ties: average ranks
    x[0, :, 3] += 2.0  # one chain elsewhere
    x[0, :, 4] *= 5.0  # one chain wider: the tail R-hat
    np.testing.assert_allclose(rhat_rank_many(route(x)), arviz_rank_rhat(x), rtol=1e-10)
    assert rhat_rank_many(route(x.astype(np.float32))).dtype == jnp.float32


def test_rank_rhat_routes_agree_on_many_elements_with_runs_of_ties():
    """Enough elements for the host route to rank them in slices on several threads, and
    runs of ties of every length (draws rounded to a coarse grid), some at a slice's edge."""
    rng = np.random.default_rng(5)
    x = ar1(rng, 0.5, 3, 60, 700)
    x[..., ::2] = np.round(x[..., ::2] * 2.0) / 2.0
    x[..., 5] = 1.5  # constant: NaN on both routes
    host = np.asarray(rhat_rank_many(x))
    np.testing.assert_allclose(host, np.asarray(rhat_rank_many(jnp.asarray(x))), rtol=1e-12)
    assert np.isnan(host[5]) and np.isfinite(np.delete(host, 5)).all()


@ROUTES
def test_rank_rhat_flags_disagreement_and_ignores_constants(route):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 400, 4))
    x[..., 1] = 0.25  # constant: NaN, as ArviZ
    x[:2, :, 2] *= 4.0  # same centre, different spread: only the tail R-hat sees it
    x[:2, :, 3] += 1.0
    rank = np.asarray(rhat_rank_many(route(x)))
    split = np.asarray(rhat_split_many(x))
    assert rank[0] < 1.02 and np.isnan(rank[1])
    assert rank[2] > 1.1 and split[2] < 1.05
    assert rank[3] > 1.1
    # One chain: no rank-normalised R-hat (ArviZ returns NaN as well).
    assert np.all(np.isnan(rhat_rank_many(route(x[:1]))))

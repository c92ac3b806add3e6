"""Neyman allocation of importance draws over a batch's examples (docs/mathematics.md, "Neyman
allocation"): the greedy copies against the exhaustive optimum and continued in rounds, the
row weights' algebra, the
cost spread against its formula, the statistics of repeated rows against the mean of each
example's copies, and the settings refused. The estimators with extra rows against exact
gradients (the two-unit network's quadrature, the quadratic network's Gaussian closed form)
and the coverage of their reported MCSE are in tests/test_importance.py, beside the same
checks without extra rows.

No check here is statistical (algebra, exhaustive search, fixed inputs): the module states no
false-failure budget.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seed_offset
from test_importance import weighted_problem

from thermoeqprop.estimators import Sampling
from thermoeqprop.estimators._allocation import (
    RowSet,
    cost_spread,
    example_means,
    extra_rows,
    more_rows,
    neyman_copies,
    row_weights,
)
from thermoeqprop.estimators._conditional import conditional_statistics
from thermoeqprop.estimators._importance import normalised_weights
from thermoeqprop.models import LayeredNetwork


@pytest.mark.parametrize("extra", [0, 1, 3, 6])
def test_greedy_copies_minimise_the_variance(extra):
    """``Σ spread_i / k_i`` over every way to give ``extra`` rows to four examples: the greedy
    copies reach the smallest (the objective is convex in each ``k_i``)."""
    spread = np.array([4.0, 0.3, 1.7, 0.01])
    copies = neyman_copies(spread, extra)
    assert copies.sum() == 4 + extra and copies.min() >= 1
    best = min(
        np.sum(spread / (1 + np.array(c)))
        for c in itertools.product(range(extra + 1), repeat=4)
        if sum(c) == extra
    )
    assert np.sum(spread / copies) == pytest.approx(best, rel=1e-12)


def test_rows_and_their_weights():
    copies = np.array([1, 3, 1, 2])
    np.testing.assert_array_equal(extra_rows(copies), [1, 1, 3])
    weights = row_weights(copies)  # rows 0, 1, 2, 3, 1, 1, 3
    np.testing.assert_allclose(weights, 7 / (4 * np.array([1, 3, 1, 2, 3, 3, 2])))
    assert np.mean(weights) == pytest.approx(1.0)
    values = jnp.arange(14.0).reshape(7, 2)
    expected = [[0, 1], [(2 + 8 + 10) / 3, (3 + 9 + 11) / 3], [4, 5], [9, 10]]
    np.testing.assert_allclose(example_means(values, copies), expected)


def test_rounds_of_rows_continue_the_greedy_allocation():
    """Rows added in rounds from the copies so far end where one allocation of all of them
    ends (greedy steps depend only on the copies); the rounds' rows may come in any order, the
    weights and the example means follow each row's example."""
    spread = np.array([4.0, 0.3, 1.7, 0.01])
    first = neyman_copies(spread, 2)
    then = neyman_copies(spread, 3, first)
    np.testing.assert_array_equal(then, neyman_copies(spread, 5))
    added = extra_rows(then, first)
    assert added.size == 3 and np.all(then - first == np.bincount(added, minlength=4))
    copies = np.array([1, 3, 1, 2])
    examples = np.array([0, 1, 2, 3, 1, 3, 1])  # a later round's rows after the first ones
    weights = row_weights(copies, examples)
    np.testing.assert_allclose(weights, 7 / (4 * copies[examples]))
    values = jnp.arange(14.0).reshape(7, 2)
    expected = [[0, 1], [(2 + 8 + 12) / 3, (3 + 9 + 13) / 3], [4, 5], [(6 + 10) / 2, (7 + 11) / 2]]
    np.testing.assert_allclose(example_means(values, copies, examples), expected)


def test_more_rows_draws_the_examples_the_allocation_names_and_joins_them():
    """``more_rows``: the new rows' examples are those the greedy allocation adds, drawn with
    the key it is given and passed through ``redraw``; the draws are joined after the old."""
    spread = np.array([4.0, 0.3, 1.7, 0.01])
    x, targets = jnp.arange(4.0)[:, None], -jnp.arange(4.0)[:, None]
    calls = []

    def draw(xs, ys, key):
        calls.append((np.asarray(xs).ravel().tolist(), np.asarray(ys).ravel().tolist()))
        return {"rows": xs[:, 0]}

    def redraw(drawn, xs, ys, key):
        return {"rows": drawn["rows"] + 100.0}

    def spread_of(drawn, ys):  # each new row's own spread, read after redraw
        return np.asarray(drawn["rows"]) / 100.0

    rows = RowSet({"rows": jnp.arange(6.0)}, np.array([0, 1, 2, 3, 0, 2]),
                  neyman_copies(spread, 2), spread)  # fmt: skip
    more = more_rows(draw, spread_of, rows, 3, x, targets, jax.random.key(0), redraw)
    added = extra_rows(neyman_copies(spread, 5), rows.copies)
    assert calls == [(added.tolist(), (-added).tolist())]
    np.testing.assert_array_equal(more.examples, np.concatenate([rows.examples, added]))
    np.testing.assert_array_equal(more.copies, neyman_copies(spread, 5))
    np.testing.assert_array_equal(more.drawn["rows"], np.concatenate([np.arange(6.0),
                                                                      added + 100.0]))  # fmt: skip
    assert more.spread is spread and more.row_spread is None  # no rows' spreads: kept
    # With each row's own spread, the proxy is their mean over an example's rows: example 0's
    # two rows say 0.1 and 0.3, example 2's say 5 and 7; the new rows' spreads join them.
    pooled = rows._replace(row_spread=np.array([0.1, 0.3, 5.0, 0.01, 0.3, 7.0]))
    np.testing.assert_allclose(pooled.pooled_spread(), [0.2, 0.3, 6.0, 0.01])
    calls.clear()
    more = more_rows(draw, spread_of, pooled, 3, x, targets, jax.random.key(0), redraw)
    added = extra_rows(neyman_copies([0.2, 0.3, 6.0, 0.01], 3, rows.copies), rows.copies)
    assert calls == [(added.tolist(), (-added).tolist())] and 2 in added
    np.testing.assert_allclose(more.spread, [0.2, 0.3, 6.0, 0.01])
    np.testing.assert_allclose(more.row_spread, np.concatenate([pooled.row_spread,
                                                                1.0 + added / 100.0]))  # fmt: skip


def test_cost_spread_is_the_delta_method_variance_of_the_mean_cost():
    net = LayeredNetwork((3, 4, 2))
    with seed_offset.fixed():
        states = jax.random.normal(jax.random.key(0), (2, 3, 7, net.state_size))
        targets = jax.random.uniform(jax.random.key(1), (2, 2))
        omega = normalised_weights(jax.random.normal(jax.random.key(2), (2, 3, 7)))
    got = np.asarray(cost_spread(net, states, omega, targets))
    for b in range(2):
        c = np.array([float(net.cost_fn(s, targets[b])) for s in states[b].reshape(21, -1)])
        w = np.asarray(omega[b]).ravel()
        expected = np.sum((w * (c - np.mean(w * c))) ** 2) / 21**2
        assert got[b] == pytest.approx(expected, rel=1e-12)


def test_repeated_rows_average_each_examples_copies():
    """Rows 0, 1, 2 and two more of example 1, each with draws of its own: with
    :func:`row_weights` the series are the mean over examples of each one's mean over its
    copies, every series computed from one row alone (the algebra is linear in the rows)."""
    net, params, x, y, states, omega = weighted_problem(3, 5)
    states = states.at[..., :4].set(0.0)  # the collapsed class holds placeholders
    copies = np.array([1, 3, 1])
    rows = np.array([0, 1, 2, 1, 1])

    def stats(index, weights=None):
        return conditional_statistics(net, params, states[index], x[rows[index]],
                                      y[rows[index]], (True, True), 2, 0.0, 0.1, True,
                                      omega[index], weights)  # fmt: skip

    joined = stats(np.arange(5), jnp.asarray(row_weights(copies)))
    alone = [stats(np.array([r])) for r in range(5)]
    share = 1.0 / (3 * copies[rows])
    for field in range(3):  # energy gradient, covariance, cost series
        expected = sum(s * a[field] for s, a in zip(share, alone, strict=True))
        np.testing.assert_allclose(joined[field], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "hmc", "neyman_share": 0.25}, r"neyman_share needs method='importance'"),
        ({"method": "importance", "neyman_share": -0.5}, r"neyman_share must be finite and ≥ 0"),
        ({"method": "importance", "neyman_share": "many"}, r"neyman_share must be a number"),
    ],
)
def test_bad_neyman_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**settings)

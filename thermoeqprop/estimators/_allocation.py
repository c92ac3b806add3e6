r"""Neyman allocation of a batch's draws over its examples (docs/mathematics.md, "Neyman
allocation").

A batch's gradient is the mean over its examples of each one's thermal estimate, so its
variance is ``Σ_i σ_i² / (B² n_i)`` with ``n_i`` the draws of example ``i``: with equal draws
the examples whose estimates vary most dominate it (on the main job at trained parameters one
to three digits of 32 carry most of the MCSE², those whose law is spread between outputs).
For a fixed total the variance is smallest with ``n_i ∝ σ_i`` (Neyman's allocation).

The draws of a call have one count per example, so the extra draws come as extra *rows*:
after the batch's draws, ``E = round(neyman_share · B)`` more rows repeat the examples whose
first draws say they vary most, each with independent draws of its own. Example ``i`` then
has ``k_i`` rows (copies), and every row weighs ``(B + E) / (B k_i)`` in the batch's means,
so that the estimate is the mean over examples of each one's mean over its copies. The rows go
one by one to the example that gains most, ``σ̂_i² (1/k_i − 1/(k_i + 1))``, with ``σ̂_i²`` the
delta-method variance of the example's self-normalised mean cost from its first draws,
``Σ_d ω_d² (C_d − C̄_i)² / N²``: a proxy for its gradient's variance that costs one cost per
draw.

The allocation reads the first draws, which stay in the estimate: the weight ``1/k_i`` of an
example's first row depends on those draws, a bias of order ``1/N`` like the self-normalised
estimate's own (the copies' draws are independent of the choice and unbiased given it). Rounds
of more rows (:func:`more_rows`) read the proxy averaged over every row of an example so far,
so their choice depends on the earlier copies' draws too, a bias of the same order.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.estimators._pareto import weights_of

__all__ = [
    "RowSet",
    "cost_spread",
    "example_means",
    "extra_rows",
    "first_rows",
    "more_rows",
    "neyman_copies",
    "row_examples",
    "row_spreads",
    "row_weights",
]


@functools.partial(jax.jit, static_argnums=0)
def cost_spread(model, states, omega, targets):
    """(batch,) ``Σ_d ω_d² (C_d − C̄)² / N²`` over each example's draws (batch, chain, draw,
    n), ``ω`` the importance weights (mean 1 per example) and ``C̄`` the weighted mean cost."""
    cost = jax.vmap(jax.vmap(jax.vmap(model.cost_fn, in_axes=(0, None)),
                             in_axes=(0, None)))(states, targets)  # fmt: skip
    mean = jnp.mean(omega * cost, axis=(1, 2), keepdims=True)
    count = cost.shape[1] * cost.shape[2]
    return jnp.sum((omega * (cost - mean)) ** 2, axis=(1, 2)) / count**2


def neyman_copies(spread, extra: int, start=None) -> np.ndarray:
    """(batch,) copies ``k_i ≥ 1`` of each example, ``Σ k_i = Σ start_i + extra`` (``start``:
    the copies so far, one each by default): each extra row to the example whose variance
    ``spread_i / k_i`` it lowers most."""
    spread = np.asarray(spread, dtype=np.float64)
    if not np.all(np.isfinite(spread)):
        raise ValueError(f"the examples' cost spreads must be finite, got {spread!r}")
    copies = np.ones(spread.shape[0], np.int64) if start is None else np.array(start, np.int64)
    for _ in range(extra):
        copies[np.argmax(spread / (copies * (copies + 1.0)))] += 1
    return copies


def extra_rows(copies, start=None) -> np.ndarray:
    """The examples the extra rows repeat, in order: ``k_i − start_i`` rows of example ``i``
    (``start``: one each by default)."""
    copies = np.asarray(copies)
    before = np.ones_like(copies) if start is None else np.asarray(start)
    return np.repeat(np.arange(copies.shape[0]), copies - before)


def row_examples(copies) -> np.ndarray:
    """(batch + extra,) the example each row holds: the batch's rows in order, then
    :func:`extra_rows`."""
    copies = np.asarray(copies)
    return np.concatenate([np.arange(copies.shape[0]), extra_rows(copies)])


def row_weights(copies, examples=None) -> np.ndarray:
    """(rows,) weights of the rows holding ``examples`` (default :func:`row_examples`),
    ``rows / (batch · k_i)``: mean 1, the copies of one example sharing its weight."""
    copies = np.asarray(copies)
    rows = row_examples(copies) if examples is None else np.asarray(examples)
    return rows.shape[0] / (copies.shape[0] * copies[rows].astype(np.float64))


class RowSet(NamedTuple):
    """A phase's rows of draws with extra rows (:func:`first_rows`, :func:`more_rows`).

    Attributes:
        drawn: The draws of every row, joined along the row axis.
        examples: (rows,) the example each row holds.
        copies: (batch,) the rows of each example.
        spread: (batch,) the allocation's proxy for each example's variance when the rows
            were allocated: :func:`cost_spread` of its first draws, then (:func:`more_rows`)
            the mean over its rows of theirs.
        row_spread: (rows,) :func:`cost_spread` of each row's own draws (after ``redraw``),
            or None: the proxy is then kept as it is.
    """

    drawn: Any
    examples: np.ndarray
    copies: np.ndarray
    spread: np.ndarray
    row_spread: np.ndarray | None = None

    def pooled_spread(self) -> np.ndarray:
        """(batch,) each example's :func:`cost_spread` averaged over its rows: each row's
        is an estimate of the same variance (of one row's mean), so their mean is a better
        one than the first row's alone (``spread`` where ``row_spread`` is None)."""
        if self.row_spread is None:
            return self.spread
        total = np.bincount(self.examples, self.row_spread, minlength=self.copies.shape[0])
        return total / self.copies

    def weights(self, dtype) -> jax.Array:
        """The rows' :func:`row_weights`."""
        return jnp.asarray(row_weights(self.copies, self.examples), dtype)


def _joined(drawn, more):
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), drawn, more)


def row_spreads(model, smooth: bool, drawn, targets) -> np.ndarray:
    """(rows,) :func:`cost_spread` of each row of ``drawn`` (importance draws, or a
    fallback's chains of weight 1), weighted as the statistics weigh them (Pareto-smoothed if
    ``smooth``)."""
    omega = weights_of(drawn.trace.info.log_weights, smooth)
    return np.asarray(cost_spread(model, drawn.states, omega, targets))


def first_rows(draw, spread_of, extra: int, x, targets, rng_key, drawn, redraw) -> RowSet:
    """The batch's importance draws ``drawn`` followed by ``extra`` rows for the examples
    whose first draws vary most (:func:`neyman_copies` of their ``spread_of(drawn,
    targets)``, :func:`row_spreads` in the estimators).

    ``draw(x, targets, key)`` draws rows of examples; ``redraw(drawn, x, targets, key)``
    returns rows with those whose weights are heavy-tailed drawn again
    (:func:`~thermoeqprop.estimators._fallback.with_fallback`), applied once to the joined
    rows, whose own spreads the result keeps for :func:`more_rows`."""
    spread = spread_of(drawn, targets)
    copies = neyman_copies(spread, extra)
    repeated = extra_rows(copies)
    if repeated.size:
        drawn = _joined(drawn, draw(x[repeated], targets[repeated], jax.random.fold_in(rng_key, 1)))
    examples = row_examples(copies)
    drawn = redraw(drawn, x[examples], targets[examples], rng_key)
    return RowSet(drawn, examples, copies, spread, spread_of(drawn, targets[examples]))


def more_rows(draw, spread_of, rows: RowSet, extra: int, x, targets, rng_key,
              redraw) -> RowSet:  # fmt: skip
    """``rows`` followed by ``extra`` more rows, each to the example whose variance it lowers
    most given the copies so far (:func:`neyman_copies` from ``rows.copies``, the proxy
    :meth:`RowSet.pooled_spread` over every row drawn so far), drawn by ``draw`` with key
    ``rng_key`` and passed through ``redraw`` (as in :func:`first_rows`); the new rows' own
    spreads (``spread_of``) join the old ones'."""
    spread = rows.pooled_spread()
    copies = neyman_copies(spread, extra, rows.copies)
    added = extra_rows(copies, rows.copies)
    more = draw(x[added], targets[added], jax.random.fold_in(rng_key, 1))
    more = redraw(more, x[added], targets[added], rng_key)
    row_spread = None
    if rows.row_spread is not None:
        row_spread = np.concatenate([rows.row_spread, spread_of(more, targets[added])])
    return RowSet(_joined(rows.drawn, more), np.concatenate([rows.examples, added]), copies,
                  spread, row_spread)  # fmt: skip


def example_means(values, copies, examples=None):
    """(batch, …) the mean over each example's copies of per-row ``values`` (rows, …), the
    rows holding ``examples`` (default :func:`row_examples`)."""
    copies = np.asarray(copies)
    rows = row_examples(copies) if examples is None else np.asarray(examples)
    share = (1.0 / copies[rows]).reshape((-1,) + (1,) * (values.ndim - 1))
    return jax.ops.segment_sum(values * share.astype(values.dtype), rows, copies.shape[0])

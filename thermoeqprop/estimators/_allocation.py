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
estimate's own (the copies' draws are independent of the choice and unbiased given it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.estimators._importance import normalised_weights

__all__ = [
    "cost_spread",
    "example_means",
    "extra_rows",
    "neyman_copies",
    "row_examples",
    "row_weights",
    "with_copies",
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


def neyman_copies(spread, extra: int) -> np.ndarray:
    """(batch,) copies ``k_i ≥ 1`` of each example, ``Σ k_i = batch + extra``: each extra row
    to the example whose variance ``spread_i / k_i`` it lowers most."""
    spread = np.asarray(spread, dtype=np.float64)
    if not np.all(np.isfinite(spread)):
        raise ValueError(f"the examples' cost spreads must be finite, got {spread!r}")
    copies = np.ones(spread.shape[0], dtype=np.int64)
    for _ in range(extra):
        copies[np.argmax(spread / (copies * (copies + 1.0)))] += 1
    return copies


def extra_rows(copies) -> np.ndarray:
    """The examples the extra rows repeat, in order: ``k_i − 1`` rows of example ``i``."""
    copies = np.asarray(copies)
    return np.repeat(np.arange(copies.shape[0]), copies - 1)


def row_examples(copies) -> np.ndarray:
    """(batch + extra,) the example each row holds: the batch's rows in order, then
    :func:`extra_rows`."""
    copies = np.asarray(copies)
    return np.concatenate([np.arange(copies.shape[0]), extra_rows(copies)])


def row_weights(copies) -> np.ndarray:
    """(batch + extra,) weights of the rows of :func:`row_examples`,
    ``(batch + extra) / (batch · k_i)``: mean 1, the copies of one example sharing its weight."""
    copies = np.asarray(copies)
    rows = row_examples(copies)
    return rows.shape[0] / (copies.shape[0] * copies[rows].astype(np.float64))


def with_copies(draw, model, extra: int, x, targets, rng_key, drawn):
    """The batch's importance draws ``drawn`` followed by ``extra`` rows for the examples
    whose first draws vary most (:func:`neyman_copies` of :func:`cost_spread`).

    ``draw(x, targets, key)`` draws rows of examples. Returns ``(drawn, x, targets, weights,
    copies)``: the joined draws (batch + extra rows), the rows' inputs and targets, the
    :func:`row_weights` and the copies of each example; ``weights`` and ``copies`` are None
    when ``extra`` is 0 (``drawn``, ``x`` and ``targets`` unchanged).
    """
    if not extra:
        return drawn, x, targets, None, None
    omega = normalised_weights(drawn.trace.info.log_weights)
    copies = neyman_copies(cost_spread(model, drawn.states, omega, targets), extra)
    repeated = extra_rows(copies)
    more = draw(x[repeated], targets[repeated], jax.random.fold_in(rng_key, 1))
    joined = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), drawn, more)
    weights = jnp.asarray(row_weights(copies), x.dtype)
    rows = row_examples(copies)
    return joined, x[rows], targets[rows], weights, copies


def example_means(values, copies):
    """(batch, …) the mean over each example's copies of per-row ``values`` (batch + extra,
    …) laid out as :func:`with_copies` returns them."""
    copies = np.asarray(copies)
    rows = row_examples(copies)
    share = (1.0 / copies[rows]).reshape((-1,) + (1,) * (values.ndim - 1))
    return jax.ops.segment_sum(values * share.astype(values.dtype), rows, copies.shape[0])

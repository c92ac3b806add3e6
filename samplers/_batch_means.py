"""Batch means: how many draws to average per batch (:func:`batch_window`), and how many
independent components the error of many chain means holds (:func:`effective_components`).

The per-element MCSEs of :mod:`samplers._fast_diagnostics` say how large each mean's error is,
not how the errors of different elements move together. When they move together, a statistic
pooled over elements (the mean squared z-score, the fraction of |z| above 2) fluctuates far
more than it would over independent elements: for Gaussian errors with honest MCSEs and error
correlation matrix ``R`` over ``P`` elements, the sum of the squared z-scores has mean ``P``
and variance ``2 tr(R²)``, that of a χ² with ``ν = P² / tr(R²)`` degrees of freedom scaled by
``P/ν`` (the participation ratio of R's eigenvalues; ``ν = P`` for independent elements, 1 for
elements that all move as one). :func:`effective_components` estimates ``ν``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["batch_window", "effective_components"]


def batch_window(
    num_draws: int, num_chains: int, num_elements: int, budget: int, min_length: int = 64
) -> int:
    """Draws per batch mean that keep ``chains × batches × elements`` within ``budget``.

    1 while every draw fits; else the smallest divisor of ``num_draws`` that brings the count
    within the budget but leaves at least ``min_length`` batches per chain, or 1 if no divisor
    leaves between half that and the budget (such a series keeps every draw). Batch means have
    the draws' mean, and the ESS and R-hat of the means stand for the draws' when a batch is
    longer than the draws' autocorrelation.

    Example:
        >>> batch_window(450, 2, 9610, 2**22), batch_window(150, 2, 9610, 2**20)
        (3, 3)
        >>> batch_window(50, 2, 9610, 2**22), batch_window(211, 8, 15010, 2**22)
        (1, 1)
    """
    longest = max(min_length, budget // max(1, num_chains * num_elements))
    if num_draws <= longest:
        return 1
    window = next(w for w in range(1, num_draws + 1) if num_draws % w == 0 and
                  num_draws // w <= longest)  # fmt: skip
    return window if num_draws // window >= min_length // 2 else 1


def effective_components(x) -> float:
    """The effective number of independent elements of the error of the chain-pooled means.

    The correlation matrix ``R`` of that error is estimated from non-overlapping batch means
    of ``⌊√draws⌋`` draws in every chain (the multivariate batch-means estimator of Vats,
    Flegal & Jones 2019, normalised to a correlation), centred on their grand mean so that
    disagreement between chains counts as error; the result is ``P² / ‖R‖²_F`` over the ``P``
    elements that change. ``R`` is never formed: with ``m`` batch means of unit-norm columns
    ``Z`` (m, P), ``R = ZᵀZ`` and ``‖ZᵀZ‖_F = ‖ZZᵀ‖_F``, an m × m product, so 10,000 elements
    cost what m² · 10,000 multiplications do. The noise of ``R``'s off-diagonal elements adds,
    to first order, ``(1 − ρ²)(1 − 2ρ²) / (m − 1)`` to each ``ρ²``: ``ν`` is biased low for
    weakly correlated elements and slightly high for strongly correlated ones.

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain; NumPy or JAX.

    Returns:
        ``ν`` in ``[1, P]`` as a float; NaN when no element changes between batches.

    Raises:
        ValueError: If ``x.ndim < 2`` or there are fewer than 4 draws per chain.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> common = rng.normal(size=(4, 900, 1))  # five elements moving as one
        >>> round(effective_components(common + 0.01 * rng.normal(size=(4, 900, 5))), 2)
        1.0
        >>> bool(8 < effective_components(rng.normal(size=(4, 900, 10))) <= 10)
        True
    """
    x = np.asarray(x, dtype=float)
    if x.ndim < 2 or x.shape[1] < 4:
        raise ValueError(
            f"effective_components needs an array (chain, draw, *event) with at least 4 draws "
            f"per chain, got shape {x.shape}"
        )
    chains, draws = x.shape[:2]
    x = x.reshape(chains, draws, -1)
    size = math.isqrt(draws)
    count = draws // size
    # The earliest draws are left out when the batches do not divide the chain: the latest
    # are the furthest from the start.
    means = x[:, draws - count * size :].reshape(chains, count, size, -1).mean(axis=2)
    means = means.reshape(chains * count, -1)
    centred = means - means.mean(axis=0)
    norm = np.sqrt(np.sum(centred**2, axis=0))
    changes = norm > 1e-12 * np.max(np.abs(means), axis=0)
    if not changes.any():
        return math.nan
    unit = centred[:, changes] / norm[changes]
    gram = unit @ unit.T
    count = np.count_nonzero(changes)
    # P ≤ ‖R‖²_F ≤ P² exactly; the clip only removes rounding past those ends.
    return float(np.clip(count**2 / np.sum(gram**2), 1.0, count))

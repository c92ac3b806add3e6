"""Bounds on the RMS z-score pooled over correlated components and independent runs.

The components of one sampled gradient share their draws, so their errors are correlated:
the 39 components of ``test_thermal``'s 9-spin covariance gradient hold about 3 independent
components' worth of error, the 13 of ``test_sweep``'s quadratic network about 1.3
(:func:`samplers.effective_components`). A bound on the pooled RMS z argued as if the
components were independent is then far too narrow: it failed an honest MCSE in 4 of 23 seed
sets (tests/README.md, "False-failure budgets, measured").

For run ``k`` with ``n_k`` z-scores of error correlation ``R_k`` and honest Gaussian MCSEs,
``Σ z²`` has mean ``n_k`` and variance ``2 tr(R_k²) = 2 n_k² / ν_k`` (``ν_k`` the effective
components). Runs are independent, so the pooled ``S = Σ_k Σ z²`` has mean ``N = Σ n_k`` and
variance ``2 Σ n_k² / ν_k``; matching both moments (Satterthwaite), ``S / N ≈ χ²_ν / ν`` with
``ν = N² / Σ_k (n_k² / ν_k)``. :func:`rms_bounds` gives the RMS bounds of that law;
``tests/samplers/test_batch_means.py`` checks their tail probabilities by simulation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2

__all__ = ["pooled_dof", "rms_bounds"]


def pooled_dof(counts, dofs) -> float:
    """The degrees of freedom ``ν = N² / Σ n_k² / ν_k`` of the pooled mean squared z-score."""
    counts = np.asarray(counts, dtype=float)
    dofs = np.asarray(dofs, dtype=float)
    if counts.shape != dofs.shape or not np.all((counts > 0) & (dofs > 0)):
        raise ValueError(f"need positive counts and dofs of one shape, got {counts}, {dofs}")
    return float(counts.sum() ** 2 / np.sum(counts**2 / dofs))


def rms_bounds(counts, dofs, tail: float) -> tuple[float, float]:
    """RMS z-scores below the first or above the second have probability ``tail`` each.

    Args:
        counts: z-scores per run.
        dofs: effective components per run (:func:`samplers.effective_components` of the run's
            per-draw series).
        tail: The probability of each side.
    """
    nu = pooled_dof(counts, dofs)
    return math.sqrt(chi2.ppf(tail, nu) / nu), math.sqrt(chi2.isf(tail, nu) / nu)

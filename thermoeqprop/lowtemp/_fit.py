"""Weighted least-squares fits of a line (or a line and a T² term), vectorised."""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_line_fit"]


def weighted_line_fit(t, y, stderr, degree: int = 1) -> dict[str, np.ndarray]:
    r"""Weighted least squares ``y ≈ a + b t (+ c t²)`` with weights ``1/stderr²``, vectorised.

    Args:
        t: (K,) abscissae.
        y: (K, ...) values, fitted independently along the trailing axes.
        stderr: Standard errors, shaped like ``y``; a column with an entry ≤ 0 gives NaN.
        degree: 1 (a line) or 2 (a line plus a ``c t²`` term that absorbs curvature, so that
            the slope ``b`` at t = 0 is unbiased to O(t²) instead of O(t)).

    Returns:
        ``intercept``, ``slope`` (and ``curvature`` for degree 2), their standard errors
        ``intercept_stderr``, ``slope_stderr`` (``curvature_stderr``) from the stated errors,
        not rescaled by the residuals, and ``chi2`` of the fit (K − degree − 1 degrees of
        freedom), each shaped like ``y[0]``.

    Example:
        >>> fit = weighted_line_fit(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]),
        ...                         np.ones(3))
        >>> [round(float(fit[k]), 12) for k in ("slope", "intercept", "slope_stderr")]
        [2.0, 1.0, 0.707106781187]
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    stderr = np.asarray(stderr, dtype=float)
    if degree not in (1, 2):
        raise ValueError(f"degree must be 1 or 2, got {degree!r}")
    if t.ndim != 1 or y.shape[0] != t.shape[0] or y.shape != stderr.shape:
        raise ValueError(
            f"need t (K,), y and stderr (K, ...) of one shape; got {t.shape}, {y.shape}, "
            f"{stderr.shape}"
        )
    if np.unique(t).size < degree + 1:
        raise ValueError(
            f"a degree-{degree} fit needs at least {degree + 1} distinct abscissae, got t={t}"
        )
    columns = y.reshape(t.size, -1)
    errors = stderr.reshape(t.size, -1)
    valid = np.all(errors > 0, axis=0)
    w = 1.0 / np.where(errors > 0, errors, 1.0) ** 2  # (K, M)
    design = np.vander(t, degree + 1, increasing=True)  # (K, D)
    normal = np.einsum("km,kd,ke->mde", w, design, design)  # (M, D, D)
    covariance = np.linalg.inv(normal)
    coefficients = np.einsum("mde,km,ke,km->md", covariance, w, design, columns)
    chi2 = np.sum(w * (columns - design @ coefficients.T) ** 2, axis=0)
    names = ("intercept", "slope", "curvature")[: degree + 1]
    out = {}
    for i, name in enumerate(names):
        out[name] = np.where(valid, coefficients[:, i], np.nan).reshape(y.shape[1:])
        stderr_i = np.sqrt(covariance[:, i, i])
        out[f"{name}_stderr"] = np.where(valid, stderr_i, np.nan).reshape(y.shape[1:])
    out["chi2"] = np.where(valid, chi2, np.nan).reshape(y.shape[1:])
    return out

"""Checks at the public boundary: errors that name the bad value and say what is valid.

These run on concrete (host) values before anything is traced; inside compiled code the
library reports status fields instead of raising (docs/design.md#errors-and-validation).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__ = [
    "check_params",
    "check_labels",
    "check_matrix",
    "check_positive",
    "check_probability",
    "require_finite",
]


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not a finite positive number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` as a float in the open interval (0, 1), or raise."""
    v = check_positive(name, value)
    if not v < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return v


def _non_finite(a: np.ndarray) -> str | None:
    """``"N non-finite value(s) (NaN or inf), the first at index (i, …) = v"``, or None."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"{int(bad.sum())} non-finite value(s) (NaN or inf), the first at index {first} = "
        f"{a[first].item()!r}"
    )


def require_finite(name: str, array: Any) -> np.ndarray:
    """Return ``array`` as a NumPy array, raising if it holds NaN or infinite entries."""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    found = _non_finite(a)
    if found:
        raise ValueError(f"{name} contains {found}; data must be finite")
    return a


def check_params(params: Any) -> None:
    """Raise if concrete parameters hold NaN or infinite entries, naming the first such leaf.

    Traced parameters (inside ``jit`` or ``grad``) pass unchecked: compiled code reports, it
    does not raise. Without this a relaxation from NaN couplings never moves, and the cost of
    its starting state came back as a finite loss with a zero gradient.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if isinstance(leaf, jax.core.Tracer):
            return
        a = np.asarray(leaf)
        if a.dtype.kind not in "fc":
            continue
        found = _non_finite(a)
        if found:
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} holds {found}; parameters must be finite "
                "(a diverged optimiser step? a smaller learning rate keeps them finite)"
            )


def check_matrix(name: str, array: Any, num_columns: int, what: str) -> np.ndarray:
    """Check a finite 2-D array of shape (batch, num_columns); ``what`` names the columns."""
    a = require_finite(name, array)
    if a.ndim != 2 or a.shape[1] != num_columns:
        raise ValueError(
            f"{name} must have shape (batch, {num_columns}) ({what}), got shape {a.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); give at least one example")
    return a


def check_labels(name: str, labels: Any, num_classes: int) -> np.ndarray:
    """Check integer class labels in {0, …, num_classes − 1}."""
    a = np.asarray(labels)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == a // 1):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        bad = a[(a < 0) | (a >= num_classes)][0]
        raise ValueError(
            f"{name} holds label {int(bad)}, outside the valid range 0 … {num_classes - 1} "
            f"({num_classes} classes)"
        )
    return a

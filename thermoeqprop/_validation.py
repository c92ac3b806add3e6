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
    "check_labels",
    "check_matrix",
    "check_nudge",
    "check_params",
    "check_positive",
    "check_probability",
    "check_temperature",
    "energy_scale",
    "require_finite",
    "temperature_range",
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


def energy_scale(params: Any, num_units: int) -> float:
    """The energy scale of a network: ``num_units / 2 + Σ|θ|``, an upper bound on ``|E(s)|``
    for states in the unit box (the self-energy ``½‖s‖²`` plus every coupling and field at
    full strength; inputs in [0, 1] or [−1, 1]). Read on the host from concrete parameters."""
    total = 0.5 * num_units
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.asarray(leaf)
        if a.dtype.kind in "fc":
            total += float(np.sum(np.abs(a)))
    return total


def temperature_range(scale: float, dtype: Any) -> tuple[float, float]:
    """The temperatures whose Boltzmann weights ``exp(−E/T)`` mean something in ``dtype`` for
    energies of size ``scale`` (:func:`energy_scale`), with ``ε`` its machine epsilon:

    - above ``scale / √ε`` the whole energy moves a log-weight by less than ``√ε``: fewer
      than half the digits of the weights carry the energy, and the gradient (∝ 1/T) is lost
      against rounding (at 1e300 it read exactly 0);
    - below ``ε · scale`` the rounding error of ``E/T`` itself exceeds 1, so accepting or
      rejecting a move is decided by rounding noise (at 1e-300 every move was rejected).

    Example:
        >>> low, high = temperature_range(100.0, np.float64)
        >>> f"{low:.2g} {high:.2g}"
        '2.2e-14 6.7e+09'
    """
    eps = float(np.finfo(dtype).eps)
    return eps * scale, scale / math.sqrt(eps)


def check_temperature(name: str, temperature: float, scale: float, dtype: Any) -> None:
    """Raise if ``temperature`` lies outside :func:`temperature_range` of ``scale``."""
    low, high = temperature_range(scale, dtype)
    if low <= temperature <= high:
        return
    which = np.dtype(dtype).name
    if temperature > high:
        why = (
            f"above {high:.3g} the energy changes the Boltzmann weights by less than √ε of "
            f"{which}, so the gradient (∝ 1/T) is lost to rounding"
        )
    else:
        why = (
            f"below {low:.3g} rounding in E/T exceeds 1 in {which}, so every move is accepted "
            "or rejected by rounding noise"
        )
    raise ValueError(
        f"{name} {temperature:g} is meaningless for this network (energy scale {scale:.3g}): "
        f"{why}; valid: {low:.3g} ≤ {name} ≤ {high:.3g}"
    )


def check_nudge(beta: float, scale: float, num_outputs: int) -> None:
    """Raise if the nudge ``β·C`` can exceed the network's own energy scale: EP's estimate is
    a derivative in β only while the nudge is a perturbation (``β ≤ scale / num_outputs``,
    the cost being at most about 1 per output unit)."""
    high = scale / max(num_outputs, 1)
    if beta > high:
        raise ValueError(
            f"beta {beta:g} makes the nudge β·C (up to {beta * num_outputs:.3g}) larger than the "
            f"network's own energy (scale {scale:.3g}): equilibrium propagation estimates a "
            f"gradient only for a small nudge; valid: 0 < beta ≤ {high:.3g}"
        )


def _units(model) -> int:
    """Free units (classical) or qubits (quantum) of a model, for :func:`energy_scale`."""
    return max(int(model.num_units), 1)


def _dtype(params) -> Any:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params)
              if np.asarray(leaf).dtype.kind in "fc"]  # fmt: skip
    return np.asarray(leaves[0]).real.dtype if leaves else np.float64


def check_temperature_of(estimator, params) -> float:
    """The energy scale of ``estimator.model`` at ``params``, after checking the estimator's
    temperature (if it has one) against :func:`temperature_range`."""
    scale = energy_scale(params, _units(estimator.model))
    temperature = getattr(estimator, "temperature", None)
    if temperature is not None:
        check_temperature("temperature", float(temperature), scale, _dtype(params))
    return scale


def check_physical_scales(estimator, params) -> None:
    """Refuse a temperature or a nudge that is meaningless for this network at ``params``
    (:func:`check_temperature`, :func:`check_nudge`) before a run starts."""
    scale = check_temperature_of(estimator, params)
    beta = getattr(estimator, "beta", None)
    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
        check_nudge(float(beta), scale, int(estimator.model.num_outputs))

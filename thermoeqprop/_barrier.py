r"""The communication barrier of a tempered sweep's ladder: λ(T), Λ and the per-pair swap rates.

With ``temperature_sweep(..., tempering=True)`` the temperature grid is a parallel-tempering
ladder ``T_0 < T_1 < … < T_{R−1}`` (inverse temperatures ``β_0 > β_1 > …``). From the runs of one
(estimator, seed) this module estimates (``samplers._schedule``; Syed et al., JRSS B 84, 2022):

- ``p_k``, the mean swap acceptance probability of pair ``(k, k+1)``: the mean of
  ``TemperingInfo.swap_probability`` over every phase (one run per nudge sign), example, chain
  and draw (computed at every step whether the pair was proposed or not);
- ``Λ̂(β_j) = Σ_{k ≥ j} (1 − p_k)`` at every rung (:func:`samplers.communication_barrier`): 0 at
  the hottest rung, the global barrier ``Λ̂`` at the lowest temperature;
- the local barrier ``λ_k = [Λ̂(β_k) − Λ̂(β_{k+1})] / (β_k − β_{k+1})``, the slope of the
  piecewise-linear ``Λ̂(β)`` on ``[β_{k+1}, β_k]``, so that ``Σ_k λ_k (β_k − β_{k+1}) = Λ̂``.
  It peaks where the replicas find it hardest to pass (a phase transition, a bottleneck). Its
  units are those of ``T`` (``Λ̂`` has none, ``β`` is 1/energy).

The pair dimension ``pair_temperature`` is indexed by the midpoints ``(T_k + T_{k+1})/2``, with
the ends ``pair_temperature_low`` / ``pair_temperature_high`` and the gap
``pair_inverse_temperature_gap = β_k − β_{k+1}`` as coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

import samplers

__all__ = [
    "BARRIER_DESCRIPTIONS",
    "PAIR_DIM",
    "BarrierTable",
    "describe_barrier",
    "joinable_parts",
    "ladder_barrier",
]

PAIR_DIM = "pair_temperature"

BARRIER_DESCRIPTIONS = {
    "swap_probability": "mean swap acceptance probability of the ladder pair (T_k, T_k+1), over "
    "phases, examples, chains and draws (computed at every step, proposed or not)",
    "swap_rate": "accepted over proposed swaps of the ladder pair (T_k, T_k+1), summed over "
    "phases, examples, chains and draws",
    "cumulative_barrier": "communication barrier Λ(β) at the rung: Σ over pairs hotter than it "
    "of (1 − swap_probability); 0 at the hottest rung (samplers.communication_barrier)",
    "global_barrier": "global communication barrier Λ = Σ_k (1 − swap_probability_k)",
    "local_barrier": "local communication barrier λ = dΛ/dβ on the pair's interval: "
    "(1 − swap_probability) / (β_k − β_k+1), slope of the piecewise-linear Λ(β); "
    "Σ λ Δβ = Λ; units of T (k_B = 1)",
}


def _pair_mean(value: Any) -> np.ndarray:
    """Mean over every axis but the last (pairs)."""
    value = np.asarray(value, dtype=float)
    return value.mean(axis=tuple(range(value.ndim - 1)))


def ladder_barrier(ladder: Any, traces: Any) -> dict[str, np.ndarray]:
    """Swap rates and communication barrier of tempered runs on one ladder.

    Args:
        ladder: The temperatures, ``(R,)`` strictly increasing.
        traces: ``samplers.Trace`` of parallel-tempering runs on that ladder (one per phase),
            whose ``info.swap_probability`` etc. have shape ``(..., R−1)``.

    Returns:
        A dict of NumPy arrays: ``swap_probability``, ``swap_rate``, ``local_barrier``
        ``(R−1,)``; ``cumulative_barrier`` ``(R,)``; ``global_barrier`` ``()`` (module
        docstring).

    Example:
        >>> import types
        >>> info = types.SimpleNamespace(swap_probability=np.array([[0.5, 0.75]]),
        ...     swap_accepted=np.array([[1, 0]]), swap_proposed=np.array([[1, 1]]))
        >>> out = ladder_barrier([1.0, 2.0, 4.0], [types.SimpleNamespace(info=info)])
        >>> out["global_barrier"].item(), out["local_barrier"].tolist()
        (0.75, [1.0, 1.0])
    """
    ladder = np.asarray(ladder, dtype=float)
    probability = np.mean([_pair_mean(t.info.swap_probability) for t in traces], axis=0)
    accepted = sum(_pair_sum(t.info.swap_accepted) for t in traces)
    proposed = sum(_pair_sum(t.info.swap_proposed) for t in traces)
    cumulative, total = samplers.communication_barrier(ladder, probability)
    gap = -np.diff(1.0 / ladder)  # β_k − β_{k+1} > 0
    return {
        "swap_probability": probability,
        "swap_rate": accepted / np.maximum(proposed, 1),
        "cumulative_barrier": cumulative,
        "global_barrier": np.asarray(total),
        "local_barrier": -np.diff(cumulative) / gap,
    }


def _pair_sum(value: Any) -> np.ndarray:
    value = np.asarray(value)
    return value.sum(axis=tuple(range(value.ndim - 1))).astype(float)


class BarrierTable:
    """Collects :func:`ladder_barrier` per (estimator, seed) of a unit and adds it to its part."""

    def __init__(self, num_estimators: int, num_seeds: int, ladder: Any):
        self.ladder = np.asarray(ladder, dtype=float)
        pairs, rungs = self.ladder.size - 1, self.ladder.size
        shape = (num_estimators, num_seeds)
        self.values = {
            "swap_probability": np.full((shape[0], pairs, shape[1]), np.nan),
            "swap_rate": np.full((shape[0], pairs, shape[1]), np.nan),
            "local_barrier": np.full((shape[0], pairs, shape[1]), np.nan),
            "cumulative_barrier": np.full((shape[0], rungs, shape[1]), np.nan),
            "global_barrier": np.full(shape, np.nan),
        }

    def put(self, estimator: int, seed: int, barrier: dict[str, np.ndarray]) -> None:
        for name, value in barrier.items():
            if value.ndim:
                self.values[name][estimator, :, seed] = value
            else:
                self.values[name][estimator, seed] = value

    def add_to(self, part: xr.Dataset) -> xr.Dataset:
        """``part`` with the barrier variables (pair coordinates on ``pair_temperature``)."""
        t = self.ladder
        pair = ("estimator", PAIR_DIM, "seed")
        dims = {"cumulative_barrier": ("estimator", "temperature", "seed"),
                "global_barrier": ("estimator", "seed")}  # fmt: skip
        out = part.assign_coords(
            {
                PAIR_DIM: (PAIR_DIM, 0.5 * (t[:-1] + t[1:])),
                "pair_temperature_low": (PAIR_DIM, t[:-1]),
                "pair_temperature_high": (PAIR_DIM, t[1:]),
                "pair_inverse_temperature_gap": (PAIR_DIM, -np.diff(1.0 / t)),
            }
        )
        for name, value in self.values.items():
            out[name] = (dims.get(name, pair), value)
        return out


# Variables a sweep's parts gained after sweeps were first saved (besides the barrier's).
LATER_VARIABLES = ("control_variate_gain",)


def joinable_parts(parts: list[xr.Dataset]) -> list[xr.Dataset]:
    """``parts`` without the barrier variables, or any of :data:`LATER_VARIABLES`, unless
    every part has them (parts saved by a version before them, resumed by this one, then
    still join)."""
    names = [name for name in LATER_VARIABLES if not all(name in part for part in parts)]
    if not all("local_barrier" in part for part in parts):
        names += [*BARRIER_DESCRIPTIONS, PAIR_DIM, "pair_temperature_low",
                  "pair_temperature_high", "pair_inverse_temperature_gap"]  # fmt: skip
    if not names:
        return parts
    return [part.drop_vars(names, errors="ignore") for part in parts]


def describe_barrier(ds: xr.Dataset) -> None:
    """Attributes of the barrier variables and pair coordinates (in place; no-op without)."""
    if "local_barrier" not in ds:
        return
    for name, text in BARRIER_DESCRIPTIONS.items():
        ds[name].attrs["description"] = text
    ds["local_barrier"].attrs["units"] = "energy units (k_B = 1), as T"
    ds["local_barrier"].attrs["estimate"] = (
        "Λ(β) piecewise linear through (β_j, Σ_{k≥j} r_k), r_k = 1 − swap_probability_k; "
        "λ its slope on each pair's interval (Syed et al. 2022)"
    )
    ds[PAIR_DIM].attrs.update(
        description="midpoint (T_k + T_k+1)/2 of a neighbouring pair of the tempering ladder",
        units="energy units (k_B = 1)",
    )
    ds["pair_inverse_temperature_gap"].attrs["description"] = "β_k − β_k+1 of the pair"

"""Layout of a :class:`samplers.Trace` as InferenceData: dims, stat names, tempering summaries.

No ArviZ here (:mod:`samplers._arviz` makes every ArviZ call); these helpers name the
dimensions of positions and Info fields, and :func:`tempering_summaries` reduces a
parallel-tempering trace's per-step swap records to per-chain, per-pair summaries:

- ``swap_acceptance_probability`` ``(chain, [target,] pair)``: mean over draws of the swap
  acceptance probability ``TemperingInfo.swap_probability`` (every pair, every step);
- ``swap_accepted_count``, ``swap_proposed_count`` ``(chain, [target,] pair)``: accepted and
  proposed swaps over the draws;
- ``swap_acceptance_rate`` ``(chain, [target,] pair)``: accepted over proposed (0 where a pair
  was never proposed), as :func:`samplers.swap_acceptance`;
- ``round_trips_completed`` ``(chain, [target])``: round trips of all walkers of the chain at
  its last draw (cumulative since the chain started, warm-up included).

Pair ``k`` is the neighbour pair of temperature slots ``(k, k+1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TEMPERING_SUMMARIES", "tempering_summaries"]

TEMPERING_SUMMARIES = {
    "swap_acceptance_probability": "mean over draws of the swap acceptance probability of the "
    "pair (slots k, k+1), computed at every step whether proposed or not",
    "swap_accepted_count": "accepted swaps of the pair over the draws",
    "swap_proposed_count": "proposed swaps of the pair over the draws",
    "swap_acceptance_rate": "accepted over proposed swaps of the pair over the draws (0 if never "
    "proposed)",
    "round_trips_completed": "round trips (lowest → highest → lowest temperature) of all walkers "
    "of the chain at its last draw, cumulative since the chain started (warm-up included)",
}


def _event_dims(name: str, shape: tuple[int, ...], base: tuple[str, ...]) -> list[str]:
    dims = list(base[-len(shape) :]) if len(shape) <= len(base) else list(base)
    while len(dims) < len(shape):
        dims.append(f"{name}_dim_{len(dims)}")
    return dims[: len(shape)]


_STAT_NAMES = {
    "is_divergent": "diverging",
    "hamiltonian": "energy",
    "energy": "potential_energy",
    "num_integration_steps": "n_steps",
}


def _flatten_info(info: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for field, value in info._asdict().items():
        if hasattr(value, "_asdict"):
            out.update(_flatten_info(value, prefix=f"{field}_" if field != "local" else ""))
        elif value is not None:
            out[prefix + _STAT_NAMES.get(field, field)] = np.asarray(value)
    return out


def _unit_names(unit_names: Any, shape: tuple[int, ...]) -> list:
    if isinstance(unit_names, str):
        raise ValueError(f"unit_names must be a sequence of names, got the string {unit_names!r}.")
    names = list(unit_names)
    if len(shape) < 3 or len(names) != shape[-1]:
        units = shape[-1] if len(shape) >= 3 else 0
        raise ValueError(
            f"unit_names must name each of the {units} units of a position (the last axis of "
            f"samples of shape {shape}), got {len(names)} names."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"unit_names must be distinct, got {names!r}.")
    return names


def tempering_summaries(
    stats: dict[str, np.ndarray], lead: tuple[str, ...]
) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]]:
    """Per-chain summaries of a tempering trace's swap records (module docstring).

    Args:
        stats: Flattened Info fields with axes ``(chain, draw, *lead, ...)``: ``swap_probability``,
            ``swap_accepted``, ``swap_proposed`` ``(..., pair)`` and ``round_trips``.
        lead: Names of the axes after ``draw`` (``("target",)`` for a batch, else ``()``).

    Returns:
        ``{name: (dims, values, attrs)}`` for :data:`TEMPERING_SUMMARIES`, ready for
        ``xarray.Dataset.__setitem__``.

    Example:
        >>> stats = {"swap_probability": np.full((1, 2, 1), 0.5),
        ...          "swap_accepted": np.array([[[True], [False]]]),
        ...          "swap_proposed": np.ones((1, 2, 1), dtype=bool),
        ...          "round_trips": np.array([[0, 1]])}
        >>> dims, rate, _ = tempering_summaries(stats, ())["swap_acceptance_rate"]
        >>> dims, rate.tolist(), tempering_summaries(stats, ())["round_trips_completed"][1]
        (('chain', 'pair'), [[0.5]], array([1]))
    """
    accepted = np.asarray(stats["swap_accepted"]).sum(axis=1)
    proposed = np.asarray(stats["swap_proposed"]).sum(axis=1)
    pair = ("chain", *lead, "pair")
    values = {
        "swap_acceptance_probability": (pair, np.asarray(stats["swap_probability"]).mean(axis=1)),
        "swap_accepted_count": (pair, accepted),
        "swap_proposed_count": (pair, proposed),
        "swap_acceptance_rate": (pair, accepted / np.maximum(proposed, 1)),
        "round_trips_completed": (("chain", *lead), np.asarray(stats["round_trips"])[:, -1]),
    }
    return {
        name: (dims, value, {"description": TEMPERING_SUMMARIES[name]})
        for name, (dims, value) in values.items()
    }

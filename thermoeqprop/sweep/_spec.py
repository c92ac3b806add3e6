"""The estimators of a sweep, named by strings, and the checks of a sweep's arguments."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from thermoeqprop import registry
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.thermal import MAX_ENUMERATED_SPINS, Sampling
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = [
    "ESTIMATOR_KINDS",
    "EstimatorSpec",
    "check_sampling",
    "check_seeds",
    "check_temperatures",
    "check_tempering",
    "has_exact_reference",
    "matched_budgets",
    "parse_estimator",
]

ESTIMATOR_KINDS = ("covariance", "nudged", "nudged-one-sided")


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """One estimator of a sweep.

    Attributes:
        label: Canonical name, the sweep's ``estimator`` coordinate: ``"covariance"``,
            ``"nudged:0.1"`` (symmetric, β = 0.1) or ``"nudged-one-sided:0.1"``.
        kind: One of :data:`ESTIMATOR_KINDS`.
        beta: Nudging strength (NaN for the covariance estimator).
    """

    label: str
    kind: str
    beta: float

    @property
    def symmetric(self) -> bool:
        return self.kind == "nudged"

    def build(self, model: EnergyModel, temperature: float, sampling: Sampling):
        # The kinds are names of thermoeqprop.registry (covariance reads no β).
        options = registry.EstimatorOptions(temperature, self.beta, sampling)
        return registry.build(self.kind, model, options)


def parse_estimator(spec: str, beta: float = 0.1) -> EstimatorSpec:
    """Parse ``"covariance"``, ``"nudged"``, ``"nudged:0.05"``, ``"nudged-one-sided[:β]"``.

    A nudged estimator without ``:β`` takes ``beta``.

    Example:
        >>> parse_estimator("nudged", 0.2).label, parse_estimator("nudged-one-sided:0.05").beta
        ('nudged:0.2', 0.05)
    """
    if not isinstance(spec, str):
        raise ValueError(f"an estimator must be named by a string, got {spec!r}")
    kind, _, value = spec.strip().partition(":")
    if kind not in ESTIMATOR_KINDS:
        raise ValueError(
            f"unknown estimator {spec!r}; valid: {list(ESTIMATOR_KINDS)}, nudged ones "
            "optionally with their β as 'nudged:0.05'"
        )
    if kind == "covariance":
        if value:
            raise ValueError(f"the covariance estimator takes no β, got {spec!r}")
        return EstimatorSpec("covariance", kind, math.nan)
    if value:
        try:
            beta = float(value)
        except ValueError:
            raise ValueError(f"estimator {spec!r}: β {value!r} is not a number") from None
    beta = check_positive(f"beta of estimator {spec!r}", beta)
    return EstimatorSpec(f"{kind}:{beta:g}", kind, beta)


def matched_budgets(
    estimators: Sequence[str], sampling: Sampling, beta: float = 0.1
) -> dict[str, Sampling]:
    """Sampler settings giving every estimator the same number of sampler steps per example.

    The covariance estimator samples one phase; nudged ones sample two. An estimator with
    fewer phases gets proportionally more draws and warm-up steps, so that
    phases × chains × (warm-up + draws) is the same for all.

    Example:
        >>> budgets = matched_budgets(["covariance", "nudged"], Sampling(num_samples=100))
        >>> budgets["covariance"].num_samples, budgets["nudged"].num_samples
        (200, 100)
    """
    specs = [parse_estimator(name, beta) for name in estimators]
    phases = {spec.label: 1 if spec.kind == "covariance" else 2 for spec in specs}
    most = max(phases.values())
    out = {}
    for name, spec in zip(estimators, specs, strict=True):
        factor = most // phases[spec.label]
        out[name] = dataclasses.replace(
            sampling,
            num_samples=sampling.num_samples * factor,
            num_warmup=sampling.num_warmup * factor,
        )
    return out


def check_temperatures(temperatures) -> np.ndarray:
    try:
        t = np.asarray(temperatures, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"temperatures must be numbers, got {temperatures!r}") from None
    if t.size == 0:
        raise ValueError("temperatures is empty; give at least one temperature")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"temperatures must be finite and > 0, got {t.tolist()}")
    if np.unique(t).size != t.size:
        raise ValueError(f"temperatures must be distinct, got {t.tolist()}")
    return np.sort(t)


def check_seeds(seeds) -> list[int]:
    seeds = [seeds] if isinstance(seeds, int | np.integer) else list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
            raise ValueError(f"seeds must be integers ≥ 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [int(s) for s in seeds]


def check_sampling(sampling, specs, raw_names) -> dict[str, Sampling]:
    if isinstance(sampling, Sampling):
        chosen = {spec.label: sampling for spec in specs}
    elif isinstance(sampling, Mapping):
        known = set(raw_names) | {spec.label for spec in specs}
        unknown = sorted(str(k) for k in sampling if k not in known)
        if unknown:
            raise ValueError(
                f"sampling names estimators {unknown} that the sweep does not run; its "
                f"estimators are {raw_names}"
            )
        chosen = {}
        for spec, raw in zip(specs, raw_names, strict=True):
            value = sampling.get(raw, sampling.get(spec.label))
            if value is None:
                raise ValueError(
                    f"sampling has no entry for estimator {raw!r}; give one per estimator "
                    f"(keys {raw_names}) or a single Sampling"
                )
            chosen[spec.label] = value
    else:
        raise ValueError(f"sampling must be a Sampling or a mapping, got {type(sampling).__name__}")
    for label, value in chosen.items():
        if not isinstance(value, Sampling):
            raise ValueError(f"sampling for {label!r} must be a Sampling, got {value!r}")
        if value.target_relative_stderr is not None:
            raise ValueError(
                "a sweep compares estimators at a fixed budget: target_relative_stderr must be "
                f"None, got {value.target_relative_stderr!r} for {label!r}; set num_samples"
            )
    return chosen


def has_exact_reference(model: EnergyModel) -> bool:
    """Whether :class:`ThermalExact` applies (quadratic network, or ≤ 20 spins)."""
    if isinstance(model, QuadraticNetwork):
        return True
    return bool(model.is_spin and model.state_size <= MAX_ENUMERATED_SPINS)


def check_tempering(tempering: bool, temperatures: np.ndarray, chosen: dict[str, Sampling]):
    """A tempered sweep's ladder is its grid: at least two temperatures, no tempering of its
    own in any estimator's sampler settings."""
    if not tempering:
        return
    if len(temperatures) < 2:
        raise ValueError(
            f"tempering needs at least two temperatures (the ladder), got {temperatures.tolist()}"
        )
    for label, value in chosen.items():
        if value.tempering:
            raise ValueError(
                f"with tempering=True the ladder is the temperature grid; sampling for "
                f"{label!r} must have tempering=0, got {value.tempering}"
            )

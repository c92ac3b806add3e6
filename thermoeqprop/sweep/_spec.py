"""The estimators of a sweep (named by strings, or given as estimators or factories of the
temperature) and the checks of a sweep's arguments."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from thermoeqprop import registry
from thermoeqprop._protocols import Estimator, Model
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.thermal import MAX_ENUMERATED_SPINS, Sampling
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = [
    "ESTIMATOR_KINDS",
    "EstimatorSpec",
    "GivenEstimator",
    "check_sampling",
    "check_seeds",
    "check_temperatures",
    "check_tempering",
    "estimator_specs",
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
        control_variates: The estimator's ``control_variates`` (None: off).
    """

    label: str
    kind: str
    beta: float
    control_variates: str | None = None

    @property
    def symmetric(self) -> bool:
        return self.kind == "nudged"

    def build(self, model: Model, temperature: float, sampling: Sampling | None):
        # The kinds are names of thermoeqprop.registry (covariance reads no β), so a quantum
        # model gets its own covariance (Kubo–Mori) and nudged estimators.
        options = registry.EstimatorOptions(
            temperature, self.beta, sampling, control_variates=self.control_variates
        )
        if (
            self.control_variates is not None
            and "control_variates" not in registry.entry(self.kind, model.family).options
        ):
            raise ValueError(
                f"control_variates={self.control_variates!r}: the {model.family} "
                f"{self.kind!r} estimator takes no control variates; pass control_variates=None"
            )
        return registry.build(self.kind, model, options)


@dataclasses.dataclass(frozen=True)
class GivenEstimator:
    """An estimator of a sweep given as a factory of the temperature (any family).

    Attributes:
        label: The sweep's ``estimator`` coordinate.
        factory: ``temperature -> Estimator``; an estimator given as such becomes
            ``lambda T: dataclasses.replace(estimator, temperature=T)``.

    Its sampler settings are its own (the sweep's ``sampling`` is for named estimators), its
    expectation is not known to the sweep (``expected_gradient`` and ``z_score`` are NaN
    for it) and it runs without the sweep's tempering.
    """

    label: str
    factory: Callable[[float], Estimator]
    kind = None
    beta = math.nan
    symmetric = False

    def build(self, model: Model, temperature: float, sampling: Sampling | None = None):
        """The factory's estimator at ``temperature``, checked: an Estimator of ``model``
        whose temperature is the one asked for."""
        del sampling
        built = self.factory(temperature)
        if not isinstance(built, Estimator):
            raise ValueError(
                f"estimator {self.label!r}: the factory must return a thermoeqprop.Estimator, "
                f"got {type(built).__name__}"
            )
        if built.model != model:
            raise ValueError(
                f"estimator {self.label!r} estimates the gradient of another model "
                f"({type(built.model).__name__}) than the sweep's ({type(model).__name__})"
            )
        if built.temperature is None or not math.isclose(built.temperature, temperature):
            raise ValueError(
                f"estimator {self.label!r}: asked for T = {temperature:g}, the factory gave an "
                f"estimator at T = {built.temperature!r}; a sweep needs thermal estimators "
                "whose temperature is the grid's"
            )
        return built


def _factory_of(item) -> Callable[[float], Estimator]:
    if isinstance(item, Estimator):
        if item.temperature is None or not dataclasses.is_dataclass(item):
            raise ValueError(
                f"{type(item).__name__} has no temperature to sweep; give a thermal estimator "
                "(a dataclass with a temperature) or a factory of the temperature"
            )
        return lambda temperature: dataclasses.replace(item, temperature=temperature)
    if callable(item):
        return item
    raise ValueError(
        f"an estimator of a sweep is a name, an Estimator or a factory of the temperature, "
        f"got {item!r}"
    )


def estimator_specs(
    estimators, beta: float, first_temperature: float
) -> tuple[list[EstimatorSpec | GivenEstimator], list[str]]:
    """The specs of a sweep's ``estimators`` (a name, or a sequence or a label → item mapping
    of names, Estimators and factories of the temperature) and the names the caller used
    (the keys a ``sampling`` mapping may take).

    A name is parsed by :func:`parse_estimator`; an Estimator or a factory without a label is
    labelled by the class of its estimator at ``first_temperature``.
    """
    if isinstance(estimators, str | Estimator) or (
        callable(estimators) and not isinstance(estimators, Mapping)
    ):
        estimators = [estimators]
    items = list(estimators.items()) if isinstance(estimators, Mapping) else [
        (None, item) for item in estimators
    ]  # fmt: skip
    if not items:
        raise ValueError("estimators is empty; choose from " + str(list(ESTIMATOR_KINDS)))
    specs, raw = [], []
    for label, item in items:
        if isinstance(item, str):
            spec = parse_estimator(item, beta)
            specs.append(spec if label is None else dataclasses.replace(spec, label=str(label)))
            raw.append(item if label is None else str(label))
            continue
        factory = _factory_of(item)
        if label is None:
            label = type(factory(first_temperature)).__name__
        specs.append(GivenEstimator(str(label), factory))
        raw.append(str(label))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"estimators name the same estimator twice: {labels} (give a mapping from labels "
            "to estimators to tell two of one class apart)"
        )
    return specs, raw


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
    """The sampler settings of each named estimator (by label); an estimator given as such
    or by a factory has its own."""
    named = [(s, r) for s, r in zip(specs, raw_names, strict=True) if isinstance(s, EstimatorSpec)]
    if isinstance(sampling, Sampling):
        chosen = {spec.label: sampling for spec, _ in named}
    elif isinstance(sampling, Mapping):
        known = {r for _, r in named} | {spec.label for spec, _ in named}
        unknown = sorted(str(k) for k in sampling if k not in known)
        if unknown:
            raise ValueError(
                f"sampling names estimators {unknown} that the sweep does not run by name (an "
                f"estimator given as such has its own settings); its estimators are {raw_names}"
            )
        chosen = {}
        for spec, raw in named:
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


def has_exact_reference(model: Model) -> bool:
    """Whether :class:`ThermalExact` applies (quadratic network, or ≤ 20 spins)."""
    if not isinstance(model, EnergyModel):
        return False
    if isinstance(model, QuadraticNetwork):
        return True
    return bool(model.is_spin and model.state_size <= MAX_ENUMERATED_SPINS)


def check_tempering(
    tempering: bool, temperatures: np.ndarray, chosen: dict[str, Sampling], specs, model: Model
):
    """A tempered sweep's ladder is its grid: at least two temperatures, sampled estimators
    named by the sweep on an energy model, no tempering of its own in any estimator's sampler
    settings."""
    if not tempering:
        return
    given = [s.label for s in specs if not isinstance(s, EstimatorSpec)]
    if given or not isinstance(model, EnergyModel):
        raise ValueError(
            "tempering=True runs the sampled estimators the sweep names (covariance, nudged) on "
            f"an energy model; got {type(model).__name__}"
            + (f" and the given estimators {given}" if given else "")
        )
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

"""One registry of gradient estimators: a name and a model give an Estimator.

Every command names its estimator here (``thermoeqprop train --estimator``, ``thermoeqprop
quantum --estimator``, ``thermoeqprop sweep --estimators``, the low-temperature study's
``estimators``), so the commands share one vocabulary. A name says *how* the gradient is
estimated; the model's :attr:`~thermoeqprop.Model.family` says which implementation runs:

| name | classical (energy models) | quantum (qubit networks) |
|---|---|---|
| ``covariance`` | ``ThermalCovariance`` | ``ThermalEP``, Kubo–Mori |
| ``nudged`` | ``ThermalNudged``, ±β | ``ThermalEP``, nudged ±β |
| ``nudged-one-sided`` | ``ThermalNudged``, 0 and β | — |
| ``exact`` | ``ThermalExact`` | — |
| ``ep`` | ``ZeroTemperatureEP``, ±β | ``EigenstateEP``, level 0 |
| ``ep-one-sided`` | ``ZeroTemperatureEP``, 0 and β | — |
| ``eigenstate`` | — | ``EigenstateEP``, level ``level`` |
| ``implicit`` | ``ImplicitDifferentiation`` | — |
| ``backprop`` | ``FeedforwardBackprop`` | — |
| ``laplace`` | ``LowTemperatureExpansion`` | — |

(the classical classes are in :mod:`thermoeqprop.estimators` and :mod:`thermoeqprop.lowtemp`,
the quantum ones in :mod:`thermoeqprop.quantum`). The names the quantum command used before
(``ground``, ``excited``, ``thermal``, ``thermal-nudged``) are deprecated aliases of ``ep``,
``eigenstate``, ``covariance`` and ``nudged``: they still work, with a ``FutureWarning``.

A factory takes ``(model, options)`` and reads from :class:`EstimatorOptions` only the
settings its entry lists (:attr:`EstimatorEntry.options`); a setting left at ``None`` takes
the estimator's own default, and settings an estimator has no use for are ignored (a command
passes all of its flags). :func:`register` adds an estimator of one's own.

Example:
    >>> from thermoeqprop.models import LayeredNetwork
    >>> net = LayeredNetwork((2, 3, 1))
    >>> est = build("ep", net, EstimatorOptions(beta=0.1))
    >>> type(est).__name__, est.beta, est.symmetric
    ('ZeroTemperatureEP', 0.1, True)
    >>> names("quantum")
    ('covariance', 'nudged', 'ep', 'eigenstate')
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from thermoeqprop._protocols import Estimator, Model

__all__ = [
    "DEPRECATED_ALIASES",
    "FAMILIES",
    "EstimatorEntry",
    "EstimatorOptions",
    "NameChoices",
    "build",
    "choices",
    "entry",
    "names",
    "register",
    "resolve",
]

#: The model families (:attr:`~thermoeqprop.Model.family`) this package registers estimators for.
FAMILIES = ("classical", "quantum")


@dataclasses.dataclass(frozen=True)
class EstimatorOptions:
    """The settings a factory may read; ``None`` leaves the estimator's own default.

    Attributes:
        temperature: ``T`` of the thermal estimators.
        beta: Nudging strength ``β``.
        sampling: :class:`~thermoeqprop.estimators.Sampling` of the sampled estimators,
            which carries every sampler setting, collapsed sampling included
            (``Sampling.collapse``, ``thermoeqprop train --collapse``).
        relaxation: :class:`~thermoeqprop.estimators.Relaxation` of the T = 0 estimators.
        level: Eigenstate index of ``eigenstate``.
        solver: ``"dense"`` or ``"sparse"`` (quantum ``ep`` and ``eigenstate``).
        shots: Shots per basis setting (quantum; ``None``: exact expectations).
        shot_model: ``"projective"`` or ``"gaussian"`` (quantum, with shots).
        error_signal: ``"noisy"`` or ``"exact"`` free outputs (quantum, with shots).
        control_variates: Control variates of the sampled thermal estimators (``"zv1"``,
            ``"zv2"``, ``"laplace"``, ``"heat_bath"``; ``thermoeqprop train
            --control-variates``).
    """

    temperature: float | None = None
    beta: float | None = None
    sampling: Any = None
    relaxation: Any = None
    level: int | None = None
    solver: str | None = None
    shots: int | None = None
    shot_model: str | None = None
    error_signal: str | None = None
    control_variates: str | None = None

    def given(self, names: Iterable[str]) -> dict[str, Any]:
        """The settings among ``names`` that are not ``None``, as keyword arguments."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


Factory = Callable[[Model, EstimatorOptions], Estimator]


@dataclasses.dataclass(frozen=True)
class EstimatorEntry:
    """One registered estimator for one model family.

    Attributes:
        name: The canonical name.
        family: The :attr:`~thermoeqprop.Model.family` it applies to.
        factory: ``(model, options) -> Estimator``.
        options: The :class:`EstimatorOptions` fields the factory reads (a command builds
            only these: a T = 0 estimator never validates sampler flags).
        summary: One line for help texts.
    """

    name: str
    family: str
    factory: Factory
    options: tuple[str, ...]
    summary: str


_ENTRIES: dict[str, dict[str, EstimatorEntry]] = {}  # name -> family -> entry, in order

#: Deprecated names and the canonical names they stand for.
DEPRECATED_ALIASES = {
    "ground": "ep",
    "excited": "eigenstate",
    "thermal": "covariance",
    "thermal-nudged": "nudged",
}


def register(
    name: str,
    family: str,
    factory: Factory,
    *,
    options: Iterable[str] = (),
    summary: str = "",
) -> EstimatorEntry:
    """Register ``factory`` as estimator ``name`` for models of ``family``.

    Raises:
        ValueError: If ``name`` is already registered for ``family`` or is a deprecated
            alias, or if ``options`` names a setting :class:`EstimatorOptions` lacks.
    """
    fields = {f.name for f in dataclasses.fields(EstimatorOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name!r}; valid: {sorted(fields)}")
    if name in DEPRECATED_ALIASES or family in _ENTRIES.get(name, {}):
        raise ValueError(f"estimator {name!r} is already registered for family {family!r}")
    new = EstimatorEntry(name, family, factory, tuple(options), summary)
    _ENTRIES.setdefault(name, {})[family] = new
    return new


def names(family: str | None = None) -> tuple[str, ...]:
    """The canonical names (of one family, or of all), in the order they were registered."""
    return tuple(n for n, per in _ENTRIES.items() if family is None or family in per)


def resolve(name: str, family: str | None = None) -> str:
    """The canonical name for ``name``: itself, or a deprecated alias's replacement (with a
    ``FutureWarning``).

    Raises:
        ValueError: Naming the valid names (of ``family``, when given) if ``name`` is unknown
            or has no estimator for ``family``.
    """
    canonical = DEPRECATED_ALIASES.get(name, name)
    if canonical != name:
        warnings.warn(
            f"estimator name {name!r} is deprecated; use {canonical!r}",
            FutureWarning,
            stacklevel=3,
        )
    valid = list(names(family))
    if canonical not in _ENTRIES:
        raise ValueError(f"unknown estimator {name!r}; valid: {valid}")
    if family is not None and family not in _ENTRIES[canonical]:
        raise ValueError(
            f"estimator {name!r} has no {family} implementation (it has "
            f"{sorted(_ENTRIES[canonical])}); valid for {family} models: {valid}"
        )
    return canonical


def entry(name: str, family: str) -> EstimatorEntry:
    """The entry of ``name`` (or a deprecated alias of it) for models of ``family``."""
    return _ENTRIES[resolve(name, family)][family]


def build(name: str, model: Model, options: EstimatorOptions | None = None) -> Estimator:
    """The estimator ``name`` for ``model`` with ``options`` (default: every setting at the
    estimator's own default).

    Raises:
        ValueError: If ``name`` is unknown or not available for the model's family (naming
            the valid ones), or if the estimator rejects the model or a setting.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a thermoeqprop.Model, got {type(model).__name__}")
    family = model.family
    if family not in {f for per in _ENTRIES.values() for f in per}:
        raise ValueError(
            f"no estimator is registered for {type(model).__name__} (family {family!r}); "
            f"registered families: {sorted({f for per in _ENTRIES.values() for f in per})}"
        )
    found = _ENTRIES[resolve(name, family)][family]
    return found.factory(model, options or EstimatorOptions())


class NameChoices(tuple):
    """The canonical names, as argparse ``choices``: shown in help and in the error for an
    unknown name, while ``in`` also accepts the deprecated aliases (:func:`resolve` then
    warns)."""

    __slots__ = ()

    def __contains__(self, value) -> bool:
        canonical = DEPRECATED_ALIASES.get(value, value)
        return tuple.__contains__(self, canonical)


def choices(family: str) -> NameChoices:
    """The names of ``family`` for an argparse option's ``choices`` (see :class:`NameChoices`)."""
    return NameChoices(names(family))


# --------------------------------------------------------------------------------------------
# The estimators of this package. Each factory imports its class when called, so reading the
# names (to build the command line) imports no estimator and no quantum code.

#: The settings the sampled thermal estimators read.
_SAMPLED = ("temperature", "sampling", "control_variates")


def _covariance(model, o):
    from thermoeqprop.estimators import ThermalCovariance

    return ThermalCovariance(model, **o.given(_SAMPLED))


def _nudged(symmetric: bool) -> Factory:
    def factory(model, o):
        from thermoeqprop.estimators import ThermalNudged

        chosen = o.given((*_SAMPLED, "beta"))
        return ThermalNudged(model, symmetric=symmetric, **chosen)

    return factory


def _exact(model, o):
    from thermoeqprop.estimators import ThermalExact

    return ThermalExact(model, **o.given(("temperature",)))


def _ep(symmetric: bool) -> Factory:
    def factory(model, o):
        from thermoeqprop.estimators import ZeroTemperatureEP

        chosen = o.given(("beta", "relaxation"))
        return ZeroTemperatureEP(model, symmetric=symmetric, **chosen)

    return factory


def _implicit(model, o):
    from thermoeqprop.estimators import ImplicitDifferentiation

    return ImplicitDifferentiation(model, **o.given(("relaxation",)))


def _backprop(model, o):
    from thermoeqprop.estimators import FeedforwardBackprop

    return FeedforwardBackprop(model)


def _laplace(model, o):
    from thermoeqprop.lowtemp._expansion import LowTemperatureExpansion

    return LowTemperatureExpansion(model, **o.given(("temperature", "relaxation")))


QUANTUM_SHOTS = ("shots", "shot_model", "error_signal")


def _quantum_eigenstate(ground: bool) -> Factory:
    def factory(model, o):
        from thermoeqprop.quantum._estimators import EigenstateEP

        chosen = o.given(("beta", "solver", *QUANTUM_SHOTS, *(() if ground else ("level",))))
        return EigenstateEP(model, **chosen)

    return factory


def _quantum_thermal(nudged: bool) -> Factory:
    def factory(model, o):
        from thermoeqprop.quantum._thermal import ThermalEP

        if nudged:
            return ThermalEP(model, method="nudged", **o.given(("temperature", "beta",
                                                                 *QUANTUM_SHOTS)))  # fmt: skip
        return ThermalEP(model, **o.given(("temperature", *QUANTUM_SHOTS)))

    return factory


for _args in (
    ("covariance", "classical", _covariance, _SAMPLED,
     "thermal, unclamped −Cov(C, ∂θE)/T"),
    ("covariance", "quantum", _quantum_thermal(False), ("temperature", *QUANTUM_SHOTS),
     "thermal, Kubo–Mori covariance −⟨Ĉ; ∂θH⟩/T (no nudge)"),
    ("nudged", "classical", _nudged(True), (*_SAMPLED, "beta"), "thermal, ±β phases"),
    ("nudged", "quantum", _quantum_thermal(True), ("temperature", "beta", *QUANTUM_SHOTS),
     "thermal density matrices at ±β"),
    ("nudged-one-sided", "classical", _nudged(False), (*_SAMPLED, "beta"),
     "thermal, phases at 0 and β"),
    ("exact", "classical", _exact, ("temperature",),
     "thermal by enumeration (spins) or closed form (quadratic)"),
    ("ep", "classical", _ep(True), ("beta", "relaxation"), "zero-temperature EP at ±β"),
    ("ep", "quantum", _quantum_eigenstate(True), ("beta", "solver", *QUANTUM_SHOTS),
     "ground-state EP at ±β"),
    ("ep-one-sided", "classical", _ep(False), ("beta", "relaxation"),
     "zero-temperature EP at 0 and β"),
    ("eigenstate", "quantum", _quantum_eigenstate(False),
     ("level", "beta", "solver", *QUANTUM_SHOTS), "EP in eigenstate --level"),
    ("implicit", "classical", _implicit, ("relaxation",), "exact T = 0 gradient"),
    ("backprop", "classical", _backprop, (), "feedforward baseline"),
    ("laplace", "classical", _laplace, ("temperature", "relaxation"),
     "low-temperature expansion g0 + T g1"),
):  # fmt: skip
    register(*_args[:3], options=_args[3], summary=_args[4])
del _args

"""The terms of a Hamiltonian: fixed, input-driven and trainable Pauli-sum terms.

A term is ``a(θ, x) · O`` with a Hermitian Pauli sum ``O`` and a real coefficient of one of
three kinds (see ``quantum/_network.py``). Trainable terms belong to a *group* of parameters
(:func:`parameter_group`), so that initial scales, penalties and bounds can be given per group
(``Hamiltonian.group_values``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from thermoeqprop.quantum._pauli import PauliSum

__all__ = ["Term", "fixed", "input_driven", "parameter_group", "shared_groups", "trainable"]

_KINDS = ("fixed", "input", "trainable")


@dataclasses.dataclass(frozen=True)
class Term:
    """One term ``a(θ, x) · O`` of a Hamiltonian. Build with :func:`fixed`,
    :func:`input_driven` or :func:`trainable`.

    Attributes:
        operator: Hermitian Pauli sum ``O``.
        kind: ``"fixed"``, ``"input"`` or ``"trainable"``.
        value: Fixed coefficient; input scale (or initial trainable input weight); initial
            value of a trainable coefficient.
        feature: Input feature index for input-driven terms.
        feature_map: Fixed map ``x (num_inputs,) → scalar``; the coefficient is
            ``value · feature_map(x)`` instead of ``value · x[feature]``.
        parameter: Name of the trainable parameter (terms that share a name share it).
        group: Name of the trainable parameter's group (for initial scales, penalties and
            bounds per group); ``None``: by its kind and operator (:func:`parameter_group`).
    """

    operator: PauliSum
    kind: str
    value: float = 1.0
    feature: int | None = None
    feature_map: Callable[[jax.Array], jax.Array] | None = None
    parameter: str | None = None
    group: str | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"term kind must be one of {_KINDS}, got {self.kind!r}")
        self.operator.check_hermitian(f"the operator of a {self.kind} term")
        if isinstance(self.value, complex) or not math.isfinite(float(self.value)):
            raise ValueError(
                f"a term coefficient must be a finite real number (complex coefficients make "
                f"the Hamiltonian non-Hermitian), got {self.value!r}"
            )
        if self.kind == "input" and self.feature is None and self.feature_map is None:
            raise ValueError("an input-driven term needs a feature index or a feature_map")
        if self.feature is not None and (
            not isinstance(self.feature, int | np.integer) or self.feature < 0
        ):
            raise ValueError(f"feature must be a non-negative integer, got {self.feature!r}")
        if self.group is not None and not (isinstance(self.group, str) and self.group):
            raise ValueError(f"group must be None or a non-empty string, got {self.group!r}")
        if self.group is not None and self.parameter is None:
            raise ValueError(
                f"group={self.group!r} is given to a term without a trainable parameter; only "
                "trainable terms and trainable input weights belong to a group"
            )

    @property
    def is_trainable(self) -> bool:
        return self.parameter is not None


def _operator(operator: Any, num_qubits: int | None, coefficient: Any = 1.0) -> PauliSum:
    if isinstance(coefficient, complex) and coefficient.imag != 0:
        raise ValueError(
            f"coefficient {coefficient!r} is complex; a Hamiltonian term needs a real "
            f"coefficient to be Hermitian"
        )
    return PauliSum.of(operator, num_qubits).check_hermitian("term operator")


def fixed(operator: Any, coefficient: float, num_qubits: int | None = None) -> Term:
    """A fixed term ``c · O``.

    Args:
        operator: Pauli string spec (``"XZ"``, ``"X0 Z1"``, ``{0: "X"}``), :class:`PauliString`
            or Hermitian :class:`PauliSum`.
        coefficient: Real coefficient ``c``.
        num_qubits: Needed for sparse specs.

    Example:
        >>> fixed("X0", 0.5, num_qubits=2).operator.strings[0].label
        'XI'
    """
    return Term(_operator(operator, num_qubits, coefficient), "fixed", _real(coefficient))


def input_driven(
    operator: Any,
    feature: int | None = None,
    scale: float = 1.0,
    *,
    feature_map: Callable[[jax.Array], jax.Array] | None = None,
    trainable: bool = False,
    parameter: str | None = None,
    group: str | None = None,
    num_qubits: int | None = None,
) -> Term:
    """A term driven by the input: ``scale · x[feature] · O``, or ``scale · feature_map(x) · O``.

    With ``trainable=True`` the coefficient is ``θ · x[feature]`` with a trainable weight
    ``θ`` initialised at ``scale`` (an input layer), in group ``group`` (default
    ``"input"``).

    Example:
        >>> t = input_driven("Z0", feature=1, scale=2.0, num_qubits=3)
        >>> (t.kind, t.feature, t.value)
        ('input', 1, 2.0)
        >>> import jax.numpy as jnp
        >>> from thermoeqprop.quantum import Hamiltonian
        >>> m = input_driven("Z", scale=2.0, feature_map=lambda x: x[0] * x[1])
        >>> h = Hamiltonian(1, (m,), num_inputs=2)
        >>> float(h.coefficients(jnp.zeros(0), jnp.array([0.5, 3.0]))[0])  # 2.0 · 0.5 · 3.0
        3.0
    """
    if trainable and feature_map is not None:
        raise ValueError("a trainable input weight needs feature=..., not a feature_map")
    op = _operator(operator, num_qubits, scale)
    if trainable and parameter is None:
        parameter = f"w[x{feature}·{_name(op)}]"
    if group is not None and not trainable:
        raise ValueError(f"group={group!r} needs trainable=True (a fixed input scale has no group)")
    return Term(
        op, "input", _real(scale), feature, feature_map, parameter if trainable else None, group
    )


def trainable(
    operator: Any,
    init: float = 0.0,
    *,
    parameter: str | None = None,
    group: str | None = None,
    num_qubits: int | None = None,
) -> Term:
    """A trainable term ``θ · O`` with ``θ`` initialised at ``init``.

    Terms given the same ``parameter`` name share one trainable coefficient. ``group`` names
    the parameter's group (default: :func:`parameter_group`'s ``"field"`` or ``"coupling"``).

    Example:
        >>> trainable("X0 X1", num_qubits=2).parameter
        'XX'
        >>> parameter_group(trainable("X0 X1", num_qubits=2))
        'coupling'
    """
    op = _operator(operator, num_qubits, init)
    return Term(op, "trainable", _real(init), None, None, parameter or _name(op), group)


def parameter_group(term: Term) -> str | None:
    """The group of a term's trainable parameter: its ``group`` if given, else ``"input"``
    for a trainable input weight, ``"field"`` when every string of the operator acts on one
    qubit, ``"coupling"`` otherwise; ``None`` for a term without a parameter.

    Example:
        >>> [parameter_group(t) for t in (trainable("Z0", num_qubits=2),
        ...     input_driven("Z1", 0, trainable=True, num_qubits=2), fixed("X0", 1.0, 2))]
        ['field', 'input', None]
    """
    if not term.is_trainable:
        return None
    if term.group is not None:
        return term.group
    if term.kind == "input":
        return "input"
    weights = {sum(c != "I" for c in p.label) for p in term.operator.strings}
    return "field" if weights <= {1} else "coupling"


def check_shared_parameters(terms: Sequence[Term]) -> None:
    """Terms sharing a parameter must agree on its initial value and on the groups they name
    (else: which one?); a parameter's group is the one its terms name, else the automatic
    group of its first term (:func:`shared_groups`)."""
    first: dict[str, Term] = {}
    named: dict[str, Term] = {}
    for t in terms:
        if not t.is_trainable:
            continue
        pairs = [("initial values", t.value, first.setdefault(t.parameter, t))]
        if t.group is not None:
            pairs.append(("groups", t.group, named.setdefault(t.parameter, t)))
        for what, mine, other in pairs:
            theirs = other.value if what == "initial values" else other.group
            if mine != theirs:
                raise ValueError(
                    f"parameter {t.parameter!r} is shared by the terms on "
                    f"{_name(other.operator)} and {_name(t.operator)}, which give different "
                    f"{what} {theirs!r} and {mine!r}; give them the same {what[:-1]} or "
                    "different parameter names"
                )


def _real(value: Any) -> float:
    if isinstance(value, complex):
        if value.imag != 0:
            raise ValueError(f"coefficient {value!r} must be real for a Hermitian Hamiltonian")
        value = value.real
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"coefficient must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"coefficient must be finite, got {value!r}")
    return v


def _name(op: PauliSum) -> str:
    if len(op.strings) == 1:
        return op.strings[0].label
    return "+".join(f"{complex(c).real:g}{p.label}" for p, c in op._items())


def shared_groups(terms: Sequence[Term]) -> dict[str, str]:
    """Parameter name → group: the group its terms name, else that of its first term."""
    groups: dict[str, str] = {}
    for t in terms:
        if t.is_trainable and (t.parameter not in groups or t.group is not None):
            groups[t.parameter] = parameter_group(t)
    return groups

"""Hamiltonians from fixed, input-driven and trainable Pauli terms; qubit networks as models.

A Hamiltonian is ``H(θ, x) = Σ_t a_t(θ, x) O_t`` with Hermitian Pauli-sum operators ``O_t`` and
coefficients of three kinds:

* fixed: ``a_t = c``;
* input-driven: ``a_t = scale · x_f`` (or ``scale · feature_map(x)``), optionally
  ``θ_k · x_f`` with a trainable weight ``θ_k``;
* trainable: ``a_t = θ_k``. Terms may share a parameter by naming it.

Collecting equal strings, ``H = Σ_s c_s(θ, x) P_s`` over distinct Pauli strings ``P_s``. Every
estimator in this package measures ``dL/dc_s`` for the strings that depend on θ and applies the
chain rule through the (cheap, classical) map ``θ ↦ c(θ, x)``: for a plain trainable term that
is ``∂_θ H = P_s``, the local rule of docs/mathematics.md#hellmann-feynman-and-the-nudge.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._protocols import Model
from thermoeqprop.quantum._costs import ExpectationLoss, SquaredErrorCost
from thermoeqprop.quantum._kernels import StringTable, assemble, string_table
from thermoeqprop.quantum._pauli import PauliString, PauliSum, pauli

__all__ = [
    "ExpectationLoss",
    "Hamiltonian",
    "QuantumNetwork",
    "SquaredErrorCost",
    "Term",
    "classifier_network",
    "fixed",
    "input_driven",
    "trainable",
]

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
    """

    operator: PauliSum
    kind: str
    value: float = 1.0
    feature: int | None = None
    feature_map: Callable[[jax.Array], jax.Array] | None = None
    parameter: str | None = None

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
    num_qubits: int | None = None,
) -> Term:
    """A term driven by the input: ``scale · x[feature] · O``, or ``scale · feature_map(x) · O``.

    With ``trainable=True`` the coefficient is ``θ · x[feature]`` with a trainable weight
    ``θ`` initialised at ``scale`` (an input layer).

    Example:
        >>> t = input_driven("Z0", feature=1, scale=2.0, num_qubits=3)
        >>> (t.kind, t.feature, t.value)
        ('input', 1, 2.0)
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
    return Term(op, "input", _real(scale), feature, feature_map, parameter if trainable else None)


def trainable(
    operator: Any, init: float = 0.0, *, parameter: str | None = None, num_qubits: int | None = None
) -> Term:
    """A trainable term ``θ · O`` with ``θ`` initialised at ``init``.

    Terms given the same ``parameter`` name share one trainable coefficient.

    Example:
        >>> trainable("X0 X1", num_qubits=2).parameter
        'XX'
    """
    op = _operator(operator, num_qubits, init)
    return Term(op, "trainable", _real(init), None, None, parameter or _name(op))


def _check_shared_initial_values(terms: Sequence[Term]) -> None:
    """Terms sharing a parameter must agree on its initial value (else: which one?)."""
    first: dict[str, Term] = {}
    for t in terms:
        if t.is_trainable and first.setdefault(t.parameter, t).value != t.value:
            raise ValueError(
                f"parameter {t.parameter!r} is shared by the terms on "
                f"{_name(first[t.parameter].operator)} and {_name(t.operator)}, which give "
                f"different initial values {first[t.parameter].value!r} and {t.value!r}; give "
                f"them the same initial value or different parameter names"
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


@dataclasses.dataclass(frozen=True)
class Hamiltonian:
    """``H(θ, x) = Σ_t a_t(θ, x) O_t`` on ``num_qubits`` qubits (module docstring).

    Parameters ``θ`` are a flat array of shape (num_params,), in the order of
    :attr:`parameter_names`.

    Attributes:
        num_qubits: Number of qubits ``n``.
        terms: The terms.
        num_inputs: Length of the input vector ``x``. Default: one more than the largest
            feature index used; required when a term has a ``feature_map`` (which features a
            map reads cannot be counted, and JAX clamps an index past the end).

    Example:
        >>> h = Hamiltonian(2, (fixed("ZZ", 1.0), trainable("XI", 0.5), trainable("IX", 0.5)))
        >>> h.parameter_names
        ('XI', 'IX')
        >>> theta = h.initial_params()
        >>> h.matrix(theta, jnp.zeros(0)).shape
        (4, 4)
    """

    num_qubits: int
    terms: tuple[Term, ...]
    num_inputs: int | None = None

    def __post_init__(self):
        if not isinstance(self.num_qubits, int | np.integer) or self.num_qubits < 1:
            raise ValueError(f"num_qubits must be a positive integer, got {self.num_qubits!r}")
        object.__setattr__(self, "terms", tuple(self.terms))
        if not self.terms:
            raise ValueError("a Hamiltonian needs at least one term")
        for t in self.terms:
            if not isinstance(t, Term):
                raise ValueError(
                    f"Hamiltonian terms must be Term objects (use fixed, input_driven, "
                    f"trainable), got {t!r}"
                )
            if t.operator.num_qubits != self.num_qubits:
                raise ValueError(
                    f"term {_name(t.operator)} acts on {t.operator.num_qubits} qubits, but the "
                    f"Hamiltonian has num_qubits={self.num_qubits}"
                )
        used = [t.feature for t in self.terms if t.feature is not None]
        needed = max(used) + 1 if used else 0
        _check_shared_initial_values(self.terms)
        mapped = [_name(t.operator) for t in self.terms if t.feature_map is not None]
        if self.num_inputs is None and mapped:
            raise ValueError(
                f"the term on {mapped[0]} has a feature_map, so the number of input features "
                f"cannot be inferred (a map reading x[{needed}] would silently get "
                f"x[{max(needed - 1, 0)}]): pass num_inputs=... to Hamiltonian"
            )
        if self.num_inputs is None:
            object.__setattr__(self, "num_inputs", needed)
        elif self.num_inputs < needed:
            raise ValueError(
                f"a term reads input feature {needed - 1}, but num_inputs={self.num_inputs}; "
                f"valid feature indices are 0 … {self.num_inputs - 1}"
            )

    @functools.cached_property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the trainable parameters, in the order of the parameter vector."""
        return tuple(dict.fromkeys(t.parameter for t in self.terms if t.is_trainable))

    @property
    def num_params(self) -> int:
        return len(self.parameter_names)

    @functools.cached_property
    def strings(self) -> tuple[PauliString, ...]:
        """The distinct Pauli strings of all terms."""
        return tuple(dict.fromkeys(p for t in self.terms for p in t.operator.strings))

    @functools.cached_property
    def trainable_strings(self) -> tuple[PauliString, ...]:
        """The strings whose coefficient depends on θ (the ones EP must measure)."""
        return tuple(
            dict.fromkeys(p for t in self.terms if t.is_trainable for p in t.operator.strings)
        )

    @functools.cached_property
    def _weights(self) -> np.ndarray:
        """(num_terms, S) weight of string s in term t's operator."""
        index = {p: i for i, p in enumerate(self.strings)}
        w = np.zeros((len(self.terms), len(self.strings)))
        for t_i, t in enumerate(self.terms):
            for p, c in t.operator._items():
                w[t_i, index[p]] += complex(c).real
        return w

    def initial_params(self) -> jax.Array:
        """The initial values named in the terms, shape (num_params,)."""
        first = {t.parameter: t.value for t in reversed(self.terms) if t.is_trainable}
        return jnp.asarray([first[n] for n in self.parameter_names], dtype=jnp.float64)

    def term_coefficients(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """``a_t(θ, x)`` for every term, shape (num_terms,)."""
        index = {n: i for i, n in enumerate(self.parameter_names)}
        out = []
        for t in self.terms:
            if t.kind == "fixed":
                a = jnp.asarray(t.value, jnp.float64)
            elif t.kind == "trainable":
                a = params[index[t.parameter]]
            elif t.feature_map is not None:
                a = jnp.asarray(t.feature_map(x), jnp.float64) * t.value
            elif t.is_trainable:
                a = params[index[t.parameter]] * x[t.feature]
            else:
                a = t.value * x[t.feature]
            out.append(jnp.asarray(a, jnp.float64).reshape(()))
        return jnp.stack(out)

    def coefficients(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """``c_s(θ, x)`` over :attr:`strings`, shape (S,)."""
        return self.term_coefficients(params, x) @ jnp.asarray(self._weights)

    def matrix(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """Dense ``H(θ, x)``, shape (d, d); raises if it would not fit in memory."""
        return assemble(string_table(self.strings), self.coefficients(params, x))

    def pauli_sum(self, params: Any, x: Any) -> PauliSum:
        """``H(θ, x)`` as a :class:`PauliSum` with concrete coefficients."""
        c = np.asarray(self.coefficients(jnp.asarray(params), jnp.asarray(x)))
        return PauliSum(self.strings, tuple(complex(v) for v in c))


@dataclasses.dataclass(frozen=True)
class QuantumNetwork(Model):
    """A qubit network: Hamiltonian, output observables and cost; a :class:`Model`.

    Outputs are the expectations ``⟨B_j⟩`` of Hermitian observables. With one output and two
    classes, labels map to targets ``y = ±1`` and the prediction is ``⟨B⟩ > 0``; otherwise
    labels map to ±1 one-hot targets and the prediction is the arg-max.

    Attributes:
        hamiltonian: The :class:`Hamiltonian`.
        outputs: Output observables ``B_j`` (Pauli specs or Hermitian :class:`PauliSum`).
        cost: :class:`SquaredErrorCost` (default) or :class:`ExpectationLoss`.
        init_scale: Standard deviation of the Gaussian noise added to the initial values.

    Example:
        >>> net = classifier_network(num_qubits=3, num_inputs=2)
        >>> params = net.init_params(jax.random.key(0))
        >>> net.encode_labels(jnp.array([0, 1])).tolist()
        [[-1.0], [1.0]]
    """

    hamiltonian: Hamiltonian
    outputs: tuple[PauliSum, ...]
    cost: Any = dataclasses.field(default_factory=SquaredErrorCost)
    init_scale: float = 0.1

    def __post_init__(self):
        n = self.hamiltonian.num_qubits
        outs = self.outputs
        if isinstance(outs, str | PauliString | PauliSum):
            outs = (outs,)
        outs = tuple(
            PauliSum.of(o, n).check_hermitian(f"output observable {i}") for i, o in enumerate(outs)
        )
        if not outs:
            raise ValueError("a QuantumNetwork needs at least one output observable")
        object.__setattr__(self, "outputs", outs)
        if isinstance(self.cost, SquaredErrorCost):
            for i, o in enumerate(outs):
                if len(o.strings) != 1 or abs(complex(o.coefficients[0]) - 1) > 0:
                    raise ValueError(
                        f"SquaredErrorCost needs every output to be a single Pauli string (so "
                        f"B² = 1), but output {i} is {o}; use ExpectationLoss for general outputs"
                    )
        elif not isinstance(self.cost, ExpectationLoss):
            raise ValueError(
                f"cost must be SquaredErrorCost() or ExpectationLoss(...), got {self.cost!r}"
            )

    # -- Model interface ----------------------------------------------------------------------
    @property
    def num_qubits(self) -> int:
        return self.hamiltonian.num_qubits

    @property
    def num_inputs(self) -> int:
        return self.hamiltonian.num_inputs

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_classes(self) -> int:
        return 2 if self.num_outputs == 1 else self.num_outputs

    def init_params(self, rng_key: jax.Array) -> jax.Array:
        """Initial values of the terms plus ``init_scale`` Gaussian noise, (num_params,)."""
        base = self.hamiltonian.initial_params()
        return base + self.init_scale * jax.random.normal(rng_key, base.shape, base.dtype)

    def encode_labels(self, labels: jax.Array) -> jax.Array:
        labels = self._checked_labels(labels)
        if self.num_outputs == 1:
            return (2.0 * labels - 1.0).astype(jnp.float64)[:, None]
        return 2.0 * jax.nn.one_hot(labels, self.num_outputs, dtype=jnp.float64) - 1.0

    def decode_outputs(self, outputs: jax.Array) -> jax.Array:
        if self.num_outputs == 1:
            return (outputs[:, 0] > 0).astype(jnp.int32)
        return jnp.argmax(outputs, axis=-1)

    # -- structure used by the estimators --------------------------------------------------
    @functools.cached_property
    def all_strings(self) -> tuple[PauliString, ...]:
        """Hamiltonian strings followed by the output strings not already among them."""
        out_strings = [p for o in self.outputs for p in o.strings]
        return tuple(dict.fromkeys(list(self.hamiltonian.strings) + out_strings))

    @functools.cached_property
    def is_real(self) -> bool:
        return all(p.is_real for p in self.all_strings)

    @functools.cached_property
    def table(self) -> StringTable:
        return string_table(self.all_strings, self.is_real)

    @functools.cached_property
    def trainable_index(self) -> np.ndarray:
        index = {p: i for i, p in enumerate(self.all_strings)}
        return np.array([index[p] for p in self.hamiltonian.trainable_strings], dtype=np.int32)

    @functools.cached_property
    def trainable_table(self) -> StringTable:
        return string_table(self.hamiltonian.trainable_strings, self.is_real)

    @functools.cached_property
    def output_strings(self) -> tuple[PauliString, ...]:
        return tuple(dict.fromkeys(p for o in self.outputs for p in o.strings))

    @functools.cached_property
    def output_table(self) -> StringTable:
        return string_table(self.output_strings, self.is_real)

    @functools.cached_property
    def output_weights(self) -> np.ndarray:
        """(num_outputs, Q): ``B_j = Σ_k W_jk Q_k`` over :attr:`output_strings`."""
        index = {p: i for i, p in enumerate(self.output_strings)}
        w = np.zeros((self.num_outputs, len(self.output_strings)))
        for j, o in enumerate(self.outputs):
            for p, c in o._items():
                w[j, index[p]] += complex(c).real
        return w

    @functools.cached_property
    def output_index(self) -> np.ndarray:
        index = {p: i for i, p in enumerate(self.all_strings)}
        return np.array([index[p] for p in self.output_strings], dtype=np.int32)

    def coefficients(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """Coefficients of ``H(θ, x)`` over :attr:`all_strings`, shape (S_all,)."""
        c = self.hamiltonian.coefficients(params, x)
        pad = len(self.all_strings) - c.shape[0]
        return jnp.concatenate([c, jnp.zeros(pad, c.dtype)]) if pad else c

    def cost_string_coefficients(
        self, output_string_expectations: jax.Array, targets: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Loss, outputs and nudge coefficients from the free ``⟨Q_k⟩`` of output strings.

        Returns:
            ``(loss, outputs (m,), gamma (Q,))`` with ``Ĉ = Σ_k gamma_k Q_k + const``.
        """
        w = jnp.asarray(self.output_weights)
        outputs = w @ output_string_expectations
        loss, dloss = jax.value_and_grad(self.cost)(outputs, targets)
        return loss, outputs, w.T @ dloss

    def embed_cost(self, gamma: jax.Array) -> jax.Array:
        """Cost coefficients over output strings → over :attr:`all_strings`."""
        return jnp.zeros(len(self.all_strings), gamma.dtype).at[self.output_index].add(gamma)

    def chain_to_params(self, params: jax.Array, x: jax.Array, dloss_dstrings: jax.Array):
        """``Σ_b Σ_s g_{b,s} ∂c_s(θ, x_b)/∂θ / B`` for a batch, shape (num_params,).

        ``dloss_dstrings`` has shape (batch, T) over the trainable strings.
        """
        index = self.trainable_index

        def contracted(p):
            c = jax.vmap(lambda xi: self.coefficients(p, xi)[index])(x)
            return jnp.mean(jnp.sum(c * dloss_dstrings, axis=-1))

        return jax.grad(contracted)(params)

    def string_jacobian(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """``∂c_s/∂θ`` over trainable strings for one input, shape (T, num_params)."""
        return jax.jacfwd(lambda p: self.coefficients(p, x)[self.trainable_index])(params)


def classifier_network(
    num_qubits: int = 6,
    num_inputs: int = 2,
    *,
    output_qubits: Sequence[int] = (0,),
    couplings: str = "all",
    transverse_field: float = 1.0,
    input_scale: float = 1.0,
    cost: Any = None,
    init_scale: float = 0.1,
) -> QuantumNetwork:
    """A ready-made classifier: inputs as fields, trainable couplings and fields.

    ``H = Σ_{q,i} w_{qi} x_i Z_q + Σ_q (h_q X_q + b_q Z_q) + Σ_{(q,r)} (J_qr Z_qZ_r + K_qr X_qX_r)``
    with trainable input weights ``w`` (initialised at ``input_scale``, alternating sign across
    qubits), transverse fields ``h`` (initialised at ``transverse_field``), biases ``b`` and
    couplings over all pairs (``couplings="all"``) or a ring (``"ring"``). Outputs are ``Z`` on
    ``output_qubits``. It is one example; any list of terms builds a :class:`Hamiltonian`.
    """
    if couplings not in ("all", "ring"):
        raise ValueError(f"couplings must be 'all' or 'ring', got {couplings!r}")
    n = num_qubits
    terms: list[Term] = []
    for q in range(n):
        for i in range(num_inputs):
            sign = 1.0 if (q + i) % 2 == 0 else -1.0
            terms.append(
                input_driven({q: "Z"}, i, sign * input_scale, trainable=True, num_qubits=n)
            )
    for q in range(n):
        terms.append(trainable({q: "X"}, transverse_field, num_qubits=n))
        terms.append(trainable({q: "Z"}, 0.0, num_qubits=n))
    if couplings == "all":
        pairs = [(q, r) for q in range(n) for r in range(q + 1, n)]
    else:
        pairs = [(q, (q + 1) % n) for q in range(n)] if n > 2 else [(0, 1)]
    for q, r in pairs:
        terms.append(trainable({q: "Z", r: "Z"}, 0.0, num_qubits=n))
        terms.append(trainable({q: "X", r: "X"}, 0.0, num_qubits=n))
    outputs = tuple(pauli({q: "Z"}, n) for q in output_qubits)
    for q in output_qubits:
        if not 0 <= q < n:
            raise ValueError(f"output qubit {q} is out of range 0 … {n - 1}")
    return QuantumNetwork(
        Hamiltonian(n, tuple(terms), num_inputs),
        outputs,
        SquaredErrorCost() if cost is None else cost,
        init_scale,
    )

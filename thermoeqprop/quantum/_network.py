"""Hamiltonians from fixed, input-driven and trainable Pauli terms; qubit networks as models.

A Hamiltonian is ``H(θ, x) = Σ_t a_t(θ, x) O_t`` with Hermitian Pauli-sum operators ``O_t`` and
coefficients of three kinds:

* fixed: ``a_t = c``;
* input-driven: ``a_t = scale · x_f`` (or ``scale · feature_map(x)``), optionally
  ``θ_k · x_f`` with a trainable weight ``θ_k``;
* trainable: ``a_t = θ_k``. Terms may share a parameter by naming it.

Each parameter belongs to a group (``"input"``, ``"field"``, ``"coupling"`` or a name given to
its terms, ``quantum/_terms.py``): :meth:`Hamiltonian.group_values` spreads one number per
group over the parameter vector, for initial scales (``QuantumNetwork.init_noise``), penalty
weights or bounds.

Collecting equal strings, ``H = Σ_s c_s(θ, x) P_s`` over distinct Pauli strings ``P_s``. Every
estimator in this package measures ``dL/dc_s`` for the strings that depend on θ and applies the
chain rule through the (cheap, classical) map ``θ ↦ c(θ, x)``: for a plain trainable term that
is ``∂_θ H = P_s``, the local rule of docs/mathematics.md#hellmann-feynman-and-the-nudge.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._deprecated import renamed_fields
from thermoeqprop._protocols import Model
from thermoeqprop.quantum._costs import ExpectationLoss, SquaredErrorCost
from thermoeqprop.quantum._kernels import StringTable, assemble, string_table
from thermoeqprop.quantum._pauli import PauliString, PauliSum
from thermoeqprop.quantum._terms import (
    Term,
    _name,
    check_shared_parameters,
    fixed,  # noqa: F401  (docstring examples)
    shared_groups,
    trainable,  # noqa: F401  (docstring examples)
)

__all__ = ["ExpectationLoss", "Hamiltonian", "QuantumNetwork", "SquaredErrorCost"]


def _per_group(groups: tuple[str, ...], values: Any, what: str) -> np.ndarray:
    """``values[group]`` for each entry of ``groups``; exactly the groups present."""
    present = sorted(set(groups))
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must map each parameter group {present} to a number, got "
                         f"{values!r}")  # fmt: skip
    missing, unknown = sorted(set(present) - set(values)), sorted(set(values) - set(present))
    if missing or unknown:
        raise ValueError(
            f"{what} must give a number for each parameter group {present} and no other; "
            f"missing {missing}, unknown {unknown}"
        )
    out = np.asarray([values[g] for g in groups], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} must be finite numbers, got {dict(values)!r}")
    return out


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
        check_shared_parameters(self.terms)
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
    def parameter_groups(self) -> tuple[str, ...]:
        """The group of each trainable parameter (``quantum/_terms.py``), in order."""
        groups = shared_groups(self.terms)
        return tuple(groups[n] for n in self.parameter_names)

    def group_values(self, values: Mapping[str, float], what: str = "values") -> jax.Array:
        """One number per parameter from one per group, shape (num_params,).

        Args:
            values: A number for each group of :attr:`parameter_groups`, and no other.
            what: How errors name ``values``.

        Example:
            >>> h = Hamiltonian(2, (trainable("XI"), trainable("ZZ")))
            >>> h.group_values({"field": 0.1, "coupling": 0.5}).tolist()
            [0.1, 0.5]
        """
        return jnp.asarray(_per_group(self.parameter_groups, values, what))

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


@renamed_fields
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
        init_noise: Standard deviation of the Gaussian noise added to the initial values:
            one number, or one per parameter group (``{"field": 0.1, "coupling": 0.5,
            "input": 0.0}``, every group of :attr:`Hamiltonian.parameter_groups`; stored as
            sorted pairs, so the network stays hashable). ``init_scale``, its former name,
            is a deprecated alias.

    Example:
        >>> from thermoeqprop.quantum import classifier_network
        >>> net = classifier_network(num_qubits=3, num_inputs=2)
        >>> params = net.init_params(jax.random.key(0))
        >>> net.encode_labels(jnp.array([0, 1])).tolist()
        [[-1.0], [1.0]]
        >>> sorted(set(net.hamiltonian.parameter_groups))
        ['coupling', 'field', 'input']
        >>> scales = {"input": 0.0, "field": 0.1, "coupling": 0.5}
        >>> dataclasses.replace(net, init_noise=scales).init_noise
        (('coupling', 0.5), ('field', 0.1), ('input', 0.0))
    """

    family: ClassVar[str] = "quantum"
    hamiltonian: Hamiltonian
    outputs: tuple[PauliSum, ...]
    cost: Any = dataclasses.field(default_factory=SquaredErrorCost)
    init_noise: float | tuple[tuple[str, float], ...] = 0.1

    def __post_init__(self):
        scale = self.init_noise
        if isinstance(scale, Mapping | tuple):
            pairs = tuple(sorted(dict(scale).items()))
            scales = _per_group(self.hamiltonian.parameter_groups, dict(pairs), "init_noise")
            if np.any(scales < 0):
                raise ValueError(f"init_noise must be ≥ 0 for every group, got {dict(pairs)!r}")
            object.__setattr__(self, "init_noise", pairs)
        elif not (isinstance(scale, int | float | np.floating) and 0 <= scale < math.inf):
            raise ValueError(
                f"init_noise must be a finite number ≥ 0 or a mapping from parameter group to "
                f"one, got {scale!r}"
            )
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
    def num_units(self) -> int:
        return self.num_qubits

    @property
    def architecture(self) -> str:
        """The number of qubits, e.g. ``"6 qubits"``."""
        return f"{self.num_qubits} qubits"

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
        """Initial values of the terms plus ``init_noise`` Gaussian noise (per group when
        ``init_noise`` names groups), shape (num_params,)."""
        base = self.hamiltonian.initial_params()
        scale = self.init_noise
        if isinstance(scale, tuple):
            scale = self.hamiltonian.group_values(dict(scale), "init_noise")
        return base + scale * jax.random.normal(rng_key, base.shape, base.dtype)

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

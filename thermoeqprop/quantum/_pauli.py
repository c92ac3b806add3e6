"""Pauli strings and weighted sums of them, with dense, sparse and matrix-free forms.

Convention: qubit ``q`` of ``n`` is the ``q``-th tensor factor from the left, so the label
``"XZ"`` is ``X ⊗ Z`` (``np.kron(X, Z)``) and qubit ``q`` is bit ``n − 1 − q`` of a
computational-basis index ``b``.

A Pauli string is a permuted, phased diagonal. Writing it in symplectic form,
``P = i^{n_Y} X^x Z^z`` with bit masks ``x`` (letters X, Y) and ``z`` (letters Z, Y), it acts
on basis states as ``P|b⟩ = i^{n_Y} (−1)^{popcount(z & b)} |b ⊕ x⟩``. Every matrix form below is
built from that rule in O(d) work per string (d = 2^n), never by Kronecker products.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

# What a dense matrix of n qubits costs, checked before one is made; re-exported for the
# estimators that check their own dense work.
from thermoeqprop.quantum._memory import _check_dense_size, available_memory_bytes  # noqa: F401

__all__ = [
    "PauliString",
    "PauliSum",
    "check_hermitian",
    "pauli",
    "qubitwise_commuting_groups",
]

_LETTERS = "IXYZ"
_SPARSE_TOKEN = re.compile(r"^([IXYZ])(\d+)$")


def _popcount_np(a: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a)


@dataclasses.dataclass(frozen=True)
class PauliString:
    """A tensor product of single-qubit Paulis on ``num_qubits`` qubits, without a prefactor.

    Pauli strings are Hermitian and square to the identity. They are hashable, so they can sit
    in the static configuration of a jit-compiled function.

    Attributes:
        label: Dense label, one of ``I, X, Y, Z`` per qubit, qubit 0 first (``"XZIY"``).

    Example:
        >>> p = PauliString("XZ")
        >>> p.to_dense().real.astype(int).tolist()
        [[0, 0, 1, 0], [0, 0, 0, -1], [1, 0, 0, 0], [0, -1, 0, 0]]
    """

    label: str

    def __post_init__(self):
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(
                f"a Pauli string label must be a non-empty string over 'IXYZ', got {self.label!r}"
            )
        bad = sorted(set(self.label) - set(_LETTERS))
        if bad:
            raise ValueError(
                f"Pauli string label {self.label!r} has letters {bad}; valid letters are I, X, Y, Z"
            )

    # -- structure -------------------------------------------------------------------------
    @property
    def num_qubits(self) -> int:
        """Number of qubits ``n``."""
        return len(self.label)

    @property
    def dimension(self) -> int:
        """Hilbert-space dimension ``d = 2^n``."""
        return 1 << self.num_qubits

    @property
    def x_mask(self) -> int:
        """Bit mask of the qubits carrying X or Y (the basis-state flip ``b ↦ b ⊕ x``)."""
        n = self.num_qubits
        return sum(1 << (n - 1 - q) for q, c in enumerate(self.label) if c in "XY")

    @property
    def z_mask(self) -> int:
        """Bit mask of the qubits carrying Z or Y (the sign ``(−1)^{popcount(z & b)}``)."""
        n = self.num_qubits
        return sum(1 << (n - 1 - q) for q, c in enumerate(self.label) if c in "ZY")

    @property
    def num_y(self) -> int:
        """Number of Y letters; the global factor is ``i^{num_y}``."""
        return self.label.count("Y")

    @property
    def is_real(self) -> bool:
        """Whether the matrix is real (an even number of Y letters)."""
        return self.num_y % 2 == 0

    @property
    def is_diagonal(self) -> bool:
        """Whether the string holds only I and Z (diagonal in the computational basis)."""
        return self.x_mask == 0

    @property
    def support(self) -> tuple[int, ...]:
        """The qubits on which the string acts non-trivially."""
        return tuple(q for q, c in enumerate(self.label) if c != "I")

    def __str__(self) -> str:
        return self.label

    def commutes_with(self, other: PauliString) -> bool:
        """Whether ``[P, Q] = 0``: the symplectic product ``x·z' + z·x'`` is even."""
        _check_same_size(self, other)
        n = bin(self.x_mask & other.z_mask).count("1") + bin(self.z_mask & other.x_mask).count("1")
        return n % 2 == 0

    def qubitwise_commutes_with(self, other: PauliString) -> bool:
        """Whether on every qubit the two letters are equal or one is I.

        Qubit-wise commuting strings are measured together from one product-basis setting.
        """
        _check_same_size(self, other)
        return all(a == b or "I" in (a, b) for a, b in zip(self.label, other.label, strict=True))

    # -- numerical forms -------------------------------------------------------------------
    def phases(self) -> np.ndarray:
        """The d non-zero entries ``P[b ⊕ x, b] = i^{n_Y} (−1)^{popcount(z & b)}``, shape (d,).

        Real (float64) when the string has an even number of Y letters, complex128 otherwise.
        """
        b = np.arange(self.dimension, dtype=np.int64)
        sign = 1.0 - 2.0 * (_popcount_np(b & self.z_mask) & 1)
        factor = 1j**self.num_y
        if self.is_real:
            return sign * factor.real
        return sign * factor

    def to_dense(self) -> np.ndarray:
        """Dense matrix, shape (d, d), complex128; O(d) work after allocating d² zeros."""
        d = self.dimension
        _check_dense_size(self.num_qubits, 1)
        out = np.zeros((d, d), dtype=np.complex128)
        b = np.arange(d)
        out[b ^ self.x_mask, b] = self.phases()
        return out

    def to_sparse(self) -> scipy.sparse.csr_array:
        """Sparse matrix (CSR, d non-zeros), complex128."""
        d = self.dimension
        b = np.arange(d)
        return scipy.sparse.csr_array(
            (self.phases().astype(np.complex128), (b ^ self.x_mask, b)), shape=(d, d)
        )

    def apply(self, states: jax.Array) -> jax.Array:
        """``P|ψ⟩`` for states of shape (..., d), matrix-free in O(d) each."""
        b = np.arange(self.dimension)
        # (P v)[c] = P[c, c ⊕ x] v[c ⊕ x], and P[c, c ⊕ x] is phases()[c ⊕ x].
        src = b ^ self.x_mask
        return jnp.asarray(self.phases()[src]) * states[..., src]

    def expectation(self, states: jax.Array) -> jax.Array:
        """Real ``⟨ψ|P|ψ⟩`` for normalised states of shape (..., d)."""
        return jnp.real(jnp.sum(jnp.conj(states) * self.apply(states), axis=-1))


def _check_same_size(p: PauliString, q: PauliString) -> None:
    if p.num_qubits != q.num_qubits:
        raise ValueError(
            f"Pauli strings {p.label!r} and {q.label!r} act on {p.num_qubits} and "
            f"{q.num_qubits} qubits; they must act on the same number"
        )


def pauli(spec: Any, num_qubits: int | None = None) -> PauliString:
    """Build a :class:`PauliString` from a dense label or a sparse description.

    Accepted forms:

    * a dense label ``"XZIY"`` (``num_qubits`` optional; if given it must match);
    * a sparse label ``"X0 Z3"`` (letter followed by the qubit index, space separated);
    * a mapping ``{0: "X", 3: "Z"}``;
    * a sequence of pairs ``[(0, "X"), (3, "Z")]``;
    * a :class:`PauliString` (returned unchanged after the size check).

    Sparse forms need ``num_qubits``. A qubit named twice, an index outside
    ``0 … num_qubits − 1`` or an unknown letter raise ``ValueError``.

    Args:
        spec: The description, as above.
        num_qubits: Number of qubits ``n``.

    Returns:
        The Pauli string.

    Example:
        >>> pauli({0: "X", 2: "Z"}, num_qubits=3).label
        'XIZ'
        >>> pauli("Y1", num_qubits=2).label
        'IY'
    """
    if isinstance(spec, PauliString):
        if num_qubits is not None and spec.num_qubits != num_qubits:
            raise ValueError(
                f"Pauli string {spec.label!r} acts on {spec.num_qubits} qubits, "
                f"expected num_qubits={num_qubits}"
            )
        return spec
    if isinstance(spec, str):
        stripped = spec.strip()
        if stripped and set(stripped) <= set(_LETTERS) and " " not in stripped:
            if num_qubits is not None and len(stripped) != num_qubits:
                # "X3" style handled below; a dense label of the wrong length is an error.
                raise ValueError(
                    f"dense Pauli label {spec!r} has {len(stripped)} letters but "
                    f"num_qubits={num_qubits}"
                )
            return PauliString(stripped)
        pairs = []
        for token in stripped.split():
            m = _SPARSE_TOKEN.match(token)
            if m is None:
                raise ValueError(
                    f"cannot read {token!r} in Pauli label {spec!r}; write a dense label over "
                    f"'IXYZ' (e.g. 'XZIY') or letter-index tokens (e.g. 'X0 Z3')"
                )
            pairs.append((int(m.group(2)), m.group(1)))
        return _from_pairs(pairs, num_qubits, spec)
    if isinstance(spec, Mapping):
        return _from_pairs(list(spec.items()), num_qubits, spec)
    if isinstance(spec, Sequence):
        return _from_pairs(list(spec), num_qubits, spec)
    raise ValueError(
        f"cannot build a Pauli string from {spec!r} (type {type(spec).__name__}); use a label "
        f"such as 'XZIY' or 'X0 Z3', a mapping {{qubit: letter}} or a list of (qubit, letter)"
    )


def _from_pairs(pairs: list, num_qubits: int | None, spec: Any) -> PauliString:
    if num_qubits is None:
        raise ValueError(f"a sparse Pauli description {spec!r} needs num_qubits")
    if not isinstance(num_qubits, int | np.integer) or num_qubits < 1:
        raise ValueError(f"num_qubits must be a positive integer, got {num_qubits!r}")
    letters = ["I"] * int(num_qubits)
    seen: set[int] = set()
    for item in pairs:
        try:
            q, letter = item
        except (TypeError, ValueError):
            raise ValueError(
                f"each entry of a sparse Pauli description must be (qubit, letter), got {item!r}"
            ) from None
        if not isinstance(q, int | np.integer) or isinstance(q, bool):
            raise ValueError(f"qubit index {q!r} in {spec!r} must be an integer")
        if not 0 <= q < num_qubits:
            raise ValueError(
                f"qubit index {q} in {spec!r} is out of range; valid indices are "
                f"0 … {num_qubits - 1} for num_qubits={num_qubits}"
            )
        if q in seen:
            raise ValueError(
                f"qubit index {q} is repeated in {spec!r}; name each qubit at most once"
            )
        if letter not in ("X", "Y", "Z", "I"):
            raise ValueError(
                f"letter {letter!r} on qubit {q} in {spec!r} must be one of X, Y, Z, I"
            )
        seen.add(int(q))
        letters[int(q)] = letter
    return PauliString("".join(letters))


@dataclasses.dataclass(frozen=True)
class PauliSum:
    """A weighted sum ``Σ_k c_k P_k`` of Pauli strings on the same qubits.

    Construct with :meth:`from_terms`. The sum is Hermitian exactly when every coefficient is
    real after equal strings are merged (Pauli strings are Hermitian and linearly independent);
    :meth:`is_hermitian` and :meth:`check_hermitian` test that.

    Attributes:
        strings: The distinct Pauli strings, tuple of length K.
        coefficients: Their coefficients ``c_k`` (complex), tuple of length K.

    Example:
        >>> h = PauliSum.from_terms([(1.0, "ZZ"), (0.5, "XI"), (0.5, "IX")])
        >>> float(np.linalg.eigvalsh(h.to_dense())[0])  # doctest: +ELLIPSIS
        -1.41421...
    """

    strings: tuple[PauliString, ...]
    coefficients: tuple[complex, ...]

    def __post_init__(self):
        if len(self.strings) != len(self.coefficients):
            raise ValueError(
                f"PauliSum has {len(self.strings)} strings but "
                f"{len(self.coefficients)} coefficients"
            )
        if not self.strings:
            raise ValueError("a PauliSum needs at least one term")
        for s in self.strings[1:]:
            _check_same_size(self.strings[0], s)

    @classmethod
    def from_terms(
        cls, terms: Iterable[tuple[complex, Any]], num_qubits: int | None = None
    ) -> PauliSum:
        """Sum of ``(coefficient, pauli_spec)`` pairs; equal strings are merged.

        Each ``pauli_spec`` is anything :func:`pauli` accepts.
        """
        merged: dict[PauliString, complex] = {}
        for item in terms:
            try:
                coefficient, spec = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"each term must be a (coefficient, pauli) pair, got {item!r}"
                ) from None
            p = pauli(spec, num_qubits)
            num_qubits = p.num_qubits
            merged[p] = merged.get(p, 0.0) + complex(coefficient)
        return cls(tuple(merged), tuple(merged.values()))

    @classmethod
    def of(cls, operator: Any, num_qubits: int | None = None) -> PauliSum:
        """Coerce a :class:`PauliSum`, a Pauli spec or a list of ``(coefficient, spec)``."""
        if isinstance(operator, PauliSum):
            if num_qubits is not None and operator.num_qubits != num_qubits:
                raise ValueError(
                    f"operator acts on {operator.num_qubits} qubits, expected {num_qubits}"
                )
            return operator
        if (
            isinstance(operator, list | tuple)
            and operator
            and isinstance(operator[0], tuple)
            and len(operator[0]) == 2
            and isinstance(operator[0][0], complex | float | int | np.number)
        ):
            return cls.from_terms(operator, num_qubits)
        return cls((pauli(operator, num_qubits),), (1.0,))

    @property
    def num_qubits(self) -> int:
        """Number of qubits ``n``."""
        return self.strings[0].num_qubits

    @property
    def dimension(self) -> int:
        """Hilbert-space dimension ``d = 2^n``."""
        return 1 << self.num_qubits

    def is_hermitian(self, atol: float = 1e-12) -> bool:
        """Whether every coefficient has ``|Im c_k| ≤ atol``."""
        return all(abs(complex(c).imag) <= atol for c in self.coefficients)

    def check_hermitian(self, name: str = "operator", atol: float = 1e-12) -> PauliSum:
        """Return ``self`` or raise ``ValueError`` naming the first non-real coefficient."""
        for p, c in zip(self.strings, self.coefficients, strict=True):
            if abs(complex(c).imag) > atol:
                raise ValueError(
                    f"{name} is not Hermitian: the coefficient of {p.label} is {complex(c)!r}; "
                    f"a sum of Pauli strings is Hermitian exactly when every coefficient is real "
                    f"(|imaginary part| ≤ {atol:g})"
                )
        return self

    def real_coefficients(self) -> np.ndarray:
        """Coefficients as float64, shape (K,); raises if the sum is not Hermitian."""
        self.check_hermitian()
        return np.array([complex(c).real for c in self.coefficients], dtype=np.float64)

    def __add__(self, other: PauliSum) -> PauliSum:
        if not isinstance(other, PauliSum):
            return NotImplemented
        return PauliSum.from_terms(
            list(zip(self.coefficients, self.strings, strict=True))
            + list(zip(other.coefficients, other.strings, strict=True))
        )

    def __mul__(self, scalar: complex) -> PauliSum:
        return PauliSum(self.strings, tuple(complex(scalar) * c for c in self.coefficients))

    __rmul__ = __mul__

    def to_dense(self) -> np.ndarray:
        """Dense matrix, shape (d, d), complex128, in O(K d) work after allocation."""
        _check_dense_size(self.num_qubits, 1)
        d = self.dimension
        out = np.zeros((d, d), dtype=np.complex128)
        b = np.arange(d)
        for p, c in zip(self.strings, self.coefficients, strict=True):
            out[b ^ p.x_mask, b] += complex(c) * p.phases()
        return out

    def to_sparse(self) -> scipy.sparse.csr_array:
        """Sparse CSR matrix, complex128, at most K·d non-zeros."""
        d = self.dimension
        b = np.arange(d)
        rows = np.concatenate([b ^ p.x_mask for p in self.strings])
        cols = np.tile(b, len(self.strings))
        vals = np.concatenate(
            [complex(c) * p.phases().astype(np.complex128) for p, c in self._items()]
        )
        return scipy.sparse.csr_array((vals, (rows, cols)), shape=(d, d))

    def _items(self):
        return zip(self.strings, self.coefficients, strict=True)

    def apply(self, states: jax.Array) -> jax.Array:
        """``(Σ_k c_k P_k)|ψ⟩`` for states (..., d), matrix-free."""
        return sum(complex(c) * p.apply(states) for p, c in self._items())

    def expectation(self, states: jax.Array) -> jax.Array:
        """Real part of ``⟨ψ|O|ψ⟩`` for normalised states (..., d)."""
        return sum(complex(c).real * p.expectation(states) for p, c in self._items())


def check_hermitian(matrix: Any, name: str = "operator", atol: float = 1e-10) -> np.ndarray:
    """Return ``matrix`` as a NumPy array, or raise if it is not a square Hermitian matrix.

    Args:
        matrix: Array of shape (d, d).
        name: What to call it in the error message.
        atol: Tolerance on ``max |A − A†|``.

    Returns:
        The matrix as a NumPy array.

    Example:
        >>> check_hermitian(np.array([[1.0, 2.0], [2.0, 0.0]])).shape
        (2, 2)
    """
    a = np.asarray(matrix)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    err = float(np.max(np.abs(a - a.conj().T))) if a.size else 0.0
    if not err <= atol:
        raise ValueError(
            f"{name} is not Hermitian: max |A − A†| = {err:.3g} exceeds atol={atol:g}; "
            f"costs and Hamiltonians must be Hermitian"
        )
    return a


def qubitwise_commuting_groups(strings: Sequence[PauliString]) -> list[list[int]]:
    """Partition strings into groups that commute qubit-wise (greedy, in the given order).

    Each group is measured from one product-basis setting: on every qubit all members carry
    the same letter or I. For example all ``X_i X_j`` form one group.

    Args:
        strings: Pauli strings on the same number of qubits.

    Returns:
        A list of groups, each a list of indices into ``strings``.

    Example:
        >>> s = [pauli(x) for x in ["XXI", "IXX", "ZII", "XIX"]]
        >>> qubitwise_commuting_groups(s)
        [[0, 1, 3], [2]]
    """
    groups: list[list[int]] = []
    bases: list[list[str]] = []
    for i, p in enumerate(strings):
        for g, basis in zip(groups, bases, strict=True):
            if all(b == "I" or c == "I" or b == c for b, c in zip(basis, p.label, strict=True)):
                g.append(i)
                for q, c in enumerate(p.label):
                    if c != "I":
                        basis[q] = c
                break
        else:
            groups.append([i])
            bases.append(list(p.label))
    return groups

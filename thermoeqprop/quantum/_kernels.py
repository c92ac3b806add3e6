"""Numerical kernels on tuples of Pauli strings: dense assembly, traces, expectations.

Every kernel works from a :class:`StringTable`, the static (NumPy) description of a tuple of
Pauli strings: for string ``s`` and basis index ``b``, ``flips[s, b] = b ⊕ x_s`` and
``phases[s, b] = P_s[b ⊕ x_s, b]``. With it

* ``Σ_s c_s P_s`` is one scatter of ``S·d`` entries;
* ``tr(M P_s) = Σ_b M[b, b ⊕ x_s] phases[s, b]`` is a gather of ``d`` entries per string;
* ``⟨ψ|P_s|ψ⟩ = Σ_b conj(ψ[b ⊕ x_s]) phases[s, b] ψ[b]`` likewise.

The tables are cached per tuple of strings, so jit-compiled callers embed them as constants.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum._pauli import PauliString, _check_dense_size

__all__ = [
    "StringTable",
    "kubo_mori_matrix",
    "log_mean_weights",
    "logarithmic_mean",
    "string_table",
]


@dataclasses.dataclass(frozen=True, eq=False)
class StringTable:
    """Static index and phase tables of a tuple of Pauli strings (see module docstring)."""

    strings: tuple[PauliString, ...]
    flips: np.ndarray  # (S, d) int32
    phases: np.ndarray  # (S, d) float64 or complex128
    is_real: bool
    is_diagonal: bool

    @property
    def num_qubits(self) -> int:
        return self.strings[0].num_qubits

    @property
    def dimension(self) -> int:
        return 1 << self.num_qubits

    @property
    def dtype(self):
        return jnp.float64 if self.is_real else jnp.complex128

    def subset(self, indices) -> StringTable:
        indices = tuple(int(i) for i in indices)
        return string_table(tuple(self.strings[i] for i in indices), self.is_real)


@functools.lru_cache(maxsize=64)
def string_table(strings: tuple[PauliString, ...], force_real: bool | None = None) -> StringTable:
    """The cached :class:`StringTable` of ``strings``.

    Args:
        strings: Pauli strings on the same qubits, tuple of length S ≥ 1.
        force_real: Use a real dtype (``True``) or complex (``False``); default: real when every
            string has an even number of Y letters.
    """
    d = strings[0].dimension
    b = np.arange(d, dtype=np.int64)
    is_real = all(p.is_real for p in strings) if force_real is None else force_real
    flips = np.stack([b ^ p.x_mask for p in strings]).astype(np.int32)
    phases = np.stack([p.phases() for p in strings])
    if is_real:
        if np.iscomplexobj(phases):
            raise ValueError("a string with an odd number of Y letters has an imaginary matrix")
        phases = phases.astype(np.float64)
    else:
        phases = phases.astype(np.complex128)
    return StringTable(
        strings=strings,
        flips=flips,
        phases=phases,
        is_real=is_real,
        is_diagonal=all(p.is_diagonal for p in strings),
    )


def assemble(table: StringTable, coefficients: jax.Array) -> jax.Array:
    """Dense ``Σ_s c_s P_s``, shape (d, d), for real coefficients of shape (S,)."""
    _check_dense_size(table.num_qubits, 3, 8 if table.is_real else 16)
    d = table.dimension
    cols = np.broadcast_to(np.arange(d, dtype=np.int32), table.flips.shape)
    vals = coefficients[:, None].astype(table.dtype) * jnp.asarray(table.phases)
    out = jnp.zeros((d, d), table.dtype)
    return out.at[table.flips.ravel(), cols.ravel()].add(vals.ravel())


def assemble_diagonal(table: StringTable, coefficients: jax.Array) -> jax.Array:
    """Diagonal of ``Σ_s c_s P_s`` when every string is diagonal (I and Z only), shape (d,)."""
    return jnp.real(coefficients.astype(table.dtype) @ jnp.asarray(table.phases))


def traces(table: StringTable, matrix: jax.Array) -> jax.Array:
    """``Re tr(M P_s)`` for every string, shape (S,), in O(d) per string."""
    rows = np.arange(table.dimension, dtype=np.int32)[None, :]
    gathered = matrix[rows, table.flips]
    return jnp.real(jnp.sum(gathered * jnp.asarray(table.phases), axis=-1))


def state_expectations(table: StringTable, state: jax.Array) -> jax.Array:
    """``⟨ψ|P_s|ψ⟩`` for a normalised state of shape (d,), result shape (S,)."""
    vals = jnp.conj(state[table.flips]) * jnp.asarray(table.phases) * state[None, :]
    return jnp.real(jnp.sum(vals, axis=-1))


def mixture_expectations(table: StringTable, vectors: jax.Array, weights: jax.Array) -> jax.Array:
    """``Σ_m w_m ⟨u_m|P_s|u_m⟩`` for columns ``u_m`` of ``vectors`` (d, m), shape (S,).

    O(d·m) per string without forming the density matrix; meant for a few strings.
    """

    def one(flip, phase):
        per_vector = jnp.sum(jnp.conj(vectors[flip, :]) * phase[:, None] * vectors, axis=0)
        return jnp.real(per_vector) @ weights

    return jax.lax.map(lambda fp: one(*fp), (jnp.asarray(table.flips), jnp.asarray(table.phases)))


def log_mean_weights(log_p: jax.Array) -> jax.Array:
    """Matrix ``Λ_mn = Λ(p_m, p_n)`` of logarithmic means from ``log p``, shape (d, d).

    ``Λ(a, b) = (a − b)/(log a − log b)`` with ``Λ(a, a) = a``. Computed as
    ``exp(max(l_m, l_n)) · φ(−|l_m − l_n|)`` with ``φ(δ) = expm1(δ)/δ`` (``φ(0) = 1``): no
    cancellation when ``p_m ≈ p_n`` and no overflow; weights that underflow become 0.
    """
    hi = jnp.maximum(log_p[:, None], log_p[None, :])
    delta = -jnp.abs(log_p[:, None] - log_p[None, :])
    small = delta > -1e-6
    safe = jnp.where(small, -1.0, delta)
    phi = jnp.where(small, 1.0 + delta / 2.0 + delta**2 / 6.0, jnp.expm1(safe) / safe)
    return jnp.exp(hi) * phi


def logarithmic_mean(a: jax.Array, b: jax.Array) -> jax.Array:
    """Elementwise logarithmic mean ``(a − b)/(log a − log b)`` of positive arrays, stably.

    Args:
        a: Positive array.
        b: Positive array, broadcastable with ``a``.

    Returns:
        ``Λ(a, b)``, with ``Λ(a, a) = a``.

    Example:
        >>> float(logarithmic_mean(jnp.asarray(1.0), jnp.asarray(jnp.e)))  # doctest: +ELLIPSIS
        1.71828...
    """
    la, lb = jnp.log(a), jnp.log(b)
    hi = jnp.maximum(la, lb)
    delta = -jnp.abs(la - lb)
    small = delta > -1e-6
    safe = jnp.where(small, -1.0, delta)
    phi = jnp.where(small, 1.0 + delta / 2.0 + delta**2 / 6.0, jnp.expm1(safe) / safe)
    return jnp.exp(hi) * phi


def thermal_log_weights(energies: jax.Array, temperature: float) -> jax.Array:
    """``log p_m = −E_m/T − log Z`` from eigenvalues (d,), without overflow."""
    logits = -energies / temperature
    return logits - jax.scipy.special.logsumexp(logits)


def _flip_rows(vectors: jax.Array, mask: int, num_qubits: int) -> jax.Array:
    """``vectors[b ⊕ mask, :]``: reversing the axes of the flipped qubits of the (2,)·n view
    (qubit ``q`` is bit ``n − 1 − q``); measured a little faster than a gather of the rows."""
    axes = tuple(q for q in range(num_qubits) if (mask >> (num_qubits - 1 - q)) & 1)
    if not axes:
        return vectors
    shaped = vectors.reshape((2,) * num_qubits + vectors.shape[1:])
    return jnp.flip(shaped, axis=axes).reshape(vectors.shape)


def factored_traces(table: StringTable, left: jax.Array, vectors: jax.Array) -> jax.Array:
    """``Re tr(M P_s)`` for ``M = left · vectors†`` without forming ``M``, shape (S,).

    ``tr(M P_s) = Σ_b phases[s, b] M[b, b ⊕ x_s]`` needs only the entries
    ``M[b, b ⊕ x] = Σ_n left[b, n] conj(vectors[b ⊕ x, n])``: O(d²) per distinct X/Y mask ``x``
    instead of the O(d³) product, then O(d) per string.
    """
    masks = sorted({p.x_mask for p in table.strings})
    position = {m: i for i, m in enumerate(masks)}
    n = table.num_qubits
    rows = jnp.stack(
        [jnp.sum(left * jnp.conj(_flip_rows(vectors, m, n)), axis=1) for m in masks]
    )  # (num_masks, d)
    which = np.array([position[p.x_mask] for p in table.strings])
    return jnp.real(jnp.sum(rows[which] * jnp.asarray(table.phases), axis=-1))


def kubo_mori_traces(
    table: StringTable,
    vectors: jax.Array,
    log_p: jax.Array,
    cost_rotated: jax.Array,
    factored: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``⟨Ĉ ; P_s⟩_KM = tr(M P_s)`` for every string of ``table``, and ``⟨Ĉ⟩``.

    Forms ``left = U (δC̃ ∘ Λ)``, then ``M = left U†`` (a second product) and O(d) per string,
    or, with ``factored``, :func:`factored_traces`: O(d²) per distinct X/Y mask, without ``M``.
    The product is the default: on 2 CPU cores (ring classifier, benchmarks/results/quantum.md)
    the masks took longer at 10 and 11 qubits, and at 12 qubits, though alone they beat the
    product (2.0 s against 3.4 s), the whole Kubo–Mori stage was slower with them (median
    12.5 s against 11.9 s).
    """
    p = jnp.exp(log_p)
    mean_cost = jnp.real(jnp.diagonal(cost_rotated)) @ p
    centred = cost_rotated - mean_cost * jnp.eye(cost_rotated.shape[0], dtype=cost_rotated.dtype)
    left = vectors @ (centred * log_mean_weights(log_p).astype(cost_rotated.dtype))
    if factored:
        return factored_traces(table, left, vectors), mean_cost
    return traces(table, left @ jnp.conj(vectors).T), mean_cost


def kubo_mori_matrix(
    vectors: jax.Array, log_p: jax.Array, cost_rotated: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``M = U (δC̃ ∘ Λ) U†`` so that ``⟨Ĉ ; P⟩_KM = tr(M P)`` for every operator ``P``.

    Args:
        vectors: Eigenvectors ``U`` of H as columns, (d, d).
        log_p: ``log p_m`` of the thermal weights, (d,).
        cost_rotated: ``C̃ = U† Ĉ U``, (d, d).

    Returns:
        ``(M, ⟨Ĉ⟩)``. Subtracting ``⟨Ĉ⟩`` on the diagonal of ``C̃`` is enough: then
        ``Σ_m δC̃_mm Λ_mm = 0``, so ``tr(M P) = tr(M δP)`` for every ``P``.
    """
    p = jnp.exp(log_p)
    mean_cost = jnp.real(jnp.diagonal(cost_rotated)) @ p
    centred = cost_rotated - mean_cost * jnp.eye(cost_rotated.shape[0], dtype=cost_rotated.dtype)
    inner = centred * log_mean_weights(log_p).astype(cost_rotated.dtype)
    return (vectors @ inner) @ jnp.conj(vectors).T, mean_cost


def rotate_cost(vectors: jax.Array, table: StringTable, coefficients: jax.Array) -> jax.Array:
    """``C̃ = U† (Σ_k γ_k Q_k) U``: one matrix product when every ``Q_k`` is diagonal."""
    if table.is_diagonal:
        diag = assemble_diagonal(table, coefficients).astype(vectors.dtype)
        return (jnp.conj(vectors).T * diag[None, :]) @ vectors
    cost = assemble(table, coefficients).astype(vectors.dtype)
    return jnp.conj(vectors).T @ (cost @ vectors)

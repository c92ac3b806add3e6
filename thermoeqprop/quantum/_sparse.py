"""Sparse (Lanczos) eigensolver path for systems too large for dense ``eigh``.

The Hamiltonian is assembled as a SciPy CSR matrix from permuted diagonals: strings that
share an X/Y mask share one diagonal, so it holds (number of distinct masks) × d non-zeros.
ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``) returns the lowest few
levels. These functions run on the host in NumPy; the estimators call them through
``jax.pure_callback`` so they also work inside ``jax.jit``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from thermoeqprop.quantum._kernels import StringTable

__all__ = ["lowest_levels", "sparse_from_table"]


def sparse_from_table(table: StringTable, coefficients: np.ndarray) -> scipy.sparse.csr_array:
    """CSR matrix of ``Σ_s c_s P_s`` (real when the table is real), shape (d, d)."""
    d = table.dimension
    b = np.arange(d)
    coefficients = np.asarray(coefficients, dtype=np.float64)
    masks: dict[int, np.ndarray] = {}
    for s, p in enumerate(table.strings):
        if coefficients[s] == 0.0:
            continue
        diag = coefficients[s] * table.phases[s]
        if p.x_mask in masks:
            masks[p.x_mask] = masks[p.x_mask] + diag
        else:
            masks[p.x_mask] = diag
    if not masks:
        return scipy.sparse.csr_array((d, d), dtype=table.phases.dtype)
    rows = np.concatenate([b ^ x for x in masks])
    cols = np.tile(b, len(masks))
    vals = np.concatenate(list(masks.values()))
    return scipy.sparse.csr_array((vals, (rows, cols)), shape=(d, d))


def lowest_levels(
    matrix: scipy.sparse.csr_array,
    num_levels: int,
    start: np.ndarray | None = None,
    tol: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_levels`` lowest eigenpairs by Lanczos, ascending.

    Args:
        matrix: Hermitian sparse matrix (d, d).
        num_levels: How many levels (``< d``).
        start: Optional start vector (d,), e.g. the unperturbed eigenvector. Without one a
            fixed generic vector is used (ARPACK's own default is a random one, which made
            repeated solves differ in the last digits and broke bit-for-bit resumption).
        tol: ARPACK relative tolerance (0 means machine precision).

    Returns:
        ``(energies (k,), vectors (d, k))``.
    """
    d = matrix.shape[0]
    if not 0 < num_levels < d - 1:
        raise ValueError(
            f"the sparse solver computes 1 … {d - 2} levels of a {d}-dimensional problem, "
            f"asked for {num_levels}; use solver='dense' for small systems"
        )
    ncv = min(d, max(2 * num_levels + 1, 24))
    if start is None:  # generic (no symmetry sector is missed) and the same on every call
        start = np.random.default_rng(0x5EED).standard_normal(d)
    v0 = np.asarray(start, dtype=matrix.dtype)
    energies, vectors = scipy.sparse.linalg.eigsh(
        matrix, k=num_levels, which="SA", v0=v0, tol=tol, ncv=ncv
    )
    order = np.argsort(energies)
    return energies[order], vectors[:, order]


def state_expectations_np(table: StringTable, state: np.ndarray) -> np.ndarray:
    """``⟨ψ|P_s|ψ⟩`` for every string of the table, NumPy, shape (S,)."""
    return np.real(np.sum(np.conj(state[table.flips]) * table.phases * state[None, :], axis=-1))

"""Lowest eigenpairs of many sparse Hamiltonians at once: lock-step, warm-started Lanczos.

The sparse path of :class:`~thermoeqprop.quantum.EigenstateEP` solves, per batch, one free
Hamiltonian per example and two (four with Richardson) nudged ones. They share their Pauli
strings and differ only in coefficients, so

* one block-diagonal CSR matrix holds them all (:class:`BlockAssembler`): its sparsity pattern
  is fixed per model and batch size, and its values are one sparse product ``G c``;
* one Lanczos recurrence advances them together (:func:`lowest_pair`): one sparse product per
  step for every problem, and the reorthogonalisation as stacked matrix products.

Each run finds one eigenpair, the lowest of ``H`` on the orthogonal complement of given vectors
(deflation): levels ``0 … k`` come from ``k + 1`` runs, so a degenerate level appears twice, as
it must (a single Krylov space from one start vector holds one vector of each eigenspace and
would skip the copy). A run stops when the Ritz pair's residual ``|b_n s_n|`` is below its
limit: tight (``max(tol, ε) · Σ_s |c_s|``, ``Σ_s |c_s| ≥ ‖H‖``) for a state that is measured,
loose (``1e-2`` of the distance to the level below) for a level that only gives a gap.

Warm starts: a run may start from a previous state (the free state of the last training step,
or the free state for its nudged solves). A fixed generic vector of weight 10⁻³ is added, so
no symmetry sector the start lacks is missed. Reorthogonalisation is full (one classical
Gram–Schmidt pass after each three-term step), so the basis stays orthogonal and no spurious
copies of converged levels appear. A run that has not converged
after ``max_iter`` steps, or a Krylov space that closes too early, falls back to ARPACK
(:func:`~thermoeqprop.quantum._sparse.lowest_levels`).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg
import scipy.sparse

from thermoeqprop.quantum._kernels import StringTable
from thermoeqprop.quantum._sparse import lowest_levels, sparse_from_table

__all__ = ["BlockAssembler", "block_assembler", "generic_vector", "lowest_levels_batch"]

_EPS = np.finfo(np.float64).eps
_WARM_MIX = 1e-3  # weight of the generic vector added to a warm start
LOOSE_RTOL = 1e-2  # residual limit of a gap level, relative to its distance to the level below
_MAX_ITER = 300
_MEMORY = 256 * 2**20  # bytes of Krylov basis per lock-step chunk
# Counts since import, for benchmarks: Lanczos runs and steps, ARPACK fallbacks, and nudged
# problems settled with levels 0 … k only or needing level k + 1 (quantum/_sparse_paths.py).
STATS = {"runs": 0, "steps": 0, "fallbacks": 0, "nudged_one_level": 0, "nudged_two_levels": 0}


@functools.lru_cache(maxsize=32)
def generic_vector(dimension: int, index: int = 0) -> np.ndarray:
    """A fixed, generic unit vector (d,): the same on every call, so solves repeat exactly.

    Each deflated run uses its own (``index``): projected off the levels found from the same
    vector, a vector has no component left in the rest of a degenerate eigenspace.
    """
    v = np.random.default_rng([0x5EED, index]).standard_normal(dimension)
    v /= np.linalg.norm(v)
    v.setflags(write=False)
    return v


class BlockAssembler:
    """Block-diagonal CSR matrices ``diag(H(c_1), …, H(c_P))`` of one string table.

    Row ``r`` of ``H = Σ_s c_s P_s`` has one entry per distinct X/Y mask ``x``, at column
    ``r ⊕ x``, with value ``Σ_{s: x_s = x} c_s P_s[r, r ⊕ x]``. So the values, laid out
    ``(row, mask)``, are ``G c`` for a fixed sparse ``G`` of shape (d·M, S), and the column
    indices depend only on the number of blocks.
    """

    def __init__(self, table: StringTable):
        d = table.dimension
        masks = sorted({p.x_mask for p in table.strings})
        slot = {x: i for i, x in enumerate(masks)}
        self.table, self.dimension, self.num_masks = table, d, len(masks)
        self.dtype = np.float64 if table.is_real else np.complex128
        rows = np.arange(d)
        r_idx, s_idx, vals = [], [], []
        for s, p in enumerate(table.strings):
            r_idx.append(rows * len(masks) + slot[p.x_mask])
            s_idx.append(np.full(d, s))
            vals.append(table.phases[s, rows ^ p.x_mask])  # P_s[r, r ⊕ x_s]
        self._scatter = scipy.sparse.csr_array(
            (
                np.concatenate(vals).astype(self.dtype),
                (np.concatenate(r_idx), np.concatenate(s_idx)),
            ),
            shape=(d * len(masks), len(table.strings)),
        )
        self._columns = (rows[:, None] ^ np.asarray(masks)[None, :]).ravel()  # (d·M,)
        self._indices: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _pattern(self, blocks: int) -> tuple[np.ndarray, np.ndarray]:
        if blocks not in self._indices:
            d, m = self.dimension, self.num_masks
            offsets = (np.arange(blocks) * d)[:, None]
            indices = (offsets + self._columns[None, :]).ravel().astype(np.int32)
            indptr = np.arange(0, blocks * d * m + 1, m, dtype=np.int32)
            self._indices[blocks] = (indices, indptr)
        return self._indices[blocks]

    def block_matrix(self, coefficients: np.ndarray) -> scipy.sparse.csr_array:
        """``diag(H(c_1), …, H(c_P))`` for coefficients (P, S), shape (P·d, P·d)."""
        blocks = coefficients.shape[0]
        values = (self._scatter @ np.asarray(coefficients, np.float64).T).T  # (P, d·M)
        indices, indptr = self._pattern(blocks)
        n = blocks * self.dimension
        return scipy.sparse.csr_array(
            (np.ascontiguousarray(values).ravel(), indices, indptr), shape=(n, n)
        )


@functools.lru_cache(maxsize=16)
def block_assembler(table: StringTable) -> BlockAssembler:
    return BlockAssembler(table)


def _orthogonalise(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``w − B B† w`` per problem: w (P, d), basis (P, k, d) with orthonormal rows."""
    if basis.shape[1] == 0:
        return w
    h = np.conj(np.matmul(basis, np.conj(w)[:, :, None]))  # (P, k, 1) = B† w, conjugated back
    return w - np.matmul(np.swapaxes(h, 1, 2), basis)[:, 0]


def _ritz_lowest(alpha: np.ndarray, beta: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """Lowest eigenpair of the n×n tridiagonal ``(alpha, beta)`` (LAPACK bisection and inverse
    iteration, called directly: the checks are frequent and their matrices small)."""
    if n == 1:
        return float(alpha[0]), np.ones(1)
    d, e = alpha[:n], beta[: n - 1]
    _, w, iblock, isplit, info = scipy.linalg.lapack.dstebz(d, e, 3, 0.0, 0.0, 1, 1, 0.0, "B")
    z, info2 = scipy.linalg.lapack.dstein(d, e, w[:1], iblock, isplit)
    if info or info2:  # not seen; the general routine then decides
        theta, s = scipy.linalg.eigh_tridiagonal(d, e, select="i", select_range=(0, 0))
        return float(theta[0]), s[:, 0]
    return float(w[0]), z[:, 0]


def lowest_pair(matrix, starts, deflate, limits, norms, loose_below=None, max_iter=None):
    """Lowest eigenpair of each block of ``matrix`` on the complement of ``deflate``.

    Args:
        matrix: Block-diagonal operator (P·d, P·d) (``@`` with a vector).
        starts: Start vectors (P, d), not necessarily normalised or orthogonal to ``deflate``.
        deflate: Orthonormal vectors to stay orthogonal to, (P, q, d) (q may be 0).
        limits: Residual limit per problem (P,).
        norms: Bounds on ``‖H_p‖`` (P,): a step with ``b ≤ 1000 ε ‖H_p‖`` closes the Krylov
            space (it is invariant: the Ritz pair is exact).
        loose_below: Optional energies (P,) of the level below: the limit is then
            ``max(limit, LOOSE_RTOL · (θ − E_below))`` (a level that only gives a gap).
        max_iter: Largest Krylov dimension (default ``_MAX_ITER``, 300).

    Returns:
        ``(theta (P,), vectors (P, d), converged (P,) bool, steps (P,))``. Problems that did
        not converge keep their best Ritz pair; the caller falls back to ARPACK for them.
    """
    p_count, d = starts.shape
    q = deflate.shape[1]
    m = max(1, min(_MAX_ITER if max_iter is None else max_iter, d - q))
    dtype = starts.dtype
    basis = np.zeros((p_count, m + 1, d), dtype)
    alpha, beta = np.zeros((p_count, m)), np.zeros((p_count, m))
    v = _orthogonalise(_orthogonalise(starts, deflate), deflate)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    basis[:, 0] = v
    theta, coeffs = np.zeros(p_count), [None] * p_count
    sizes = np.zeros(p_count, int)
    done, converged = np.zeros(p_count, bool), np.zeros(p_count, bool)
    next_check = np.full(p_count, min(8, m))
    history: list[list[tuple[int, float]]] = [[] for _ in range(p_count)]
    for j in range(m):
        w = (matrix @ basis[:, j].reshape(-1)).reshape(p_count, d)
        if j:
            w -= beta[:, j - 1, None] * basis[:, j - 1]
        alpha[:, j] = np.real(np.sum(np.conj(basis[:, j]) * w, axis=1))
        w -= alpha[:, j, None] * basis[:, j]
        # Full reorthogonalisation: after the three-term recurrence only rounding errors are
        # left to remove, so one classical Gram–Schmidt pass keeps the basis orthonormal.
        w = _orthogonalise(_orthogonalise(w, deflate), basis[:, : j + 1])
        after = np.linalg.norm(w, axis=1)
        after[done] = 0.0
        beta[:, j] = after
        n = j + 1
        closed = after <= 1e3 * _EPS * norms
        due = ~done & ((n >= next_check) | closed | (n == m))
        for p in np.flatnonzero(due):
            t, s = _ritz_lowest(alpha[p], beta[p], n)
            residual = 0.0 if closed[p] else abs(after[p] * s[-1])
            limit = limits[p]
            if loose_below is not None:
                limit = max(limit, LOOSE_RTOL * (t - loose_below[p]))
            theta[p], coeffs[p], sizes[p] = t, s, n
            if residual <= limit or closed[p]:
                done[p] = converged[p] = True
                continue
            if n == m:
                done[p] = True
                continue
            next_check[p] = n + _steps_to_go(history[p], n, residual, limit)
            history[p].append((n, residual))
        if np.all(done):
            break
        keep = ~done
        basis[keep, j + 1] = w[keep] / after[keep, None]
    vectors = np.stack([coeffs[p] @ basis[p, : sizes[p]] for p in range(p_count)]).astype(
        dtype, copy=False
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return theta, vectors, converged, sizes


def _steps_to_go(history, n, residual, limit) -> int:
    """When to look again: extrapolate the geometric decay of the residual (checks cost an
    eigensolve of the tridiagonal, so not every step)."""
    if history and residual < history[-1][1]:
        n0, r0 = history[-1]
        rate = (np.log(residual) - np.log(r0)) / (n - n0)
        need = np.log(limit / residual) / rate
        return int(np.clip(np.ceil(0.8 * need), 1, 16))
    return 4


def _chunks(p_count: int, dimension: int, itemsize: int):
    per = max(1, _MEMORY // ((_MAX_ITER + 1) * dimension * itemsize))
    return [slice(i, min(i + per, p_count)) for i in range(0, p_count, per)]


def lowest_levels_batch(
    assembler, coefficients, starts, num_tight, *, tol, gap_level=False, warm_level=None
):
    """Levels ``0 … num_tight − 1`` (and the next one, loosely, with ``gap_level``) of each
    ``H(c_p)``.

    Args:
        assembler: The :class:`BlockAssembler` of the model's strings.
        coefficients: (P, S) real coefficients.
        starts: (P, d) warm starts for level ``warm_level`` (default the top tight level;
            rows of zeros: none); the other levels start from generic vectors.
        num_tight: Number of levels converged to the tight limit.
        tol: Relative tolerance, a number or one per problem (P,) (0: machine precision).
        gap_level: Also compute level ``num_tight`` to the loose limit (for a gap).
        warm_level: Which level the warm starts are for.

    Returns:
        ``(energies (P, L), vectors (P, L, d), lanczos_converged (P,))`` with
        ``L = num_tight + 1`` when ``gap_level`` (the last vector then only loosely
        converged), else ``num_tight``. Problems where Lanczos did not converge were solved
        again by ARPACK (``lanczos_converged`` False).
    """
    coefficients = np.asarray(coefficients, np.float64)
    p_count, d = coefficients.shape[0], assembler.dimension
    levels = num_tight + int(gap_level)
    warm_level = num_tight - 1 if warm_level is None else warm_level
    energies = np.zeros((p_count, levels))
    vectors = np.zeros((p_count, levels, d), assembler.dtype)
    ok = np.ones(p_count, bool)
    norms_all = np.sum(np.abs(coefficients), axis=1)
    limits_all = np.maximum(np.asarray(tol, np.float64), _EPS) * norms_all
    generic = generic_vector(d, 0).astype(assembler.dtype)
    starts = np.asarray(starts).astype(assembler.dtype, copy=False)
    lengths = np.linalg.norm(starts, axis=1, keepdims=True)
    warm = np.where(
        lengths > 0, starts / np.where(lengths > 0, lengths, 1.0) + _WARM_MIX * generic, generic
    )
    for part in _chunks(p_count, d, np.dtype(assembler.dtype).itemsize):
        matrix = assembler.block_matrix(coefficients[part])
        count = part.stop - part.start
        for level in range(levels):
            other = generic_vector(d, level + 1).astype(assembler.dtype)
            start = warm[part] if level == warm_level else np.broadcast_to(other, (count, d))
            below = energies[part, level - 1] if level == num_tight else None
            theta, vecs, conv, steps = lowest_pair(
                matrix, start, vectors[part, :level], limits_all[part], norms_all[part], below
            )
            energies[part, level], vectors[part, level] = theta, vecs
            ok[part] &= conv
            STATS["runs"] += count
            STATS["steps"] += int(np.sum(steps))
    for p in np.flatnonzero(~ok):
        STATS["fallbacks"] += 1
        energies[p], vectors[p] = _fallback(assembler.table, coefficients[p], warm[p], levels)
    return energies, vectors, ok


def _fallback(table, coefficients, start, levels):
    """ARPACK (or, for a tiny space, a dense eigh) when Lanczos did not converge."""
    matrix = sparse_from_table(table, coefficients)
    if levels < table.dimension - 1:
        energies, vectors = lowest_levels(matrix, levels, start=start)
    else:
        energies, vectors = np.linalg.eigh(matrix.toarray())
    return energies[:levels], vectors[:, :levels].T

"""The sparse path of :class:`~thermoeqprop.quantum.EigenstateEP`: Lanczos on the host.

One batch costs two host callbacks (``jax.pure_callback``), each solving every example at once
with the lock-step Lanczos of ``quantum/_lanczos.py``:

1. the free Hamiltonians ``H(θ, x_b)``: levels ``0 … k`` to the tight tolerance and level
   ``k + 1`` loosely, for the gap; level ``k`` starts from the caller's warm start (the free
   states of the previous call, :class:`SparseState`) when there is one;
2. the nudged ``H(θ, x_b) + β_i Ĉ_b``, all ``n`` of each example together, level ``k``
   starting from the free state. Only levels ``0 … k`` are computed ("one level" for the
   ground state) when Weyl's inequality settles the gap check and the overlap the choice: every
   level moves by at most ``|β_i| ‖δĈ‖ ≤ |β_i| Σ|γ|``, so if ``Δ − 2|β_i| Σ|γ| ≥
   gap_tolerance`` (``Δ`` the free gap, taken 2 % low to cover its loose solve) no level meets
   level ``k`` along the nudge, and an overlap above 1/2 with the free state is the largest.
   The reported nudged gap is then that lower bound. Otherwise level ``k + 1`` is computed too
   and the state is chosen as on the dense path.

Everything after the solves (outputs, shots, observables, the chain rule) runs in JAX with the
code of the dense path (``quantum/_eigen_paths.py``), so finite shots, both shot models and
both error signals work the same on both paths. The callbacks limit the BLAS thread pool to
``blas_threads`` (threadpoolctl) while they run: their matrix products are small, and a pool
per process multiplied by parallel workers would oversubscribe the cores. OpenBLAS's
``openblas_set_num_threads`` is not safe while another thread is inside BLAS, and the callbacks
run on XLA's threads beside the caller's: the pools are changed only when one is above the
limit, under one process-wide lock, so a process whose pools already fit (a worker started with
``OPENBLAS_NUM_THREADS=1``, say) never touches them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._eigen_paths import (
    EigenNumbers,
    EigenStatic,
    assemble,
    free_phase,
    measure_nudged,
    nudged_observables,
    signed_phases,
    split_key,
)
from thermoeqprop.quantum._following import MIN_OVERLAP, follow_host, nudge_norm
from thermoeqprop.quantum._lanczos import (
    LOOSE_RTOL,
    STATS,
    block_assembler,
    lowest_levels_batch,
)
from thermoeqprop.quantum._observables import Example
from thermoeqprop.quantum._phases import example_keys

__all__ = ["SparseState", "blas_limit", "predict_sparse", "sparse_batch"]


class SparseState(NamedTuple):
    """What the sparse solver carries from one call to the next.

    Attributes:
        free_states: The free eigenstates of the last batch, (batch, d); a row of zeros
            means no warm start (the fixed generic vector).
    """

    free_states: jax.Array


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_BLAS_LOCK = threading.RLock()


@contextlib.contextmanager
def blas_limit(threads: int | None):
    """Context that limits the BLAS thread pools to ``threads`` (``None``: leave them).

    Pools already at or under the limit are left alone; changes are made, and undone, under one
    process-wide lock, so two callbacks never switch the pools at once.
    """
    if threads is None:
        yield
        return
    with _BLAS_LOCK:
        pools = _controller().select(user_api="blas").lib_controllers
        if all(pool.num_threads <= threads for pool in pools):
            yield
            return
        with _controller().limit(limits=threads, user_api="blas"):
            yield


def _state_dtype(model):
    return np.float64 if model.is_real else np.complex128


def _flat(a, trailing: int):
    """Collapse the leading (batch and ``vmap``) axes: ``pure_callback`` with
    ``vmap_method="broadcast_all"`` prepends the vmapped axes to every argument."""
    a = np.asarray(a)
    return a.reshape((-1, *a.shape[a.ndim - trailing :]) if trailing else (-1,))


def _free_host(est: EigenStatic, c, start, tol):
    model, k = est.model, est.level
    lead = np.shape(c)[:-1]
    with blas_limit(est.blas_threads):
        energies, vectors, _ = lowest_levels_batch(
            block_assembler(model.table),
            _flat(c, 1),
            _flat(start, 1),
            k + 1,
            tol=_flat(tol, 0),
            gap_level=True,
        )
    gap = energies[:, k + 1] - energies[:, k]
    if k:
        gap = np.minimum(gap, energies[:, k] - energies[:, k - 1])
    psi = vectors[:, k].astype(_state_dtype(model), copy=False)
    return (
        psi.reshape(*lead, -1),
        energies[:, k].reshape(lead),
        gap.reshape(lead),
    )


def _nudged_host(est: EigenStatic, c, nudge, psi, free_gap, norm, betas, gap_tol, tol):
    model, k = est.model, est.level
    lead, n = np.shape(c)[:-1], np.shape(betas)[-1]
    c, nudge, psi = _flat(c, 1), _flat(nudge, 1), _flat(psi, 1)
    betas = _flat(betas, 1)
    coefficients = (c[:, None, :] + betas[:, :, None] * nudge[:, None, :]).reshape(-1, c.shape[1])
    reference = np.repeat(psi, n, axis=0)  # (E·n, d): the free state of each nudged problem
    tols = np.repeat(_flat(tol, 0), n)
    assembler = block_assembler(model.table)
    with blas_limit(est.blas_threads):
        energies, vectors, _ = lowest_levels_batch(
            assembler, coefficients, reference, k + 1, tol=tols
        )
        states, chosen = vectors[:, k], energies[:, k]
        overlaps = np.abs(np.sum(np.conj(states) * reference, axis=1)) ** 2
        bound = np.repeat(_flat(free_gap, 0), n) * (1.0 - 2.0 * LOOSE_RTOL) - 2.0 * np.abs(
            betas.ravel()
        ) * np.repeat(_flat(norm, 0), n)
        gap_tol = np.repeat(_flat(gap_tol, 0), n)
        settled = (bound > 0) & (bound >= gap_tol) & (overlaps > MIN_OVERLAP)
        STATS["nudged_one_level"] += int(np.sum(settled))
        STATS["nudged_two_levels"] += int(np.sum(~settled))
        gaps, crossed = np.where(settled, bound, np.inf), np.zeros(len(bound), bool)
        rest = np.flatnonzero(~settled)
        if rest.size:
            e_all, v_all, _ = lowest_levels_batch(
                assembler, coefficients[rest], reference[rest], k + 2, tol=tols[rest], warm_level=k
            )
            for i, p in enumerate(rest):
                j, ov, gap, cr = follow_host(e_all[i], v_all[i].T, reference[p], k, est.by_index)
                states[p], chosen[p], overlaps[p], gaps[p], crossed[p] = (
                    v_all[i, j], e_all[i, j], ov, gap, cr,
                )  # fmt: skip
    shape = (*lead, n)
    return (
        states.astype(_state_dtype(model), copy=False).reshape(*shape, -1),
        chosen.reshape(shape),
        overlaps.reshape(shape),
        gaps.reshape(shape),
        crossed.reshape(shape),
    )


def _free_callback(est: EigenStatic, c, start, lanczos_tol):
    batch, d = c.shape[0], 1 << est.model.num_qubits
    tol = jnp.broadcast_to(jnp.asarray(lanczos_tol, jnp.float64), (batch,))
    return jax.pure_callback(
        functools.partial(_free_host, est),
        (
            jax.ShapeDtypeStruct((batch, d), _state_dtype(est.model)),
            jax.ShapeDtypeStruct((batch,), jnp.float64),
            jax.ShapeDtypeStruct((batch,), jnp.float64),
        ),
        c,
        start,
        tol,
        vmap_method="broadcast_all",
    )


def _nudged_callback(est: EigenStatic, numbers: EigenNumbers, c, nudge, psi, free_gap, norm):
    batch, d = c.shape[0], 1 << est.model.num_qubits
    betas = jnp.stack([b for b, _ in signed_phases(numbers.beta, est.richardson)])
    n = betas.shape[0]

    def per_example(value):
        return jnp.broadcast_to(jnp.asarray(value, jnp.float64), (batch,))

    out = (
        jax.ShapeDtypeStruct((batch, n, d), _state_dtype(est.model)),
        *(jax.ShapeDtypeStruct((batch, n), jnp.float64) for _ in range(3)),
        jax.ShapeDtypeStruct((batch, n), jnp.bool_),
    )
    return jax.pure_callback(
        functools.partial(_nudged_host, est),
        out,
        c,
        nudge,
        psi,
        free_gap,
        norm,
        jnp.broadcast_to(betas.astype(jnp.float64), (batch, n)),
        per_example(numbers.gap_tolerance),
        per_example(numbers.lanczos_tol),
        vmap_method="broadcast_all",
    )


@functools.partial(jax.jit, static_argnums=0)
def sparse_batch(est: EigenStatic, numbers: EigenNumbers, params, x, targets, rng_key, start):
    """The estimate for a batch and the new :class:`SparseState` (the free states)."""
    model = est.model
    c = jax.vmap(model.coefficients, in_axes=(None, 0))(params, x)
    jac = jax.vmap(model.string_jacobian, in_axes=(None, 0))(params, x)
    psi, free_energy, free_gap = _free_callback(est, c, start, numbers.lanczos_tol)
    keys = example_keys(rng_key, x.shape[0], est.shots.shots)
    key_free, key_nudged = jax.vmap(lambda k: split_key(k, est.shots))(keys)
    loss, gamma, loss_var = jax.vmap(functools.partial(free_phase, est))(psi, targets, key_free)
    nudge = jax.vmap(model.embed_cost)(gamma)
    norm = jax.vmap(functools.partial(nudge_norm, model))(gamma)
    states, energies, overlaps, gaps, crossed = _nudged_callback(
        est, numbers, c, nudge, psi, free_gap, norm
    )
    grad, var = jax.vmap(functools.partial(measure_nudged, est, numbers.beta))(
        states, jac, key_nudged
    )
    observables = jax.vmap(functools.partial(nudged_observables, est))(
        psi, states, free_energy, energies
    )
    per_example = Example(
        grad, var, loss, loss_var, observables, free_gap, jnp.min(gaps, axis=1),
        jnp.min(overlaps, axis=1), jnp.any(crossed, axis=1), numbers.beta * norm / free_gap,
    )  # fmt: skip
    return assemble(est, numbers, per_example), SparseState(psi)


@functools.partial(jax.jit, static_argnums=0)
def predict_sparse(est: EigenStatic, numbers: EigenNumbers, params, x):
    model = est.model
    c = jax.vmap(model.coefficients, in_axes=(None, 0))(params, x)
    start = jnp.zeros((x.shape[0], 1 << model.num_qubits), _state_dtype(model))
    psi, _, _ = _free_callback(est, c, start, numbers.lanczos_tol)
    out_w = jnp.asarray(model.output_weights)
    return jax.vmap(lambda s: out_w @ K.state_expectations(model.output_table, s))(psi)

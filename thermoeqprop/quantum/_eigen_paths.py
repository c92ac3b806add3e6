"""The compiled kernels of :class:`~thermoeqprop.quantum.EigenstateEP`: dense and sparse.

Dense: ``eigh`` of ``H`` and of each ``H ± β_iĈ`` inside ``jit``/``vmap``. Sparse: Lanczos
(SciPy ARPACK) on the host through ``jax.pure_callback``. Both choose the nudged state as
:mod:`thermoeqprop.quantum._following` says and return an
:class:`~thermoeqprop.quantum._observables.Example` per example.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._following import eigh, follow_dense, follow_host, gap_at, nudge_ratio
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._observables import (
    Example,
    assemble_estimate,
    nudged_betas,
    output_moments,
)
from thermoeqprop.quantum._phases import (
    example_keys,
    free_outputs,
    measure,
    phase_keys,
    phase_weights,
)
from thermoeqprop.quantum._shots import measurement_plan
from thermoeqprop.quantum._sparse import lowest_levels, sparse_from_table, state_expectations_np


class EigenStatic(NamedTuple):
    """The settings of :class:`EigenstateEP` that shape the program (hashable, static)."""

    model: QuantumNetwork
    level: int
    richardson: bool
    shots: int | None
    by_index: bool = False  # follow="index"


class EigenNumbers(NamedTuple):
    """The settings of :class:`EigenstateEP` that are plain numbers (traced)."""

    beta: float
    gap_tolerance: float
    lanczos_tol: float


def _observables(free_moments, means, variances, free_energy, nudged_energies):
    """The eigenstate entries of ``GradientEstimate.observables`` (``_observables`` module)."""
    return {
        "free_outputs": free_moments[0],
        "free_output_variances": free_moments[1],
        "free_energy": free_energy,
        "nudged_outputs": means,
        "nudged_output_variances": variances,
        "nudged_energies": nudged_energies,
    }


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------
def _dense_example(est: EigenStatic, numbers: EigenNumbers, params, x, y, key) -> Example:
    model = est.model
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    energies, vectors = eigh(model, c)
    psi = vectors[:, est.level]
    free_gap = gap_at(energies, est.level)
    key_free, key_nudged = (key, key) if est.shots is None else jax.random.split(key)
    loss, _, gamma, loss_var = free_outputs(
        model,
        psi[:, None],
        jnp.ones(1),
        lambda: K.state_expectations(model.output_table, psi),
        y,
        est.shots,
        key_free,
    )
    nudge = model.embed_cost(gamma)
    plan = measurement_plan(model.hamiltonian.trainable_strings)
    grad, var = jnp.zeros(jac.shape[1]), jnp.zeros(jac.shape[1])
    overlap, nudged_gap, crossed = jnp.ones(()), jnp.asarray(jnp.inf), jnp.asarray(False)
    moments, nudged_energies = [], []
    phases = phase_weights(numbers.beta, est.richardson)
    keys = phase_keys(key_nudged, len(phases), est.shots)
    for i, (b, w) in enumerate(phases):
        for sign, k in ((1.0, keys[2 * i]), (-1.0, keys[2 * i + 1])):
            state, energy, ov, g, cr = follow_dense(
                model, c + sign * b * nudge, psi, est.level, est.by_index
            )
            mean, v = measure(
                model,
                plan,
                state[:, None],
                jnp.ones(1),
                lambda s=state: K.state_expectations(model.trainable_table, s),
                est.shots,
                k,
                jac,
            )
            grad, var = grad + sign * w * mean, var + w**2 * v
            overlap, nudged_gap = jnp.minimum(overlap, ov), jnp.minimum(nudged_gap, g)
            crossed = jnp.logical_or(crossed, cr)
            moments.append(output_moments(model, state))
            nudged_energies.append(energy)
    observables = _observables(
        output_moments(model, psi),
        jnp.stack([m for m, _ in moments]),
        jnp.stack([v for _, v in moments]),
        energies[est.level],
        jnp.stack(nudged_energies),
    )
    ratio = nudge_ratio(model, numbers.beta, gamma, free_gap)
    return Example(
        grad, var, loss, loss_var, observables, free_gap, nudged_gap, overlap, crossed, ratio
    )


def _assemble(est: EigenStatic, numbers: EigenNumbers, per_example: Example, shots):
    betas = nudged_betas(numbers.beta, est.richardson)
    return assemble_estimate(
        per_example, betas, numbers.gap_tolerance, shots, eigen=True, by_index=est.by_index
    )


@functools.partial(jax.jit, static_argnums=0)
def dense_batch(est: EigenStatic, numbers: EigenNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots)
    per_example = jax.vmap(_dense_example, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    return _assemble(est, numbers, per_example, est.shots)


@functools.partial(jax.jit, static_argnums=0)
def predict_dense(est: EigenStatic, numbers: EigenNumbers, params, x):
    del numbers  # the free eigenstate depends on no traced setting
    model = est.model

    def one(xi):
        _, vectors = eigh(model, model.coefficients(params, xi))
        e_q = K.state_expectations(model.output_table, vectors[:, est.level])
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)


# --------------------------------------------------------------------------------------------
# sparse (Lanczos) path, on the host through pure_callback
# --------------------------------------------------------------------------------------------
def _state_dtype(model):
    return np.float64 if model.is_real else np.complex128


def _free_host(est: EigenStatic, c, lanczos_tol):
    model = est.model
    h = sparse_from_table(model.table, np.asarray(c))
    energies, vectors = lowest_levels(h, est.level + 2, tol=float(lanczos_tol))
    psi = vectors[:, est.level]
    gap = np.min(np.diff(energies)[max(est.level - 1, 0) : est.level + 1])
    e_q = state_expectations_np(model.output_table, psi)
    energy = np.float64(energies[est.level])
    return psi.astype(_state_dtype(model)), np.float64(gap), e_q.astype(np.float64), energy


def _nudged_host(est: EigenStatic, c, nudge, psi, beta, lanczos_tol):
    model = est.model
    c, nudge, psi = np.asarray(c), np.asarray(nudge), np.asarray(psi)
    g = np.zeros(len(model.hamiltonian.trainable_strings))
    min_gap, min_overlap, crossed = np.inf, 1.0, False
    means, variances, energies_out = [], [], []
    tol = float(lanczos_tol)
    for b, w in phase_weights(float(beta), est.richardson):
        for sign in (1.0, -1.0):
            h = sparse_from_table(model.table, c + sign * b * nudge)
            energies, vectors = lowest_levels(h, est.level + 2, start=psi, tol=tol)
            j, ov, gap, cr = follow_host(energies, vectors, psi, est.level, est.by_index)
            min_gap, min_overlap, crossed = min(min_gap, gap), min(min_overlap, ov), crossed or cr
            g += sign * w * state_expectations_np(model.trainable_table, vectors[:, j])
            mean, variance = output_moments(model, vectors[:, j], xp=np)
            means.append(mean)
            variances.append(variance)
            energies_out.append(energies[j])
    return (
        g,
        np.float64(min_gap),
        np.float64(min_overlap),
        np.bool_(crossed),
        np.asarray(means, np.float64),
        np.asarray(variances, np.float64),
        np.asarray(energies_out, np.float64),
    )


def _sparse_example(est: EigenStatic, numbers: EigenNumbers, params, x, y, key) -> Example:
    del key
    model = est.model
    d, scalar = 1 << model.num_qubits, jax.ShapeDtypeStruct((), jnp.float64)
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    psi, free_gap, e_q, free_energy = jax.pure_callback(
        functools.partial(_free_host, est),
        (
            jax.ShapeDtypeStruct((d,), _state_dtype(model)),
            scalar,
            jax.ShapeDtypeStruct((len(model.output_strings),), jnp.float64),
            scalar,
        ),
        c,
        numbers.lanczos_tol,
        vmap_method="sequential",
    )
    loss, _, gamma = model.cost_string_coefficients(e_q, y)
    n, m = 4 if est.richardson else 2, model.num_outputs
    g, nudged_gap, overlap, crossed, means, variances, energies = jax.pure_callback(
        functools.partial(_nudged_host, est),
        (
            jax.ShapeDtypeStruct((len(model.hamiltonian.trainable_strings),), jnp.float64),
            scalar,
            scalar,
            jax.ShapeDtypeStruct((), jnp.bool_),
            jax.ShapeDtypeStruct((n, m), jnp.float64),
            jax.ShapeDtypeStruct((n, m), jnp.float64),
            jax.ShapeDtypeStruct((n,), jnp.float64),
        ),
        c,
        model.embed_cost(gamma),
        psi,
        numbers.beta,
        numbers.lanczos_tol,
        vmap_method="sequential",
    )
    observables = _observables(output_moments(model, psi), means, variances, free_energy, energies)
    zero = jnp.zeros(jac.shape[1])
    ratio = nudge_ratio(model, numbers.beta, gamma, free_gap)
    return Example(
        jac.T @ g, zero, loss, jnp.zeros(()), observables, free_gap, nudged_gap, overlap, crossed,
        ratio,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=0)
def sparse_batch(est: EigenStatic, numbers: EigenNumbers, params, x, targets, rng_key):
    keys = jax.random.split(rng_key, x.shape[0])
    per_example = jax.vmap(_sparse_example, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    return _assemble(est, numbers, per_example, None)


@functools.partial(jax.jit, static_argnums=0)
def predict_sparse(est: EigenStatic, numbers: EigenNumbers, params, x):
    model = est.model
    d = 1 << model.num_qubits

    def one(xi):
        _, _, e_q, _ = jax.pure_callback(
            functools.partial(_free_host, est),
            (
                jax.ShapeDtypeStruct((d,), _state_dtype(model)),
                jax.ShapeDtypeStruct((), jnp.float64),
                jax.ShapeDtypeStruct((len(model.output_strings),), jnp.float64),
                jax.ShapeDtypeStruct((), jnp.float64),
            ),
            model.coefficients(params, xi),
            numbers.lanczos_tol,
            vmap_method="sequential",
        )
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)

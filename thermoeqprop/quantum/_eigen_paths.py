"""The compiled kernels of :class:`~thermoeqprop.quantum.EigenstateEP`: the dense path, and
the per-example steps that the dense and sparse paths share.

Dense: ``eigh`` of ``H`` and of each ``H ± β_iĈ`` inside ``jit``/``vmap``. Sparse
(``quantum/_sparse_paths.py``): lock-step Lanczos on the host. Both choose the nudged state as
:mod:`thermoeqprop.quantum._following` says, then read the free outputs
(:func:`free_phase`) and the nudged states (:func:`measure_nudged`) with the same code, exactly
or from shots, and return an :class:`~thermoeqprop.quantum._observables.Example` per example.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._following import eigh, follow_dense, gap_at, nudge_ratio
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._observables import (
    Example,
    assemble_estimate,
    nudged_betas,
    output_moments,
)
from thermoeqprop.quantum._phases import (
    ShotSettings,
    example_keys,
    free_outputs,
    measure,
    phase_keys,
    phase_weights,
)
from thermoeqprop.quantum._shots import measurement_plan


class EigenStatic(NamedTuple):
    """The settings of :class:`EigenstateEP` that shape the program (hashable, static)."""

    model: QuantumNetwork
    level: int
    richardson: bool
    shots: ShotSettings
    by_index: bool = False  # follow="index"
    blas_threads: int | None = 1  # sparse path: BLAS threads of the host solver


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
# the steps both paths share
# --------------------------------------------------------------------------------------------
def signed_phases(beta, richardson: bool) -> list[tuple]:
    """``(β_i, c_i)`` per nudged state, in the order of ``nudged_betas``: the estimate is
    ``Σ_i c_i ⟨P⟩_{β_i}`` (``c = ±w`` of :func:`phase_weights`)."""
    return [(s * b, s * w) for b, w in phase_weights(beta, richardson) for s in (1.0, -1.0)]


def split_key(key, shots: ShotSettings):
    """Keys of the free and the nudged measurements (one key serves both when exact)."""
    return (key, key) if shots.shots is None else tuple(jax.random.split(key))


def free_phase(est: EigenStatic, psi, y, key):
    """``(loss, gamma, loss_var)`` of the free eigenstate ``psi`` (d,), exact or from shots."""
    model = est.model
    loss, _, gamma, loss_var = free_outputs(
        model,
        psi[:, None],
        jnp.ones(1),
        lambda: K.state_expectations(model.output_table, psi),
        y,
        est.shots,
        key,
    )
    return loss, gamma, loss_var


def measure_nudged(est: EigenStatic, beta, states, jac, key):
    """Params-level estimate ``Σ_i c_i J^T ⟨P⟩_i`` and its variance from the nudged states
    (n, d), one key per state."""
    model = est.model
    plan = measurement_plan(model.hamiltonian.trainable_strings)
    phases = signed_phases(beta, est.richardson)
    keys = phase_keys(key, len(phases) // 2, est.shots.shots)
    grad, var = jnp.zeros(jac.shape[1]), jnp.zeros(jac.shape[1])
    for i, (_, c) in enumerate(phases):
        state = states[i]
        mean, v = measure(
            plan,
            state[:, None],
            jnp.ones(1),
            lambda s=state: K.state_expectations(model.trainable_table, s),
            est.shots,
            keys[i],
            jac,
        )
        grad, var = grad + c * mean, var + c**2 * v
    return grad, var


def nudged_observables(est: EigenStatic, psi, states, free_energy, nudged_energies):
    """The ``observables`` of one example (see ``quantum/_observables.py``)."""
    moments = [output_moments(est.model, states[i]) for i in range(states.shape[0])]
    return _observables(
        output_moments(est.model, psi),
        jnp.stack([m for m, _ in moments]),
        jnp.stack([v for _, v in moments]),
        free_energy,
        nudged_energies,
    )


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
    key_free, key_nudged = split_key(key, est.shots)
    loss, gamma, loss_var = free_phase(est, psi, y, key_free)
    nudge = model.embed_cost(gamma)
    followed = [
        follow_dense(model, c + b * nudge, psi, est.level, est.by_index)
        for b, _ in signed_phases(numbers.beta, est.richardson)
    ]
    states, nudged_energies, overlaps, gaps, crossed = jax.tree.map(
        lambda *leaves: jnp.stack(leaves), *followed
    )
    grad, var = measure_nudged(est, numbers.beta, states, jac, key_nudged)
    observables = nudged_observables(est, psi, states, energies[est.level], nudged_energies)
    ratio = nudge_ratio(model, numbers.beta, gamma, free_gap)
    return Example(
        grad, var, loss, loss_var, observables, free_gap, jnp.min(gaps), jnp.min(overlaps),
        jnp.any(crossed), ratio,
    )  # fmt: skip


def assemble(est: EigenStatic, numbers: EigenNumbers, per_example: Example):
    betas = nudged_betas(numbers.beta, est.richardson)
    return assemble_estimate(
        per_example,
        betas,
        numbers.gap_tolerance,
        est.shots.shots,
        eigen=True,
        by_index=est.by_index,
    )


@functools.partial(jax.jit, static_argnums=0)
def dense_batch(est: EigenStatic, numbers: EigenNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots.shots)
    per_example = jax.vmap(_dense_example, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    return assemble(est, numbers, per_example)


@functools.partial(jax.jit, static_argnums=0)
def predict_dense(est: EigenStatic, numbers: EigenNumbers, params, x):
    del numbers  # the free eigenstate depends on no traced setting
    model = est.model

    def one(xi):
        _, vectors = eigh(model, model.coefficients(params, xi))
        e_q = K.state_expectations(model.output_table, vectors[:, est.level])
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)

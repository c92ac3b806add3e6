"""The nudged phases of EP: the β values and weights of the finite difference, and measuring.

Shared by eigenstate and thermal EP: each phase is a state at ``H ± β_i Ĉ`` whose trainable
string expectations are combined as ``Σ_i w_i [⟨P⟩_{+β_i} − ⟨P⟩_{−β_i}]``, measured exactly
or from shots (one key per phase and sign).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from thermoeqprop.quantum._shots import measurement_plan, sample_outcomes, shot_estimate

__all__ = ["example_keys", "free_outputs", "measure", "phase_keys", "phase_weights"]


def phase_weights(beta, richardson: bool) -> tuple[tuple[float, float], ...]:
    """``(β_i, w_i)``: ``dL/dc ≈ Σ_i w_i [⟨P⟩_{+β_i} − ⟨P⟩_{−β_i}]``.

    Symmetric difference ``1/(2β)``; with Richardson extrapolation
    ``(4 g(β/2) − g(β))/3``, which cancels the O(β²) term. ``beta`` is a float on the host
    (sparse path) or a traced scalar (dense path); the arithmetic is the same.
    """
    if not richardson:
        return ((beta, 1.0 / (2 * beta)),)
    return ((beta, -1.0 / (3 * 2 * beta)), (beta / 2, 4.0 / (3 * beta)))


def measure(model, table_plan, vectors, weights, exact_values, shots, key, jac):
    """Params-level ``J^T ⟨P_T⟩`` and its variance, exactly or from shots."""
    if shots is None:
        return jac.T @ exact_values(), jnp.zeros(jac.shape[1])
    outcomes = sample_outcomes(table_plan, vectors, weights, shots, key)
    return shot_estimate(table_plan, outcomes, jac)


def phase_keys(key, num_betas: int, shots):
    if shots is None:
        return [key] * (2 * num_betas)
    return list(jax.random.split(key, 2 * num_betas))


def free_outputs(model, vectors, weights, exact_fn, y, shots, key):
    """Loss, outputs, nudge coefficients and loss variance of the free phase."""
    if shots is None:
        loss, outputs, gamma = model.cost_string_coefficients(exact_fn(), y)
        return loss, outputs, gamma, jnp.zeros(())
    plan = measurement_plan(model.output_strings)
    outcomes = sample_outcomes(plan, vectors, weights, shots, key)
    e_q, _ = shot_estimate(plan, outcomes, jnp.eye(len(model.output_strings)))
    loss, outputs, gamma = model.cost_string_coefficients(e_q, y)
    _, loss_var = shot_estimate(plan, outcomes, gamma[:, None])
    return loss, outputs, gamma, loss_var[0]


def example_keys(rng_key, batch: int, shots):
    """One key per example with shots; exact estimators leave the key unused."""
    if shots is None:
        return jnp.zeros((batch,), jnp.uint32)
    return jax.random.split(rng_key, batch)

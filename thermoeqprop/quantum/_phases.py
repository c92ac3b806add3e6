"""The nudged phases of EP: the β values and weights of the finite difference, and measuring.

Shared by eigenstate and thermal EP: each phase is a state at ``H ± β_i Ĉ`` whose trainable
string expectations are combined as ``Σ_i w_i [⟨P⟩_{+β_i} − ⟨P⟩_{−β_i}]``, measured exactly
or from shots (one key per phase and sign).

:class:`ShotSettings` says how: ``shots`` (``None``: exact), the shot model (``"projective"``:
bit strings per qubit-wise commuting basis setting; ``"gaussian"``: ``N(⟨P⟩, (1 − ⟨P⟩²)/N)``
per string, see ``quantum/_shots.py``) and the error signal (``"noisy"``: the free outputs, so
the loss and the nudge ``Ĉ``, come from shots like everything else; ``"exact"``: from the
exact free state, so only the nudged measurements are noisy).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from thermoeqprop.quantum._shots import (
    gaussian_estimate,
    measurement_plan,
    sample_outcomes,
    shot_estimate,
)

__all__ = [
    "ERROR_SIGNALS",
    "ShotSettings",
    "example_keys",
    "free_outputs",
    "measure",
    "phase_keys",
    "phase_weights",
]

ERROR_SIGNALS = ("noisy", "exact")


class ShotSettings(NamedTuple):
    """How expectations are read (static: they shape the program). See the module docstring."""

    shots: int | None = None
    model: str = "projective"
    error_signal: str = "noisy"


def phase_weights(beta, richardson: bool) -> tuple[tuple[float, float], ...]:
    """``(β_i, w_i)``: ``dL/dc ≈ Σ_i w_i [⟨P⟩_{+β_i} − ⟨P⟩_{−β_i}]``.

    Symmetric difference ``1/(2β)``; with Richardson extrapolation
    ``(4 g(β/2) − g(β))/3``, which cancels the O(β²) term. ``beta`` is a float on the host
    (sparse path) or a traced scalar (dense path); the arithmetic is the same.
    """
    if not richardson:
        return ((beta, 1.0 / (2 * beta)),)
    return ((beta, -1.0 / (3 * 2 * beta)), (beta / 2, 4.0 / (3 * beta)))


def measure(table_plan, vectors, weights, exact_values, shots: ShotSettings, key, jac):
    """Params-level ``J^T ⟨P_T⟩`` and its variance, exactly or from shots.

    ``vectors`` (d, m) and ``weights`` (m,) give the state ``Σ_m w_m |u_m⟩⟨u_m|`` (projective
    model); ``exact_values()`` its string expectations (T,) (exact and Gaussian models).
    """
    if shots.shots is None:
        return jac.T @ exact_values(), jnp.zeros(jac.shape[1])
    if shots.model == "gaussian":
        return gaussian_estimate(exact_values(), jac, shots.shots, key)
    outcomes = sample_outcomes(table_plan, vectors, weights, shots.shots, key)
    return shot_estimate(table_plan, outcomes, jac)


def phase_keys(key, num_betas: int, shots):
    """One key per nudged state (``2 · num_betas``); ``shots`` is the shot count or None."""
    if shots is None:
        return [key] * (2 * num_betas)
    return list(jax.random.split(key, 2 * num_betas))


def free_outputs(model, vectors, weights, exact_fn, y, shots: ShotSettings, key):
    """Loss, outputs, nudge coefficients and loss variance of the free phase.

    With a noisy error signal the output strings are read like the nudged ones (same shot
    model) and the loss variance is ``γᵀ Cov(Q̂) γ`` (exact for a cost linear in the outputs,
    the delta method otherwise).
    """
    if shots.shots is None or shots.error_signal == "exact":
        loss, outputs, gamma = model.cost_string_coefficients(exact_fn(), y)
        return loss, outputs, gamma, jnp.zeros(())
    if shots.model == "gaussian":
        e_exact = exact_fn()
        e_q, _ = gaussian_estimate(e_exact, jnp.eye(e_exact.shape[0]), shots.shots, key)
        loss, outputs, gamma = model.cost_string_coefficients(e_q, y)
        loss_var = jnp.sum(gamma**2 * jnp.maximum(1.0 - e_exact**2, 0.0)) / shots.shots
        return loss, outputs, gamma, loss_var
    plan = measurement_plan(model.output_strings)
    outcomes = sample_outcomes(plan, vectors, weights, shots.shots, key)
    e_q, _ = shot_estimate(plan, outcomes, jnp.eye(len(model.output_strings)))
    loss, outputs, gamma = model.cost_string_coefficients(e_q, y)
    _, loss_var = shot_estimate(plan, outcomes, gamma[:, None])
    return loss, outputs, gamma, loss_var[0]


def example_keys(rng_key, batch: int, shots):
    """One key per example with shots; exact estimators leave the key unused."""
    if shots is None:
        return jnp.zeros((batch,), jnp.uint32)
    return jax.random.split(rng_key, batch)

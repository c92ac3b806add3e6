"""What a quantum estimate returns besides the gradient: expectation values and diagnostics.

:attr:`GradientEstimate.observables` of the quantum estimators holds, per example, the exact
expectation values of the simulated states (also when the gradient comes from shots), so no
second solve is needed to read the outputs:

* ``free_outputs`` (batch, m): ``⟨B_j⟩`` in the free state;
* ``nudged_outputs`` (batch, n, m): ``⟨B_j⟩`` in the ``n`` nudged states, in the order of
  ``nudged_betas`` (n,): ``(+β, −β)``, with Richardson ``(+β, −β, +β/2, −β/2)``;

and, for eigenstate EP (pure states),

* ``free_output_variances`` (batch, m) and ``nudged_output_variances`` (batch, n, m):
  ``⟨B_j²⟩ − ⟨B_j⟩²``;
* ``free_energy`` (batch,): the eigenvalue ``E_k`` of ``H``; ``nudged_energies`` (batch, n):
  the eigenvalue of the followed state of ``H ± β Σ_k γ_k Q_k`` (the nudge without its
  constant part).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from thermoeqprop._result import GradientEstimate
from thermoeqprop.quantum._following import MIN_OVERLAP, OUTCOMES

__all__ = ["Example", "assemble_estimate", "nudged_betas", "output_moments"]


class Example(NamedTuple):
    """Everything one example contributes (under ``vmap``: a leading batch axis)."""

    grad: jax.Array
    var: jax.Array
    loss: jax.Array
    loss_var: jax.Array
    observables: dict
    free_gap: jax.Array = jnp.inf
    nudged_gap: jax.Array = jnp.inf
    overlap: jax.Array = 1.0
    crossed: jax.Array = False
    ratio: jax.Array = 0.0


def output_moments(model, state, xp=jnp):
    """``(⟨B_j⟩, ⟨B_j²⟩ − ⟨B_j⟩²)`` of the outputs in a normalised pure state (d,).

    ``B_j = Σ_k W_jk Q_k``: with ``(Q_k ψ)[a] = phase_k[a ⊕ x_k] ψ[a ⊕ x_k]``,
    ``⟨B_j²⟩ = ‖Σ_k W_jk Q_k ψ‖²``. ``xp`` is ``jax.numpy`` or ``numpy`` (host solvers).
    """
    table = model.output_table
    applied = xp.take_along_axis(xp.asarray(table.phases) * state[None, :], table.flips, axis=1)
    weights = xp.asarray(model.output_weights)
    mean = weights @ xp.real(xp.sum(xp.conj(state)[None, :] * applied, axis=-1))
    second = xp.sum(xp.abs(weights.astype(applied.dtype) @ applied) ** 2, axis=-1)
    return mean, xp.maximum(second - mean**2, 0.0)


def nudged_betas(beta, richardson: bool) -> jax.Array:
    """The signed β of the nudged states, in the order of ``nudged_outputs``."""
    betas = (beta, -beta, beta / 2, -beta / 2) if richardson else (beta, -beta)
    return jnp.stack([jnp.asarray(b, jnp.float64) for b in betas])


def _eigen_diagnostics(ex: Example, gap_tolerance, min_overlap):
    refused = jnp.logical_or(ex.nudged_gap < gap_tolerance, ex.overlap < min_overlap)
    outcome = jnp.where(refused, 2, jnp.where(ex.crossed, 1, 0)).astype(jnp.int32)
    gap = jnp.minimum(ex.free_gap, ex.nudged_gap)
    return refused, {
        "min_gap": jnp.min(gap),
        "min_overlap": jnp.min(ex.overlap),
        "worst_example": jnp.argmin(jnp.where(gap < gap_tolerance, gap, ex.overlap)),
        "min_free_gap": jnp.min(ex.free_gap),
        "free_gap": ex.free_gap,
        "nudged_gap": ex.nudged_gap,
        "outcome": outcome,
        "num_crossed": jnp.sum(outcome == OUTCOMES.index("crossed")),
        "num_refused": jnp.sum(refused),
        "nudge_ratio": ex.ratio,
        "max_nudge_ratio": jnp.max(ex.ratio),
    }


def assemble_estimate(
    ex: Example, betas, gap_tolerance, shots: int | None, *, eigen: bool, by_index: bool = False
) -> GradientEstimate:
    """Batch means, standard errors, diagnostics and observables.

    For eigenstate EP the gradient is the mean over the examples that were not refused (NaN if
    none was, or if a free level is degenerate); the loss is the mean over all examples.
    ``shots`` is None for exact (non-stochastic) estimates.
    """
    batch = ex.grad.shape[0]
    observables = {**ex.observables, "nudged_betas": betas} if betas is not None else ex.observables
    if eigen:
        refused, diagnostics = _eigen_diagnostics(
            ex, gap_tolerance, 0.0 if by_index else MIN_OVERLAP
        )
    else:
        refused, diagnostics = jnp.zeros(batch, bool), {}
    used = jnp.sum(~refused)
    keep = (~refused)[:, None]
    g = jnp.sum(jnp.where(keep, ex.grad, 0.0), axis=0) / jnp.maximum(used, 1)
    bad = jnp.logical_or(jnp.min(ex.free_gap) < gap_tolerance, used == 0)
    g = jnp.where(bad, jnp.nan, g)
    if shots is None:
        return GradientEstimate(
            g, jnp.mean(ex.loss), diagnostics=diagnostics, observables=observables
        )
    return GradientEstimate(
        g,
        jnp.mean(ex.loss),
        stderr=jnp.sqrt(jnp.sum(jnp.where(keep, ex.var, 0.0), axis=0)) / jnp.maximum(used, 1),
        loss_stderr=jnp.sqrt(jnp.sum(ex.loss_var)) / batch,
        diagnostics={**diagnostics, "shots": jnp.asarray(shots)},
        observables=observables,
    )

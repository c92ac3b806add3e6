"""Which eigenstate eigenstate EP measures at ``H ± βĈ``, and whether its nudge is small enough.

Two ways to choose the nudged state (``EigenstateEP(follow=...)``):

* ``"adiabatic"``: the eigenvector with the largest overlap with the free eigenstate, i.e.
  level ``k`` continued along the nudge even where it changes index (a crossing);
* ``"index"``: level ``k`` of ``H ± βĈ`` itself, counted from the bottom (for ``k = 0`` the
  nudged ground state, which is what an experiment that cools the nudged system prepares).

Either way the estimate is ``Σ_s ∂c_s/∂θ [⟨P_s⟩_+ − ⟨P_s⟩_−]/(2β)``, by Hellmann–Feynman the θ
derivative of ``[E_+ − E_−]/(2β)`` for the chosen eigenvalues ``E_±``. Each example gets an
outcome: *followed* (the chosen state is level ``k`` and has the largest overlap with the free
one, at every nudged point), *crossed* (the two differ somewhere: the tracked state changed
index, or level ``k`` of ``H ± βĈ`` is not the continuation of the free one) or *refused*
(a nudged gap below ``gap_tolerance``, or, when following adiabatically, no nudged eigenstate
with overlap ≥ 1/2: the level was lost). Refused examples are left out of the batch gradient.

The nudge is small when ``β‖δĈ‖`` is small against the gap ``Δ`` of level ``k``. With
``‖δĈ‖ ≤ Σ_k |γ_k|`` over the non-identity strings of ``Ĉ = Σ_k γ_k Q_k``, the ratio
``r = β Σ_k |γ_k| / Δ`` bounds the mixing; in a two-level system the symmetric difference
returns ``1/√(1 + 4r²)`` of the derivative (r = 5: 90 % off; r = 0.1: 2 %).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum import _kernels as K

__all__ = ["OUTCOMES", "NudgeStrengthWarning"]

FOLLOW_MODES = ("adiabatic", "index")
OUTCOMES = ("followed", "crossed", "refused")  # the codes 0, 1, 2 of diagnostics["outcome"]
MIN_OVERLAP = 0.5


class NudgeStrengthWarning(UserWarning):
    """``β‖Ĉ‖`` is not small against the gap of the level: the EP gradient may be biased."""


def eigh(model, coefficients: jax.Array):
    return jnp.linalg.eigh(K.assemble(model.table, coefficients), symmetrize_input=False)


def gap_at(energies: jax.Array, index) -> jax.Array:
    """Distance from level ``index`` to its nearest neighbour (inf for a 1-level system)."""
    last = energies.shape[0] - 1
    below = energies[index] - energies[jnp.maximum(index - 1, 0)]
    above = energies[jnp.minimum(index + 1, last)] - energies[index]
    below = jnp.where(index > 0, below, jnp.inf)
    above = jnp.where(index < last, above, jnp.inf)
    return jnp.minimum(below, above)


def follow_dense(model, coefficients, reference, level: int, by_index: bool):
    """The nudged state: ``(state, energy, overlap, gap, crossed)`` (see the module docstring)."""
    energies, vectors = eigh(model, coefficients)
    overlaps = jnp.abs(jnp.conj(vectors).T @ reference) ** 2
    best = jnp.argmax(overlaps)
    j = level if by_index else best
    return vectors[:, j], energies[j], overlaps[j], gap_at(energies, j), best != level


def follow_host(energies: np.ndarray, vectors: np.ndarray, reference, level: int, by_index):
    """Host twin of :func:`follow_dense` for the lowest ``len(energies)`` levels (Lanczos).

    Returns ``(j, overlap, gap, crossed)``; the level above the last computed one is unknown,
    so the gap above ``j`` is trusted only for ``j < len(energies) − 1``.
    """
    overlaps = np.abs(vectors.conj().T @ reference) ** 2
    best = int(np.argmax(overlaps))
    j = level if by_index else best
    padded = np.concatenate([[-np.inf], energies, [np.inf]])
    upper = padded[j + 2] - padded[j + 1] if j + 1 < len(energies) else np.inf
    return j, float(overlaps[j]), min(upper, padded[j + 1] - padded[j]), best != level


def nudge_norm(model, gamma: jax.Array) -> jax.Array:
    """``Σ_k |γ_k|`` over the non-identity output strings ``Q_k``: a bound on ``‖δĈ‖``."""
    moving = np.array([p.x_mask or p.z_mask for p in model.output_strings], dtype=bool)
    return jnp.sum(jnp.where(moving, jnp.abs(gamma), 0.0))


def nudge_ratio(model, beta, gamma: jax.Array, gap: jax.Array) -> jax.Array:
    """``r = β Σ_k |γ_k| / Δ`` over the non-identity output strings ``Q_k``."""
    return beta * nudge_norm(model, gamma) / gap


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def check_eigen_estimate(estimate, level: int, gap_tolerance: float, max_ratio: float) -> None:
    """Raise for a degenerate free level or a batch with every example refused; warn when
    ``β‖Ĉ‖/Δ > max_ratio``. Does nothing under a user's ``jit`` (the values are traced)."""
    d = estimate.diagnostics
    values = (d["min_free_gap"], d["outcome"], d["max_nudge_ratio"])
    if not all(_is_concrete(v) for v in values):
        return
    free_gap, outcome, ratio = float(values[0]), np.asarray(values[1]), float(values[2])
    if not free_gap >= gap_tolerance:
        where = int(np.argmin(np.asarray(d["free_gap"])))
        raise ValueError(
            f"level {level} is degenerate or nearly so: its gap to a neighbouring level is "
            f"{free_gap:.3g} (example {where} of the batch), below gap_tolerance="
            f"{gap_tolerance:g}; the eigenstate and its gradient are not defined there. Choose "
            f"a non-degenerate level, break the symmetry (e.g. a small field), or lower "
            f"gap_tolerance if that gap is real"
        )
    if np.all(outcome == OUTCOMES.index("refused")):
        raise ValueError(
            f"level {level} could not be followed along the nudge for any example of the batch: "
            f"the best overlap with the free eigenstate is {float(d['min_overlap']):.3g} (below "
            f"{MIN_OVERLAP} loses the level) or a nudged gap is {float(d['min_gap']):.3g} (below "
            f"gap_tolerance={gap_tolerance:g}); use a smaller beta, or follow='index' to measure "
            f"level {level} of H ± βĈ itself"
        )
    if ratio > max_ratio:
        where = int(np.argmax(np.asarray(d["nudge_ratio"])))
        bias = 1.0 - 1.0 / np.sqrt(1.0 + 4.0 * ratio**2)
        warnings.warn(
            f"the nudge is not small against the gap: β‖Ĉ‖/Δ = {ratio:.3g} for example {where} "
            f"(gap Δ = {float(np.asarray(d['free_gap'])[where]):.3g}), above max_nudge_ratio="
            f"{max_ratio:g}; in a two-level system that biases the gradient by up to "
            f"{bias:.0%}. Use a smaller beta (the bias falls like β²)",
            NudgeStrengthWarning,
            stacklevel=3,
        )

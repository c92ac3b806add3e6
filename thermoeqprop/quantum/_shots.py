"""Finite-shot measurement of Pauli strings, one product-basis setting per commuting group.

Strings are partitioned into qubit-wise commuting groups (all ``X_i X_j`` together, all ``Z``
strings together, …). For each group the state is rotated into the group's basis (H for X,
H S† for Y), ``N`` bit strings are drawn from the Born probabilities, and each string's
outcome per shot is the product of ±1 over its support. A quantity linear in the strings,
``A = Σ_s W_s ⟨P_s⟩``, is estimated per shot within each group (so covariances between strings
read from the same shots are counted) and groups are independent, hence

``Â = Σ_g mean_shots(Σ_{s∈g} W_s o_s)``, ``Var Â = Σ_g var_shots(Σ_{s∈g} W_s o_s) / N``.

The Gaussian model (:func:`gaussian_estimate`) is the common shortcut: each string is read
independently as ``N(⟨P_s⟩, Var(P_s)/N)`` with ``Var(P_s) = 1 − ⟨P_s⟩²`` (``P_s² = 1``), so
``Â ~ N(A, Σ_s W_s² (1 − ⟨P_s⟩²)/N)``: no basis settings, no covariances between strings.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.quantum._pauli import PauliString, qubitwise_commuting_groups

__all__ = [
    "SHOT_MODELS",
    "MeasurementPlan",
    "gaussian_estimate",
    "measurement_plan",
    "sample_outcomes",
    "shot_estimate",
]

SHOT_MODELS = ("projective", "gaussian")

_HADAMARD = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
_ROTATIONS = {"X": _HADAMARD, "Y": _HADAMARD @ np.diag([1.0, -1.0j])}


@dataclasses.dataclass(frozen=True, eq=False)
class MeasurementPlan:
    """Groups of qubit-wise commuting strings with their basis settings.

    Attributes:
        strings: The measured strings (S).
        groups: Index tuples into ``strings``, one per basis setting.
        bases: Per group, one letter per qubit (``"X"``, ``"Y"`` or ``"Z"``).
        support_masks: Per string, the bit mask of its support (outcome = parity over it).
    """

    strings: tuple[PauliString, ...]
    groups: tuple[tuple[int, ...], ...]
    bases: tuple[str, ...]
    support_masks: tuple[int, ...]

    @property
    def num_settings(self) -> int:
        return len(self.groups)


@functools.lru_cache(maxsize=64)
def measurement_plan(strings: tuple[PauliString, ...]) -> MeasurementPlan:
    """Greedy qubit-wise commuting grouping of ``strings`` (see module docstring).

    Example:
        >>> from thermoeqprop.quantum import pauli
        >>> plan = measurement_plan(tuple(pauli(s) for s in ["XX", "ZI", "IZ", "ZZ"]))
        >>> plan.groups, plan.bases
        (((0,), (1, 2, 3)), ('XX', 'ZZ'))
    """
    groups = qubitwise_commuting_groups(strings)
    bases = []
    for g in groups:
        letters = ["Z"] * strings[0].num_qubits
        for i in g:
            for q, c in enumerate(strings[i].label):
                if c != "I":
                    letters[q] = c
        bases.append("".join(letters))
    n = strings[0].num_qubits
    masks = tuple(sum(1 << (n - 1 - q) for q in p.support) for p in strings)
    return MeasurementPlan(strings, tuple(tuple(g) for g in groups), tuple(bases), masks)


def _rotate(vectors: jax.Array, basis: str) -> jax.Array:
    """Apply the single-qubit basis changes of ``basis`` to the columns of (d, m)."""
    n = len(basis)
    m = vectors.shape[1]
    out = vectors.astype(jnp.complex128).reshape((2,) * n + (m,))
    for q, letter in enumerate(basis):
        if letter in _ROTATIONS:
            g = jnp.asarray(_ROTATIONS[letter])
            out = jnp.moveaxis(jnp.tensordot(g, out, axes=([1], [q])), 0, q)
    return out.reshape(1 << n, m)


def sample_outcomes(
    plan: MeasurementPlan,
    vectors: jax.Array,
    weights: jax.Array,
    shots: int,
    rng_key: jax.Array,
) -> list[jax.Array]:
    """Draw ``shots`` outcomes per basis setting for the state ``Σ_m w_m |u_m⟩⟨u_m|``.

    Args:
        plan: The :class:`MeasurementPlan`.
        vectors: Orthonormal columns ``u_m``, shape (d, m); a pure state is (d, 1).
        weights: Probabilities ``w_m``, shape (m,), summing to 1.
        shots: Number of shots ``N`` per basis setting.
        rng_key: PRNG key; split once per setting.

    Returns:
        One array per group, shape (N, len(group)), entries ±1.
    """
    keys = jax.random.split(rng_key, plan.num_settings)
    out = []
    for key, group, basis in zip(keys, plan.groups, plan.bases, strict=True):
        rotated = _rotate(vectors, basis)
        probs = jnp.abs(rotated) ** 2 @ weights
        cdf = jnp.cumsum(probs)
        u = jax.random.uniform(key, (shots,), jnp.float64) * cdf[-1]
        idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, probs.shape[0] - 1)
        masks = jnp.asarray([plan.support_masks[i] for i in group], dtype=idx.dtype)
        parity = jax.lax.population_count(idx[:, None] & masks[None, :]) & 1
        out.append(1.0 - 2.0 * parity.astype(jnp.float64))
    return out


def shot_estimate(
    plan: MeasurementPlan, outcomes: list[jax.Array], weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Estimate ``A_k = Σ_s W_sk ⟨P_s⟩`` and the variance of the estimate.

    Args:
        plan: The plan the outcomes were drawn with.
        outcomes: Output of :func:`sample_outcomes`.
        weights: ``W``, shape (S, K).

    Returns:
        ``(mean (K,), variance (K,))`` where the variance is that of the estimator (sample
        variance over shots divided by N, summed over independent settings).
    """
    mean = jnp.zeros(weights.shape[1])
    var = jnp.zeros(weights.shape[1])
    for group, o in zip(plan.groups, outcomes, strict=True):
        per_shot = o @ weights[jnp.asarray(group)]
        mean = mean + jnp.mean(per_shot, axis=0)
        var = var + jnp.var(per_shot, axis=0, ddof=1) / o.shape[0]
    return mean, var


def gaussian_estimate(
    expectations: jax.Array, weights: jax.Array, shots: int, rng_key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Estimate ``A_k = Σ_s W_sk ⟨P_s⟩`` with independent Gaussian shot noise per string.

    Args:
        expectations: Exact ``⟨P_s⟩`` of the strings, shape (S,).
        weights: ``W``, shape (S, K).
        shots: Shots ``N`` per string.
        rng_key: PRNG key (one normal draw per string).

    Returns:
        ``(mean (K,), variance (K,))``: ``Σ_s W_sk (⟨P_s⟩ + σ_s z_s)`` with ``z_s ~ N(0, 1)``
        and ``σ_s² = (1 − ⟨P_s⟩²)/N``, and the variance of that estimate,
        ``Σ_s W_sk² σ_s²`` (the model's, at the exact expectations).

    Example:
        >>> mean, var = gaussian_estimate(jnp.array([1.0, 0.0]), jnp.eye(2), 100, jax.random.key(0))
        >>> float(mean[0]), float(var[0]), float(var[1])  # a ±1 eigenstate has no noise
        (1.0, 0.0, 0.01)
    """
    sigma2 = jnp.maximum(1.0 - expectations**2, 0.0) / shots
    noise = jnp.sqrt(sigma2) * jax.random.normal(rng_key, expectations.shape, jnp.float64)
    return weights.T @ (expectations + noise), (weights**2).T @ sigma2

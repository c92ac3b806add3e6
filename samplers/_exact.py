"""Exact references: enumeration of small ±1 spin systems and the Gaussian closed form.

Both are pure JAX and differentiable in ``context``/``A``/``b`` and the temperature, so a
caller can ``jax.grad`` an exact thermal expectation
(docs/mathematics.md#exact-thermal-references).

Spin enumeration orders the ``2^n`` states by an integer ``k``: unit ``i`` is ``+1`` when bit
``i`` of ``k`` (least significant bit = unit 0) is set, else ``−1``. It runs in two passes over
chunks of states (energies and ``log Z`` by logsumexp first, then weighted moments), so memory
is ``O(2^n)`` floats for the energies plus ``O(chunk_size · n)``, never ``O(2^n · n)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import EnergyFn, check_temperature, is_concrete

__all__ = [
    "GaussianReference",
    "SpinReference",
    "enumerate_spins",
    "gaussian_reference",
    "spin_log_probabilities",
    "spin_states",
]

MAX_ENUMERATED_SPINS = 24


class SpinReference(NamedTuple):
    """Exact thermal averages of a ±1 spin system, ``p(s) = exp(−E(s)/T) / Z``.

    Attributes:
        log_partition: ``log Z``, shape ``()``.
        free_energy: ``−T log Z``, shape ``()``.
        mean: ``⟨s_i⟩``, shape ``(n,)``.
        correlation: ``⟨s_i s_j⟩`` (raw second moment; diagonal 1), shape ``(n, n)``.
        mean_energy: ``⟨E⟩``, shape ``()``.
        energy_variance: ``⟨E²⟩ − ⟨E⟩²``, shape ``()`` (heat capacity times ``T²``).
        expectation: ``⟨f(s)⟩`` for the ``observable`` f, shaped like ``f``'s output; ``None``
            when no observable was given.
    """

    log_partition: jax.Array
    free_energy: jax.Array
    mean: jax.Array
    correlation: jax.Array
    mean_energy: jax.Array
    energy_variance: jax.Array
    expectation: Any

    @property
    def covariance(self) -> jax.Array:
        """Connected correlation ``⟨s_i s_j⟩ − ⟨s_i⟩⟨s_j⟩``, shape ``(n, n)``."""
        return self.correlation - jnp.outer(self.mean, self.mean)


class GaussianReference(NamedTuple):
    """Exact Gibbs distribution of ``E(s) = ½ sᵀ A s − bᵀ s`` at temperature T.

    Attributes:
        mean: ``A⁻¹ b``, shape ``(n,)``.
        covariance: ``T A⁻¹``, shape ``(n, n)``.
        log_partition: ``log Z = bᵀA⁻¹b / (2T) + (n/2) log(2πT) − ½ log det A``.
        free_energy: ``−T log Z``.
        mean_energy: ``⟨E⟩ = nT/2 − ½ bᵀA⁻¹b``.
    """

    mean: jax.Array
    covariance: jax.Array
    log_partition: jax.Array
    free_energy: jax.Array
    mean_energy: jax.Array


def spin_states(indices: jax.Array, num_spins: int, dtype: Any = None) -> jax.Array:
    """Spin configurations of state indices: unit ``i`` is ``+1`` iff bit ``i`` is set.

    Args:
        indices: Integer array of shape ``(m,)``, values in ``[0, 2^n)``.
        num_spins: ``n``.
        dtype: Floating dtype of the result (default: JAX's default float).

    Returns:
        Array of shape ``(m, n)`` of ±1.

    Example:
        >>> spin_states(jnp.arange(4), 2).tolist()
        [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    bits = (indices[:, None] >> jnp.arange(num_spins)) & 1
    return (2 * bits - 1).astype(dtype)


def _check_num_spins(num_spins: Any) -> int:
    if (
        isinstance(num_spins, bool)
        or not isinstance(num_spins, int | np.integer)
        or not 1 <= num_spins <= MAX_ENUMERATED_SPINS
    ):
        raise ValueError(
            f"num_spins must be an integer in 1..{MAX_ENUMERATED_SPINS} for enumeration "
            f"(2^n states), got {num_spins!r}; sample larger systems instead."
        )
    return int(num_spins)


def _chunking(num_spins: int, chunk_size: int) -> tuple[int, int]:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    size = min(1 << num_spins, 1 << (chunk_size.bit_length() - 1))  # a power of two
    return size, (1 << num_spins) // size


def _energies(energy_fn, num_spins, size, num_chunks, context, dtype):
    def chunk(c):
        s = spin_states(c * size + jnp.arange(size), num_spins, dtype)
        return jax.vmap(energy_fn, in_axes=(0, None))(s, context)

    return jax.lax.map(chunk, jnp.arange(num_chunks)).reshape(-1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _enumerate(energy_fn, observable, num_spins, chunk_size, context, temperature):
    dtype = jnp.result_type(temperature, float)
    size, num_chunks = _chunking(num_spins, chunk_size)
    energies = _energies(energy_fn, num_spins, size, num_chunks, context, dtype)
    log_partition = jax.nn.logsumexp(-energies / temperature)
    log_p = (-energies / temperature - log_partition).reshape(num_chunks, size)
    energies = energies.reshape(num_chunks, size)

    def accumulate(totals, c):
        s = spin_states(c * size + jnp.arange(size), num_spins, dtype)
        p = jnp.exp(log_p[c])
        e = energies[c]
        moments = (p @ s, (s * p[:, None]).T @ s, p @ e, p @ (e * e))
        if observable is not None:
            values = jax.vmap(observable)(s)
            moments = (*moments, jax.tree_util.tree_map(lambda v: jnp.tensordot(p, v, 1), values))
        return jax.tree_util.tree_map(jnp.add, totals, moments), None

    zeros = (
        jnp.zeros(num_spins, dtype),
        jnp.zeros((num_spins, num_spins), dtype),
        jnp.zeros((), dtype),
        jnp.zeros((), dtype),
    )
    if observable is not None:
        shapes = jax.eval_shape(observable, jax.ShapeDtypeStruct((num_spins,), dtype))
        zeros = (*zeros, jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, dtype), shapes))
    totals, _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_chunks))
    mean, correlation, mean_energy, energy_sq = totals[:4]
    return SpinReference(
        log_partition=log_partition,
        free_energy=-temperature * log_partition,
        mean=mean,
        correlation=correlation,
        mean_energy=mean_energy,
        energy_variance=energy_sq - mean_energy**2,
        expectation=totals[4] if observable is not None else None,
    )


def enumerate_spins(
    energy_fn: EnergyFn,
    num_spins: int,
    context: Any = (),
    temperature: Any = 1.0,
    *,
    observable: Callable[[jax.Array], Any] | None = None,
    chunk_size: int = 4096,
) -> SpinReference:
    """Exact Gibbs averages of ``n`` spins ±1 by enumerating all ``2^n`` states.

    ``p(s) = exp(−E(s)/T − log Z)``, ``log Z`` by logsumexp. Compiled with ``jax.jit``
    (static: ``energy_fn``, ``num_spins``, ``observable``, ``chunk_size``); differentiable in
    ``context`` and ``temperature``. Time ``O(2^n)`` energy evaluations; memory
    ``O(2^n + chunk_size · n)``.

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar`` for ``position`` of shape ``(n,)``.
        num_spins: ``n``, at most 24.
        context: The energy's second argument (one target).
        temperature: ``T > 0``.
        observable: Optional ``f(position) -> pytree of arrays``; its exact mean is returned in
            ``expectation``.
        chunk_size: States per chunk (rounded down to a power of two).

    Returns:
        A :class:`SpinReference`.

    Example:
        >>> ref = enumerate_spins(lambda s, c: -s[0] * s[1], 2, temperature=1.0)
        >>> round(float(ref.correlation[0, 1]), 6) == round(float(jnp.tanh(1.0)), 6)
        True
    """
    num_spins = _check_num_spins(num_spins)
    if is_concrete(temperature):
        check_temperature(temperature)
    if observable is not None and not callable(observable):
        raise ValueError(f"observable must be callable as f(position), got {observable!r}.")
    return _enumerate(
        energy_fn,
        observable,
        num_spins,
        chunk_size,
        context,
        jnp.asarray(temperature, dtype=jnp.result_type(float)),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _log_probabilities(energy_fn, num_spins, chunk_size, context, temperature):
    size, num_chunks = _chunking(num_spins, chunk_size)
    energies = _energies(energy_fn, num_spins, size, num_chunks, context, temperature.dtype)
    return jax.nn.log_softmax(-energies / temperature)


def spin_log_probabilities(
    energy_fn: EnergyFn,
    num_spins: int,
    context: Any = (),
    temperature: Any = 1.0,
    *,
    chunk_size: int = 4096,
) -> jax.Array:
    """``log p(s_k)`` of every state ``k`` (ordering of :func:`spin_states`), shape ``(2^n,)``.

    Compiled with ``jax.jit`` like :func:`enumerate_spins`.

    Example:
        >>> lp = spin_log_probabilities(lambda s, c: -s[0], 1, temperature=1.0)
        >>> [round(float(v), 4) for v in jnp.exp(lp)]
        [0.1192, 0.8808]
    """
    num_spins = _check_num_spins(num_spins)
    if is_concrete(temperature):
        check_temperature(temperature)
    return _log_probabilities(
        energy_fn,
        num_spins,
        chunk_size,
        context,
        jnp.asarray(temperature, dtype=jnp.result_type(float)),
    )


def gaussian_reference(matrix: Any, vector: Any, temperature: Any = 1.0) -> GaussianReference:
    """Closed-form Gibbs distribution of ``E(s) = ½ sᵀ A s − bᵀ s`` (A symmetric positive definite).

    ``p(s) ∝ exp(−E(s)/T)`` is Gaussian with mean ``A⁻¹ b`` and covariance ``T A⁻¹``;
    ``F = −T log Z = −½ bᵀA⁻¹b − (nT/2) log(2πT) + (T/2) log det A``. Pure JAX (Cholesky),
    differentiable; A is checked to be symmetric positive definite when concrete.

    Args:
        matrix: ``A``, shape ``(n, n)``.
        vector: ``b``, shape ``(n,)``.
        temperature: ``T > 0``.

    Returns:
        A :class:`GaussianReference`.

    Example:
        >>> ref = gaussian_reference(jnp.array([[2.0]]), jnp.array([1.0]), 0.5)
        >>> [round(float(ref.mean[0]), 12), round(float(ref.covariance[0, 0]), 12)]
        [0.5, 0.25]
    """
    a = jnp.asarray(matrix)
    b = jnp.asarray(vector)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or b.shape != a.shape[:1]:
        raise ValueError(
            f"need A of shape (n, n) and b of shape (n,), got {a.shape} and {b.shape}."
        )
    if is_concrete(temperature):
        check_temperature(temperature)
    if is_concrete(a):
        a_np = np.asarray(a, dtype=float)
        if not np.allclose(a_np, a_np.T, rtol=1e-10, atol=1e-12 * np.max(np.abs(a_np))):
            raise ValueError(
                f"A must be symmetric; got max |A − Aᵀ| = {float(np.max(np.abs(a_np - a_np.T)))!r}."
            )
        eigenvalues = np.linalg.eigvalsh(a_np)
        if eigenvalues[0] <= 0:
            raise ValueError(
                "A must be positive definite; its smallest eigenvalue is "
                f"{float(eigenvalues[0])!r}."
            )
    temperature = jnp.asarray(temperature, dtype=jnp.result_type(a, float))
    n = a.shape[0]
    cholesky = jnp.linalg.cholesky(a)
    mean = jax.scipy.linalg.cho_solve((cholesky, True), b)
    inverse = jax.scipy.linalg.cho_solve((cholesky, True), jnp.eye(n, dtype=cholesky.dtype))
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(cholesky)))
    b_ainv_b = b @ mean
    log_partition = (
        0.5 * b_ainv_b / temperature + 0.5 * n * jnp.log(2 * jnp.pi * temperature) - 0.5 * log_det
    )
    return GaussianReference(
        mean=mean,
        covariance=temperature * inverse,
        log_partition=log_partition,
        free_energy=-temperature * log_partition,
        mean_energy=0.5 * n * temperature - 0.5 * b_ainv_b,
    )

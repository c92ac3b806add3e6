"""Exact references for the quantum estimators, independent of their code paths.

* :func:`linear_response_gradient`: first-order perturbation theory (docs/mathematics.md),
  ``|dψ⟩ = (E_k − H)⁺ δĈ|ψ_k⟩`` and ``dL/dc_s = 2 Re ⟨ψ_k|P_s|dψ⟩``; dense by
  eigendecomposition, sparse by MINRES on the complement of ``|ψ_k⟩``.
* :func:`autodiff_eigenstate_loss` / :func:`autodiff_thermal_loss`: the losses as JAX
  functions of θ, differentiated by ``jax.grad`` (through ``eigh``, and through ``expm`` for the
  density matrix, so the thermal reference shares no eigen-decomposition code with the
  Kubo–Mori estimator).
* :func:`kubo_mori_covariance` and :func:`symmetrized_covariance` of dense matrices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._sparse import lowest_levels, sparse_from_table, state_expectations_np

__all__ = [
    "autodiff_eigenstate_loss",
    "autodiff_thermal_loss",
    "kubo_mori_covariance",
    "linear_response_gradient",
    "symmetrized_covariance",
]


def _bilinear(table: K.StringTable, left, right):
    """``⟨l|P_s|r⟩`` for every string, complex, shape (S,)."""
    return jnp.sum(jnp.conj(left[table.flips]) * jnp.asarray(table.phases) * right[None, :], -1)


def linear_response_gradient(
    model: QuantumNetwork,
    params,
    x,
    targets,
    level: int = 0,
    solver: str = "dense",
    rtol: float = 1e-13,
) -> tuple[jax.Array, jax.Array]:
    """Exact ``dL/dθ`` in eigenstate ``level`` by linear response (docs/mathematics.md).

    Args:
        model: The network.
        params: Parameters (num_params,).
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        level: Eigenstate index ``k``; must be non-degenerate.
        solver: ``"dense"`` (pseudo-inverse from a full ``eigh``) or ``"sparse"`` (Lanczos for
            ``|ψ_k⟩``, then MINRES for ``(H − E_k)|dψ⟩ = −Q δĈ|ψ_k⟩`` with ``Q`` the projector
            on the complement of ``|ψ_k⟩``).
        rtol: MINRES relative tolerance.

    Returns:
        ``(grad (num_params,), loss)`` averaged over the batch.

    Example:
        >>> from thermoeqprop.quantum import classifier_network
        >>> net = classifier_network(num_qubits=3, num_inputs=2)
        >>> p = net.init_params(jax.random.key(0))
        >>> g, loss = linear_response_gradient(net, p, jnp.ones((1, 2)), -jnp.ones((1, 1)))
        >>> g.shape
        (18,)
    """
    params = jnp.asarray(params)
    per_string, losses = [], []
    for xi, yi in zip(np.asarray(x), np.asarray(targets), strict=True):
        c = model.coefficients(params, jnp.asarray(xi))
        if solver == "dense":
            g, loss = _dense_linear_response(model, c, jnp.asarray(yi), level)
        elif solver == "sparse":
            g, loss = _sparse_linear_response(model, np.asarray(c), jnp.asarray(yi), level, rtol)
        else:
            raise ValueError(f"solver must be 'dense' or 'sparse', got {solver!r}")
        per_string.append(g)
        losses.append(loss)
    grad = model.chain_to_params(params, jnp.asarray(x), jnp.stack(per_string))
    return grad, jnp.mean(jnp.stack(losses))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _dense_linear_response(model, c, y, level):
    energies, vectors = jnp.linalg.eigh(K.assemble(model.table, c))
    psi = vectors[:, level]
    e_q = K.state_expectations(model.output_table, psi)
    loss, _, gamma = model.cost_string_coefficients(e_q, y)
    cost = K.assemble(model.table, model.embed_cost(gamma))
    overlaps = jnp.conj(vectors).T @ (cost @ psi)
    denom = energies[level] - energies
    coefficients = jnp.where(
        jnp.arange(len(energies)) == level, 0.0, overlaps / jnp.where(denom == 0, 1.0, denom)
    )
    dpsi = vectors @ coefficients
    g = 2.0 * jnp.real(_bilinear(model.trainable_table, psi, dpsi))
    return g, loss


def _sparse_linear_response(model, c, y, level, rtol):
    h = sparse_from_table(model.table, c)
    energies, vectors = lowest_levels(h, level + 2)
    psi, e_k = vectors[:, level], energies[level]
    e_q = state_expectations_np(model.output_table, psi)
    loss, _, gamma = model.cost_string_coefficients(jnp.asarray(e_q), y)
    cost = sparse_from_table(model.table, np.asarray(model.embed_cost(gamma)))
    rhs = cost @ psi
    rhs = rhs - psi * (psi.conj() @ rhs)

    def project(v):
        return v - psi * (psi.conj() @ v)

    d = h.shape[0]
    op = scipy.sparse.linalg.LinearOperator(
        (d, d), matvec=lambda v: project(h @ project(v) - e_k * project(v)), dtype=h.dtype
    )
    # (E_k − H) dψ = Q δĈ ψ  ⇔  (H − E_k) dψ = −rhs on the complement of ψ.
    dpsi, info = scipy.sparse.linalg.minres(op, -rhs, rtol=rtol, maxiter=20 * d)
    if info != 0:
        raise RuntimeError(f"MINRES did not converge (info={info}); the level may be degenerate")
    dpsi = project(dpsi)
    table = model.trainable_table
    g = 2.0 * np.real(np.sum(np.conj(psi[table.flips]) * table.phases * dpsi[None, :], axis=-1))
    return jnp.asarray(g), loss


def autodiff_eigenstate_loss(model: QuantumNetwork, level: int = 0):
    """``L(θ; x, y)``: mean cost in eigenstate ``level``, differentiable through ``eigh``.

    Returns:
        A function ``(params, x (batch, num_inputs), targets) → scalar`` for ``jax.grad``.
    """

    def loss(params, x, targets):
        def one(xi, yi):
            _, vectors = jnp.linalg.eigh(K.assemble(model.table, model.coefficients(params, xi)))
            e_q = K.state_expectations(model.output_table, vectors[:, level])
            return model.cost(jnp.asarray(model.output_weights) @ e_q, yi)

        return jnp.mean(jax.vmap(one)(x, targets))

    return loss


def autodiff_thermal_loss(model: QuantumNetwork, temperature: float):
    """``L_T(θ; x, y) = ℓ(tr(ρ B))`` with ``ρ = expm(−H/T)/Z``, differentiable by ``jax.grad``.

    The matrix exponential is shifted by the (non-differentiated) lowest eigenvalue, which
    cancels in ``ρ`` and prevents overflow.
    """

    def loss(params, x, targets):
        def one(xi, yi):
            h = K.assemble(model.table, model.coefficients(params, xi))
            shift = jax.lax.stop_gradient(jnp.linalg.eigvalsh(h)[0])
            w = jax.scipy.linalg.expm(-(h - shift * jnp.eye(h.shape[0])) / temperature)
            rho = w / jnp.real(jnp.trace(w))
            e_q = K.traces(model.output_table, rho)
            return model.cost(jnp.asarray(model.output_weights) @ e_q, yi)

        return jnp.mean(jax.vmap(one)(x, targets))

    return loss


def kubo_mori_covariance(hamiltonian, a, b, temperature: float) -> jax.Array:
    """``⟨A ; B⟩_KM = ∫_0^1 tr(ρ^{1−u} δA ρ^u δB) du`` for dense Hermitian matrices.

    Evaluated in the eigenbasis of H as ``Σ_mn Ã_mn B̃_nm Λ(p_m, p_n)``.

    Example:
        >>> h = jnp.diag(jnp.array([0.0, 1.0]))
        >>> z = jnp.diag(jnp.array([1.0, -1.0]))
        >>> float(kubo_mori_covariance(h, z, z, 1.0))  # commuting: the ordinary variance
        ... # doctest: +ELLIPSIS
        0.78644...
    """
    energies, vectors = jnp.linalg.eigh(hamiltonian)
    log_p = K.thermal_log_weights(energies, temperature)
    p = jnp.exp(log_p)
    at = jnp.conj(vectors).T @ a @ vectors
    bt = jnp.conj(vectors).T @ b @ vectors
    at = at - (jnp.real(jnp.diagonal(at)) @ p) * jnp.eye(len(p))
    bt = bt - (jnp.real(jnp.diagonal(bt)) @ p) * jnp.eye(len(p))
    return jnp.real(jnp.sum(at * bt.T * K.log_mean_weights(log_p)))


def symmetrized_covariance(hamiltonian, a, b, temperature: float) -> jax.Array:
    """``½⟨{δA, δB}⟩`` in the thermal state: NOT the response covariance unless A or B
    commutes with H (docs/mathematics.md#the-symmetrised-covariance-trap). Provided so
    tests can show the difference."""
    energies, vectors = jnp.linalg.eigh(hamiltonian)
    p = jnp.exp(K.thermal_log_weights(energies, temperature))
    rho = (vectors * p[None, :]) @ jnp.conj(vectors).T
    eye = jnp.eye(len(p))
    da = a - jnp.real(jnp.trace(rho @ a)) * eye
    db = b - jnp.real(jnp.trace(rho @ b)) * eye
    return 0.5 * jnp.real(jnp.trace(rho @ (da @ db + db @ da)))

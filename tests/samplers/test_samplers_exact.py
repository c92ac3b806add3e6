"""Exact references against independent computations (deterministic: no false failures).

Enumeration is checked against a brute-force NumPy sum over itertools.product, against the
closed form of an open Ising chain at n = 20 (2^20 states, the memory-aware path), and against
the free-energy identity ∂A/∂h = −⟨s⟩. The Gaussian closed form is checked against quadrature
on a grid and against ∂A/∂b = −⟨s⟩.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from samplers_testing import ising_energy, random_ising

import samplers


def brute_force(couplings, fields, temperature, observable):
    n = len(fields)
    states = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    energies = -0.5 * np.einsum("ki,ij,kj->k", states, couplings, states) - states @ fields
    weights = np.exp(-(energies - energies.min()) / temperature)
    z = weights.sum()
    p = weights / z
    log_z = np.log(z) - energies.min() / temperature
    return dict(
        log_partition=log_z,
        mean=p @ states,
        correlation=np.einsum("k,ki,kj->ij", p, states, states),
        mean_energy=p @ energies,
        energy_variance=p @ energies**2 - (p @ energies) ** 2,
        expectation=p @ np.array([observable(s) for s in states]),
    )


def observable(s):
    return s[0] * s[1] * s[2] + s[3]


@pytest.mark.parametrize("chunk_size", [4, 4096])
def test_enumeration_matches_brute_force(chunk_size):
    couplings, fields = random_ising(6, seed=3)
    temperature = 0.7
    ref = samplers.enumerate_spins(
        ising_energy,
        6,
        (couplings, fields),
        temperature,
        observable=observable,
        chunk_size=chunk_size,
    )
    expected = brute_force(couplings, fields, temperature, observable)
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(ref, name), value, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        ref.free_energy, -temperature * expected["log_partition"], rtol=1e-12
    )
    np.testing.assert_allclose(
        ref.covariance,
        expected["correlation"] - np.outer(expected["mean"], expected["mean"]),
        atol=1e-12,
    )
    log_p = samplers.spin_log_probabilities(ising_energy, 6, (couplings, fields), temperature)
    np.testing.assert_allclose(jnp.sum(jnp.exp(log_p)), 1.0, rtol=1e-12)
    states = samplers.spin_states(jnp.arange(64), 6)
    np.testing.assert_allclose(jnp.exp(log_p) @ states, expected["mean"], atol=1e-12)


def test_enumeration_of_twenty_spin_chain_matches_closed_form():
    n, coupling, temperature = 20, 0.8, 1.3

    def chain_energy(s, c):
        return -c * jnp.sum(s[1:] * s[:-1])

    ref = samplers.enumerate_spins(chain_energy, n, coupling, temperature, chunk_size=1 << 14)
    k = coupling / temperature
    np.testing.assert_allclose(
        ref.log_partition, np.log(2.0) + (n - 1) * np.log(2 * np.cosh(k)), rtol=1e-12
    )
    distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    np.testing.assert_allclose(ref.correlation, np.tanh(k) ** distance, atol=1e-10)
    np.testing.assert_allclose(ref.mean, 0.0, atol=1e-10)
    np.testing.assert_allclose(ref.mean_energy, -(n - 1) * coupling * np.tanh(k), rtol=1e-10)


def test_enumeration_is_differentiable_free_energy_identity():
    couplings, fields = random_ising(5, seed=4)
    temperature = 0.9

    def free_energy(h):
        return samplers.enumerate_spins(ising_energy, 5, (couplings, h), temperature).free_energy

    grad = jax.grad(free_energy)(jnp.asarray(fields))
    mean = samplers.enumerate_spins(ising_energy, 5, (couplings, fields), temperature).mean
    # ∂A/∂h = ⟨∂E/∂h⟩ = −⟨s⟩ (docs/mathematics.md#thermal-ep).
    np.testing.assert_allclose(grad, -mean, rtol=1e-10)


def test_gaussian_reference_matches_grid_quadrature():
    a = np.array([[1.5, 0.4], [0.4, 0.8]])
    b = np.array([0.3, -0.6])
    temperature = 0.6
    ref = samplers.gaussian_reference(a, b, temperature)
    grid = np.linspace(-8, 8, 801)
    dx = grid[1] - grid[0]
    x, y = np.meshgrid(grid, grid, indexing="ij")
    s = np.stack([x, y], -1)
    energy = 0.5 * np.einsum("...i,ij,...j->...", s, a, s) - s @ b
    w = np.exp(-energy / temperature)
    z = w.sum() * dx * dx
    p = w * dx * dx / z
    mean = np.einsum("ij,ijk->k", p, s)
    cov = np.einsum("ij,ijk,ijl->kl", p, s - mean, s - mean)
    np.testing.assert_allclose(ref.mean, mean, atol=1e-9)
    np.testing.assert_allclose(ref.covariance, cov, atol=1e-9)
    np.testing.assert_allclose(ref.log_partition, np.log(z), rtol=1e-9)
    np.testing.assert_allclose(ref.mean_energy, np.sum(p * energy), rtol=1e-9)
    grad_b = jax.grad(lambda v: samplers.gaussian_reference(a, v, temperature).free_energy)(b)
    np.testing.assert_allclose(grad_b, -ref.mean, rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: samplers.enumerate_spins(ising_energy, 30, None, 1.0), "num_spins"),
        (lambda: samplers.enumerate_spins(ising_energy, 3, None, 0.0), "temperature"),
        (lambda: samplers.gaussian_reference(np.eye(2), np.ones(2), -1.0), "temperature"),
        (lambda: samplers.gaussian_reference(np.diag([1.0, -1.0]), np.ones(2)), "positive"),
        (lambda: samplers.gaussian_reference(np.array([[1, 2], [0, 1.0]]), np.ones(2)), "symm"),
        (lambda: samplers.gaussian_reference(np.eye(2), np.ones(3)), "shape"),
    ],
)
def test_exact_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()

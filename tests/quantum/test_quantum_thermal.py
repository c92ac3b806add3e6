"""Quantum thermal EP (docs/mathematics.md#quantum-thermal-states) with exact density matrices.

References: autodiff of ``tr(ρ Ĉ)`` through ``expm`` (no shared eigendecomposition code), the
Kubo–Mori integral by quadrature, and the ground-state EP gradient as T → 0. Deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    EigenstateEP,
    ThermalEP,
    autodiff_thermal_loss,
    kubo_mori_covariance,
    logarithmic_mean,
    symmetrized_covariance,
)
from thermoeqprop.quantum import _kernels as K


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("system", ["system_a", "system_b"])
@pytest.mark.parametrize("temperature", [0.3, 2.0])
def test_kubo_mori_and_nudged_match_autodiff(system, temperature, request):
    model, params, x, targets = request.getfixturevalue(system)
    exact = jax.jit(jax.grad(autodiff_thermal_loss(model, temperature)))(params, x, targets)
    key = jax.random.key(0)
    km = ThermalEP(model, temperature=temperature)(params, x, targets, key)
    nudged = ThermalEP(model, temperature=temperature, method="nudged", beta=1e-5)(
        params, x, targets, key
    )
    assert rel(km.grad, exact) < 1e-9
    assert rel(nudged.grad, exact) < 1e-6
    assert float(km.loss) == pytest.approx(float(nudged.loss), rel=1e-12)
    loss = autodiff_thermal_loss(model, temperature)(params, x, targets)
    assert float(km.loss) == pytest.approx(float(loss), rel=1e-10)


def _trap_setup(system_a):
    model, params, x, targets = system_a
    h = model.hamiltonian.matrix(params, x[0])
    out_strings = model.output_strings
    cost = sum(-targets[0, j] * out_strings[j].to_dense() for j in range(model.num_outputs))
    return model, params, x[:1], targets[:1], h, jnp.asarray(cost)


def test_symmetrized_covariance_would_fail_on_the_same_case(system_a):
    """½⟨{δĈ, δP}⟩ is not the response when terms do not commute: the trap of
    docs/mathematics.md#the-symmetrised-covariance-trap."""
    model, params, x, targets, h, cost = _trap_setup(system_a)
    temperature = 0.5
    exact = jax.grad(autodiff_thermal_loss(model, temperature))(params, x, targets)
    jac = model.string_jacobian(params, x[0])
    strings = model.hamiltonian.trainable_strings
    km = jnp.stack(
        [kubo_mori_covariance(h, cost, jnp.asarray(p.to_dense()), temperature) for p in strings]
    )
    sym = jnp.stack(
        [symmetrized_covariance(h, cost, jnp.asarray(p.to_dense()), temperature) for p in strings]
    )
    via_km = -jac.T @ km / temperature
    via_sym = -jac.T @ sym / temperature
    assert rel(via_km, exact) < 1e-9
    assert rel(via_sym, exact) > 0.05  # tens of percent off: using it would fail the tests


def test_covariances_agree_when_the_cost_commutes_with_h():
    h = jnp.diag(jnp.array([0.0, 0.3, 1.1, 2.0]))
    cost = jnp.diag(jnp.array([1.0, -1.0, 0.5, 0.2]))
    p = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)))
    p = p + p.T
    assert float(kubo_mori_covariance(h, cost, p, 0.7)) == pytest.approx(
        float(symmetrized_covariance(h, cost, p, 0.7)), rel=1e-12
    )


def test_kubo_mori_formula_matches_the_duhamel_integral():
    """∫_0^1 tr(ρ^(1−u) δA ρ^u δB) du by Gauss–Legendre quadrature."""
    rng = np.random.default_rng(1)
    d = 6
    h = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
    h = (h + h.conj().T) / 2
    a = rng.normal(size=(d, d))
    a = a + a.T
    b = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
    b = b + b.conj().T
    t = 0.8
    e, u = np.linalg.eigh(h)
    p = np.exp(-(e - e[0]) / t)
    p /= p.sum()
    rho_pow = lambda s: (u * p**s) @ u.conj().T  # noqa: E731
    rho = rho_pow(1.0)
    da = a - np.trace(rho @ a).real * np.eye(d)
    db = b - np.trace(rho @ b).real * np.eye(d)
    nodes, weights = np.polynomial.legendre.leggauss(60)
    s = (nodes + 1) / 2
    integral = sum(
        w / 2 * np.trace(rho_pow(1 - si) @ da @ rho_pow(si) @ db).real
        for si, w in zip(s, weights, strict=True)
    )
    assert float(kubo_mori_covariance(jnp.asarray(h), jnp.asarray(a), jnp.asarray(b), t)) == (
        pytest.approx(integral, rel=1e-10)
    )


def test_low_temperature_meets_ground_state_ep(system_b):
    model, params, x, targets = system_b
    key = jax.random.key(0)
    ground = EigenstateEP(model, beta=1e-5)(params, x, targets, key)
    errors = []
    for temperature in (0.2, 0.05, 0.01):
        km = ThermalEP(model, temperature=temperature)(params, x, targets, key)
        errors.append(rel(km.grad, ground.grad))
    assert errors[0] > 1e-4  # at T = 0.2 excited levels still matter …
    assert errors[1] < errors[0]
    assert errors[2] < 1e-7  # … at T = 0.01 only the ground state does (gap ≫ T)


def test_logarithmic_mean_is_stable():
    a = jnp.array([1.0, 1.0, 1e-300, 2.0, 1.0 + 1e-12, 5e-324])
    b = jnp.array([1.0, jnp.e, 1e-300, 1.0, 1.0, 1e-200])
    lm = logarithmic_mean(a, b)
    assert bool(jnp.all(jnp.isfinite(lm)))
    assert float(lm[0]) == 1.0
    assert float(lm[1]) == pytest.approx(jnp.e - 1.0, rel=1e-14)
    assert float(lm[2]) == pytest.approx(1e-300, rel=1e-12)
    assert float(lm[3]) == pytest.approx(1.0 / np.log(2.0), rel=1e-14)
    assert float(lm[4]) == pytest.approx(1.0 + 0.5e-12, rel=1e-15)
    # From energies directly: log p as low as −1e5 (p underflows to 0) gives 0, never NaN.
    w = K.log_mean_weights(jnp.array([0.0, -1e-9, -50.0, -1e5]))
    assert bool(jnp.all(jnp.isfinite(w)))
    assert float(w[0, 1]) == pytest.approx(1.0 - 0.5e-9, rel=1e-14)
    assert float(w[0, 2]) == pytest.approx((1 - np.exp(-50.0)) / 50.0, rel=1e-14)
    assert float(w[3, 3]) == 0.0


def test_kubo_mori_at_very_low_temperature_is_finite(system_b):
    model, params, x, targets = system_b
    km = ThermalEP(model, temperature=1e-4)(params, x, targets, jax.random.key(0))
    assert bool(jnp.all(jnp.isfinite(km.grad)))


def test_factored_traces_match_full_product(system_a):
    """``tr(L U† P_s)`` read entry-wise (the fast Kubo–Mori path) equals the full product."""
    model = system_a[0]
    rng = np.random.default_rng(2)
    d = model.table.dimension
    left = jnp.asarray(rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d)))
    vectors = jnp.asarray(rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d)))
    table = model.trainable_table
    full = K.traces(table, left @ jnp.conj(vectors).T)
    np.testing.assert_allclose(K.factored_traces(table, left, vectors), full, atol=1e-12)
    # and the whole Kubo–Mori stage both ways
    log_p = jnp.asarray(np.log(rng.dirichlet(np.ones(d))))
    unitary = jnp.linalg.qr(vectors)[0]
    c = jnp.asarray(rng.normal(size=(d, d)))
    by_product, mean = K.kubo_mori_traces(table, unitary, log_p, c + c.T, factored=False)
    by_masks, mean_2 = K.kubo_mori_traces(table, unitary, log_p, c + c.T, factored=True)
    np.testing.assert_allclose(by_masks, by_product, atol=1e-12)
    assert float(jnp.max(jnp.abs(by_product))) > 1e-3 and float(mean) == float(mean_2)

"""Expectation values returned with the gradient (issue 13, item 3), against a direct
computation from the exact eigenvectors (``numpy.linalg.eigh``) and density matrices
(``scipy.linalg.expm``) of the dense matrices, sharing no code with the estimators."""

import jax
import numpy as np
import pytest
import scipy.linalg

from thermoeqprop.quantum import EigenstateEP, ThermalEP

TOL = {"rtol": 1e-9, "atol": 1e-11}


def dense_parts(model, params, xi, yi):
    """``H``, the output matrices ``B_j`` and ``Ĉ − const = Σ_j (−y_j) B_j``."""
    h = np.asarray(model.hamiltonian.matrix(params, xi))
    outputs = [o.to_dense() for o in model.outputs]
    return h, outputs, sum(-float(y) * b for b, y in zip(outputs, yi, strict=True))


def moments(state, outputs):
    mean = np.array([np.real(state.conj() @ b @ state) for b in outputs])
    second = np.array([np.real(state.conj() @ b @ b @ state) for b in outputs])
    return mean, second - mean**2


def signed_betas(beta, richardson):
    return [beta, -beta, beta / 2, -beta / 2] if richardson else [beta, -beta]


def direct_eigenstate(model, params, x, targets, level, beta, richardson):
    rows = []
    for xi, yi in zip(np.asarray(x), np.asarray(targets), strict=True):
        h, outputs, c = dense_parts(model, params, xi, yi)
        energies, vectors = np.linalg.eigh(h)
        psi = vectors[:, level]
        mean, variance = moments(psi, outputs)
        row = {"free_outputs": mean, "free_output_variances": variance}
        row["free_energy"] = energies[level]
        nudged = []
        for b in signed_betas(beta, richardson):
            e, v = np.linalg.eigh(h + b * c)
            j = int(np.argmax(np.abs(v.conj().T @ psi) ** 2))
            nudged.append((*moments(v[:, j], outputs), e[j]))
        row["nudged_outputs"] = np.array([m for m, _, _ in nudged])
        row["nudged_output_variances"] = np.array([v for _, v, _ in nudged])
        row["nudged_energies"] = np.array([e for _, _, e in nudged])
        rows.append(row)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


CASES = [("system_a", 0, True), ("system_a", 2, False), ("system_b", 1, True)]


@pytest.mark.parametrize(("system", "level", "richardson"), CASES)
def test_eigenstate_observables_match_the_eigenvectors(system, level, richardson, request):
    model, params, x, targets = request.getfixturevalue(system)
    beta = 0.05
    est = EigenstateEP(model, level=level, beta=beta, richardson=richardson)
    got = est(params, x, targets, jax.random.key(0)).observables
    want = direct_eigenstate(model, params, x, targets, level, beta, richardson)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, **TOL, err_msg=key)
    np.testing.assert_allclose(got["nudged_betas"], signed_betas(beta, richardson), rtol=1e-15)
    assert float(np.min(want["free_output_variances"])) > 1e-3  # not a trivial 0
    np.testing.assert_allclose(got["free_outputs"], est.predict(params, x), rtol=1e-12)
    # with shots the observables are still the exact ones of the simulated states
    shots = EigenstateEP(model, level=level, beta=beta, richardson=richardson, shots=50)
    noisy = shots(params, x, targets, jax.random.key(1)).observables
    for key, value in want.items():
        np.testing.assert_allclose(noisy[key], value, **TOL, err_msg=key)


def test_sparse_observables_match_the_eigenvectors(system_b):
    model, params, x, targets = system_b
    est = EigenstateEP(model, beta=0.05, solver="sparse")
    got = est(params, x, targets, jax.random.key(0)).observables
    want = direct_eigenstate(model, params, x, targets, 0, 0.05, False)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-8, atol=1e-10, err_msg=key)


def thermal_outputs(h, outputs, temperature):
    rho = scipy.linalg.expm(-h / temperature)
    rho /= np.trace(rho)
    return np.array([np.real(np.trace(rho @ b)) for b in outputs])


@pytest.mark.parametrize("method", ["kubo_mori", "nudged"])
def test_thermal_observables_match_the_density_matrices(system_a, method):
    model, params, x, targets = system_a
    temperature, beta = 0.5, 0.05
    nudging = {"beta": beta, "richardson": True} if method == "nudged" else {}
    est = ThermalEP(model, temperature=temperature, method=method, **nudging)
    got = est(params, x, targets, jax.random.key(0)).observables
    free, nudged = [], []
    for xi, yi in zip(np.asarray(x), np.asarray(targets), strict=True):
        h, outputs, c = dense_parts(model, params, xi, yi)
        free.append(thermal_outputs(h, outputs, temperature))
        nudged.append(
            [thermal_outputs(h + b * c, outputs, temperature) for b in signed_betas(beta, True)]
        )
    np.testing.assert_allclose(got["free_outputs"], np.array(free), **TOL)
    if method == "nudged":
        np.testing.assert_allclose(got["nudged_outputs"], np.array(nudged), **TOL)
        np.testing.assert_allclose(got["nudged_betas"], signed_betas(beta, True), rtol=1e-15)
    else:
        assert set(got) == {"free_outputs"}

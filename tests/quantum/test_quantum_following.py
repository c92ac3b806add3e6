"""Which nudged eigenstate eigenstate EP measures (issue 13, item 1), against exact energies.

By Hellmann–Feynman the estimate is exactly ``d/dθ [E_+(θ) − E_−(θ)]/(2β)`` for the chosen
eigenvalues ``E_±`` of ``H(θ) ± βĈ`` (``Ĉ`` does not depend on θ for ``SquaredErrorCost``):
the references below are that derivative, by ``jax.grad`` through ``eigvalsh`` and by central
finite differences, with the indices ``j_±`` chosen independently here.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    OUTCOMES,
    EigenstateEP,
    Hamiltonian,
    NudgeStrengthWarning,
    QuantumNetwork,
    fixed,
    input_driven,
    linear_response_gradient,
    pauli,
    trainable,
)

FOLLOWED, CROSSED, REFUSED = (OUTCOMES.index(o) for o in ("followed", "crossed", "refused"))


def crossing_network():
    """``Z0 + x Z1`` with small X couplings and a spectator ``3 Z2``; output Z1, target −1, so
    ``Ĉ = 1 + Z1``. Level 1 is |10⟩|1⟩. At x = 0.3 and β = 0.4 it crosses |11⟩|1⟩ at −β (an
    avoided crossing, gap 0.22); at x = 0.5 nothing crosses."""
    n = 3
    terms = (
        trainable("Z0", 1.0, num_qubits=n),
        input_driven("Z1", feature=0, num_qubits=n),
        trainable("X0", 0.05, num_qubits=n),
        trainable("X1", 0.05, num_qubits=n),
        trainable("X0 X1", 0.04, num_qubits=n),
        fixed("Z2", 3.0, num_qubits=n),
    )
    return QuantumNetwork(Hamiltonian(n, terms), ("Z1",), init_noise=0.0)


def refusing_network():
    """``x (Z0 + 0.8 Z1)`` plus small trainable terms; outputs X0, X1, so ``Ĉ = const − y_0 X0
    − y_1 X1``. At x = 1 and β = 0.3, targets −0.2 barely rotate the ground state; targets −10
    rotate both qubits so far that no nudged eigenstate keeps overlap 1/2 (best 0.43)."""
    n = 2
    terms = (
        input_driven("Z0", feature=0, num_qubits=n),
        input_driven("Z1", feature=0, scale=0.8, num_qubits=n),
        trainable("X0", 0.05, num_qubits=n),
        trainable("X1", 0.03, num_qubits=n),
        trainable("Z0 Z1", 0.1, num_qubits=n),
    )
    return QuantumNetwork(Hamiltonian(n, terms), ("X0", "X1"), init_noise=0.0)


def nudge_matrix(model, targets):
    """Dense ``Σ_j (−y_j) B_j`` (``Ĉ`` of ``SquaredErrorCost`` without its constant)."""
    n = model.num_qubits
    return sum(-float(y) * pauli(o.strings[0].label, n).to_dense() for o, y in zip(
        model.outputs, targets, strict=True))  # fmt: skip


def chosen_indices(model, params, x, targets, level, beta, by_index):
    """``(j_+, j_−)`` per example: level ``level`` of ``H ± βĈ``, or the largest overlap."""
    out = []
    for xi, yi in zip(x, targets, strict=True):
        h = np.asarray(model.hamiltonian.matrix(params, xi))
        c = nudge_matrix(model, yi)
        psi = np.linalg.eigh(h)[1][:, level]
        pair = []
        for sign in (1.0, -1.0):
            vectors = np.linalg.eigh(h + sign * beta * c)[1]
            pair.append(level if by_index else int(np.argmax(np.abs(vectors.conj().T @ psi) ** 2)))
        out.append(tuple(pair))
    return out


def energy_difference(model, x, targets, beta, indices, use):
    """``θ ↦ mean over used examples of [E_{j+}(H + βĈ) − E_{j−}(H − βĈ)]/(2β)``."""

    def f(params):
        total = 0.0
        for i in use:
            h = model.hamiltonian.matrix(params, x[i])
            c = jnp.asarray(nudge_matrix(model, targets[i]))
            plus = jnp.linalg.eigvalsh(h + beta * c)[indices[i][0]]
            minus = jnp.linalg.eigvalsh(h - beta * c)[indices[i][1]]
            total = total + (plus - minus) / (2 * beta)
        return total / len(use)

    return f


def central_difference(f, params, h=1e-6):
    eye = np.eye(params.shape[0])
    return np.array([(f(params + h * e) - f(params - h * e)) / (2 * h) for e in eye])


def check_against_energies(model, params, x, targets, level, beta, follow, use, solver="dense"):
    est = EigenstateEP(
        model, level=level, beta=beta, follow=follow, solver=solver, max_nudge_ratio=np.inf
    )
    estimate = est(params, x, targets, jax.random.key(0))
    indices = chosen_indices(model, params, x, targets, level, beta, follow == "index")
    f = energy_difference(model, x, targets, beta, indices, use)
    exact = jax.grad(f)(params)
    np.testing.assert_allclose(estimate.grad, exact, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(central_difference(f, params), exact, rtol=1e-5, atol=1e-7)
    return estimate, indices


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_adiabatic_and_index_following_through_a_crossing(solver):
    model = crossing_network()
    params = model.hamiltonian.initial_params()
    x, y = jnp.array([[0.3], [0.5]]), -jnp.ones((2, 1))
    adiabatic, idx_a = check_against_energies(
        model, params, x, y, 1, 0.4, "adiabatic", [0, 1], solver
    )
    index, idx_i = check_against_energies(model, params, x, y, 1, 0.4, "index", [0, 1], solver)
    assert idx_a == [(1, 0), (1, 1)] and idx_i == [(1, 1), (1, 1)]  # example 0 crosses at −β
    assert adiabatic.diagnostics["outcome"].tolist() == [CROSSED, FOLLOWED]
    assert index.diagnostics["outcome"].tolist() == [CROSSED, FOLLOWED]
    assert int(adiabatic.diagnostics["num_crossed"]) == 1
    assert int(adiabatic.diagnostics["num_refused"]) == 0
    assert float(adiabatic.diagnostics["min_overlap"]) > 0.9  # an avoided crossing, well kept
    # the two options measure different states, so their gradients differ
    diff = np.linalg.norm(adiabatic.grad - index.grad) / np.linalg.norm(index.grad)
    assert diff > 0.1


def test_refused_example_is_left_out_of_the_batch_gradient():
    model = refusing_network()
    params = model.hamiltonian.initial_params()
    x, y = jnp.ones((2, 1)), jnp.array([[-0.2, -0.2], [-10.0, -10.0]])
    adiabatic, _ = check_against_energies(model, params, x, y, 0, 0.3, "adiabatic", [0])
    assert adiabatic.diagnostics["outcome"].tolist() == [FOLLOWED, REFUSED]
    assert int(adiabatic.diagnostics["num_refused"]) == 1
    assert float(adiabatic.diagnostics["min_overlap"]) < 0.5
    # the loss still averages both examples: Σ_j ½(1 + y_j²) − y_j ⟨X_j⟩
    outputs = adiabatic.observables["free_outputs"]
    loss = jnp.mean(jnp.sum(0.5 * (1 + y**2) - y * outputs, axis=1))
    assert float(adiabatic.loss) == pytest.approx(float(loss), rel=1e-12)
    # level 0 of H ± βĈ itself (the nudged ground state) is defined for both examples; for
    # the second it is not the state closest to the free one (that is level 2 at −β): crossed
    index, _ = check_against_energies(model, params, x, y, 0, 0.3, "index", [0, 1])
    assert index.diagnostics["outcome"].tolist() == [FOLLOWED, CROSSED]
    # a batch in which every example is refused raises, and under jit gives NaN
    est = EigenstateEP(model, beta=0.3, max_nudge_ratio=np.inf)
    with pytest.raises(ValueError, match=r"could not be followed .* any example.*follow='index'"):
        est(params, x[1:], y[1:], jax.random.key(0))
    traced = jax.jit(lambda p: est(p, x[1:], y[1:], jax.random.key(0)))(params)
    assert bool(jnp.all(jnp.isnan(traced.grad)))
    assert traced.diagnostics["outcome"].tolist() == [REFUSED]


def test_nudge_strong_against_the_gap_warns():
    """The issue's case: gap 2e-4 and β = 1e-3 (ratio 5). For H = θ_Z Z + θ_X X at θ_X = 0
    and Ĉ = 1 − X the symmetric difference returns 1/√(1 + 4·5²) of the derivative."""
    ham = Hamiltonian(1, (trainable("Z", 1e-4), trainable("X", 0.0)))
    model = QuantumNetwork(ham, ("X",), init_noise=0.0)
    params, x, y = ham.initial_params(), jnp.zeros((1, 0)), jnp.ones((1, 1))
    exact, _ = linear_response_gradient(model, params, x, y)
    with pytest.warns(NudgeStrengthWarning, match=r"β‖Ĉ‖/Δ = 5 for example 0 .*up to 90%"):
        coarse = EigenstateEP(model, beta=1e-3)(params, x, y, jax.random.key(0))
    assert float(coarse.diagnostics["max_nudge_ratio"]) == pytest.approx(5.0, rel=1e-9)
    assert float(coarse.grad[1] / exact[1]) == pytest.approx(1 / np.sqrt(101), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine = EigenstateEP(model, beta=1e-6)(params, x, y, jax.random.key(0))
    assert float(fine.grad[1] / exact[1]) == pytest.approx(1.0, abs=1e-4)
    assert float(fine.diagnostics["max_nudge_ratio"]) == pytest.approx(5e-3, rel=1e-9)
    with pytest.raises(ValueError, match=r"follow must be one of \('adiabatic', 'index'\)"):
        EigenstateEP(model, follow="nearest")
    with pytest.raises(ValueError, match=r"max_nudge_ratio must be a number > 0.*got -1"):
        EigenstateEP(model, max_nudge_ratio=-1)

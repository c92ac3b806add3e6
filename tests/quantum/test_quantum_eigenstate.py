"""Eigenstate EP against linear response and autodiff through ``eigh``
(docs/mathematics.md#eigenstate-ep).

Deterministic: tolerances are numerical (β² bias, round-off), not statistical.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    OUTCOMES,
    EigenstateEP,
    Hamiltonian,
    QuantumNetwork,
    autodiff_eigenstate_loss,
    linear_response_gradient,
    trainable,
)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


CASES = [("system_a", 0), ("system_a", 2), ("system_b", 0), ("system_b", 1)]


@pytest.mark.parametrize(("system", "level"), CASES)
def test_ep_matches_linear_response_and_autodiff(system, level, request):
    model, params, x, targets = request.getfixturevalue(system)
    exact, loss = linear_response_gradient(model, params, x, targets, level=level)
    autodiff = jax.jit(jax.grad(autodiff_eigenstate_loss(model, level)))(params, x, targets)
    assert rel(autodiff, exact) < 1e-9  # the two references agree
    assert float(jnp.linalg.norm(exact)) > 1e-3  # a non-trivial gradient
    key = jax.random.key(0)
    symmetric = EigenstateEP(model, level=level, beta=1e-5)(params, x, targets, key)
    richardson = EigenstateEP(model, level=level, beta=1e-3, richardson=True)(
        params, x, targets, key
    )
    assert rel(symmetric.grad, exact) < 1e-6
    assert rel(richardson.grad, exact) < 1e-6
    assert float(symmetric.loss) == pytest.approx(float(loss), rel=1e-12)
    assert symmetric.stderr is None
    # A one-sided-size β leaves a visible O(β²) bias: the comparison above can fail.
    coarse = EigenstateEP(model, level=level, beta=0.3, max_nudge_ratio=np.inf)
    assert rel(coarse(params, x, targets, key).grad, exact) > 1e-5


def test_level_is_tracked_by_overlap_through_a_crossing():
    """H = Z0 + 0.3 Z1 has levels |11⟩ −1.3, |10⟩ −0.7, |01⟩ 0.7, |00⟩ 1.3; the nudge for
    y = −1 is +β Z1.

    Level 1 is |10⟩ (⟨Z1⟩ = +1). At β = −0.4 it has crossed |11⟩ (−0.7 + β vs −1.3 − β: gap
    0.2, now level 0); at β = +0.4 nothing has. H commutes with the nudge, so the tracked state
    keeps ⟨Z1⟩ = +1 and the exact gradient is 0; following the index would read |11⟩ at −β and
    report (1 − (−1))/0.8 = 2.5.
    """
    n = 2
    ham = Hamiltonian(n, (trainable("Z0", 1.0, num_qubits=n), trainable("Z1", 0.3, num_qubits=n)))
    model = QuantumNetwork(ham, ("Z1",), init_noise=0.0)
    params = ham.initial_params()
    x, y = jnp.zeros((1, 0)), -jnp.ones((1, 1))
    # H commutes with Ĉ, so the large β·‖Ĉ‖/gap = 0.67 mixes nothing: no warning wanted.
    est = EigenstateEP(model, level=1, beta=0.4, max_nudge_ratio=np.inf)
    estimate = est(params, x, y, jax.random.key(0))
    np.testing.assert_allclose(estimate.grad, 0.0, atol=1e-12)
    assert estimate.diagnostics["outcome"].tolist() == [OUTCOMES.index("crossed")]
    assert float(estimate.diagnostics["min_overlap"]) == pytest.approx(1.0)
    assert float(estimate.diagnostics["min_gap"]) == pytest.approx(0.2)

    z1 = jnp.array([1.0, -1.0, 1.0, -1.0])

    def z1_at_index_1(beta):
        h = ham.matrix(params, x[0]) + beta * jnp.diag(z1)
        return float(jnp.abs(jnp.linalg.eigh(h)[1][:, 1]) ** 2 @ z1)

    assert (z1_at_index_1(0.4) - z1_at_index_1(-0.4)) / 0.8 == pytest.approx(2.5)


def test_predict_gives_free_outputs(system_b):
    model, params, x, targets = system_b
    est = EigenstateEP(model)
    out = est.predict(params, x)
    assert out.shape == (x.shape[0], 1)
    # squared-error cost: ⟨C⟩ = Σ ½(1 + y²) − y⟨Z⟩
    loss = jnp.mean(jnp.sum(0.5 * (1 + targets**2) - targets * out, axis=1))
    assert float(est(params, x, targets, jax.random.key(0)).loss) == pytest.approx(float(loss))


def test_sparse_lanczos_matches_dense_at_8_qubits(ising_chain):
    model = ising_chain(8)
    params = model.hamiltonian.initial_params()
    x, y = jnp.array([[0.4]]), jnp.array([[1.0]])
    dense = EigenstateEP(model, beta=1e-4)(params, x, y, jax.random.key(0))
    sparse = EigenstateEP(model, beta=1e-4, solver="sparse")(params, x, y, jax.random.key(0))
    assert rel(sparse.grad, dense.grad) < 1e-8
    assert float(sparse.loss) == pytest.approx(float(dense.loss), rel=1e-10)


def test_sparse_ground_state_ep_at_16_qubits(ising_chain):
    model = ising_chain(16)
    params = model.hamiltonian.initial_params()
    x, y = jnp.array([[0.4]]), jnp.array([[1.0]])
    estimate = EigenstateEP(model, beta=1e-4, solver="sparse")(params, x, y, jax.random.key(0))
    exact, loss = linear_response_gradient(model, params, x, y, solver="sparse")
    assert rel(estimate.grad, exact) < 1e-6
    assert float(estimate.loss) == pytest.approx(float(loss), rel=1e-10)
    assert float(estimate.diagnostics["min_gap"]) > 1e-3

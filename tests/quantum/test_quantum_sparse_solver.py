"""The sparse solver (issue 13, item 4): lock-step Lanczos, warm starts, one level, BLAS threads.

References: ``numpy.linalg.eigh`` of the dense matrices (levels, with multiplicity) and the
dense ``EigenstateEP`` (gradients, shots, outcomes). Deterministic: tolerances are numerical.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    EigenstateEP,
    Hamiltonian,
    QuantumNetwork,
    SparseState,
    fixed,
    trainable,
)
from thermoeqprop.quantum import _lanczos as L
from thermoeqprop.quantum import _sparse_paths as SP
from thermoeqprop.quantum._sparse import sparse_from_table


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def dense_levels(model, coefficients):
    return np.linalg.eigh(sparse_from_table(model.table, coefficients).toarray())


def chain_coefficients(model, count, seed):
    """Coefficients of ``count`` random inputs of the Ising chain (its input is a field)."""
    x = jax.random.normal(jax.random.key(seed), (count, 1))
    params = model.hamiltonian.initial_params()
    return np.asarray(jax.vmap(model.coefficients, in_axes=(None, 0))(params, x))


@pytest.mark.parametrize("num_tight", [1, 3])
def test_lowest_levels_of_a_batch_match_eigh(system_a, ising_chain, num_tight):
    """Real 8-qubit chain (five Hamiltonians at once) and the complex system A."""
    for model, c in (
        (ising_chain(8), chain_coefficients(ising_chain(8), 5, 0)),
        (system_a[0], np.asarray(jax.vmap(system_a[0].coefficients, (None, 0))(*system_a[1:3]))),
    ):
        energies, vectors, converged = L.lowest_levels_batch(
            L.block_assembler(model.table), c, np.zeros((len(c), model.table.dimension)),
            num_tight, tol=0.0, gap_level=True,
        )  # fmt: skip
        assert converged.all()
        for p in range(len(c)):
            e, v = dense_levels(model, c[p])
            scale = np.sum(np.abs(c[p]))
            np.testing.assert_allclose(energies[p, :num_tight], e[:num_tight], atol=1e-12 * scale)
            gap = e[num_tight] - e[num_tight - 1]
            assert abs(energies[p, num_tight] - e[num_tight]) <= L.LOOSE_RTOL * gap
            overlaps = np.abs(np.conj(v[:, :num_tight]).T @ vectors[p, :num_tight].T) ** 2
            np.testing.assert_allclose(np.diag(overlaps), 1.0, atol=1e-10)


def test_degenerate_levels_are_counted_twice():
    """``Z0Z1 + 0.7 X2 + 0.5 X3 + 0.2 X4``: levels −2.4, −2.4, −2.0, −2.0, … One Krylov space
    would hold one vector of each eigenspace and report −2.4, −2.0 as levels 0 and 1."""
    n = 5
    terms = [fixed("Z0 Z1", 1.0, n)] + [
        fixed(f"X{q}", h, n) for q, h in ((2, 0.7), (3, 0.5), (4, 0.2))
    ]
    model = QuantumNetwork(Hamiltonian(n, tuple(terms)), ("Z0",))
    c = np.asarray(model.coefficients(jnp.zeros(0), jnp.zeros(0)))[None]
    for start in (np.zeros((1, 32)), dense_levels(model, c[0])[1][:, :1].T):  # cold, warm
        energies, _, _ = L.lowest_levels_batch(
            L.block_assembler(model.table), c, start, 3, tol=0.0, gap_level=True
        )
        np.testing.assert_allclose(energies[0], [-2.4, -2.4, -2.0, -2.0], atol=1e-12)


def test_a_warm_start_in_the_wrong_symmetry_sector_still_finds_the_ground_state():
    """The Ising chain without fields commutes with the parity Π X_q. Started from the lowest
    state of the other parity, a pure Krylov space would stay there; the generic vector mixed
    into every warm start reaches the true ground state."""
    n = 6
    terms = [trainable({q: "Z", q + 1: "Z"}, -1.0, num_qubits=n) for q in range(n - 1)]
    terms += [trainable({q: "X"}, 0.5, num_qubits=n) for q in range(n)]
    model = QuantumNetwork(Hamiltonian(n, tuple(terms)), ("Z0",))
    c = np.asarray(model.coefficients(model.hamiltonian.initial_params(), jnp.zeros(0)))[None]
    e, v = dense_levels(model, c[0])
    parity = np.real(np.diag(np.conj(v).T @ (v[::-1, :])))  # Π X_q reverses the basis
    other = int(np.flatnonzero(np.sign(parity) != np.sign(parity[0]))[0])
    energies, vectors, _ = L.lowest_levels_batch(
        L.block_assembler(model.table), c, v[:, other][None], 1, tol=0.0, gap_level=True
    )
    np.testing.assert_allclose(energies[0], e[:2], atol=1e-11)
    assert abs(np.vdot(v[:, 0], vectors[0, 0])) ** 2 > 1 - 1e-10


def test_lanczos_that_does_not_converge_falls_back_to_arpack(ising_chain, monkeypatch):
    model = ising_chain(8)
    c = chain_coefficients(model, 2, 1)
    monkeypatch.setattr(L, "_MAX_ITER", 6)
    before = L.STATS["fallbacks"]
    energies, vectors, converged = L.lowest_levels_batch(
        L.block_assembler(model.table), c, np.zeros((2, 256)), 1, tol=0.0, gap_level=True
    )
    assert not converged.any() and L.STATS["fallbacks"] == before + 2
    for p in range(2):
        np.testing.assert_allclose(energies[p], dense_levels(model, c[p])[0][:2], atol=1e-10)


@pytest.fixture(scope="module")
def chain_batch(ising_chain):
    model = ising_chain(8)
    x = jax.random.normal(jax.random.key(3), (3, 1))
    y = jnp.ones((3, 1))
    return model, model.hamiltonian.initial_params(), x, y


@pytest.mark.parametrize("shots", [None, 20])
def test_warm_starts_give_the_cold_estimate(chain_batch, shots):
    model, params, x, y = chain_batch
    kwargs = {"shots": shots, "shot_model": "gaussian"} if shots else {}
    est = EigenstateEP(model, beta=1e-3, solver="sparse", **kwargs)
    key = jax.random.key(4)
    cold = est(params, x, y, key)
    again, state = est.call_with_state(params, x, y, key, None)
    np.testing.assert_array_equal(cold.grad, again.grad)  # __call__ is the cold start
    # the state holds the free ground states
    for b in range(x.shape[0]):
        psi = dense_levels(model, np.asarray(model.coefficients(params, x[b])))[1][:, 0]
        assert abs(np.vdot(psi, state.free_states[b])) ** 2 > 1 - 1e-12
    # a warm start from other inputs' states (a new batch of a training run): the same
    # estimate within the solver's tolerance, and the same again from the same state
    other = jax.random.normal(jax.random.key(5), x.shape)
    _, previous = est.call_with_state(params, other, y, key)
    warm, _ = est.call_with_state(params, x, y, key, previous)
    repeat, _ = est.call_with_state(params, x, y, key, previous)
    np.testing.assert_array_equal(warm.grad, repeat.grad)
    assert rel(warm.grad, cold.grad) < 1e-8
    np.testing.assert_allclose(warm.loss, cold.loss, rtol=1e-12)
    np.testing.assert_array_equal(warm.diagnostics["outcome"], cold.diagnostics["outcome"])
    dense = EigenstateEP(model, beta=1e-3, **kwargs)(params, x, y, key)
    assert rel(warm.grad, dense.grad) < 1e-8
    with pytest.raises(
        ValueError, match=r"free_states of shape \(2, 256\) .* SparseState of shape \(3, 256\)"
    ):
        est.call_with_state(params, x[:2], y[:2], key, state)
    with pytest.raises(
        ValueError, match=r"SparseState of the previous call.* got ndarray of shape \(3, 256\)"
    ):
        est.call_with_state(params, x, y, key, np.zeros((3, 256)))
    dense_est = EigenstateEP(model, beta=1e-3)
    assert dense_est.call_with_state(params, x, y, key, state)[1] is state


@pytest.mark.parametrize("shot_model", ["projective", "gaussian"])
def test_sparse_shots_are_the_dense_shots(system_a, shot_model):
    """Same key, same states (within the solver's precision): the same shot outcomes."""
    model, params, x, y = system_a
    kwargs = {"beta": 0.1, "shots": 200, "shot_model": shot_model, "max_nudge_ratio": np.inf}
    key = jax.random.key(8)
    dense = EigenstateEP(model, **kwargs)(params, x, y, key)
    sparse = EigenstateEP(model, solver="sparse", **kwargs)(params, x, y, key)
    np.testing.assert_allclose(sparse.grad, dense.grad, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sparse.stderr, dense.stderr, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sparse.loss, dense.loss, rtol=1e-12)
    np.testing.assert_allclose(sparse.loss_stderr, dense.loss_stderr, rtol=1e-9)


def test_one_level_when_weyls_bound_settles_the_gap(chain_batch):
    """Small nudge: only the nudged ground state is computed, and the reported nudged gap is
    the lower bound ``0.98 Δ − 2β Σ|γ|``, below the true one. Large nudge: two levels, and the
    true nudged gap (the smaller of the two nudged states'), as the dense solver reports it."""
    model, params, x, y = chain_batch
    key = jax.random.key(0)
    small = EigenstateEP(model, beta=1e-3, solver="sparse")(params, x, y, key)
    dense = EigenstateEP(model, beta=1e-3)(params, x, y, key)
    free_gap = np.asarray(small.diagnostics["free_gap"])
    bound = free_gap * (1 - 2 * L.LOOSE_RTOL) - 2 * 1e-3 * 1.0  # Ĉ = const − Z_7: Σ|γ| = 1
    np.testing.assert_allclose(small.diagnostics["nudged_gap"], bound, rtol=1e-12)
    np.testing.assert_array_less(bound, dense.diagnostics["nudged_gap"])
    np.testing.assert_allclose(free_gap, dense.diagnostics["free_gap"], rtol=2 * L.LOOSE_RTOL)
    big = dict(beta=0.7, max_nudge_ratio=np.inf, follow="index")
    strong = EigenstateEP(model, solver="sparse", **big)(params, x, y, key)
    strong_dense = EigenstateEP(model, **big)(params, x, y, key)
    assert np.max(free_gap) - 2 * 0.7 < 0  # Weyl's bound cannot settle it
    np.testing.assert_allclose(
        strong.diagnostics["nudged_gap"], strong_dense.diagnostics["nudged_gap"], rtol=1e-9
    )
    assert rel(strong.grad, strong_dense.grad) < 1e-8


def test_blas_threads_are_limited_while_the_solver_runs(chain_batch, monkeypatch):
    """Pools above the limit are lowered for the solve and restored after it; pools already
    under it are never switched (tests run with OPENBLAS_NUM_THREADS=1, so the first part
    raises them to 2 itself)."""
    from threadpoolctl import ThreadpoolController, threadpool_info

    model, params, x, y = chain_batch
    seen = []
    solve = SP.lowest_levels_batch

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return solve(*args, **kwargs)

    monkeypatch.setattr(SP, "lowest_levels_batch", spy)
    with ThreadpoolController().limit(limits=2, user_api="blas"):
        outside = blas_threads()
        assert outside == {2}
        EigenstateEP(model, beta=1e-3, solver="sparse")(params, x, y, jax.random.key(0))
        assert seen and all(s == {1} for s in seen)
        assert blas_threads() == outside
        seen.clear()
        EigenstateEP(model, beta=1e-3, solver="sparse", blas_threads=None)(
            params, x, y, jax.random.key(0)
        )
        assert seen and all(s == outside for s in seen)
    # Under the limit: the pools are left alone (no set_num_threads call at all).
    with ThreadpoolController().limit(limits=1, user_api="blas"):
        switched = []
        monkeypatch.setattr(
            SP._controller(),
            "limit",
            lambda *a, **k: switched.append(k) or contextlib.nullcontext(),
        )
        seen.clear()
        EigenstateEP(model, beta=1e-3, solver="sparse")(params, x, y, jax.random.key(1))
        assert seen and all(s == {1} for s in seen)
        assert switched == []


def test_sparse_state_is_a_checkpointable_array(chain_batch, tmp_path):
    model, params, x, y = chain_batch
    est = EigenstateEP(model, beta=1e-3, solver="sparse")
    _, state = est.call_with_state(params, x, y, jax.random.key(0))
    np.save(tmp_path / "state.npy", np.asarray(state.free_states))
    restored = SparseState(jnp.asarray(np.load(tmp_path / "state.npy")))
    a, _ = est.call_with_state(params, x, y, jax.random.key(1), state)
    b, _ = est.call_with_state(params, x, y, jax.random.key(1), restored)
    np.testing.assert_array_equal(a.grad, b.grad)

"""Bad input raises ValueError naming the value and what is valid (issue 5, item 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    EigenstateEP,
    Hamiltonian,
    PauliString,
    PauliSum,
    QuantumNetwork,
    ThermalEP,
    classifier_network,
    fixed,
    pauli,
    trainable,
)


def test_non_hermitian_terms():
    with pytest.raises(ValueError, match=r"not Hermitian: the coefficient of XY is 0.5j"):
        trainable([(0.5j, "XY")], 0.1)
    with pytest.raises(ValueError, match=r"complex.*Hermitian"):
        fixed("XY", 1 + 2j)
    with pytest.raises(ValueError, match="output observable 0 is not Hermitian"):
        QuantumNetwork(Hamiltonian(2, (trainable("XX"),)), ([(1j, "ZI")],))


def test_qubit_index_out_of_range_or_repeated():
    with pytest.raises(ValueError, match=r"qubit index 4 .* out of range; valid indices are 0 … 3"):
        pauli("X0 Z4", num_qubits=4)
    with pytest.raises(ValueError, match=r"qubit index -1 .* out of range"):
        pauli({-1: "X"}, num_qubits=4)
    with pytest.raises(ValueError, match=r"qubit index 2 is repeated"):
        pauli([(2, "X"), (2, "Z")], num_qubits=4)
    with pytest.raises(ValueError, match=r"qubit index 1 is repeated"):
        pauli("X1 Y1", num_qubits=3)
    with pytest.raises(ValueError, match=r"letters \['Q'\]; valid letters are I, X, Y, Z"):
        PauliString("XQ")
    with pytest.raises(ValueError, match="acts on 3 qubits, but the Hamiltonian has num_qubits=2"):
        Hamiltonian(2, (trainable("XXX"),))
    with pytest.raises(ValueError, match=r"qubit index 6 .* out of range; valid indices are 0 … 5"):
        classifier_network(6, output_qubits=(6,))


def test_degenerate_level_raises_and_is_flagged_under_jit():
    n = 2
    # H = Z0 + Z1 has levels −2, 0, 0, 2: level 1 is exactly degenerate with level 2.
    ham = Hamiltonian(n, (trainable("Z0", 1.0, num_qubits=n), trainable("Z1", 1.0, num_qubits=n)))
    model = QuantumNetwork(ham, ("Z0",), init_noise=0.0)
    params, x, y = ham.initial_params(), jnp.zeros((1, 0)), jnp.ones((1, 1))
    key = jax.random.key(0)
    EigenstateEP(model, level=0)(params, x, y, key)  # the ground state is fine
    est = EigenstateEP(model, level=1)
    with pytest.raises(ValueError, match=r"level 1 is degenerate .* gap .* is 0 .* below"):
        est(params, x, y, key)
    traced = jax.jit(lambda p: est(p, x, y, key))(params)
    assert bool(jnp.all(jnp.isnan(traced.grad)))
    assert float(traced.diagnostics["min_gap"]) == 0.0
    with pytest.raises(ValueError, match="level must be an integer in 0 … 3"):
        EigenstateEP(model, level=4)


def test_dense_request_too_large_for_memory():
    n = 24
    model = QuantumNetwork(Hamiltonian(n, (trainable({0: "X"}, num_qubits=n),)), ({0: "Z"},))
    with pytest.raises(ValueError, match=r"24 qubits needs about .* PiB.*solver='sparse'"):
        EigenstateEP(model)
    with pytest.raises(ValueError, match=r"needs about .*sparse"):
        ThermalEP(model, temperature=1.0)
    with pytest.raises(ValueError, match=r"needs about"):
        pauli({0: "X"}, n).to_dense()
    # the sparse path accepts the same model
    assert EigenstateEP(model, solver="sparse").solver == "sparse"


def test_other_bad_arguments():
    model = classifier_network(3)
    with pytest.raises(ValueError, match=r"beta .* > 0, got -0.1"):
        EigenstateEP(model, beta=-0.1)
    with pytest.raises(ValueError, match=r"temperature .* > 0, got 0"):
        ThermalEP(model, temperature=0)
    with pytest.raises(ValueError, match=r"method must be 'kubo_mori' or 'nudged', got 'x'"):
        ThermalEP(model, temperature=1.0, method="x")
    with pytest.raises(ValueError, match=r"shots must be None .* got 0"):
        EigenstateEP(model, shots=0)
    with pytest.raises(ValueError, match=r"solver must be 'dense' or 'sparse', got 'lu'"):
        EigenstateEP(model, solver="lu")
    est = EigenstateEP(model)
    params = model.init_params(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\), got \(4, 3\)"):
        est(params, jnp.zeros((4, 3)), jnp.zeros((4, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 1\)"):
        est(params, jnp.zeros((4, 2)), jnp.zeros((4, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"params must have shape \(18,\)"):
        est(jnp.zeros(3), jnp.zeros((4, 2)), jnp.zeros((4, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="SquaredErrorCost needs every output to be a single"):
        QuantumNetwork(
            Hamiltonian(2, (trainable("XX"),)), (PauliSum.from_terms([(0.5, "ZI"), (0.5, "IZ")]),)
        )
    with pytest.raises(ValueError, match="reads input feature 2, but num_inputs=1"):
        from thermoeqprop.quantum import input_driven

        Hamiltonian(2, (input_driven("ZI", feature=2),), num_inputs=1)
    assert np.isfinite(float(est(params, jnp.zeros((1, 2)), -jnp.ones((1, 1)), None).loss))


def test_feature_map_terms_need_num_inputs():
    """A map reading x[1] with num_inputs inferred as 1 used to get x[0] (JAX clamps)."""
    from thermoeqprop.quantum import input_driven

    terms = (
        input_driven("ZI", feature=0, num_qubits=2),
        input_driven("IZ", scale=2.0, feature_map=lambda x: x[1], num_qubits=2),
    )
    with pytest.raises(ValueError, match=r"term on IZ has a feature_map.*pass num_inputs="):
        Hamiltonian(2, terms)
    ham = Hamiltonian(2, terms, num_inputs=2)
    # scale · feature_map(x), as input_driven's docstring says
    np.testing.assert_allclose(ham.coefficients(jnp.zeros(0), jnp.array([0.3, 0.7])), [0.3, 1.4])


def test_shared_parameter_with_different_initial_values():
    same = (trainable("X0", 0.2, parameter="h", num_qubits=2), trainable("IX", 0.2, parameter="h"))
    assert Hamiltonian(2, same).initial_params().tolist() == [0.2]
    clash = (trainable("X0", 0.2, parameter="h", num_qubits=2), trainable("IX", 0.5, parameter="h"))
    with pytest.raises(
        ValueError, match=r"parameter 'h' is shared by the terms on XI and IX.*0.2 and 0.5"
    ):
        Hamiltonian(2, clash)


def test_kubo_mori_rejects_nudging_settings():
    model = classifier_network(3)
    for bad in ({"beta": 1e-2}, {"richardson": True}):
        with pytest.raises(ValueError, match=r"kubo_mori' does not nudge.*beta=.*richardson="):
            ThermalEP(model, temperature=1.0, **bad)
    assert ThermalEP(model, temperature=1.0).beta is None
    assert ThermalEP(model, temperature=1.0, method="nudged").beta == 1e-3


def test_shot_settings_name_the_value_and_the_choices():
    model = classifier_network(3)
    with pytest.raises(
        ValueError, match=r"shot_model must be one of \('projective', 'gaussian'\), got 'normal'"
    ):  # noqa: E501
        EigenstateEP(model, shots=10, shot_model="normal")
    with pytest.raises(
        ValueError, match=r"error_signal must be one of \('noisy', 'exact'\), got 'clean'"
    ):  # noqa: E501
        ThermalEP(model, temperature=1.0, method="nudged", shots=10, error_signal="clean")
    for bad in ({"shot_model": "gaussian"}, {"error_signal": "exact"}):
        with pytest.raises(
            ValueError, match=r"describe finite shots, but shots=None.*give shots=N"
        ):
            EigenstateEP(model, **bad)
    with pytest.raises(ValueError, match=r"blas_threads must be None or an integer ≥ 1, got 0"):
        EigenstateEP(model, solver="sparse", blas_threads=0)
    # shots on the sparse solver are no longer refused
    assert EigenstateEP(model, solver="sparse", shots=10).shots == 10

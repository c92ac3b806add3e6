"""Reference systems shared by the quantum tests (written out in tests/quantum/README.md)."""

import jax
import jax.numpy as jnp
import pytest
import seed_offset

from thermoeqprop.quantum import (
    Hamiltonian,
    QuantumNetwork,
    classifier_network,
    fixed,
    input_driven,
    trainable,
)


def chain_network(n):
    """System C: transverse-field Ising chain with trainable couplings, input on qubit 0."""
    terms = [trainable({q: "Z", q + 1: "Z"}, 0.3 + 0.01 * q, num_qubits=n) for q in range(n - 1)]
    terms += [trainable({q: "X"}, 1.0 - 0.01 * q, num_qubits=n) for q in range(n)]
    terms += [fixed({q: "Z"}, 0.1, num_qubits=n) for q in range(n)]
    terms += [input_driven({0: "Z"}, feature=0, scale=0.7, num_qubits=n)]
    return QuantumNetwork(Hamiltonian(n, tuple(terms)), ({n - 1: "Z"},), init_noise=0.0)


def complex_network() -> QuantumNetwork:
    """System A: 3 qubits, non-commuting terms of every kind, complex (odd-Y) strings."""
    n = 3
    terms = (
        trainable("X0", 0.8, num_qubits=n),
        trainable("X1", 0.6, num_qubits=n),
        trainable("X2", 0.7, num_qubits=n),
        trainable("Z0 Z1", 0.4, num_qubits=n),
        trainable("Z1 Z2", -0.3, num_qubits=n),
        trainable("X0 X2", 0.2, num_qubits=n),
        trainable("Y0 Y1", 0.25, num_qubits=n),
        trainable("X0 Y2", 0.15, num_qubits=n),  # odd number of Y: imaginary matrix
        trainable([(0.5, "Z0"), (0.5, "Z1 X2")], 0.3, parameter="shared", num_qubits=n),
        trainable("Z2", 0.3, parameter="shared", num_qubits=n),  # shares the one above
        fixed("Z2", 0.35, num_qubits=n),
        input_driven("Z0", feature=0, scale=0.9, num_qubits=n),
        input_driven("Z1", feature=1, scale=-0.5, trainable=True, num_qubits=n),
        input_driven("X1 X2", feature_map=lambda x: jnp.sin(x[0] * x[1]), num_qubits=n),
    )
    return QuantumNetwork(Hamiltonian(n, terms, num_inputs=2), ("Z2", "Z1"), init_noise=0.3)


def real_network() -> QuantumNetwork:
    """System B: the 4-qubit ring classifier (real Hamiltonian, one output Z0)."""
    return classifier_network(num_qubits=4, num_inputs=2, couplings="ring", init_noise=0.5)


@seed_offset.fixed
def batch(model, size, seed):
    key_x, key_y, key_p = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(key_x, (size, model.num_inputs))
    labels = jax.random.bernoulli(key_y, 0.5, (size,)).astype(jnp.int32)
    if model.num_outputs > 1:
        labels = jax.random.randint(key_y, (size,), 0, model.num_outputs)
    return model.init_params(key_p), x, model.encode_labels(labels)


@pytest.fixture(scope="session")
def system_a():
    model = complex_network()
    return (model, *batch(model, 2, 11))


@pytest.fixture(scope="session")
def system_b():
    model = real_network()
    return (model, *batch(model, 3, 12))


@pytest.fixture(scope="session")
def ising_chain():
    """System C's builder: ``ising_chain(n)``."""
    return chain_network

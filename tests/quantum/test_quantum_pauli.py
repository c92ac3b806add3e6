"""Pauli strings and sums against Kronecker products of 2×2 matrices."""

import functools
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.quantum import (
    PauliString,
    PauliSum,
    check_hermitian,
    measurement_plan,
    pauli,
    qubitwise_commuting_groups,
)

SINGLE = {
    "I": np.eye(2),
    "X": np.array([[0, 1], [1, 0]]),
    "Y": np.array([[0, -1j], [1j, 0]]),
    "Z": np.diag([1, -1]),
}


def kron(label):
    return functools.reduce(np.kron, [SINGLE[c] for c in label])


ALL_3 = ["".join(t) for t in itertools.product("IXYZ", repeat=3)]


@pytest.mark.parametrize("label", ALL_3)
def test_dense_sparse_and_apply_match_kronecker(label):
    p = PauliString(label)
    ref = kron(label)
    np.testing.assert_array_equal(p.to_dense(), ref)
    np.testing.assert_array_equal(p.to_sparse().toarray(), ref)
    v = np.random.default_rng(0).normal(size=8) + 1j * np.random.default_rng(1).normal(size=8)
    np.testing.assert_allclose(np.asarray(p.apply(jnp.asarray(v))), ref @ v, atol=1e-14)
    v /= np.linalg.norm(v)
    assert float(p.expectation(jnp.asarray(v))) == pytest.approx(np.real(v.conj() @ ref @ v))
    assert p.is_real == np.all(ref.imag == 0)
    assert p.is_diagonal == np.all(ref == np.diag(np.diag(ref)))


def test_commutation_matches_matrices():
    for a, b in itertools.product(ALL_3[::3], ALL_3[::2]):
        pa, pb = PauliString(a), PauliString(b)
        ma, mb = kron(a), kron(b)
        assert pa.commutes_with(pb) == np.allclose(ma @ mb, mb @ ma)


def test_sparse_forms_agree():
    assert pauli("X0 Z3", 4) == pauli({0: "X", 3: "Z"}, 4) == pauli([(3, "Z"), (0, "X")], 4)
    assert pauli("X0 Z3", 4).label == "XIIZ"
    assert pauli("XIIZ") == PauliString("XIIZ")


def test_sum_dense_sparse_and_hermiticity():
    h = PauliSum.from_terms([(1.0, "ZZI"), (0.5, "XIX"), (-0.25, "YYZ"), (0.5, "XIX")])
    ref = kron("ZZI") + 1.0 * kron("XIX") - 0.25 * kron("YYZ")
    np.testing.assert_allclose(h.to_dense(), ref)
    np.testing.assert_allclose(h.to_sparse().toarray(), ref)
    assert len(h.strings) == 3  # equal strings merged
    assert h.is_hermitian()
    assert not PauliSum.from_terms([(1j, "XY")]).is_hermitian()
    with pytest.raises(ValueError, match=r"coefficient of XY is 1j"):
        PauliSum.from_terms([(1j, "XY")]).check_hermitian()
    check_hermitian(ref)
    with pytest.raises(ValueError, match="not Hermitian"):
        check_hermitian(ref + 1j * kron("XII"))


def test_qubitwise_groups_and_plan():
    strings = [pauli(s) for s in ["XXI", "IXX", "XIX", "ZII", "IZZ", "YIY"]]
    groups = qubitwise_commuting_groups(strings)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    for g in groups:
        for i, j in itertools.combinations(g, 2):
            assert strings[i].qubitwise_commutes_with(strings[j])
    plan = measurement_plan(tuple(strings))
    assert plan.bases == ("XXX", "ZZZ", "YZY")

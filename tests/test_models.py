"""Energy models: closed forms, symmetry, and errors at the boundary."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from thermoeqprop.models import (
    CrossEntropy,
    LayeredNetwork,
    LayeredSpinNetwork,
    QuadraticNetwork,
    SpinNetwork,
    SquaredError,
    get_cost,
)


def test_quadratic_network_is_exactly_gaussian():
    net = QuadraticNetwork((3, 4, 2, 2))
    params = net.init_params(jax.random.key(0))
    state = jax.random.normal(jax.random.key(1), (net.state_size,))
    x = jax.random.uniform(jax.random.key(2), (1, 3))
    a, b = net.precision(params), net.linear_term(params, x)[0]
    # The energy equals ½ sᵀAs − bᵀs exactly (up to rounding), for any state.
    np.testing.assert_allclose(net.energy(params, state, x[0]), 0.5 * state @ a @ state - b @ state)
    np.testing.assert_allclose(jax.hessian(net.energy, argnums=1)(params, state, x[0]), a)
    net.check_positive_definite(params)
    mean, cov = net.gaussian_moments(params, x, 0.3)
    np.testing.assert_allclose(a @ mean[0], b, atol=1e-12)
    np.testing.assert_allclose(cov @ a, 0.3 * np.eye(net.state_size), atol=1e-12)


def test_quadratic_expected_cost_matches_monte_carlo_of_the_gaussian():
    net = QuadraticNetwork((2, 3, 2))
    params = net.init_params(jax.random.key(3))
    x = jnp.array([[0.2, 0.9]])
    y = jnp.array([[1.0, 0.0]])
    mean, cov = net.gaussian_moments(params, x, 0.5)
    draws = jax.random.multivariate_normal(jax.random.key(4), mean[0], cov, (400_000,))
    costs = jax.vmap(net.cost_fn, in_axes=(0, None))(draws, y[0])
    mcse = float(jnp.std(costs) / np.sqrt(costs.size))
    # k = 4 standard errors of iid draws: false-failure probability below 1e-4.
    assert abs(float(jnp.mean(costs)) - float(net.expected_cost(params, x, y, 0.5)[0])) < 4 * mcse


def test_quadratic_rejects_non_positive_definite_couplings():
    net = QuadraticNetwork((1, 2, 2))
    params = net.init_params(jax.random.key(0))
    params["weights"] = (params["weights"][0], 5.0 * jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="smallest eigenvalue"):
        net.check_positive_definite(params)


def test_layered_energy_matches_its_formula_and_couplings_are_symmetric():
    net = LayeredNetwork((3, 4, 2), activation="tanh")
    params = net.init_params(jax.random.key(0))
    params["biases"] = tuple(
        jax.random.normal(jax.random.key(5), b.shape) for b in params["biases"]
    )
    s = jax.random.normal(jax.random.key(1), (6,))
    x = jnp.array([0.1, 0.5, 0.9])
    h, o = jnp.tanh(s[:4]), jnp.tanh(s[4:])
    w0, w1 = params["weights"]
    b1, b2 = params["biases"]
    expected = 0.5 * s @ s - x @ w0 @ h - h @ w1 @ o - b1 @ h - b2 @ o
    np.testing.assert_allclose(net.energy(params, s, x), expected, rtol=1e-12)
    # Symmetric couplings: the Hessian of E is symmetric.
    hess = jax.hessian(net.energy, argnums=1)(params, s, x)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    np.testing.assert_allclose(net.output(s), o)


def test_spin_energy_matches_explicit_sum_over_edges():
    net = SpinNetwork(
        num_inputs=2,
        num_spins=4,
        edges=((0, 1), (1, 2), (2, 3), (0, 3)),
        input_edges=((0, 0), (1, 2)),
        output_units=(3,),
    )
    params = net.init_params(jax.random.key(0))
    params["fields"] = jnp.array([0.1, -0.2, 0.3, 0.05])
    x = jnp.array([0.7, -0.4])
    j, w = params["couplings"], params["input_weights"]
    for spins in itertools.product([-1.0, 1.0], repeat=4):
        s = jnp.array(spins)
        expected = (
            -(j[0] * s[0] * s[1] + j[1] * s[1] * s[2] + j[2] * s[2] * s[3] + j[3] * s[0] * s[3])
            - params["fields"] @ s
            - (w[0] * x[0] * s[0] + w[1] * x[1] * s[2])
        )
        np.testing.assert_allclose(net.energy(params, s, x), expected, rtol=1e-12)
    # Multilinear: flipping spin i changes E by exactly −2 s_i ∂E/∂s_i.
    s = jnp.array([1.0, -1.0, -1.0, 1.0])
    grad = jax.grad(net.energy, argnums=1)(params, s, x)
    for i in range(4):
        flipped = s.at[i].multiply(-1)
        delta = net.energy(params, flipped, x) - net.energy(params, s, x)
        np.testing.assert_allclose(delta, -2 * s[i] * grad[i], atol=1e-12)


def test_layered_spin_network_blocks_are_its_layers():
    net = SpinNetwork.layered((5, 3, 4, 2))
    assert isinstance(net, LayeredSpinNetwork)
    assert net.blocks == ((0, 1, 2), (3, 4, 5, 6), (7, 8))
    assert net.output_units == (7, 8)
    params = net.init_params(jax.random.key(0))
    assert [j.shape for j in params["couplings"]] == [(3, 4), (4, 2)]
    assert params["input_weights"].shape == (5, 3)
    graph = net.to_graph()
    assert len(graph.edges) == 3 * 4 + 4 * 2
    assert len(graph.input_edges) == 5 * 3
    np.testing.assert_allclose(net.encode_labels(jnp.array([1])), [[-1.0, 1.0]])


def test_init_scale_of_spin_networks_is_a_deprecated_alias_of_init_gain():
    import dataclasses

    net = SpinNetwork.layered((2, 3, 2), init_gain=0.7)
    graph = SpinNetwork(2, 2, ((0, 1),), ((0, 0),), (1,), init_gain=0.7)
    for new in (net, graph):
        with pytest.warns(FutureWarning, match=r"\.init_scale is deprecated; use init_gain"):
            old = dataclasses.replace(new, init_scale=0.7)
        assert old == new and hash(old) == hash(new) and "init_scale" not in repr(old)
        with pytest.warns(FutureWarning, match="use init_gain"):
            assert old.init_scale == 0.7
    with pytest.warns(FutureWarning):
        assert SpinNetwork.layered((2, 3, 2), init_scale=0.7) == net
    assert net.to_graph().init_gain == 0.7


def test_dense_layered_spins_are_the_edge_list_network():
    """Same initial draws, same raveled parameters, same energy and gradients as the edge
    list of the same graph, on every state of a small network."""
    net = SpinNetwork.layered((2, 3, 2))
    graph = net.to_graph()
    params = net.init_params(jax.random.key(0))
    flat, unravel = ravel_pytree(params)
    np.testing.assert_array_equal(flat, ravel_pytree(graph.init_params(jax.random.key(0)))[0])
    params = unravel(jax.random.normal(jax.random.key(1), flat.shape))
    graph_params = net.graph_params(params)
    np.testing.assert_array_equal(ravel_pytree(graph_params)[0], ravel_pytree(params)[0])
    x = jnp.array([0.3, -0.8])
    for spins in itertools.product([-1.0, 1.0], repeat=5):
        s = jnp.array(spins)
        np.testing.assert_allclose(
            net.energy(params, s, x), graph.energy(graph_params, s, x), rtol=1e-12
        )
        np.testing.assert_allclose(
            ravel_pytree(jax.grad(net.energy)(params, s, x))[0],
            ravel_pytree(jax.grad(graph.energy)(graph_params, s, x))[0],
            rtol=1e-12,
            atol=1e-15,
        )
        np.testing.assert_allclose(
            jax.grad(net.energy, argnums=1)(params, s, x),
            jax.grad(graph.energy, argnums=1)(graph_params, s, x),
            rtol=1e-12,
            atol=1e-15,
        )


def test_a_graph_without_blocks_is_coloured():
    # An odd ring needs three colours; every colour class must be free of couplings.
    edges = tuple((i, (i + 1) % 7) for i in range(7)) + ((0, 3),)
    net = SpinNetwork(1, 7, edges, ((0, 0),), (6,))
    assert sorted(i for b in net.blocks for i in b) == list(range(7))
    assert len(net.blocks) == 3
    colour = {i: k for k, b in enumerate(net.blocks) for i in b}
    assert all(colour[i] != colour[j] for i, j in edges)


def test_costs():
    out, y = jnp.array([0.2, 0.9]), jnp.array([0.0, 1.0])
    np.testing.assert_allclose(SquaredError()(out, y), 0.5 * (0.04 + 0.01))
    ce = CrossEntropy(scale=2.0)(out, y)
    np.testing.assert_allclose(ce, -jax.nn.log_softmax(2.0 * out)[1])
    with pytest.raises(ValueError, match="unknown cost 'hinge'"):
        get_cost("hinge")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LayeredNetwork((3,)), "at least two integers"),
        (lambda: LayeredNetwork((3, 0, 2)), "≥ 1"),
        (lambda: LayeredNetwork((3, 2), activation="relu"), "unknown activation 'relu'"),
        (lambda: QuadraticNetwork((2, 2), cost=CrossEntropy()), "SquaredError"),
        (
            lambda: SpinNetwork(1, 3, ((0, 3),), (), (0,)),
            r"edges entry \(0, 3\) is out of range",
        ),
        (lambda: SpinNetwork(1, 3, ((1, 1),), (), (0,)), "couples a spin to itself"),
        (lambda: SpinNetwork(1, 3, ((0, 1), (1, 0)), (), (0,)), "twice"),
        (lambda: SpinNetwork(1, 3, (), (), (0, 0)), "distinct"),
        (lambda: SpinNetwork(1, 3, ((0, 1),), (), (0,), blocks=((0, 1), (2,))), "coupled pair"),
        (lambda: SpinNetwork(1, 3, (), (), (0,), blocks=((0,), (2,))), "partition"),
    ],
)
def test_bad_model_configuration_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("x", "targets", "message"),
    [
        (np.ones((4, 2)), np.ones((4, 2)), r"x must have shape \(batch, 3\).*got shape \(4, 2\)"),
        (np.ones(3), np.ones((1, 2)), r"got shape \(3,\)"),
        (np.ones((4, 3)), np.ones((4, 3)), r"targets must have shape \(batch, 2\)"),
        (np.ones((4, 3)), np.ones((5, 2)), "4 examples but targets has 5"),
        (np.array([[0.0, np.nan, 1.0]]), np.ones((1, 2)), r"x contains 1 non-finite.*\(0, 1\)"),
        (np.ones((1, 3)), np.array([[np.inf, 0.0]]), "targets contains 1 non-finite"),
        (np.ones((0, 3)), np.ones((0, 2)), "empty"),
    ],
)
def test_bad_data_is_named(x, targets, message):
    net = LayeredNetwork((3, 4, 2))
    with pytest.raises(ValueError, match=message):
        net.validate_inputs(x, targets)

"""Zero-temperature EP against the implicit-function-theorem reference
(docs/mathematics.md#implicit-function-reference).

All deterministic: tolerances come from float64 rounding and relaxation residuals, not from
Monte Carlo error.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.estimators import (
    ImplicitDifferentiation,
    Relaxation,
    ZeroTemperatureEP,
    relax,
)
from thermoeqprop.models import CrossEntropy, LayeredNetwork, QuadraticNetwork

TIGHT = Relaxation(tolerance=1e-11, max_iterations=20000)


def flat(tree):
    return jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def relative_error(a, b):
    return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


def random_problem(seed, layer_sizes=(5, 7, 6, 3), activation="sigmoid", cost=None, gain=1.5):
    kwargs = {"cost": cost} if cost is not None else {}
    net = LayeredNetwork(layer_sizes, activation=activation, init_gain=gain, **kwargs)
    k_params, k_bias, k_x, k_y = jax.random.split(jax.random.key(seed), 4)
    params = net.init_params(k_params)
    params["biases"] = tuple(
        0.3 * jax.random.normal(jax.random.fold_in(k_bias, i), b.shape)
        for i, b in enumerate(params["biases"])
    )
    x = jax.random.uniform(k_x, (4, layer_sizes[0]))
    y = jax.nn.one_hot(jax.random.randint(k_y, (4,), 0, layer_sizes[-1]), layer_sizes[-1])
    return net, params, x, y


@pytest.mark.parametrize(
    ("seed", "activation", "cost"),
    [
        (0, "sigmoid", None),
        (1, "sigmoid", CrossEntropy()),
        (2, "tanh", None),
        (3, "hard_sigmoid", None),
    ],
)
def test_symmetric_ep_matches_implicit_differentiation(seed, activation, cost):
    net, params, x, y = random_problem(seed, activation=activation, cost=cost)
    reference = ImplicitDifferentiation(net, TIGHT)(params, x, y)
    estimate = ZeroTemperatureEP(net, beta=1e-3, relaxation=TIGHT)(params, x, y)
    assert float(reference.diagnostics["free_residual"]) < 1e-10
    assert float(estimate.diagnostics["nudged_minus_converged_fraction"]) == 1.0
    assert relative_error(estimate.grad, reference.grad) < 1e-4
    np.testing.assert_allclose(estimate.loss, reference.loss, rtol=1e-10)
    assert estimate.stderr is None


def test_implicit_reference_matches_finite_differences_of_the_loss():
    """The reference itself is checked against d/dθ of L(θ) = mean C(s*(θ)) by central
    differences along a random direction: an independent route to the same number."""
    net, params, x, y = random_problem(7)
    reference = ImplicitDifferentiation(net, TIGHT)(params, x, y)
    direction = jax.tree_util.tree_map(
        lambda a: jax.random.normal(jax.random.key(a.size), a.shape), params
    )

    def loss_at(t):
        shifted = jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction)
        state = relax(net, shifted, x, y, 0.0, net.initial_state(x), TIGHT).state
        return float(jnp.mean(net.batch_cost(state, y)))

    h = 1e-5
    finite_difference = (loss_at(h) - loss_at(-h)) / (2 * h)
    directional = float(jnp.vdot(flat(reference.grad), flat(direction)))
    assert abs(finite_difference - directional) < 1e-6 * max(1.0, abs(directional))


def test_error_against_beta_has_slope_one_and_two():
    net, params, x, y = random_problem(11)
    reference = ImplicitDifferentiation(net, TIGHT)(params, x, y)
    betas = np.array([0.04, 0.02, 0.01, 0.005])
    errors = {}
    for symmetric in (False, True):
        errors[symmetric] = [
            relative_error(
                ZeroTemperatureEP(net, beta=b, symmetric=symmetric, relaxation=TIGHT)(
                    params, x, y
                ).grad,
                reference.grad,
            )
            for b in betas
        ]
    slope_one_sided = np.polyfit(np.log(betas), np.log(errors[False]), 1)[0]
    slope_symmetric = np.polyfit(np.log(betas), np.log(errors[True]), 1)[0]
    assert abs(slope_one_sided - 1.0) < 0.1, errors[False]
    assert abs(slope_symmetric - 2.0) < 0.2, errors[True]


def test_quadratic_network_matches_closed_form_minimum():
    """For the quadratic network s* = A⁻¹b in closed form, so L(θ) = mean ½‖s*_out − y‖² can be
    differentiated by autodiff directly: a third route that needs no relaxation at all."""
    net = QuadraticNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, 3))
    y = jax.random.uniform(jax.random.key(2), (5, 2))

    def closed_form_loss(p):
        mean, _ = net.gaussian_moments(p, x, 0.0)
        return jnp.mean(0.5 * jnp.sum((mean[:, -2:] - y) ** 2, axis=1))

    exact = jax.grad(closed_form_loss)(params)
    reference = ImplicitDifferentiation(net, TIGHT)(params, x, y)
    assert relative_error(reference.grad, exact) < 1e-9
    estimate = ZeroTemperatureEP(net, beta=1e-3, relaxation=TIGHT)(params, x, y)
    assert relative_error(estimate.grad, exact) < 1e-5


def test_relaxation_reports_residual_and_iterations():
    net, params, x, y = random_problem(0)
    result = relax(net, params, x, y, 0.0, net.initial_state(x), Relaxation(tolerance=1e-9))
    assert bool(jnp.all(result.converged))
    assert float(jnp.max(result.residual)) < 1e-9
    grad = jax.vmap(jax.grad(net.energy, argnums=1), in_axes=(None, 0, 0))(params, result.state, x)
    assert float(jnp.max(jnp.abs(grad))) < 1e-9
    assert int(jnp.min(result.iterations)) > 1
    # A budget too small to converge is reported, never hidden.
    short = relax(net, params, x, y, 0.0, net.initial_state(x), Relaxation(max_iterations=3))
    assert not bool(jnp.any(short.converged))
    assert int(jnp.max(short.iterations)) == 3
    assert float(jnp.min(short.residual)) > 1e-6


def test_predict_returns_free_outputs():
    net, params, x, _ = random_problem(0)
    ep = ZeroTemperatureEP(net, beta=0.1, relaxation=TIGHT)
    free = ep.relax_free(params, x)
    np.testing.assert_allclose(ep.predict(params, x), net.batch_output(free.state))


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), "big"])
def test_bad_beta_is_named(beta):
    net = LayeredNetwork((2, 3, 1))
    with pytest.raises(ValueError, match="beta must be"):
        ZeroTemperatureEP(net, beta=beta)


def test_bad_relaxation_settings_are_named():
    with pytest.raises(ValueError, match="tolerance must be"):
        Relaxation(tolerance=0.0)
    with pytest.raises(ValueError, match="momentum must lie in"):
        Relaxation(momentum=1.0)
    with pytest.raises(ValueError, match="max_iterations must be"):
        Relaxation(max_iterations=0)


def counting_copy(model):
    """An equal copy of ``model`` whose class is new, so that no code compiled for another
    model is reused, and whose ``energy`` records every trace in the returned list."""
    traces = []

    def energy(self, params, state, x):
        traces.append(1)  # runs when traced, never when compiled code runs
        return super(counting, self).energy(params, state, x)

    counting = dataclasses.dataclass(frozen=True)(
        type("Counting" + type(model).__name__, (type(model),), {"energy": energy})
    )
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    return counting(**fields), traces


def _results(est, params, x, y):
    extra = (est.relax_free(params, x),) if isinstance(est, ZeroTemperatureEP) else ()
    return (est(params, x, y), est.predict(params, x), *extra)


NEW_RELAXATION = Relaxation(1e-9, 3000, step_size=0.4, momentum=0.5)


@pytest.mark.parametrize(
    ("build", "new"),
    [
        (
            lambda m: [ZeroTemperatureEP(m, 0.05, s, Relaxation(1e-8)) for s in (True, False)],
            {"beta": 0.02, "relaxation": NEW_RELAXATION},
        ),
        (lambda m: [ImplicitDifferentiation(m, Relaxation(1e-8))], {"relaxation": NEW_RELAXATION}),
    ],
    ids=["ep", "implicit"],
)
def test_new_beta_or_relaxation_does_not_recompile(build, new):
    """A β scan or new minimiser settings reuse the compiled code, with the results of code
    compiled afresh for the new values."""
    net, params, x, y = random_problem(0, layer_sizes=(3, 4, 2))
    model, traces = counting_copy(net)
    estimators = build(model)
    before = [_results(est, params, x, y) for est in estimators]
    traced = len(traces)
    assert traced > 0
    changed = [dataclasses.replace(est, **new) for est in estimators]
    after = [_results(est, params, x, y) for est in changed]
    assert len(traces) == traced, f"{new} recompiled"
    for old, result in zip(before, after, strict=True):  # the new settings were used
        assert int(result[0].diagnostics["free_iterations"]) != int(
            old[0].diagnostics["free_iterations"]
        )
        assert not np.allclose(flat(result[0].grad), flat(old[0].grad), rtol=1e-9, atol=0)
    fresh_model, fresh_traces = counting_copy(net)
    fresh = dataclasses.replace(build(fresh_model)[0], **new)(params, x, y)
    assert len(fresh_traces) > 0  # really compiled afresh
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(after[0][0]), leaves(fresh), strict=True):
        np.testing.assert_array_equal(a, b)

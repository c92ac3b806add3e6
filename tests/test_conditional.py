"""Conditional expectations of layered continuous networks (docs/mathematics.md,
"Conditional expectations"): the one-unit tables against direct quadrature, the per-draw
conditional expectations against brute-force integration over the averaged units, and the
Rao–Blackwellised estimators against exact gradients (the Gaussian closed form of the quadratic
network; a two-unit sigmoid network by two-dimensional quadrature).

False-failure budget: the deterministic checks (tables, per-draw expectations) cannot fail by
chance. The estimator checks compare about 150 components at 4.5 MCSE (P(|z| > 4.5) = 6.8e-6
each for honest MCSEs: about 0.1 % for the module) and bound the RMS z-score of each estimate
by the law its effective components set (tests/pooled_z.py: at most 7e-4 per side, 3 estimates;
the former fixed [0.5, 1.6] assumed 26–40 independent components). Seeds are fixed:
a given code version passes or fails reproducibly. The problems, and the fields and states of
the deterministic checks, are built under seed_offset.fixed: the budget is about the draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pooled_z
import pytest
import seed_offset

import samplers
from thermoeqprop.estimators import (
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
    _conditional,
)
from thermoeqprop.estimators._unit_tables import field_bound, unit_moments
from thermoeqprop.models import CrossEntropy, LayeredNetwork, QuadraticNetwork
from thermoeqprop.models.layered import ACTIVATIONS

#: The false-failure budget per run of this module, as stated above (0.1 % for the components,
#: 0.4 % for the RMS z-scores); tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 5e-3

K = 4.5


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def direct_moments(activation, temperature, u, half_width=16.0, num_points=160_001):
    """E[ρ^k | u], k = 1, 2, 3, by the trapezoid rule on a grid far finer than the tables'."""
    s = np.linspace(-half_width, half_width, num_points)
    r = np.asarray(ACTIVATIONS[activation](jnp.asarray(s)))
    phi = 0.5 * s**2 - u * r
    w = np.exp(-(phi - phi.min()) / temperature)
    w /= w.sum()
    return np.array([w @ r, w @ r**2, w @ r**3])


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("temperature", [0.005, 0.02, 0.5])
def test_unit_moments_match_direct_quadrature(activation, temperature):
    table = unit_moments(activation, temperature, bound=5.0)
    # The grid reaches beyond the bound (its points are a power of two); linear: no grid.
    cover = 8.0 if table.start is None else -float(table.start)
    assert cover >= 5.0
    with seed_offset.fixed():
        fields = np.random.default_rng(0).uniform(-cover, cover, 12)
    fields[:3] = (-cover, 0.0, cover)  # the ends of the table
    got = np.stack([np.asarray(m) for m in table(jnp.asarray(fields))], axis=1)
    want = np.stack([direct_moments(activation, temperature, u) for u in fields])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


def test_tables_of_nearby_temperatures_share_a_shape():
    """Grid sizes are powers of two (at least 4,096 fields), so the code reading the tables
    compiles once for T = 0.008 and 0.01, and the grid is never coarser than 0.0125 √T."""
    shapes = {}
    for temperature in (0.002, 0.004, 0.006, 0.008, 0.01, 0.5):
        table = unit_moments("sigmoid", temperature, bound=4.0)
        size = table.coefficients.shape[0] + 1  # fields: one more than intervals
        assert size >= 4096 and size & (size - 1) == 0, size
        assert float(table.step) <= 0.0125 * np.sqrt(temperature)
        shapes[temperature] = size
    assert shapes == {0.002: 16384, 0.004: 16384, 0.006: 16384, 0.008: 8192, 0.01: 8192,
                      0.5: 4096}  # fmt: skip


@seed_offset.fixed
def test_a_growing_bound_keeps_its_table_until_it_outgrows_the_grid():
    """A training run's field bound grows with its couplings: the table (and so the shape the
    jitted code reading it compiled for) stays the same while the bound is within the grid's
    reach, which a power of two of points at the fixed step carries beyond the bound."""
    first = unit_moments("sigmoid", 0.5, bound=9.0)
    cover = -float(first.start)
    assert cover > 9.0 and float(first.step) == pytest.approx(0.0125 * np.sqrt(0.5))
    assert unit_moments("sigmoid", 0.5, bound=cover) is first
    wider = unit_moments("sigmoid", 0.5, bound=cover * 1.01)
    assert wider.coefficients.shape[0] > first.coefficients.shape[0]
    assert -float(wider.start) >= cover * 1.01


def test_field_bound_covers_every_field():
    net = LayeredNetwork((5, 7, 6, 3))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 5))
    bound = field_bound(params, x, "sigmoid")
    # Activations at their extremes (0 or 1) in every pattern reach the largest fields.
    worst = 0.0
    for pattern in range(64):
        bits = jnp.asarray([(pattern >> i) & 1 for i in range(6)], dtype=float)
        acts = [jnp.tile(bits[:1], 7), jnp.tile(bits[1:2], 6), jnp.tile(bits[2:3], 3)]
        w = params["weights"]
        fields = [x @ w[0] + w[1] @ acts[1], acts[0] @ w[1] + w[2] @ acts[2], acts[1] @ w[2]]
        worst = max(worst, max(float(jnp.max(jnp.abs(f))) for f in fields))
    assert worst <= bound + 1e-12


TWO_UNITS = LayeredNetwork((2, 1, 1))
TWO_UNIT_PARAMS = {
    "weights": (jnp.array([[0.53], [-1.73]]), jnp.array([[-0.78]])),
    "biases": (jnp.array([-0.69]), jnp.array([0.19])),
}
TWO_UNIT_X = jnp.array([[0.93, 0.22], [0.82, 0.07], [0.62, 0.12]])
TWO_UNIT_Y = jnp.array([[0.9], [0.1], [0.6]])


def brute_force_conditional(temperature, states, averaged_layer, observable):
    """E[observable(s) | the other unit] for each (example, state) of the two-unit network,
    integrating the averaged unit on a fine grid (observable(state, x, y) -> array)."""
    grid = jnp.linspace(-6.0, 7.0, 20_001)
    index = averaged_layer - 1

    def per_state(state, x, y):
        candidates = jnp.tile(state, (grid.size, 1)).at[:, index].set(grid)
        energies = jax.vmap(TWO_UNITS.energy, in_axes=(None, 0, None))(
            TWO_UNIT_PARAMS, candidates, x
        )
        weights = jax.nn.softmax(-(energies - energies.min()) / temperature)
        values = jax.vmap(observable, in_axes=(0, None, None))(candidates, x, y)
        return jnp.tensordot(weights, values, axes=1)

    return jax.vmap(jax.vmap(per_state, in_axes=(0, None, None)))(states, TWO_UNIT_X, TWO_UNIT_Y)


@pytest.mark.parametrize("averaged_layer", [1, 2])
def test_per_draw_conditional_expectations_are_exact(averaged_layer):
    """Each conditioning alone: the energy-gradient series is E[∂θE | ·] draw by draw, and the
    covariance series is built from E[C ∂θE | ·], E[C | ·] and E[∂θE | ·] exactly."""
    temperature = 0.1
    with seed_offset.fixed():
        states = jax.random.normal(jax.random.key(3), (3, 1, 6, 2)) * 0.6 + 0.4  # (B, C, D, n)
    moments = unit_moments("sigmoid", temperature, field_bound(TWO_UNIT_PARAMS, TWO_UNIT_X,
                                                                "sigmoid"))  # fmt: skip
    grad_e = jax.grad(TWO_UNITS.energy)

    def flat_grad(state, x):
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(
            grad_e(TWO_UNIT_PARAMS, state, x))])  # fmt: skip

    def observables(state, x, y):
        g = flat_grad(state, x)
        c = TWO_UNITS.cost_fn(state, y)
        return jnp.concatenate([g, c[None], c * g])

    expected = brute_force_conditional(temperature, states[:, 0], averaged_layer, observables)
    num_params = 5
    g, c = expected[..., :num_params], expected[..., num_params]
    cg = expected[..., num_params + 1 :]
    energy_grad, covariance, cost, _ = _conditional._conditional(
        TWO_UNITS, ((averaged_layer,),), (True, True), 1, ((1.0,),) * 4, moments,
        TWO_UNIT_PARAMS, states, TWO_UNIT_X, TWO_UNIT_Y)  # fmt: skip
    np.testing.assert_allclose(energy_grad[0], jnp.mean(g, axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(cost[0], jnp.mean(c, axis=0), rtol=0, atol=1e-9)
    c_mean = jnp.mean(c, axis=1, keepdims=True)
    g_mean = jnp.mean(g, axis=1, keepdims=True)
    influence = cg - c_mean[..., None] * g - g_mean * (c - c_mean)[..., None]
    np.testing.assert_allclose(covariance[0], jnp.mean(influence, axis=0), rtol=0, atol=1e-9)


def test_mixing_weights_take_each_parameter_from_its_own_layer():
    net = LayeredNetwork((2, 3, 4, 2))
    params = net.init_params(jax.random.key(0))
    conditionings = _conditional.plan(net, 0.0)
    assert conditionings == ((2,), (1, 3))
    weights = _conditional.mixing_weights(net, params, conditionings)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    sizes = [3, 4, 2, 2 * 3, 3 * 4, 4 * 2]  # b1, b2, b3, W0, W1, W2 in ravel order
    blocks = np.split(weights, np.cumsum(sizes)[:-1], axis=1)
    expected = [(0, 1), (1, 0), (0, 1), (0, 1), (0.5, 0.5), (0.5, 0.5)]
    for block, (first, second) in zip(blocks, expected, strict=True):
        np.testing.assert_allclose(block[0], first)
        np.testing.assert_allclose(block[1], second)
    # Nudged phases, or a cost that couples the outputs, never average the output layer.
    assert _conditional.plan(net, 0.3) == ((2,),)
    assert _conditional.plan(LayeredNetwork((2, 3, 2), cost=CrossEntropy()), 0.0) == ((1,),)


def quadrature_gradient(temperature, half_width=4.0, num_points=801):
    """Exact ⟨C⟩ and its gradient for the two-unit network by 2-D trapezoid quadrature."""
    u = jnp.linspace(-half_width + 0.5, half_width + 0.5, num_points)
    nodes = jnp.stack(jnp.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)

    def loss(params):
        def per_example(x, y):
            energies = jax.vmap(TWO_UNITS.energy, in_axes=(None, 0, None))(params, nodes, x)
            weights = jax.nn.softmax(-(energies - jnp.min(energies)) / temperature)
            return weights @ jax.vmap(TWO_UNITS.cost_fn, in_axes=(0, None))(nodes, y)

        return jnp.mean(jax.vmap(per_example)(TWO_UNIT_X, TWO_UNIT_Y))

    return jax.value_and_grad(loss)(TWO_UNIT_PARAMS)


def check_against(estimator, problem, key, exact_grad):
    """``estimator``'s estimate within K MCSE of ``exact_grad`` per component, and its RMS z
    within the bounds of its law (tests/pooled_z.py, from its per-draw series); returned."""
    estimate, series = estimator.estimate_with_series(*problem, key)
    z = (flat(estimate.grad) - flat(exact_grad)) / flat(estimate.stderr)
    assert np.max(np.abs(z)) < K, z
    dof = samplers.effective_components(series.gradient)
    low, high = pooled_z.rms_bounds([z.size], [dof], tail=1e-4)
    assert low < np.sqrt(np.mean(z**2)) < high, (low, z, high, dof)
    return estimate


def test_two_unit_sigmoid_network_against_quadrature():
    temperature = 0.1
    loss, exact = quadrature_gradient(temperature)
    # Both units sampled; tests/test_collapsed.py checks the collapsed route.
    sampling = Sampling(method="hmc", hmc_steps=8, num_chains=4, num_samples=1500, num_warmup=200,
                        collapse=False)  # fmt: skip
    zs = []
    for i, estimator in enumerate([
        ThermalCovariance(TWO_UNITS, temperature, sampling),
        ThermalNudged(TWO_UNITS, temperature, beta=0.02, sampling=sampling),
    ]):  # fmt: skip
        estimate = estimator(TWO_UNIT_PARAMS, TWO_UNIT_X, TWO_UNIT_Y, jax.random.key(40 + i))
        zs.append((flat(estimate.grad) - flat(exact)) / flat(estimate.stderr))
        assert abs(float(estimate.loss) - float(loss)) < K * float(estimate.loss_stderr)
    z = np.concatenate(zs)  # 10 components: only the extremes are bounded, RMS is too noisy
    assert np.max(np.abs(z)) < K, z


@pytest.fixture(scope="module")
@seed_offset.fixed
def deep_quadratic():
    net = QuadraticNetwork((3, 4, 3, 2))  # three free layers: both conditionings matter
    params = net.init_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    targets = jax.random.normal(jax.random.key(2), (6, 2))
    return net, params, x, targets


def test_rao_blackwellised_estimators_match_the_gaussian_closed_form(deep_quadratic):
    net, params, x, targets = deep_quadratic
    temperature = 0.5
    exact = ThermalExact(net, temperature)(params, x, targets)
    # Every unit sampled (collapse=False): plain and conditional series of the same draws.
    sampling = Sampling(method="hmc", hmc_steps=8, num_chains=4, num_samples=500, num_warmup=150,
                        collapse=False)  # fmt: skip
    plain = ThermalCovariance(net, temperature, sampling, rao_blackwell=False)
    blackwell = ThermalCovariance(net, temperature, sampling, rao_blackwell=True)
    key = jax.random.key(7)
    rb_estimate = check_against(blackwell, (params, x, targets), key, exact.grad)
    plain_estimate = check_against(plain, (params, x, targets), key, exact.grad)
    # The same draws (same key): conditional expectations cut the noise well below plain's.
    ratio = float(rb_estimate.diagnostics["relative_stderr"]) / float(
        plain_estimate.diagnostics["relative_stderr"]
    )
    assert ratio < 0.5, ratio
    assert abs(float(rb_estimate.loss) - float(exact.loss)) < K * float(rb_estimate.loss_stderr)
    nudged = ThermalNudged(net, temperature, beta=0.05, sampling=sampling)
    check_against(nudged, (params, x, targets), jax.random.key(8), exact.grad)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ThermalCovariance(LayeredNetwork((2, 3), cost=CrossEntropy()), 0.5,
                                   rao_blackwell=True),
         "rao_blackwell=True needs a layered continuous network"),
        (lambda: ThermalNudged(QuadraticNetwork((2, 3, 1)), 0.5, rao_blackwell="yes"),
         "rao_blackwell must be None, True or False, got 'yes'"),
    ],
)  # fmt: skip
def test_bad_rao_blackwell_settings_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()

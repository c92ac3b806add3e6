"""Asynchronous NUTS (samplers._nuts_async) against the synchronous route, and its distribution.

The asynchronous route runs every chain's NUTS transitions back to back (a chain whose
trajectory has ended starts its next one), with NumPyro's arithmetic and key splitting; for the
same key each chain's draws, infos and final state must equal those of the synchronous route
(``samplers.nuts(..., asynchronous=False)``: NumPyro's ``sample_kernel`` vmapped over chains
and scanned by the driver). Both routes are compiled by XLA as different programs, so equality
holds up to rounding; the comparisons below allow 1e-9 in float64, far below any difference a
wrong key, a wrong checkpoint or a wrong merge would make (those change draws at O(1)).

Distribution: the README's 3-D Gaussian at T = 0.5 (samplers_testing), means and covariance
entries against the closed form within 5 MCSE (ArviZ bulk ESS). Nine checks, each failing by
chance with probability 5.7e-7 under a normal approximation: a false-failure budget below
1e-5. The same draws must be rejected against the answer at 1.25 T (the test can fail).
Targets are built under ``seed_offset.fixed``: the budget is about the sampler's draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seed_offset
from samplers_testing import GAUSSIAN_A, GAUSSIAN_B, assert_within_mcse

import samplers
from samplers._hmc import JITTER_STREAM, _uniform_signed
from samplers._keys import make_key_ops

#: The false-failure budget per run of this module, as stated above (9 checks at 5 MCSE);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 1e-5

TOL = 1e-9


def family_energy(position, context):
    """Correlated Gaussian, banana (``bend`` ≠ 0) and quartic terms, and a region
    ``position[0] > cut`` of energy −∞ (so that the energy becomes non-finite there).

    One energy for several targets, so that each route compiles once for all of them.
    """
    precision, mean, bend, quartic, cut = context
    d = position - mean
    banana = jnp.zeros_like(d).at[1].set(bend * d[0] ** 2)
    e = d - banana
    energy = 0.5 * e @ precision @ e + quartic * jnp.sum(d**4)
    return jnp.where(position[0] > cut, -jnp.inf, energy)


@seed_offset.fixed
def correlated_precision(dim, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q @ np.diag(1.0 / np.geomspace(0.4, 2.0, dim) ** 2) @ q.T


DIM = 5
PRECISION = correlated_precision(DIM, seed=3)
MEAN = np.linspace(-1.0, 1.0, DIM)
TARGETS = {
    "gaussian": (PRECISION, MEAN, 0.0, 0.0, np.inf),
    "banana + quartic": (PRECISION, MEAN, 0.6, 0.05, np.inf),
}


def as_context(values):
    """Float64 arrays (not weakly typed Python scalars: a new weak type would recompile)."""
    return tuple(jnp.asarray(x, dtype=jnp.float64) for x in values)


def per_chain_init(kernel):
    """The kernel with every numeric leaf of its start state made a per-chain value.

    The driver runs ``init`` inside its vmap over chains, so fields that ``init`` makes alike
    for every chain (the iteration counters) stay shared there, while each chain of the
    asynchronous route has its own. XLA rounds a division by a shared value (a multiplication
    by its reciprocal) differently, and the step-size adaptation amplifies the last bits. Tying
    every leaf to the chain's start (adding 0 × its first coordinate) keeps the values and
    makes them per chain, so the two routes do the same arithmetic.
    """

    def init(position, context, temperature):
        state = kernel.init(position, context, temperature)
        tie = 0 * position[0]

        def per_chain(leaf):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) or leaf.dtype == bool:
                return leaf
            return leaf + tie.astype(leaf.dtype)

        return jax.tree_util.tree_map(per_chain, state)

    return kernel._replace(init=init)


def both_routes(key, energy_fn, start, context, temperature, kernel_options, **sample_options):
    traces = {}
    for asynchronous in (True, False):
        kernel = samplers.nuts(energy_fn, asynchronous=asynchronous, **kernel_options)
        if not asynchronous:
            kernel = per_chain_init(kernel)
        traces[asynchronous] = samplers.sample(
            key, kernel, start, context, temperature, check_finite=False, **sample_options
        )
    return traces[True], traces[False]


def assert_same_trace(a, b, what):
    def leaves(trace):
        tree = (trace.samples, trace.info, trace.final_state, trace.nonfinite_step)
        return jax.tree_util.tree_leaves_with_path(tree)

    assert jax.tree_util.tree_structure(a.final_state) == jax.tree_util.tree_structure(
        b.final_state
    )
    for (path, x), (_, y) in zip(leaves(a), leaves(b), strict=True):
        name = f"{what}: {jax.tree_util.keystr(path)}"
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.shape == y.shape and x.dtype == y.dtype, (name, x.shape, y.shape)
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind in "biu":  # steps, divergences, iterations, keys: exactly
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=TOL, atol=TOL, err_msg=name)


OPTIONS = dict(num_warmup=30)


@pytest.fixture(scope="module")
def start():
    return jnp.asarray(np.random.default_rng(1).normal(size=(6, DIM)))


@pytest.mark.parametrize("target", list(TARGETS))
def test_asynchronous_route_equals_synchronous_route(target, start):
    context = as_context(TARGETS[target])
    a, b = both_routes(
        jax.random.key(3), family_energy, start, context, 0.7, OPTIONS, num_samples=40
    )
    assert a.samples.shape == (6, 40, DIM) and a.info.acceptance_rate.shape == (6, 40)
    assert a.num_warmup == b.num_warmup == 30
    assert_same_trace(a, b, target)
    # The draws moved and the adaptation ran (a trace of constants would pass trivially). The
    # typical chain, not every one: after 30 warm-up steps a chain may stay put for its 40
    # draws (seen at fresh seeds: spreads of 0.014 and 1e-15 beside 0.2–1.5 for the others).
    spread = np.std(np.asarray(a.samples), axis=1)
    assert np.median(spread) > 0.1, spread
    assert np.all(np.asarray(a.nonfinite_step) == -1)  # every energy finite: -1, "never"
    assert not np.allclose(np.asarray(a.final_state.adapt_state.step_size), 1.0)


def test_nonfinite_step_is_the_synchronous_routes(start):
    # Energy −∞ beyond position[0] > cut, far from the mode: a chain whose trajectory gets
    # there takes it (a state of infinite weight), as early warm-up trajectories of step size
    # 1 do, and reports that step; chain 0 starts there and reports 0. Whether the other chains
    # get there depends on their keys (at a fresh seed all five did, at steps 1–10), so "never"
    # (-1) is checked where every energy is finite, above.
    cut = MEAN[0] + 8.0
    context = as_context((PRECISION, MEAN, 0.0, 0.0, cut))
    moved = start.at[0, 0].set(cut + 1.0)
    a, b = both_routes(
        jax.random.key(4), family_energy, moved, context, 0.7, OPTIONS, num_samples=40
    )
    assert_same_trace(a, b, "non-finite")
    bad = np.asarray(a.nonfinite_step)
    assert bad[0] == 0
    assert np.any(bad > 0), bad  # a chain that got there mid-run reports its step
    assert np.all((bad == -1) | (bad < 30 + 40)), bad
    with pytest.raises(samplers.NonFiniteEnergyError, match="chain 0: first non-finite energy"):
        samplers.check_finite(a)


def test_batched_targets_with_a_shared_leaf_and_a_depth_cap():
    # Two targets sharing the precision (context_axes None) with their own means; the tree
    # depth is capped at 2 during warm-up and 3 afterwards (at most 3 and 7 leapfrog steps).
    starts = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, DIM)))
    means = jnp.asarray(np.stack([MEAN, -2.0 * MEAN]))
    context = as_context((PRECISION, means, 0.3, 0.02, np.inf))
    a, b = both_routes(
        jax.random.key(5), family_energy, starts, context, 0.5,
        dict(num_warmup=30, max_tree_depth=(2, 3)), num_samples=30, batched=True,
        context_axes=(None, 0, None, None, None),
    )  # fmt: skip
    assert a.samples.shape == (2, 3, 30, DIM) and a.nonfinite_step.shape == (2, 3)
    assert_same_trace(a, b, "batched")
    steps = np.asarray(a.info.num_integration_steps)
    assert steps.max() == 7 and steps.min() >= 1
    # The targets' own means were used: the draws sit near each mean.
    centre = np.asarray(a.samples).mean(axis=(1, 2))
    assert np.linalg.norm(centre[0] - MEAN) < np.linalg.norm(centre[0] + 2.0 * MEAN)


def gaussian_energy(position, context):
    matrix, vector = context
    return 0.5 * position @ matrix @ position - vector @ position


def test_asynchronous_draws_have_the_gaussian_moments():
    temperature = 0.5
    kernel = samplers.nuts(gaussian_energy, num_warmup=200)
    start = jnp.zeros((4, 3)).at[:, 0].set(jnp.array([-2.0, 2.0, -1.0, 1.0]))
    trace = samplers.sample(
        jax.random.key(21), kernel, start, (GAUSSIAN_A, GAUSSIAN_B), temperature,
        num_samples=1000,
    )  # fmt: skip
    assert trace.samples.shape == (4, 1000, 3)
    assert not np.any(trace.info.is_divergent)

    def statistics(samples, mean):
        centred = np.asarray(samples) - mean
        i, j = np.triu_indices(3)
        return np.concatenate([np.asarray(samples), centred[..., i] * centred[..., j]], -1)

    def exact(t):
        ref = samplers.gaussian_reference(GAUSSIAN_A, GAUSSIAN_B, t)
        i, j = np.triu_indices(3)
        return np.asarray(ref.mean), np.concatenate(
            [np.asarray(ref.mean), np.asarray(ref.covariance)[i, j]]
        )

    mean, answer = exact(temperature)
    stats = statistics(trace.samples, mean)
    assert_within_mcse(stats, answer, 5.0, "asynchronous NUTS")
    with pytest.raises(AssertionError):
        assert_within_mcse(stats, exact(1.25 * temperature)[1], 5.0, "at 1.25 T")


def test_key_operations_equal_jax_random():
    keys = jax.random.split(jax.random.key(8), 64)
    ops = make_key_ops(keys)
    assert ops.fast  # JAX's default keys
    data = jax.random.key_data(keys)
    split = jax.jit(jax.vmap(lambda d: ops.split(d, 3)))(data)
    np.testing.assert_array_equal(
        split, jax.random.key_data(jax.vmap(lambda k: jax.random.split(k, 3))(keys))
    )
    p = jnp.linspace(0.0, 1.0, 64)
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(ops.bernoulli))(data, p), jax.vmap(jax.random.bernoulli)(keys, p)
    )
    normal = jax.jit(jax.vmap(lambda d: ops.normal(d, (7,), jnp.float64)))(data)
    np.testing.assert_array_equal(
        normal, jax.vmap(lambda k: jax.random.normal(k, (7,), jnp.float64))(keys)
    )
    folded = jax.jit(jax.vmap(lambda d: ops.fold_in(d, 0x6A177E)))(data)
    np.testing.assert_array_equal(
        folded, jax.random.key_data(jax.vmap(lambda k: jax.random.fold_in(k, 0x6A177E))(keys))
    )
    for dtype in (jnp.float32, jnp.float64):  # HMC's jitter factor, both routes
        drawn = jax.jit(jax.vmap(lambda k, dtype=dtype: _uniform_signed(k, dtype)))(keys)
        expected = jax.vmap(
            lambda k, dtype=dtype: jax.random.uniform(
                jax.random.fold_in(k, JITTER_STREAM), (), dtype, minval=-1.0, maxval=1.0
            )
        )(keys)
        np.testing.assert_array_equal(drawn, expected)
        assert drawn.dtype == dtype and float(jnp.min(drawn)) < -0.8 < 0.8 < float(jnp.max(drawn))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_tree_depth=0), "max_tree_depth must be an integer >= 1"),
        (dict(max_tree_depth=(3,)), "max_tree_depth must be an integer >= 1"),
        (dict(max_tree_depth=2.0), "max_tree_depth must be an integer >= 1"),
        (dict(asynchronous="yes"), "asynchronous must be True or False"),
        (dict(num_warmup=-1), "num_warmup must be an integer >= 0"),
    ],
)
def test_nuts_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        samplers.nuts(gaussian_energy, **{"num_warmup": 5, **options})


@pytest.mark.parametrize("asynchronous", [True, False])
def test_bad_inputs_get_the_same_messages_on_both_routes(asynchronous):
    kernel = samplers.nuts(gaussian_energy, num_warmup=5, asynchronous=asynchronous)
    context = (GAUSSIAN_A, GAUSSIAN_B)
    with pytest.raises(ValueError, match="position must have shape \\(chain, \\*event\\)"):
        samplers.sample(jax.random.key(0), kernel, jnp.zeros(3), context, num_samples=2)
    with pytest.raises(ValueError, match="num_warmup=2 is shorter than the NUTS kernel's"):
        samplers.sample(
            jax.random.key(0), kernel, jnp.zeros((2, 3)), context, num_samples=2, num_warmup=2
        )
    with pytest.raises(ValueError, match="chain 1 has position\\[1, 0\\] = nan"):
        start = jnp.zeros((2, 3)).at[1, 0].set(jnp.nan)
        samplers.sample(jax.random.key(0), kernel, start, context, num_samples=2)

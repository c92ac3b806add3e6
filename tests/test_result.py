import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop import GradientEstimate


def test_gradient_estimate_is_a_pytree_and_jits():
    est = GradientEstimate(
        grad={"w": jnp.ones((2, 3))},
        loss=jnp.asarray(1.5),
        stderr={"w": 0.1 * jnp.ones((2, 3))},
        loss_stderr=jnp.asarray(0.01),
        diagnostics={"ess": jnp.asarray(100.0)},
    )
    doubled = jax.jit(lambda e: jax.tree_util.tree_map(lambda a: 2 * a, e))(est)
    assert isinstance(doubled, GradientEstimate)
    np.testing.assert_allclose(doubled.grad["w"], 2.0)
    np.testing.assert_allclose(doubled.diagnostics["ess"], 200.0)
    assert est.is_stochastic
    np.testing.assert_allclose(est.relative_stderr(), 0.1)


def test_deterministic_estimate_has_no_stderr():
    est = GradientEstimate(grad={"w": jnp.ones(3)}, loss=jnp.asarray(0.0))
    assert not est.is_stochastic
    assert float(est.relative_stderr()) == 0.0
    # None leaves vanish from the pytree, so tree_map over an estimate stays cheap.
    assert len(jax.tree_util.tree_leaves(est)) == 2

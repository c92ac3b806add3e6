"""The exact thermal reference: enumeration of spin states, the Gaussian closed form."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

import samplers
from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_positive
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = ["MAX_ENUMERATED_SPINS", "ThermalExact"]

MAX_ENUMERATED_SPINS = 20


@dataclasses.dataclass(frozen=True)
class ThermalExact(Estimator):
    r"""Exact :math:`dL_T/dθ` with :math:`L_T = ⟨C⟩_0`, by autodiff of an exact ``⟨C⟩``.

    Spin networks of up to 20 spins: enumeration of all :math:`2^n` states with weights by
    logsumexp. :class:`~thermoeqprop.models.QuadraticNetwork`: the Gaussian closed form.

    Compiled once per model and batch shape: the temperature (and the ``beta`` of
    :meth:`nudged_energy_grad`) is a traced argument, so a temperature sweep reuses the code.

    Args:
        model: A spin network (≤ 20 spins) or a quadratic network.
        temperature: T > 0.
    """

    model: EnergyModel
    temperature: float = 0.05

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        if isinstance(self.model, QuadraticNetwork):
            return
        if not self.model.is_spin:
            raise ValueError(
                f"ThermalExact needs a spin network or a QuadraticNetwork, got "
                f"{type(self.model).__name__}; use a sampled estimator"
            )
        if self.model.state_size > MAX_ENUMERATED_SPINS:
            raise ValueError(
                f"ThermalExact enumerates 2^n states; n = {self.model.state_size} spins exceeds "
                f"the limit of {MAX_ENUMERATED_SPINS} (2^{self.model.state_size} states)"
            )

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        temperature = float(self.temperature)  # an int T would compile a second time
        loss, grad = _exact_loss_and_grad(self.model, params, x, targets, temperature)
        return GradientEstimate(grad=grad, loss=loss)

    def predict(self, params, x, rng_key=None) -> jax.Array:
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        return _exact_output(self.model, params, x, float(self.temperature))

    def nudged_energy_grad(self, params, x, targets, beta) -> Any:
        r"""Exact :math:`⟨∂_θE⟩_β = ∂_θ A(β)` (batch mean), a pytree like ``params``.

        Its difference quotient (:meth:`nudged_gradient`) is exactly what
        :class:`ThermalNudged` estimates: comparing the two isolates its Monte Carlo error
        from its O(β²) bias.
        """
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        temperature = float(self.temperature)
        return _exact_free_energy_grad(self.model, params, x, targets, temperature, beta)

    def nudged_gradient(self, params, x, targets, beta, symmetric: bool = True) -> Any:
        """The exact expectation of :class:`ThermalNudged`'s estimate at this finite ``beta``:
        ``[∂θA(β) − ∂θA(−β)] / 2β`` (``symmetric``) or ``[∂θA(β) − ∂θA(0)] / β``, from
        :meth:`nudged_energy_grad`; only the sampler's Monte Carlo error separates the two."""
        low = -beta if symmetric else 0.0
        high = self.nudged_energy_grad(params, x, targets, beta)
        lower = self.nudged_energy_grad(params, x, targets, low)
        return jax.tree_util.tree_map(lambda a, b: (a - b) / (beta - low), high, lower)

    def expected(self, params, x, observable, temperature=None):
        """Exact ``⟨observable(s)⟩`` (batch, …) under the free Gibbs law (spins only)."""
        t = self.temperature if temperature is None else temperature
        return _spin_average(self.model, params, x, t, observable)


def _spin_average(model, params, x, temperature, observable):
    n = model.state_size
    states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)  # (2^n, n)

    def per_example(x_b):
        energies = jax.vmap(model.energy, in_axes=(None, 0, None))(params, states, x_b)
        weights = jax.nn.softmax(-energies / temperature)
        values = jax.vmap(observable)(states)
        return jnp.tensordot(weights, values, axes=1)

    return jax.vmap(per_example)(x)


@functools.partial(jax.jit, static_argnums=0)
def _exact_output(model, params, x, temperature):
    if isinstance(model, QuadraticNetwork):
        mean, _ = model.gaussian_moments(params, x, temperature)
        return jax.vmap(model.output)(mean)
    return _spin_average(model, params, x, temperature, model.output)


@functools.partial(jax.jit, static_argnums=0)
def _exact_loss_and_grad(model, params, x, targets, temperature):
    def loss(p):
        if isinstance(model, QuadraticNetwork):
            return jnp.mean(model.expected_cost(p, x, targets, temperature))
        n = model.state_size
        states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)

        def per_example(x_b, y_b):
            energies = jax.vmap(model.energy, in_axes=(None, 0, None))(p, states, x_b)
            costs = jax.vmap(model.cost_fn, in_axes=(0, None))(states, y_b)
            return jnp.dot(jax.nn.softmax(-energies / temperature), costs)

        return jnp.mean(jax.vmap(per_example)(x, targets))

    return jax.value_and_grad(loss)(params)


@functools.partial(jax.jit, static_argnums=0)
def _exact_free_energy_grad(model, params, x, targets, temperature, beta):
    def free_energy(p):  # batch mean of A(β) = −T log Σ_s exp(−F_β(s)/T)
        if isinstance(model, QuadraticNetwork):
            k = model.num_outputs
            projector = jnp.zeros((model.state_size,)).at[-k:].set(1.0)
            precision = model.precision(p) + beta * jnp.diag(projector)
            pad = jnp.zeros((x.shape[0], model.state_size - k))
            linear = model.linear_term(p, x) + beta * jnp.concatenate([pad, targets], axis=1)
            quad = jnp.einsum("bi,bi->b", linear, jnp.linalg.solve(precision, linear.T).T)
            _, logdet = jnp.linalg.slogdet(precision)
            values = (
                0.5 * beta * jnp.sum(targets**2, axis=1) - 0.5 * quad + 0.5 * temperature * logdet
            )
            return jnp.mean(values)
        n = model.state_size
        states = samplers.spin_states(jnp.arange(2**n), n, dtype=x.dtype)

        def per_example(x_b, y_b):
            nudged = jax.vmap(model.total_energy, in_axes=(None, 0, None, None, None))
            return -temperature * jax.nn.logsumexp(-nudged(p, states, x_b, y_b, beta) / temperature)

        return jnp.mean(jax.vmap(per_example)(x, targets))

    return jax.grad(free_energy)(params)

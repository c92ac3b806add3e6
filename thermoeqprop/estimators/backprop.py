r"""Backpropagation through the feedforward network with the same layers: the baseline.

The feedforward pass :math:`u_{k+1} = ρ(W_k^\top u_k + b_{k+1})`, :math:`u_0 = x`, uses the
same parameter pytree as :class:`~thermoeqprop.models.LayeredNetwork`, so EP and
backpropagation train the same architecture with the same loop and can be compared directly.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop.models.layered import LayeredNetwork

__all__ = ["FeedforwardBackprop"]


def _forward(model: LayeredNetwork, params, x):
    u = x
    for w, b in zip(params["weights"], params["biases"], strict=True):
        u = model.rho(u @ w + b)
    return u


@dataclasses.dataclass(frozen=True)
class FeedforwardBackprop(Estimator):
    """Exact gradient of the feedforward network's mean cost by ``jax.grad`` (compiled).

    Args:
        model: A :class:`~thermoeqprop.models.LayeredNetwork`; its layer sizes, activation and
            cost define the feedforward network.
    """

    model: LayeredNetwork

    def __post_init__(self):
        if not isinstance(self.model, LayeredNetwork):
            raise ValueError(
                f"FeedforwardBackprop needs a LayeredNetwork, got {type(self.model).__name__}"
            )

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        loss, grad = _loss_and_grad(self.model, params, x, targets)
        return GradientEstimate(grad=grad, loss=loss)

    def predict(self, params, x, rng_key=None):
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        return _predict(self.model, params, x)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, params, x):
    return _forward(model, params, x)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grad(model, params, x, targets):
    def loss(p):
        return jnp.mean(jax.vmap(model.cost)(_forward(model, p, x), targets))

    return jax.value_and_grad(loss)(params)

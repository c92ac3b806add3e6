"""Costs ``C(output; y)`` on the network's output units (independent of the parameters)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["COSTS", "CrossEntropy", "SquaredError", "get_cost"]


@dataclasses.dataclass(frozen=True)
class SquaredError:
    r"""Squared error :math:`C = \tfrac12 \sum_o (u_o - y_o)^2` of outputs ``u`` and targets ``y``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(SquaredError()(jnp.array([0.5, 1.0]), jnp.array([0.0, 1.0])))
        0.125
    """

    name = "squared_error"

    def __call__(self, output: jax.Array, target: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum((output - target) ** 2)


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    r"""Softmax cross-entropy with the outputs as logits scaled by ``scale``:
    :math:`C = -\sum_o y_o \log \mathrm{softmax}(s\,u)_o` for a one-hot (or probability) ``y``.

    The outputs of a bounded-activation network live in (0, 1), so ``scale`` sets how sharp the
    class probabilities can become.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(CrossEntropy(scale=1.0)(jnp.zeros(2), jnp.array([1.0, 0.0]))), 4)
        0.6931
    """

    scale: float = 4.0
    name = "cross_entropy"

    def __call__(self, output: jax.Array, target: jax.Array) -> jax.Array:
        return -jnp.sum(target * jax.nn.log_softmax(self.scale * output))


COSTS = {"squared_error": SquaredError, "cross_entropy": CrossEntropy}


def get_cost(name: str):
    """The cost named ``name`` (one of :data:`COSTS`) with default settings."""
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; valid costs are {sorted(COSTS)}")
    return COSTS[name]()

"""Costs of the outputs of a qubit network: the operator cost and losses of expectations.

A :class:`~thermoeqprop.quantum.QuantumNetwork` takes either; EP nudges with the operator
``Ĉ`` (for :class:`ExpectationLoss`, its linearisation at the free expectations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ExpectationLoss", "SquaredErrorCost"]


class SquaredErrorCost:
    """``Ĉ = ½ Σ_j (B_j − y_j)²`` for Pauli-string outputs ``B_j`` (so ``B_j² = 1``).

    As an operator this is ``Σ_j [½(1 + y_j²) − y_j B_j]``: nudging is a field ``−β y_j B_j`` on
    the outputs, and ``⟨Ĉ⟩ = Σ_j [½(1 + y_j²) − y_j ⟨B_j⟩]`` is linear in the expectations.
    """

    is_linear = True

    def __call__(self, expectations: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.sum(0.5 * (1.0 + targets**2) - targets * expectations)

    def __eq__(self, other):
        return type(other) is SquaredErrorCost

    def __hash__(self):
        return hash(SquaredErrorCost)

    def __repr__(self):
        return "SquaredErrorCost()"


@dataclasses.dataclass(frozen=True)
class ExpectationLoss:
    """A loss ``ℓ(⟨B_1⟩, …, ⟨B_m⟩; y)`` of output expectation values.

    EP nudges with ``Ĉ = Σ_j (∂ℓ/∂⟨B_j⟩) B_j`` evaluated at the free expectations (Wanjura &
    Marquardt 2024): by the chain rule ``dℓ/dθ = d⟨Ĉ⟩/dθ`` with those coefficients held fixed.

    Attributes:
        loss_fn: ``(expectations (m,), targets (m,)) → scalar``, differentiable by JAX.
        is_linear: Set when ``ℓ`` is affine in the expectations (then ``Ĉ`` does not depend on
            the free state).
    """

    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    is_linear: bool = False

    def __call__(self, expectations: jax.Array, targets: jax.Array) -> jax.Array:
        return self.loss_fn(expectations, targets)

    @classmethod
    def squared_error(cls) -> ExpectationLoss:
        """``ℓ = ½ Σ_j (⟨B_j⟩ − y_j)²``: the nudge ``Σ_j (⟨B_j⟩ − y_j) B_j`` vanishes on examples
        that are already right, unlike the operator cost :class:`SquaredErrorCost`."""
        return cls(_half_squared_error)


def _half_squared_error(expectations: jax.Array, targets: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum((expectations - targets) ** 2)

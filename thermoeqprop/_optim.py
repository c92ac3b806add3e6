"""Optimisers of the training loops, and penalties and constraints as optax transformations.

A penalty ``R(θ)`` or a constraint ``θ ∈ K`` is a ``optax.GradientTransformation`` in the
optimiser's chain, so every loop takes it without a hook of its own:

* before the optimiser, transformations of the gradient: :func:`add_penalty` (adds ``∇R``),
  ``optax.add_decayed_weights`` (``R = ½ λ‖θ‖²``, per parameter with an array ``λ``),
  ``optax.clip_by_global_norm``;
* after it, :func:`project`: the update is replaced by ``P_K(θ + u) − θ``, so the new
  parameters are the projection of the optimiser's step onto ``K`` (for example
  ``optax.projections.projection_box``: bounds on fields and couplings).

For example, weight decay on the couplings of a qubit network only (one rate per parameter
from one per group, ``Hamiltonian.group_values``), Adam, then every parameter kept in
[−2, 2]::

    rates = model.hamiltonian.group_values({"coupling": 1e-3, "field": 0.0})
    optax.chain(
        optax.add_decayed_weights(rates),
        optax.adam(0.02),
        project(lambda p: optax.projections.projection_box(p, -2.0, 2.0)),
    )
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from thermoeqprop._validation import check_positive

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "add_penalty", "build_optimizer", "project"]

OPTIMIZERS = ("adam", "sgd", "momentum")
LR_SCHEDULES = ("constant", "cosine")


def check_optimizer_settings(optimizer: str, learning_rate: float, lr_schedule: str) -> None:
    """One-line ``ValueError`` naming a bad optimiser name, rate or schedule."""
    check_positive("learning_rate", learning_rate)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {list(OPTIMIZERS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {list(LR_SCHEDULES)}")


def build_optimizer(
    optimizer: str, learning_rate: float, lr_schedule: str, total_steps: int
) -> optax.GradientTransformation:
    """``"adam"``, ``"sgd"`` or ``"momentum"`` (SGD with Nesterov momentum 0.9) at a constant
    rate or under cosine decay to 1 % over ``total_steps``."""
    if lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, total_steps, alpha=0.01)
    else:
        lr = learning_rate
    if optimizer == "adam":
        return optax.adam(lr)
    if optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9, nesterov=True)
    return optax.sgd(lr)


def add_penalty(penalty_fn: Callable[[Any], jax.Array]) -> optax.GradientTransformation:
    """Add the gradient of a penalty ``R(θ)`` to the updates (chain it before the optimiser).

    Args:
        penalty_fn: ``params → scalar``, differentiable by JAX, for example
            ``lambda p: 1e-3 * jnp.sum(jnp.abs(p * coupling_mask))``.

    Example:
        >>> import jax.numpy as jnp
        >>> t = add_penalty(lambda p: 0.5 * jnp.sum(p**2))
        >>> params = jnp.array([1.0, -2.0])
        >>> t.update(jnp.zeros(2), t.init(params), params)[0].tolist()
        [1.0, -2.0]
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_penalty needs the parameters: call update(grad, state, params)")
        grad = jax.grad(penalty_fn)(params)
        return jax.tree.map(lambda u, g: u + g.astype(u.dtype), updates, grad), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def project(projection: Callable[[Any], Any]) -> optax.GradientTransformation:
    """Keep the parameters in a set ``K``: the update ``u`` becomes ``P_K(θ + u) − θ`` (chain
    it after the optimiser, so that ``optax.apply_updates`` lands on ``P_K(θ + u)``).

    Args:
        projection: ``params → params`` onto ``K``, for example
            ``lambda p: optax.projections.projection_box(p, lower, upper)``.

    Example:
        >>> import jax.numpy as jnp
        >>> box = project(lambda p: jnp.clip(p, -1.0, 1.0))
        >>> params = jnp.array([0.5, 0.9])
        >>> u, _ = box.update(jnp.array([1.0, -0.2]), box.init(params), params)
        >>> (params + u).tolist()
        [1.0, 0.7]
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("project needs the parameters: call update(grad, state, params)")
        target = projection(optax.apply_updates(params, updates))
        return jax.tree.map(lambda t, p: t - p, target, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

"""The one result type that every gradient estimator returns.

Training, sweeps, diagnostics and the command line consume :class:`GradientEstimate` and never
need to know which estimator produced it (docs/design.md#the-flow-of-data).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["GradientEstimate"]


class GradientEstimate(NamedTuple):
    """A weight gradient with its uncertainty and the facts of how it was obtained.

    It is a pytree, so it passes through ``jax.jit`` and ``jax.tree_util`` unchanged.

    Attributes:
        grad: Estimate of ``dL/dθ``, a pytree shaped like the parameters; an optax optimizer
            consumes it directly.
        loss: Scalar estimate of the loss ``L`` (mean cost over the batch) at the current
            parameters.
        stderr: Monte Carlo standard error of ``grad``, shaped like it; ``None`` for
            deterministic estimators (zero temperature, exact references).
        loss_stderr: Monte Carlo standard error of ``loss``; ``None`` when deterministic.
        diagnostics: Flat ``dict[str, Array]`` of per-estimate facts: relaxation residuals and
            iteration counts, effective sample sizes, R-hat, acceptance rates, swap rates.
            Mostly scalars; an estimator may add per-example arrays (leading batch axis).
        observables: ``dict[str, Array]`` of quantities the estimator computed on the way
            that a caller would otherwise need a second solve for, e.g. the output
            expectation values of the free and nudged states (the quantum estimators, see
            ``thermoeqprop.quantum``); empty when the estimator has none.
    """

    grad: Any
    loss: jax.Array
    stderr: Any = None
    loss_stderr: jax.Array | None = None
    diagnostics: dict[str, jax.Array] = {}  # noqa: RUF012 (NamedTuple default; never mutated)
    observables: dict[str, jax.Array] = {}  # noqa: RUF012 (NamedTuple default; never mutated)

    @property
    def is_stochastic(self) -> bool:
        """Whether the estimate carries a Monte Carlo standard error."""
        return self.stderr is not None

    def relative_stderr(self) -> jax.Array:
        """Norm of the standard error over the norm of the gradient (0 when deterministic)."""
        if self.stderr is None:
            return jnp.zeros(())
        g = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(self.grad)))
        s = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(self.stderr)))
        return s / jnp.maximum(g, jnp.finfo(g.dtype).tiny)

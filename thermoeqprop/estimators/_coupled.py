r"""Coupled nudged phases: common random numbers (docs/mathematics.md, "Coupled phases").

:class:`~thermoeqprop.estimators.ThermalNudged` with ``coupled=True`` runs the two phases
(``+β`` and ``−β``, or ``β`` and 0) of every chain as one joint chain on pairs
``(s⁺, s⁻)``: each step applies the local kernel to both members with the **same** key, so
they share momenta, step-size jitter, accept uniforms, heat-bath uniforms and jump signs, and
they start from the same noise around their own phase's start. Each member alone is still an
exact chain for its own Gibbs law (its key stream is that of an ordinary chain), so the mean of
``[∂θE(s⁺) − ∂θE(s⁻)] / (2β)`` keeps the independent estimator's expectation; under the
synchronous coupling the members stay close and the per-draw difference is a pathwise
derivative, whose variance does not grow like ``1/β²``.

HMC and NUTS adapt their step size and mass matrix on the first member (the ``+β`` phase)
and the second member uses the same ones at every step (different step sizes would integrate
different trajectories). The pair is one Markov chain: its MCSE comes from the ESS of the
difference series, not from the two phases as if independent.

The kernel's state is the local kernel's with a leading pair axis; positions travel through
the driver flattened to ``(2 n,)`` (the driver knows one event axis), and the draws come back
as ``(…, 2, n)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import samplers

__all__ = ["BETA_LEAF", "check", "flat_pairs", "pair_betas", "pair_positions", "paired"]

# Index of the nudge β in every thermal sampler context ((params, x, targets, beta, …) and the
# collapsed marginal's (params, x W_0, targets, beta, table[, jumps])): the only leaf the two
# members of a pair do not share.
BETA_LEAF = 3


def _pair_axes(context):
    return tuple(0 if i == BETA_LEAF else None for i in range(len(context)))


def _shared_adaptation(state):
    """Both members' step size and mass matrix set to the first member's (HMC, NUTS)."""
    if not hasattr(state, "adapt_state"):
        return state
    first = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a[:1], a.shape), state.adapt_state)
    return state._replace(adapt_state=first)


@functools.lru_cache(maxsize=64)
def paired(kernel: samplers.Kernel) -> samplers.Kernel:
    """``kernel`` run on pairs of chains with common random numbers.

    The position is the two members' positions concatenated, ``(2 n,)``; the context's β leaf
    (index :data:`BETA_LEAF`) holds the two members' nudges ``(2,)``, every other leaf is
    shared. The state and the info gain a leading pair axis (``state.position`` is
    ``(2, n)``). Not for parallel tempering (its swaps would need coupling too)."""

    def init(position, context, temperature):
        pair = position.reshape(2, -1)
        state = jax.vmap(kernel.init, in_axes=(0, _pair_axes(context), None))(
            pair, context, temperature
        )
        return _shared_adaptation(state)

    def step(rng_key, state, context):
        state, info = jax.vmap(kernel.step, in_axes=(None, 0, _pair_axes(context)))(
            rng_key, state, context
        )
        return _shared_adaptation(state), info

    def validate(positions, context, temperature):
        first = tuple(leaf[0] if i == BETA_LEAF else leaf for i, leaf in enumerate(context))
        positions = np.asarray(positions)
        kernel.validate(positions.reshape(-1, positions.shape[-1] // 2), first, temperature)

    return samplers.Kernel(
        init=init,
        step=step,
        configuration_fields=kernel.configuration_fields,
        num_warmup=kernel.num_warmup,
        validate=validate,
        name=f"coupled {kernel.name}",
        run_chains=None,
        chain_collectives=kernel.chain_collectives,
    )


def pair_betas(betas, batch: int, dtype) -> jax.Array:
    """The context's β leaf for pairs: ``(batch, 2)``."""
    return jnp.broadcast_to(jnp.asarray(betas, dtype=dtype), (batch, 2))


def pair_positions(first, second) -> jax.Array:
    """Two phases' starts ``(batch, chain, n)`` as the pairs' flattened ``(batch, chain, 2 n)``."""
    return jnp.concatenate([first, second], axis=-1)


def flat_pairs(final) -> jax.Array:
    """Pairs' final positions ``(…, 2, n)`` as the next round's starts ``(…, 2 n)``."""
    return final.reshape(final.shape[:-2] + (-1,))


def check(estimator) -> None:
    """Coupling needs one temperature and no control variates (each phase's fitted
    coefficients would differ, and their folds are not built for pairs)."""
    if not isinstance(estimator.coupled, bool):
        raise ValueError(f"coupled must be True or False, got {estimator.coupled!r}")
    if not estimator.coupled:
        return
    if estimator.sampling.tempering:
        raise ValueError(
            f"coupled phases need one temperature (got tempering={estimator.sampling.tempering}):"
            " the replicas' swaps are not coupled; pass tempering=0 or coupled=False"
        )
    if estimator.control_variates is not None:
        raise ValueError(
            f"coupled phases cannot be combined with control_variates "
            f"(got {estimator.control_variates!r}); pass control_variates=None or coupled=False"
        )

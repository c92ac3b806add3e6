r"""Rows whose importance weights are heavy-tailed, drawn again by collapsed HMC
(docs/mathematics.md, "Heavy-tailed weights: HMC in their place").

Where the Pareto shape ``k̂`` of a row's weights exceeds ``Sampling.pareto_fallback``, that
row's self-normalised estimate and its MCSE are not to be trusted (Vehtari et al., "Pareto
smoothed importance sampling", 2024): the proposal leaves thin some region the law weighs. On
the main job at trained parameters this happens for a few digits in a hundred, where a second
output is half-high beside the winner, and no change of the proposal tried removed it. Those
rows are drawn again by the Markov chain of collapsed sampling
(:func:`~thermoeqprop.estimators._collapsed.draw_collapsed`, HMC on the same marginal), laid
out as the row was: one chain per group, as many recorded draws as a group holds, after as
many warm-up steps as a group has pilot draws; every draw of such a row weighs 1.

The choice reads the row's first draws only and the chains are independent of them, so the
example's estimate given the choice is the chains' (as PSIS-LOO refits the model exactly for
the observations whose k̂ is high). The batch's series then join independent weighted draws
and autocorrelated chains; the batch-means MCSE and split R-hat read both, as they read chains.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from thermoeqprop.estimators._drawing import on_one_device
from thermoeqprop.estimators._importance import IMPORTANCE_ROUNDS

__all__ = ["FALLBACK_ROWS", "fallback_sampling", "heavy_rows", "with_fallback"]

# The heavy rows go to HMC calls of this many rows each (the last padded by repeats), or of
# one row when only one is heavy: two compilations, whatever the count of heavy rows. On the
# main job an HMC call of 2 × (40 + 200) steps took 8 ms for one row, 17 ms for two and 18 ms
# for four (scratch); of 2 × (120 + 200) steps, 20–25 ms for four.
FALLBACK_ROWS = 4


def heavy_rows(pareto_k, limit: float) -> np.ndarray:
    """The rows whose ``k̂`` exceeds ``limit`` (a NaN ``k̂``, too few draws to fit a tail, never
    does)."""
    return np.flatnonzero(np.asarray(pareto_k) > limit)


def fallback_sampling(sampling):
    """The collapsed-HMC :class:`~thermoeqprop.estimators.Sampling` that draws a row of
    importance ``sampling`` again: one chain per group, a group's draws
    (``IMPORTANCE_ROUNDS · num_warmup + num_samples``) recorded per chain after as many warm-up
    steps as a group has pilot draws (``IMPORTANCE_ROUNDS · num_warmup``): with ``num_warmup``
    alone, the step size adapted in 40 steps left up to 80 divergent transitions in a batch of
    the default ``train`` (its first epochs)."""
    pilot = IMPORTANCE_ROUNDS * sampling.num_warmup
    return dataclasses.replace(
        sampling,
        method="hmc",
        num_samples=pilot + sampling.num_samples,
        num_warmup=pilot,
        neyman_share=0.0,
        pareto_fallback=None,
        pareto_smoothing=None,
    )


def with_fallback(draw, drawn, x, targets, limit, rng_key):
    """``drawn`` (importance draws of rows ``x``, ``targets``) with every row whose ``k̂``
    exceeds ``limit`` replaced by ``draw(x, targets, key)``'s chains (collapsed HMC laid out
    as the importance draws: (rows, group, draw, …)), :data:`FALLBACK_ROWS` rows a call (one
    when only one row is heavy), the
    ``k``-th call with key ``fold_in(rng_key, k)``; those rows' log weights become 0, their
    Kish ESS fraction 1, their ``k̂`` 0 (weights of one value have no tail), ``redrawn``
    True and ``divergences`` their chains' divergent transitions. ``drawn`` unchanged when no
    row is heavy or ``limit`` is None."""
    if limit is None:
        return drawn
    rows = heavy_rows(drawn.trace.info.pareto_k, limit)
    if not rows.size:
        return drawn
    size = 1 if rows.size == 1 else FALLBACK_ROWS
    for k, start in enumerate(range(0, rows.size, size)):
        chunk = rows[start : start + size]
        padded = np.resize(chunk, size)
        chains = draw(x[padded], targets[padded], jax.random.fold_in(rng_key, k))
        # The padding's repeats point past the last row, where the scatter drops them.
        index = np.where(np.arange(size) < chunk.size, padded, drawn.states.shape[0])
        sharded = (chains.states, chains.trace.samples, chains.final_positions,
                   chains.trace.info.is_divergent)  # fmt: skip
        drawn = _replaced(drawn, jax.numpy.asarray(index), *map(on_one_device, sharded))
    return drawn


@jax.jit
def _replaced(drawn, index, states, samples, final, divergent):
    """``drawn`` with rows ``index`` (out of range: dropped) replaced by the chains, in one
    compiled call (one per padded size) instead of a dispatch and a copy per array."""

    def put(a, b):
        return a.at[index].set(b.astype(a.dtype), mode="drop")

    info = drawn.trace.info
    ones = jax.numpy.ones(index.shape, info.ess_fraction.dtype)
    info = info._replace(
        log_weights=put(info.log_weights, jax.numpy.zeros_like(samples[..., 0])),
        ess_fraction=put(info.ess_fraction, ones),
        pareto_k=put(info.pareto_k, 0 * ones),
        redrawn=put(info.redrawn, ones > 0),
        divergences=put(info.divergences, jax.numpy.sum(divergent, axis=(1, 2))),
    )
    trace = drawn.trace._replace(samples=put(drawn.trace.samples, samples), info=info)
    return drawn._replace(states=put(drawn.states, states), trace=trace,
                          final_positions=put(drawn.final_positions, final))  # fmt: skip

r"""Importance sampling of the kept class (docs/mathematics.md, "Importance sampling").

With collapsed sampling the law left to draw is the kept class's exact marginal
``p(s_K) ∝ exp(−F(s_K)/T)`` (:mod:`thermoeqprop.estimators._collapsed`), ten dimensions for
the main job, and at low temperature it is close to the Gaussian of its Laplace expansion.
``Sampling(method="importance")`` draws it by self-normalised importance sampling instead of a
Markov chain: independent draws from a multivariate Student-t proposal ``q``, each weighted by
``w ∝ exp(−F(s)/T) / q(s)``. One draw costs one marginal energy, no gradient, and no draw
depends on another.

The proposal, per example and phase, depends on the parameters, input and target only, never on
the final draws: a mixture of multivariate t laws whose bells start at T = 0 minima (the
relaxed one, those reached after pushes towards the largest outputs), each moved to a mode of
the marginal by a few damped Newton steps, and at the states pushed towards every output low
and towards each of those outputs, left where the push put them; each scaled by ``T H⁻¹`` there
(eigenvalues floored), plus bridges stretched between the first mode and the others.
``IMPORTANCE_ROUNDS`` rounds of ``num_chains × num_warmup`` pilot draws move every component to
the weighted mean and covariance of the draws it is responsible for (mixture population Monte
Carlo); the proposal whose pilot weights had the largest Kish ESS is kept for the final
``num_chains × num_samples`` draws. Every draw, pilot or final, is weighted against the
deterministic mixture of all the proposals used (multiple importance sampling), and the draws
are dealt into ``num_chains`` groups, each holding its share of every round spread along it, so
that split R-hat and the batch-means ESS read them as they read chains.

The statistics then weight every draw by ``ω = N w / Σ w`` (mean 1 over an example's draws):
:func:`~thermoeqprop.estimators._conditional.conditional_statistics` with ``draw_weights``
builds the influence series of the self-normalised estimates, whose mean is the estimate and
whose MCSE is its delta-method standard error. Two diagnostics of the weights come with the
draws: Kish's effective sample size ``(Σw)² / (N Σw²)`` as a fraction of the draws, and the
Pareto shape ``k̂`` of the largest weights (Vehtari et al., "Pareto smoothed importance
sampling", 2024): above 0.7 the estimate and its MCSE are not to be trusted.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.estimators._collapsed import (
    CollapsedSamples,
    _full_states,
    classes,
    kept_units,
    marginal_energy_fn,
)
from thermoeqprop.estimators._conditional import conditional_activation
from thermoeqprop.estimators._drawing import at_sampler_dtype
from thermoeqprop.estimators._mode_jumps import NUDGE_BETA
from thermoeqprop.estimators._pareto import normalised_weights, pareto_khat
from thermoeqprop.estimators._unit_tables import field_bound, unit_free_energy

__all__ = [
    "IMPORTANCE_ROUNDS",
    "ImportanceInfo",
    "ImportanceTrace",
    "draw_importance",
    "normalised_weights",
    "pareto_khat",
    "suits_by_default",
]

# Pilot rounds that adapt the proposal before the final draws.
IMPORTANCE_ROUNDS = 3
# Degrees of freedom of the Student-t proposal: tails heavier than a Gaussian's, so that the
# weights stay bounded where the target's tails are a little wider than the fitted scale.
PROPOSAL_DF = 10
# Damped Newton steps from the T = 0 minimum to the marginal's mode, and their largest length.
NEWTON_STEPS = 3
MAX_NEWTON_STEP = 1.0
# Floor of the Hessian's eigenvalues (the energies' unit curvature is 1): a flat or concave
# direction gets a wide proposal instead of an infinite or negative variance.
HESSIAN_FLOOR = 1e-2
# Outputs towards which a push finds another T = 0 minimum (the largest ones).
PUSHED_OUTPUTS = 2
# Smallest share of the draws a mixture component gets (defensive mixture).
MIN_SHARE = 0.05
# The share of the draws of the bridge components (between the minima), all together.
BRIDGE_SHARE = 0.2
# Draws per example whose energies are evaluated together (see ``weighted``).
ENERGY_CHUNK = 32
# The most kept units for which ``thermoeqprop train`` picks importance sampling without
# --sampler: the proposal's Hessians, eigendecompositions and weights degrade with the
# dimension (the main job keeps 10 outputs; a second hidden layer of 128 units would keep 138,
# where one epoch did not finish in minutes).
DEFAULT_MAX_KEPT = 32
# A component whose pilot draws carry fewer effective draws than this per kept unit keeps
# its centre and scale in that round (a covariance is not estimated from a handful of draws).
MIN_PILOT_ESS = 4


class ImportanceInfo(NamedTuple):
    """The weights of every draw (pilot and final) and their diagnostics.

    Attributes:
        log_weights: (batch, group, draw) ``log w = −F/T − log q``, up to a constant per example,
            ``q`` the deterministic mixture of the rounds' proposals (pilot and final draws).
        ess_fraction: (batch,) Kish's ESS of the weights over the draws, ``(Σw)² / (N Σw²)``.
        pareto_k: (batch,) Pareto shape ``k̂`` of the largest weights (:func:`pareto_khat`).
        redrawn: (batch,) whether the row was drawn again by collapsed HMC because its ``k̂``
            was too large (``Sampling.pareto_fallback``; its weights are then all 1).
        divergences: (batch,) divergent transitions of a redrawn row's HMC chains (0 for the
            others).
    """

    log_weights: jax.Array
    ess_fraction: jax.Array
    pareto_k: jax.Array
    redrawn: jax.Array
    divergences: jax.Array


class ImportanceTrace(NamedTuple):
    """What stands for a sampler's trace: ``samples`` (batch, group, draw, n_kept) and
    ``info`` (:class:`ImportanceInfo`)."""

    samples: jax.Array
    info: ImportanceInfo


def suits_by_default(model) -> bool:
    """Whether ``thermoeqprop train`` draws ``model``'s states by importance sampling when no
    sampler is named: a layered continuous network with collapsed sampling whose kept class
    has at most :data:`DEFAULT_MAX_KEPT` units."""
    split = classes(model)
    return split is not None and len(kept_units(model)) <= DEFAULT_MAX_KEPT


# The proposal's small factorisations are written out in array operations rather than
# LAPACK's: jaxlib's batched LAPACK kernels on a CPU split a large batch into tasks of XLA's
# thread pool and block that pool's thread until they finish, so that two such kernels running
# side by side on a two-thread pool wait for each other forever (seen: four batched triangular
# solves of the deterministic mixture's densities, every pool thread blocked in
# ``ParallelBatchMap``). Only ``eigh`` is left to LAPACK: its calls depend on one another. The
# loops are ``fori_loop``s: unrolled, they took longer to compile and no less to run.


def _cholesky(a):
    """Lower Cholesky factor of symmetric positive definite (…, n, n) matrices, column by
    column in a loop; NaN where one is not positive definite (as LAPACK's)."""
    n = a.shape[-1]
    index = jnp.arange(n)

    def column(j, factor):
        row = jnp.where(index < j, jnp.take(factor, j, axis=-2), 0.0)  # (…, n): L[j, :j]
        diagonal = jnp.sqrt(jnp.take(jnp.take(a, j, axis=-1), j, axis=-1) - jnp.sum(row**2, -1))
        below = jnp.take(a, j, axis=-1) - jnp.einsum("...ik,...k->...i", factor, row)
        below = below / diagonal[..., None]
        new = jnp.where(index > j, below, jnp.where(index == j, diagonal[..., None], 0.0))
        return jnp.where(index == j, new[..., :, None], factor)

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


def _lower_inverse(factor):
    """Inverse of lower-triangular (…, n, n) matrices, row by row by forward substitution in
    a loop."""
    n = factor.shape[-1]
    index = jnp.arange(n)
    eye = jnp.eye(n, dtype=factor.dtype)

    def row(i, inverse):
        coefficients = jnp.where(index < i, jnp.take(factor, i, axis=-2), 0.0)
        new = eye[i] - jnp.einsum("...k,...kj->...j", coefficients, inverse)
        new = new / jnp.take(jnp.take(factor, i, axis=-2), i, axis=-1)[..., None]
        return jnp.where((index == i)[:, None], new[..., None, :], inverse)

    return jax.lax.fori_loop(0, n, row, jnp.zeros_like(factor))


def _t_log_density(s, centre, chol, df=PROPOSAL_DF):
    """Log density of the multivariate t (centre, scale ``chol chol^T``) at ``s`` (…, n), up
    to a constant that depends on ``n`` and ``df`` only."""
    # One product with the inverse factor for all draws (a triangular solve per draw was
    # slower on a CPU).
    z = (s - centre) @ _lower_inverse(chol).T
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * (df + centre.shape[-1]) * jnp.log1p(jnp.sum(z**2, axis=-1) / df) - log_det


def _mixture_draws(key, mixture, count, df=PROPOSAL_DF):
    """``count`` draws (count, n) of a mixture of multivariate t laws and
    :func:`_component_log_densities` at them; ``mixture = (log_probs (K,), centres (K, n),
    chols (K, n, n))``."""
    log_probs, centres, chols = mixture
    key_pick, key_normal, key_chi = jax.random.split(key, 3)
    pick = jax.random.categorical(key_pick, log_probs, shape=(count,))
    z = jax.random.normal(key_normal, (count, centres.shape[-1]), centres.dtype)
    # χ²_df / df as a mean of squared normals: JAX's gamma sampler is a rejection loop per
    # element, which cost more than the energies on a CPU.
    chi = jax.random.normal(key_chi, (count, df), centres.dtype)
    z = z / jnp.sqrt(jnp.mean(chi**2, axis=-1, keepdims=True))
    s = centres[pick] + jnp.einsum("cij,cj->ci", chols[pick], z)
    return s, _component_log_densities(s, mixture)


def _component_log_densities(s, mixture):
    """(count, K) ``log π_k + log t_k(s)``: their log-sum-exp is the mixture's log density,
    their softmax the components' responsibilities."""
    log_probs, centres, chols = mixture
    each = jax.vmap(lambda c, l: _t_log_density(s, c, l), out_axes=-1)(centres, chols)
    return each + log_probs


@functools.partial(jax.jit, static_argnums=0)
def _minima(model, params, x, targets, beta):
    """(batch, 2 (1 + P), n_kept) states that start the proposal's components, P =
    ``PUSHED_OUTPUTS`` (one output: 2). First the T = 0 minima: the one of ``F_β`` relaxed from
    the model's initial state, and those reached by relaxing ``F_β`` again after a push
    (``E + NUDGE_BETA · C(·; e)``) towards each of the P largest outputs there, ``e`` its
    one-hot code (one output: each end of its range). Then states pushed and not relaxed
    again: towards every output low (``e = 0``), and the pushed states themselves (the
    output turned on, the others off). Where a push lands back in the first minimum the
    components coincide."""
    from thermoeqprop.estimators.zero_temperature import Relaxation, relax

    relaxation = Relaxation(tolerance=1e-6)
    kept = kept_units(model)
    first = relax(model, params, x, targets, beta, model.initial_state(x), relaxation).state
    outputs = jax.vmap(model.output)(first)
    if outputs.shape[-1] > 1:
        order = jnp.argsort(outputs, axis=-1)[:, ::-1]
        codes = [jax.nn.one_hot(order[:, i], outputs.shape[-1], dtype=x.dtype)
                 for i in range(min(PUSHED_OUTPUTS, outputs.shape[-1]))]  # fmt: skip
    else:
        codes = [jnp.zeros_like(outputs), jnp.ones_like(outputs)]
    minima, pushed = [first[:, kept]], []
    for code in codes:
        pushed.append(relax(model, params, x, code, NUDGE_BETA, first, relaxation).state)
        relaxed = relax(model, params, x, targets, beta, pushed[-1], relaxation).state
        minima.append(relaxed[:, kept])
    # Every output pushed low, not relaxed again: where the network hesitates, the law at
    # T > 0 has a mode there that the T = 0 energy lacks (the hidden layer's entropy). The
    # pushed states likewise: where two outputs are on at the minimum, each on alone.
    # (One output: its first push, towards 0, is that state already.)
    low = (
        pushed[0]
        if outputs.shape[-1] == 1
        else relax(model, params, x, jnp.zeros_like(outputs), NUDGE_BETA, first, relaxation).state
    )
    minima += [low[:, kept]] + [state[:, kept] for state in pushed]
    return jnp.stack(minima, axis=1)


def _interleaving(counts, groups):
    """The order (total,) that deals the draws of rounds of ``counts`` draws (concatenated)
    to ``groups`` groups, read group after group, each round's draws spread evenly along every
    group: windows of a group's series then hold each round in its share, so that split R-hat
    and the batch-means ESS see no drift from one round's proposal to the next."""
    keys, index, start = [], [], 0
    for count in counts:
        j = np.arange(count)
        keys.append(np.stack([j % groups, (j // groups + 0.5) / (count // groups)], axis=1))
        index.append(start + j)
        start += count
    keys, index = np.concatenate(keys), np.concatenate(index)
    return index[np.lexsort((keys[:, 1], keys[:, 0]))], start


@functools.lru_cache(maxsize=64)
def _example_fn(model, nudged: bool, rounds: int, pilot: int, groups: int, draws: int):
    """The compiled draw of one batch: every example's proposal and final draws."""
    energy_fn = marginal_energy_fn(model, nudged)
    pilot_rounds = rounds if pilot else 0

    def one(params, input_field, target, beta, table, temperature, starts, key):
        def energy(s):
            return energy_fn(s, (params, input_field, target, beta, table))

        grad, hess = jax.grad(energy), jax.hessian(energy)
        n = starts.shape[-1]
        eye = jnp.eye(n, dtype=starts.dtype)

        def floored(h):
            values, vectors = jnp.linalg.eigh(h)
            return jnp.maximum(jnp.abs(values), HESSIAN_FLOOR), vectors

        def newton(s, _):
            values, vectors = floored(hess(s))
            step = vectors @ ((vectors.T @ grad(s)) / values)
            length = jnp.linalg.norm(step)
            return s - step * jnp.minimum(1.0, MAX_NEWTON_STEP / jnp.maximum(length, 1e-300)), None

        def to_mode(start):
            return jax.lax.scan(newton, start, None, NEWTON_STEPS)[0]

        def laplace(centre):  # the Cholesky factor of T H⁻¹ there, the log Laplace mass
            values, vectors = floored(hess(centre))
            chol = _cholesky(temperature * (vectors / values) @ vectors.T)
            return chol, -energy(centre) / temperature - 0.5 * jnp.sum(jnp.log(values))

        # The T = 0 minima (the first half of the starts, _minima) move to modes; the pushed
        # states stay where the push left them: they are no minima of F, and Newton steps
        # carried the low one back to the first minimum, which left the excursions it is
        # there for (the winning output off, rare but of large cost) with a handful of draws;
        # on trained networks they carried most of the gradient's variance.
        half = starts.shape[0] // 2
        centres = jnp.concatenate([jax.vmap(to_mode)(starts[:half]), starts[half:]])
        chols, masses = jax.vmap(laplace)(centres)
        # Each bell gets a share of the draws between MIN_SHARE and 1 − MIN_SHARE by its
        # Laplace mass (two equal starts: one component, whatever the shares; a pushed state
        # by the same formula at its centre). Between the first minimum and each other
        # centre, a bridge component, centred half-way and stretched along the segment
        # (covariance: the first minimum's plus d dᵀ/4, d the segment), shares BRIDGE_SHARE:
        # where the network hesitates between outputs, the law has mass on the way from one
        # minimum to another, which bells around the minima leave out.
        shares = jnp.clip(jax.nn.softmax(masses), MIN_SHARE, 1 - MIN_SHARE)
        others = centres[1:] - centres[:1]
        spans = jnp.einsum("ki,kj->kij", others, others) / 4
        bridges = _cholesky(chols[0] @ chols[0].T + spans + 1e-12 * eye)
        count = others.shape[0]
        shares = jnp.concatenate([(1 - BRIDGE_SHARE) * shares / jnp.sum(shares),
                                  jnp.full((count,), BRIDGE_SHARE / count)])  # fmt: skip
        centres = jnp.concatenate([centres, centres[:1] + others / 2])
        chols = jnp.concatenate([chols, bridges])
        mixture = (jnp.log(shares), centres, chols)

        def weighted(key, mixture, count):  # draws, log targets, component log densities
            s, components = _mixture_draws(key, mixture, count)
            # In chunks of draws (all examples at once under the batch's vmap), so that the
            # table look-ups' intermediates stay in cache: one pass over all draws at once
            # spent most of its time moving them through memory. A count that is not a
            # multiple of the chunk is padded with repeats of the first draws.
            chunks = -(-count // ENERGY_CHUNK)
            padded = s[np.arange(chunks * ENERGY_CHUNK) % count]
            energies = jax.lax.map(jax.vmap(energy), padded.reshape(chunks, ENERGY_CHUNK, n))
            return s, -energies.reshape(-1)[:count] / temperature, components

        def adapt(carry, key):
            # One step of mixture population Monte Carlo: every component moves to the
            # weighted mean and covariance of the draws it is responsible for; the proposal
            # whose pilot weights had the largest Kish ESS is the one kept.
            best, best_ess, mixture = carry
            s, log_p, components = weighted(key, mixture, pilot)
            w = jax.nn.softmax(log_p - jax.scipy.special.logsumexp(components, axis=-1))
            ess = 1.0 / jnp.sum(w**2)
            _, centres, chols = mixture
            resp = jax.nn.softmax(components, axis=-1) * w[:, None]  # (pilot, K)
            mass = jnp.sum(resp, axis=0)
            means = (resp.T @ s) / mass[:, None]
            dev = s[None] - means[:, None]  # (K, pilot, n)
            covs = jnp.einsum("kp,kpi,kpj->kij", resp.T, dev, dev) / mass[:, None, None]
            new_chols = _cholesky(covs + 1e-10 * temperature * eye)
            # A component moves only if its own draws carry enough effective weight and its
            # new covariance is positive definite; the shares follow the responsibilities.
            own_ess = jnp.sum(resp, axis=0) ** 2 / jnp.sum(resp**2, axis=0)
            ok = (own_ess >= MIN_PILOT_ESS * n) & jnp.all(jnp.isfinite(new_chols), axis=(1, 2))
            shares = jnp.clip(mass, MIN_SHARE, 1 - MIN_SHARE)
            moved = (
                jnp.log(shares / jnp.sum(shares)),
                jnp.where(ok[:, None], means, centres),
                jnp.where(ok[:, None, None], new_chols, chols),
            )
            better = ess > best_ess
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), mixture, best)
            mixture = moved
            return (best, jnp.maximum(ess, best_ess), mixture), (s, log_p, carry[2])

        keys = jax.random.split(key, rounds + 1)
        # the proposals drawn from, stacked (round, …), and the pilot rounds' draws
        used, pilot_s, pilot_p = jax.tree.map(lambda a: a[None][:0], mixture), [], []
        if pilot_rounds:
            init = (mixture, jnp.asarray(-1.0, starts.dtype), mixture)
            carry, (pilot_s, pilot_p, used) = jax.lax.scan(adapt, init, keys[:rounds])
            mixture, pilot_s, pilot_p = carry[0], [pilot_s.reshape(-1, n)], [pilot_p.reshape(-1)]
        s, log_p, _ = weighted(keys[-1], mixture, groups * draws)
        s, log_p = jnp.concatenate([*pilot_s, s]), jnp.concatenate([*pilot_p, log_p])
        proposals = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), used, mixture)
        # Every draw, the pilot ones included, is weighted against the deterministic mixture
        # of all the proposals, each with its share of the draws (multiple importance
        # sampling's balance heuristic): no draw is thrown away.
        each = jax.vmap(lambda m: jax.scipy.special.logsumexp(_component_log_densities(s, m), -1),
                        out_axes=-1)(proposals)  # fmt: skip
        log_q = jax.scipy.special.logsumexp(each + np.log(counts / total), axis=-1)
        log_w = (log_p - log_q)[order]
        w = jax.nn.softmax(log_w)
        ess = 1.0 / (total * jnp.sum(w**2))
        return s[order].reshape(groups, -1, n), log_w.reshape(groups, -1), ess

    counts = np.array([pilot] * pilot_rounds + [groups * draws])
    order, total = _interleaving(counts, groups)
    batched = jax.vmap(one, in_axes=(None, 0, 0, 0, None, None, 0, 0))

    @jax.jit
    def run(params, input_field, targets, betas, table, temperature, starts, key):
        keys = jax.random.split(key, input_field.shape[0])
        s, log_w, ess = batched(params, input_field, targets, betas, table, temperature, starts,
                                keys)  # fmt: skip
        return s, log_w, ess, pareto_khat(log_w.reshape(log_w.shape[0], -1))

    return run


@at_sampler_dtype
def draw_importance(model, sampling, params, x, targets, beta, temperature, rng_key,
                    initial_positions=None, nudged=True) -> CollapsedSamples:  # fmt: skip
    """Draw the kept class of ``p_β(s | x)`` by importance sampling (module docstring), every
    example of a batch; the arguments of ``thermal.draw_states`` (one temperature, one
    ``beta``; ``initial_positions`` is not used: the proposal starts at the relaxed minimum).

    Returns a :class:`~thermoeqprop.estimators._collapsed.CollapsedSamples` whose ``trace`` is
    an :class:`ImportanceTrace`; its ``states`` are the proposal's draws, which only their
    weights (``trace.info.log_weights``) make draws of ``p_β``.
    """
    del initial_positions
    if np.ndim(beta) != 0:
        raise ValueError(f"importance sampling draws one phase at a time, got beta={beta!r}")
    if not nudged and beta != 0:
        raise ValueError(
            f"nudged=False samples the free phase only, so beta must be 0, got {beta!r}"
        )
    if np.ndim(temperature) != 0:
        raise ValueError(f"importance sampling needs one temperature, got {temperature!r}")
    activation = conditional_activation(model)
    bound = field_bound(params, x, activation) if activation != "linear" else 0.0
    table = unit_free_energy(activation, temperature, bound, x.dtype)
    betas = jnp.full((x.shape[0],), beta, dtype=x.dtype)
    starts = _minima(model, params, x, targets, beta)
    run = _example_fn(model, bool(nudged), IMPORTANCE_ROUNDS,
                      sampling.num_chains * sampling.num_warmup, sampling.num_chains,
                      sampling.num_samples)  # fmt: skip
    kept, log_w, ess, khat = run(params, x @ params["weights"][0], targets, betas, table,
                                 jnp.asarray(temperature, x.dtype), starts, rng_key)  # fmt: skip
    zeros = jnp.zeros(x.shape[0], jnp.int32)  # no row redrawn, no divergence (_fallback.py)
    info = ImportanceInfo(log_w, ess, khat, redrawn=zeros.astype(bool), divergences=zeros)
    trace = ImportanceTrace(kept, info)
    return CollapsedSamples(_full_states(model, kept), trace, kept[:, :, -1, :])

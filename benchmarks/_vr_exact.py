"""Exact asymptotic variances of Markov-chain means on small spin networks, by enumeration.

Shared by ``benchmarks/variance_reduction.py`` (section ``spin``: block Gibbs, plain against
conditional expectations) and ``benchmarks/_vr_collapsed_spins.py`` (section
``collapsed-spins``: chains on one class's exact marginal). Every chain here is a product of
transition matrices over the states it moves on (all ``2ⁿ`` spin states, or the ``2ᵏ``
configurations of one class); the asymptotic variance of the mean of a series ``f`` along it,
``N·Var(f̄_N) → Var_π(f) + 2 Σ_{h ≥ 1} Cov_π(f(x_0), f(x_h))``, comes from the fundamental
matrix ``(I − P + 1π)⁻¹``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["block_kernels", "chain_variance", "conditional", "example_terms", "groups"]


def groups(states: np.ndarray, columns) -> np.ndarray:
    """An integer label per state: equal labels ⇔ equal spins on ``columns`` (the label's
    bit ``j`` is spin ``columns[j]`` up)."""
    bits = (states[:, list(columns)] > 0).astype(np.int64)
    return bits @ (2 ** np.arange(bits.shape[1])) if bits.shape[1] else np.zeros(len(states), int)


def conditional(f, weights, labels):
    """E[f | label] at every state, under ``weights``."""
    totals = np.zeros((labels.max() + 1,) + f.shape[1:])
    mass = np.bincount(labels, weights, minlength=labels.max() + 1)
    np.add.at(totals, labels, weights[:, None] * f)
    return (totals / mass[:, None])[labels]


def chain_variance(functions, kernels, pi):
    """Asymptotic variance (× N) of the mean over sweeps of ``S_t = Σ_a f_a(x_{t,a})``, where
    ``x_{t,a}`` is the state after the ``a``-th update of sweep ``t`` (``kernels`` are the
    updates, in order; ``functions`` maps a position 1…L to f_a (states, P))."""
    size, layers = len(pi), len(kernels)

    def product(first, last):  # kernels first+1 … last, as one matrix
        out = np.eye(size)
        for kernel in kernels[first:last]:
            out = out @ kernel
        return out

    sweep = product(0, layers)
    fundamental = np.linalg.inv(np.eye(size) - sweep + np.outer(np.ones(size), pi))
    centred = {a: f - pi @ f for a, f in functions.items()}
    total = 0.0
    for a, fa in centred.items():
        for b, fb in centred.items():
            if a == b:
                total = total + pi @ (fa * fa)
            elif a < b:  # within a sweep, both orders
                total = total + 2 * pi @ (fa * (product(a, b) @ fb))
            # across sweeps: Σ_{h ≥ 1} Cov(f_a(x_{0,a}), f_b(x_{h,b}))
            later = product(a, layers) @ fundamental @ product(0, b) @ fb
            total = total + 2 * pi @ (fa * later)
    return total


def block_kernels(states: np.ndarray, pi: np.ndarray, blocks) -> list[np.ndarray]:
    """The heat-bath update of each block (in order) as a transition matrix over ``states``:
    the block is redrawn from ``pi`` given every other spin."""
    n = states.shape[1]
    kernels = []
    for block in blocks:
        labels = groups(states, [i for i in range(n) if i not in block])
        kernel = np.zeros((len(states), len(states)))
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            kernel[np.ix_(members, members)] = pi[members] / pi[members].sum()
        kernels.append(kernel)
    return kernels


def example_terms(net, params, states, x_b, y_b, temperature):
    """``(pi, cost, grads)`` of one example over ``states``: the Gibbs law at ``temperature``,
    the cost and the raveled ``∂θE`` of every state."""
    flat_params, unravel = ravel_pytree(params)
    energy = np.asarray(jax.vmap(lambda s: net.energy(params, s, x_b))(states))
    cost = np.asarray(jax.vmap(lambda s: net.cost_fn(s, y_b))(states))
    grads = np.asarray(
        jax.vmap(lambda s: jax.grad(lambda p: net.energy(unravel(p), s, x_b))(flat_params))(states)
    )
    pi = np.exp(-(energy - energy.min()) / temperature)
    return pi / pi.sum(), cost, grads

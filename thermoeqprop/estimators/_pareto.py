r"""Pareto tails of importance weights: the shape ``k̂`` and Pareto smoothing
(docs/mathematics.md, "Importance sampling", "Pareto smoothing").

Both fit a generalised Pareto law to the largest weights of each row, as PSIS does (Vehtari
et al., "Pareto smoothed importance sampling", 2024; ArviZ's ``psislw``): the tail is the
``M = ⌈min(N/5, 3√N)⌉`` largest of a row's ``N`` weights, and the law is fitted to their
exceedances over the next-largest with the empirical-Bayes estimate of Zhang and Stephens
(2009) and PSIS's weakly informative prior on the shape. :func:`pareto_khat` reports the
shape; :func:`pareto_smoothed` replaces the ``M`` largest weights by the fitted law's
quantiles at ``(z − ½)/M``, ``z = 1 … M``, in the order of the weights they replace, capped
at the largest raw weight. The smoothed weights keep the estimate consistent and bound the
variance that a few large weights give it and its MCSE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["normalised_weights", "pareto_khat", "pareto_smoothed", "tail_length", "weights_of"]

# Fewest tail weights for a fit (21 draws): below it k̂ is NaN and no weight is smoothed.
MIN_TAIL = 5


def tail_length(num_draws: int) -> int:
    """``M = ⌈min(N/5, 3√N)⌉``, the weights of a row's tail."""
    return int(np.ceil(min(0.2 * num_draws, 3 * np.sqrt(num_draws))))


def _tail(log_weights):
    """The ``M + 1`` largest of each row's (…, N) log weights, less the row's largest, and
    their indices (descending); the exceedances of the ``M`` largest weights over the next
    one (ascending) and that threshold weight."""
    tail = tail_length(log_weights.shape[-1])
    top, index = jax.lax.top_k(log_weights - jnp.max(log_weights, axis=-1, keepdims=True),
                               tail + 1)  # fmt: skip
    threshold = jnp.exp(top[..., tail:])
    exceed = (jnp.exp(top[..., :tail]) - threshold)[..., ::-1]
    return index[..., :tail], exceed, threshold[..., 0]


def _gpd_fit(x, prior_b=3.0, prior_k=10.0):
    """The Zhang–Stephens shape (with PSIS's prior) and scale of ascending positive
    exceedances (…, M)."""
    m = x.shape[-1]
    grid = 30 + int(np.sqrt(m))
    quartile = x[..., int(m / 4 + 0.5) - 1]
    b = 1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = b / (prior_b * quartile[..., None]) + 1.0 / x[..., -1:]  # (…, grid)
    k = jnp.mean(jnp.log1p(-b[..., :, None] * x[..., None, :]), axis=-1)
    profile = m * (jnp.log(-b / k) - k - 1.0)
    weights = jax.nn.softmax(profile, axis=-1)
    weights = jnp.where(weights >= 10 * jnp.finfo(x.dtype).eps, weights, 0.0)
    b_post = jnp.sum(b * weights, axis=-1) / jnp.sum(weights, axis=-1)
    k_post = jnp.mean(jnp.log1p(-b_post[..., None] * x), axis=-1)
    return (m * k_post + prior_k * 0.5) / (m + prior_k), -k_post / b_post


@jax.jit
def pareto_khat(log_weights) -> jax.Array:
    """Pareto shape ``k̂`` of the largest importance weights, per row of (…, N) log weights.

    ``k̂ < 0.5``: the weights have a finite variance and the estimate converges at the usual
    rate; ``k̂ > 0.7``: it is not to be trusted. NaN (not measured) with fewer than
    :data:`MIN_TAIL` tail weights (under 21 draws).
    """
    if tail_length(log_weights.shape[-1]) < MIN_TAIL:
        return jnp.full(log_weights.shape[:-1], jnp.nan, log_weights.dtype)
    return _gpd_fit(_tail(log_weights)[1])[0]


@jax.jit
def pareto_smoothed(log_weights) -> jax.Array:
    """Pareto-smoothed log weights of (rows, …) log weights, each row's draws being the axes
    after the first (as :func:`normalised_weights` reads them): each row's ``M`` largest
    weights replaced by the fitted tail's quantiles (module docstring). A row whose tail
    cannot be fitted (weights of one value, as those of a row drawn again by HMC, a fit
    without a positive finite scale, or fewer than 21 draws) keeps its weights."""
    shape = log_weights.shape
    flat = log_weights.reshape(shape[0], -1)
    tail = tail_length(flat.shape[-1])
    if tail < MIN_TAIL:
        return log_weights
    index, exceed, threshold = _tail(flat)
    shape_k, scale = _gpd_fit(exceed)
    fitted = jnp.isfinite(shape_k) & (scale > 0) & jnp.isfinite(scale) & (exceed[:, -1] > 0)
    k, sigma = jnp.where(fitted, shape_k, 0.5)[:, None], jnp.where(fitted, scale, 1.0)[:, None]
    p = (np.arange(1, tail + 1) - 0.5) / tail
    quantile = jnp.where(jnp.abs(k) > 1e-8, sigma / k * ((1.0 - p) ** (-k) - 1.0),
                         -sigma * np.log1p(-p))  # fmt: skip
    # ascending quantiles for the ascending tail; the row's largest weight is exp(0) = 1
    smoothed = jnp.log(jnp.minimum(threshold[:, None] + quantile, 1.0))[:, ::-1]
    smoothed += jnp.max(flat, axis=-1, keepdims=True)
    rows = jnp.arange(flat.shape[0])[:, None]
    out = flat.at[rows, index].set(jnp.where(fitted[:, None], smoothed, flat[rows, index]))
    return out.reshape(shape)


@jax.jit
def normalised_weights(log_weights) -> jax.Array:
    """``ω = N w / Σ w`` over each example's draws (the axes after the first): mean 1."""
    axes = tuple(range(1, log_weights.ndim))
    count = np.prod(log_weights.shape[1:])
    shifted = log_weights - jax.scipy.special.logsumexp(log_weights, axis=axes, keepdims=True)
    return count * jnp.exp(shifted)


def weights_of(log_weights, smooth: bool) -> jax.Array:
    """The weights ``ω`` (mean 1 per row) the statistics use: :func:`normalised_weights` of
    the :func:`pareto_smoothed` log weights, or of the raw ones (``smooth`` False)."""
    return normalised_weights(pareto_smoothed(log_weights) if smooth else log_weights)

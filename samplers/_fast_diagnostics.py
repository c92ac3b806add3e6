"""Vectorised effective sample size, MCSE and split R-hat for many quantities at once, in JAX.

ArviZ evaluates these one quantity at a time; ten thousand quantities (the components of a
high-dimensional state or statistic) take it seconds. These functions compute the same
quantities for every element of a ``(chain, draw, *event)`` array in one pass of jitted JAX
array code:

- :func:`ess_mean_many`: the ESS of the mean on split chains, with Geyer's initial positive
  and initial monotone sequences (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021), as
  ArviZ's ``ess(method="mean")`` computes it; the tests check agreement to rounding error;
- :func:`mcse_mean_many`: ``sd / sqrt(ESS_mean)``, as ArviZ's ``mcse(method="mean")``;
- :func:`rhat_split_many`: the split R-hat (not rank-normalised: cheaper, and for the
  near-Gaussian series it is meant for, close to ArviZ's rank-normalised R-hat);
- :func:`mean_diagnostics_many`: all three from one pass that shares the split and the FFT;
- :func:`rhat_rank_many`: the rank-normalised split R-hat, the larger of the bulk and the
  folded (tail) values, as ArviZ's ``rhat(method="rank")`` (Vehtari et al. 2021): what a
  reader of ArviZ output means by R-hat, robust to heavy tails.

All five accept NumPy or JAX arrays, return JAX arrays in the input's floating dtype (integer
input is promoted to JAX's default float) and can be called inside another jitted function.
They go through one module-level :func:`jax.jit`, so each input shape and dtype (and each of the
four outputs) compiles once per process; a new draw count is a new shape and compiles again.
The shape checks run eagerly in Python, since shapes are static even under tracing.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._batch_means import batch_window

__all__ = [
    "MeanDiagnostics",
    "ess_mean_many",
    "mcse_mean_many",
    "mean_diagnostics_many",
    "rhat_rank_many",
    "rhat_split_many",
]


class MeanDiagnostics(NamedTuple):
    """Diagnostics of the mean per element, each of shape ``event``.

    Attributes:
        mcse: Monte Carlo standard error of the mean, ``sd / sqrt(ess)``; 0 where constant.
        ess: Effective sample size of the mean on split chains; NaN where constant.
        rhat: Split R-hat (not rank-normalised); NaN where constant.
    """

    mcse: jax.Array
    ess: jax.Array
    rhat: jax.Array


def _checked(x) -> jax.Array:
    """``x`` as a floating JAX array (or tracer) of shape (chain, draw, *event), checked."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim < 2:
        raise ValueError(f"x must have shape (chain, draw, *event), got shape {x.shape}")
    if x.shape[1] // 2 < 2:
        raise ValueError(f"x needs at least 4 draws per chain, got {x.shape[1]}")
    return x


# Up to this many draws per split chain the transforms are products with tables of cosines
# and sines (O(n²) per series, but one matrix product for all of them: on a CPU several times
# faster than XLA's float64 FFT for the short chains of a training batch); beyond it, FFT.
DFT_MAX_DRAWS = 128


def _transform_size(n: int) -> int:
    """The smallest 5-smooth length (2ᵃ3ᵇ5ᶜ) of at least 2n − 1 points: enough zero padding for
    the circular correlation to be the linear one, and a length XLA's FFT handles fast. The
    next power of two, used before, can be almost twice as long: 8192 points for 2,262 draws
    per split chain, whose FFTs took 20 ms against 3.9 ms at 4,608 (39 × 8 series, float64,
    2 cores; 1.1–1.9× at the other lengths measured, 150–5,000 draws).

    Example:
        >>> [_transform_size(n) for n in (3, 2000, 2262)]
        [5, 4000, 4608]
    """
    size = 2 * n - 1
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def _mean_autocovariance(centred: jax.Array) -> jax.Array:
    """The chains' mean biased autocovariance (k, n) of centred series (k, m, n), all lags.

    Zero-padded to :func:`_transform_size` points (at least 2n − 1), so that the circular
    correlation is the linear one. The transform is linear, so the chains' power spectra are
    averaged before the one inverse transform per element (instead of one per chain).
    """
    _, _, n = centred.shape
    size = _transform_size(n)
    if n > DFT_MAX_DRAWS:
        spectrum = jnp.fft.rfft(centred, n=size, axis=2)
        power = (spectrum * jnp.conj(spectrum)).real.mean(axis=1)
        return jnp.fft.irfft(power, n=size, axis=1)[:, :n] / n
    # The real DFT of the padded series as products with (n, size/2 + 1) tables; the inverse
    # of the real, even power spectrum as a cosine sum with the Hermitian weights (1, 2, …, 2, 1)
    # for an even size, (1, 2, …, 2) for an odd one.
    angle = 2.0 * np.pi * np.outer(np.arange(n), np.arange(size // 2 + 1)) / size
    cos, sin = (jnp.asarray(table, centred.dtype) for table in (np.cos(angle), np.sin(angle)))
    power = (
        jnp.einsum("kmi,if->kmf", centred, cos) ** 2 + jnp.einsum("kmi,if->kmf", centred, sin) ** 2
    ).mean(axis=1)
    weights = np.full(size // 2 + 1, 2.0)  # the Hermitian weights; Nyquist once if size is even
    weights[0] = 1.0
    if size % 2 == 0:
        weights[-1] = 1.0
    inverse = jnp.asarray(weights[:, None] * np.cos(angle).T / size, centred.dtype)
    return power @ inverse / n


def _ess(xs: jax.Array, within: jax.Array, var_plus: jax.Array) -> jax.Array:
    """ESS of the mean from split chains ``xs`` (k, m, n) and their ``W`` and ``var+`` (k,)."""
    _, m, n = xs.shape
    acov = _mean_autocovariance(xs - xs.mean(axis=2, keepdims=True))  # (k, n)
    rho = 1.0 - (within[:, None] - acov) / var_plus[:, None]
    rho = rho.at[:, 0].set(1.0)
    # Pairs (rho_{2t}, rho_{2t+1}), t = 0, 1, …; Geyer's initial positive sequence keeps
    # pairs while their sum stays positive (pairs are examined while 2t + 2 < n − 2). ArviZ
    # walks the pairs in a loop per element; here every element's stopping point is counted.
    # The first pair is there even when n < 4 leaves none to examine (then tau = 0, as ArviZ).
    num_pairs = max(1, (n - 1) // 2)
    even = rho[:, 0 : 2 * num_pairs : 2]
    pair = even + rho[:, 1 : 2 * num_pairs : 2]  # (k, num_pairs)
    positive = jnp.cumsum(~(pair > 0), axis=1) == 0  # no non-positive pair up to here
    positive = positive.at[:, 0].set(True)  # the first pair (1, rho_1) always counts, as ArviZ
    num_positive = positive.sum(axis=1)
    ran_out = num_positive == num_pairs  # no pair turned non-positive before the end
    # Pairs summed in full: all positive ones, except that when the sequence ran to the end
    # the last examined pair contributes only its even term.
    num_full = jnp.where(ran_out, num_pairs - 1, num_positive)
    full = jnp.arange(num_pairs) < num_full[:, None]
    # Initial monotone sequence: each pair sum no larger than the one before it.
    monotone = jax.lax.cummin(jnp.where(full, pair, jnp.inf), axis=1)
    tau = -1.0 + 2.0 * jnp.where(full, monotone, 0.0).sum(axis=1)
    # The even term after the last full pair is added once: always when the sequence ran to
    # the end, and when it is positive if a pair turned non-positive there.
    last = jnp.minimum(num_full, num_pairs - 1)
    trailing_even = jnp.take_along_axis(even, last[:, None], axis=1)[:, 0]
    tau = tau + jnp.where(ran_out | (trailing_even > 0), trailing_even, 0.0)
    total = m * n
    tau = jnp.maximum(tau, 1.0 / math.log10(total))
    return jnp.where(var_plus > 0, total / tau, jnp.nan)


def _variances(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean within-chain variance ``W`` and ``var+ = W (n − 1)/n + B/n`` (k,) of split chains
    ``xs`` (k, m, n)."""
    n = xs.shape[2]
    within = xs.var(axis=2, ddof=1).mean(axis=1)
    return within, within * (n - 1.0) / n + xs.mean(axis=2).var(axis=1, ddof=1)


def _compute(x: jax.Array, window: int = 1) -> MeanDiagnostics:
    """All three diagnostics of a checked (chain, draw, *event) array; ESS and MCSE from the
    means of ``window`` consecutive draws (a divisor of the draws; the ESS counted in draws as
    batches × ``window``), R-hat from every draw."""
    chains, draws, *event = x.shape
    x = x.reshape(chains, draws, math.prod(event))
    # Every statistic here is shift-invariant. Subtracting each element's first draw makes a
    # constant element exactly zero, so its variances are exactly 0 (and it is flagged) however
    # the means round, and it removes a large offset before float32 sums square it.
    x = x - x[:1, :1]
    # Elements first, draws last: the FFT and the scans then run along contiguous axes (XLA's
    # CPU FFT transforms the minor axis; one transpose here is cheaper than one around it).
    xs = _halves(x.transpose(2, 0, 1))  # split chains: (k, 2·chain, draw // 2)
    within, var_plus = _variances(xs)
    # R-hat = sqrt(var+ / W) of every draw; 0/0 gives NaN for a constant element, as in ArviZ.
    rhat = jnp.sqrt(var_plus / within)
    if window > 1:  # the ESS and MCSE read means of consecutive draws
        x = x.reshape(chains, draws // window, window, -1).mean(axis=2)
        xs = _halves(x.transpose(2, 0, 1))
        within, var_plus = _variances(xs)
    sd = jnp.std(x, axis=(0, 1), ddof=1)  # over all (batched) draws, unsplit, as ArviZ
    ess = _ess(xs, within, var_plus)
    mcse = jnp.where(sd > 0, sd / jnp.sqrt(jnp.where(jnp.isnan(ess), 1.0, ess)), 0.0)
    return MeanDiagnostics(*(value.reshape(event) for value in (mcse, ess * window, rhat)))


def _halves(x, concatenate=jnp.concatenate):
    """Every chain of (k, chain, draw) split into its first and last halves (the middle draw
    dropped if odd): (k, 2 chain, draw // 2); ``np.concatenate`` keeps a host array on the
    host."""
    n = x.shape[2] // 2
    return concatenate([x[:, :, :n], x[:, :, x.shape[2] - n :]], axis=1)


# One jit for all four entry points: ``field`` picks one output (XLA then drops the work only
# the others need, e.g. the FFT for R-hat alone), or None for all three.
@functools.partial(jax.jit, static_argnames=("field", "window"))
def _diagnostics(x: jax.Array, field: str | None = None, window: int = 1):
    diagnostics = _compute(x, window)
    return diagnostics if field is None else getattr(diagnostics, field)


def mean_diagnostics_many(x, ess_budget: int | None = None) -> MeanDiagnostics:
    """MCSE, ESS of the mean and split R-hat per element, from one shared pass.

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain; NumPy or JAX.
        ess_budget: None (the default) computes everything from every draw. A number of
            elements: when ``chain × draw × event size`` exceeds it, the ESS and MCSE come from
            batch means of consecutive draws (:func:`~samplers._batch_means.batch_window`
            draws each, at least 64 means per chain), the ESS still in draws (batches × draws
            per batch), and R-hat from every draw. The ESS's transforms cost about the square
            of the draws per chain per element (:data:`DFT_MAX_DRAWS`): for 2 chains of 150
            draws of 9,610 elements, 29 of the 41 ms of the whole pass (float64, 2 cores).

    Returns:
        ``MeanDiagnostics(mcse, ess, rhat)``, each of shape ``event`` in ``x``'s float dtype.

    Raises:
        ValueError: If ``x.ndim < 2`` or there are fewer than 4 draws per chain.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> d = mean_diagnostics_many(rng.normal(size=(4, 500, 3)))
        >>> d.ess.shape, bool(jnp.all((1500 < d.ess) & (d.ess < 2500) & (d.rhat < 1.01)))
        ((3,), True)
    """
    x = _checked(x)
    window = 1
    if ess_budget is not None:
        chains, draws, *event = x.shape
        window = batch_window(draws, chains, math.prod(event), ess_budget)
    return _diagnostics(x, window=window)


def ess_mean_many(x) -> jax.Array:
    """Effective sample size of the mean per element; see :func:`mean_diagnostics_many`.

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain.

    Returns:
        Shape ``event``; NaN for elements that never change.
    """
    return _diagnostics(_checked(x), "ess")


def mcse_mean_many(x) -> jax.Array:
    """Monte Carlo standard error of the mean, ``sd / sqrt(ESS_mean)``, per element.

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain.

    Returns:
        Shape ``event``; 0 for elements that never change.
    """
    return _diagnostics(_checked(x), "mcse")


def rhat_split_many(x) -> jax.Array:
    """Split R-hat per element (meaningful from 2 chains of 4 draws).

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain.

    Returns:
        Shape ``event``; NaN for elements that never change.
    """
    return _diagnostics(_checked(x), "rhat")


def _split_rhat(xs: jax.Array) -> jax.Array:
    """R-hat of already split chains ``xs`` (k, m, n): ``sqrt(var+ / W)``, NaN where constant."""
    within, var_plus = _variances(xs)
    return jnp.sqrt(var_plus / within)


def _normal_scores(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rank-normalised values of (k, m, n): each element's draws pooled and ranked (ties get
    their average rank), ranks ``r`` of ``S`` draws mapped to ``Φ⁻¹((r − 3/8) / (S + 1/4))``;
    and the pooled draws in order (k, S)."""
    k, m, n = xs.shape
    size = m * n
    pooled = xs.reshape(k, size)
    # One sort per element; a run of equal values spans sorted positions first…last and each
    # of them gets the rank (first + last)/2 + 1.
    order = jnp.argsort(pooled, axis=1)
    ordered = jnp.take_along_axis(pooled, order, axis=1)
    position = jnp.arange(size)
    differs = ordered[:, 1:] != ordered[:, :-1]
    true = jnp.ones((k, 1), bool)
    starts = jnp.concatenate([true, differs], axis=1)
    ends = jnp.concatenate([differs, true], axis=1)
    first = jax.lax.cummax(jnp.where(starts, position, 0), axis=1)
    last = jax.lax.cummin(jnp.where(ends, position, size - 1), axis=1, reverse=True)
    sorted_rank = (first + last) / 2.0 + 1.0  # 1-based average rank
    rank = jnp.zeros_like(sorted_rank).at[jnp.arange(k)[:, None], order].set(sorted_rank)
    scores = jax.scipy.special.ndtri((rank - 0.375) / (size + 0.25))
    return scores.astype(xs.dtype).reshape(k, m, n), ordered


@jax.jit
def _rank_rhat(x: jax.Array) -> jax.Array:
    chains, draws, *event = x.shape
    x = x.reshape(chains, draws, math.prod(event)).transpose(2, 0, 1)  # (k, chain, draw)
    xs = _halves(x)  # split: (k, 2·chain, n)
    constant = jnp.all(xs == xs[:, :1, :1], axis=(1, 2))
    scores, ordered = _normal_scores(xs)
    bulk = _split_rhat(scores)
    size = ordered.shape[1]
    median = 0.5 * (ordered[:, (size - 1) // 2] + ordered[:, size // 2])  # from the one sort
    tail = _split_rhat(_normal_scores(jnp.abs(xs - median[:, None, None]))[0])
    rhat = jnp.maximum(bulk, tail)
    # Ranks of a constant element are all equal (every score 0): no information, as ArviZ.
    # Fewer than two chains: ArviZ gives no rank-normalised R-hat either.
    return jnp.where(constant | (chains < 2), jnp.nan, rhat).reshape(event)


def _host_normal_scores(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_normal_scores` in NumPy: the same ranks, ties and scores."""
    from scipy.special import ndtri

    k, m, n = xs.shape
    size = m * n
    pooled = xs.reshape(k, size)
    order = np.argsort(pooled, axis=1)
    ordered = np.take_along_axis(pooled, order, axis=1)

    def score(rank):
        return ndtri((rank - 0.375) / (size + 0.25))

    # Without ties the scores in sorted order are the same in every row: one table.
    sorted_scores = np.broadcast_to(score(np.arange(1.0, size + 1.0)), (k, size)).copy()
    # Ties are few (the folded draws' two middle values, rounded draws): each run of equal
    # neighbours j, j + 1, … in a row gets the score of the mean of its positions' ranks.
    row, j = np.nonzero(ordered[:, 1:] == ordered[:, :-1])
    if row.size:
        new = np.ones(row.size, bool)
        new[1:] = (row[1:] != row[:-1]) | (j[1:] != j[:-1] + 1)
        run = np.cumsum(new) - 1
        last = np.empty(run[-1] + 1, j.dtype)
        last[run] = j  # the last pair of each run (j ascends within a row)
        mean = score((j[new] + last + 1) / 2.0 + 1.0)[run]
        sorted_scores[row, j] = mean
        sorted_scores[row, j + 1] = mean
    scores = np.empty((k, size))
    np.put_along_axis(scores, order, sorted_scores, axis=1)
    return scores.reshape(k, m, n), ordered


def _host_rank_rhat(x: np.ndarray) -> np.ndarray:
    """:func:`_rank_rhat` in NumPy, for arrays already on the host, its elements in one slice
    per JAX CPU device, on threads (NumPy's sorts release the GIL): on a CPU several
    times faster than XLA's sorts (2 × 450 draws of 9,610 elements on 2 cores: 0.9 s against
    3.5–3.8 s)."""
    chains, draws, *event = x.shape
    x = x.reshape(chains, draws, math.prod(event)).transpose(2, 0, 1)
    xs = _halves(x, np.concatenate)  # (k, m, n)

    def split_rhat(values):  # the sort is the cost: the variances as the XLA route's
        return np.asarray(_split_rhat(jnp.asarray(values)))

    def rows(part):
        constant = np.all(part == part[:, :1, :1], axis=(1, 2))
        scores, ordered = _host_normal_scores(part)
        size = ordered.shape[1]
        median = 0.5 * (ordered[:, (size - 1) // 2] + ordered[:, size // 2])
        tail = split_rhat(_host_normal_scores(np.abs(part - median[:, None, None]))[0])
        rhat = np.maximum(split_rhat(scores), tail)
        return np.where(constant | (chains < 2), np.nan, rhat)

    # One thread per JAX CPU device: the cores this process was given (one device per core
    # unless set otherwise, as the test suite's workers set one each), and no more.
    workers = max(1, min(len(jax.devices("cpu")), -(-xs.shape[0] // 256)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(rows, np.array_split(xs, workers)))
    return np.concatenate(parts).reshape(event)


def rhat_rank_many(x) -> jax.Array:
    """Rank-normalised split R-hat per element: the larger of the bulk and the tail R-hat.

    Each element's draws are split into half chains, pooled and replaced by their normal
    scores (average ranks for ties); the split R-hat of those is the bulk value; the same of
    the draws' distances from their median is the tail value (Vehtari, Gelman, Simpson,
    Carpenter & Bürkner 2021). It agrees with ArviZ's ``rhat(method="rank")`` to rounding.
    Two sorts of every element's draws: on a CPU far dearer than :func:`rhat_split_many`
    (about 0.2 s for 9,610 elements of 2 × 50 draws, against 8 ms). A NumPy array is ranked
    by NumPy's sorts, on the host (faster on a CPU); a JAX array or tracer by XLA's.

    Args:
        x: Array of shape (chain, draw, *event), at least 4 draws per chain.

    Returns:
        Shape ``event``; NaN for elements that never change and for fewer than 2 chains.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_cauchy(size=(4, 500, 2))  # heavy tails: ranks do not mind
        >>> bool(jnp.all(rhat_rank_many(x) < 1.02))
        True
    """
    checked = _checked(x)
    if isinstance(x, np.ndarray):
        return jnp.asarray(_host_rank_rhat(np.asarray(x, checked.dtype)), checked.dtype)
    return _rank_rhat(checked)

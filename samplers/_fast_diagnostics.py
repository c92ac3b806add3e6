"""Vectorised effective sample size, MCSE and split R-hat for many quantities at once.

ArviZ evaluates these one quantity at a time; a gradient of ten thousand parameters takes it
seconds per estimate. These functions compute the same quantities for every element of a
``(chain, draw, *event)`` array in one pass of NumPy array code:

- :func:`ess_mean_many`: the ESS of the mean on split chains, with Geyer's initial positive
  and initial monotone sequences (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021), as
  ArviZ's ``ess(method="mean")`` computes it; the tests check agreement to rounding error;
- :func:`mcse_mean_many`: ``sd / sqrt(ESS_mean)``, as ArviZ's ``mcse(method="mean")``;
- :func:`rhat_split_many`: the split R-hat (not rank-normalised: cheaper, and for the
  near-Gaussian gradient series it reports on, close to ArviZ's rank-normalised R-hat).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ess_mean_many", "mcse_mean_many", "rhat_split_many"]


def _split(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (chain, draw, *event), got shape {x.shape}")
    half = x.shape[1] // 2
    if half < 2:
        raise ValueError(f"x needs at least 4 draws per chain, got {x.shape[1]}")
    # Split every chain into its first and last halves (dropping the middle draw if odd).
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance along axis 1 for all chains and elements, by FFT."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * n - 1)))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=1)[:, :n]
    return acov / n


def ess_mean_many(x) -> np.ndarray:
    """Effective sample size of the mean, per element of a (chain, draw, *event) array.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ess = ess_mean_many(rng.normal(size=(4, 500, 3)))
        >>> ess.shape, bool(np.all((1500 < ess) & (ess < 2500)))
        ((3,), True)
    """
    x = _split(x)
    m, n = x.shape[:2]
    event = x.shape[2:]
    x = x.reshape(m, n, -1)
    acov = _autocovariance(x)  # (m, n, k)
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)  # (k,)
    var_plus = mean_var * (n - 1.0) / n + x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (n, k); rho[0] = 1
    rho[0] = 1.0
    k = rho.shape[1]
    # Pairs (rho_{2t}, rho_{2t+1}), t = 0, 1, …; Geyer's initial positive sequence keeps
    # pairs while their sum stays positive (pairs are examined while 2t + 2 < n − 2).
    num_pairs = (n - 3) // 2 + 1
    even = rho[0 : 2 * num_pairs : 2]
    odd = rho[1 : 2 * num_pairs : 2]
    pair = even + odd  # (num_pairs, k)
    positive = np.cumprod(pair > 0, axis=0).astype(bool)
    positive[0] = True  # the first pair (1, rho_1) always counts, as in the reference
    num_positive = positive.sum(axis=0)
    ran_out = num_positive == num_pairs  # no pair turned non-positive before the end
    # Pairs summed in full: all positive ones, except that when the sequence ran to the end
    # the last examined pair contributes only its even term.
    num_full = np.where(ran_out, num_pairs - 1, num_positive)
    full = np.arange(num_pairs)[:, None] < num_full[None, :]
    # Initial monotone sequence: each pair sum no larger than the one before it.
    monotone = np.minimum.accumulate(np.where(full, pair, np.inf), axis=0)
    tau = -1.0 + 2.0 * np.where(full, monotone, 0.0).sum(axis=0)
    # The even term after the last full pair is added once: always when the sequence ran to
    # the end, and when it is positive if a pair turned non-positive there.
    trailing_even = even[np.minimum(num_full, num_pairs - 1), np.arange(k)]
    tau = tau + np.where(ran_out | (trailing_even > 0), trailing_even, 0.0)
    total = m * n
    tau = np.maximum(tau, 1.0 / np.log10(total))
    ess = total / tau
    constant = ~(var_plus > 0)
    ess = np.where(constant, np.nan, ess)
    return ess.reshape(event)


def mcse_mean_many(x) -> np.ndarray:
    """Monte Carlo standard error of the mean, ``sd / sqrt(ESS_mean)``, per element.

    Elements that never change get 0.
    """
    x = np.asarray(x, dtype=float)
    sd = x.reshape(-1, *x.shape[2:]).std(axis=0, ddof=1)
    ess = ess_mean_many(x)
    return np.where(sd > 0, sd / np.sqrt(np.where(np.isnan(ess), 1.0, ess)), 0.0)


def rhat_split_many(x) -> np.ndarray:
    """Split R-hat per element (needs at least 2 chains of 4 draws)."""
    x = _split(x)
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean(axis=0)
    between = n * x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((n - 1) / n * within + between / n) / within)

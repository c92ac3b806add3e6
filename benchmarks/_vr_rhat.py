"""Section ``rhat`` of ``benchmarks/variance_reduction.py``: how the entries of a series set the
largest R-hat over many components (issue 11, item 4's "largest rank-normalised R-hat ≤ 1.05").

1. Independent draws: the largest rank-normalised and split R-hat over 9,610 independent normal
   components of 2 chains, at 150, 225 and 450 entries per chain (3 repetitions each), beside
   the health table's limit ``rhat_limit`` for that size. Windows of draws (batch means, what a
   call keeps once chains × draws × parameters pass ``SERIES_BUDGET``) leave fewer entries,
   and the largest R-hat rises with that alone.
2. The main job at the EP-trained parameters of section ``main``, ``--batches`` batches of 32
   digits, collapsed HMC with 2 chains × (100 warm-up + 450 draws): one estimate per batch,
   and the largest R-hat of the same draws kept two ways: every draw (``estimate_with_series``,
   ``DIAGNOSTIC_SERIES_BUDGET``) and in windows of draws (a call's series under
   ``SERIES_BUDGET``: the means of the per-draw entries over each window, 3 draws when it was
   2²², 9 since it is 2²⁰). Also the time of
   ``samplers.rhat_rank_many`` on the series of every draw on its two routes (NumPy's sorts
   for a host array, XLA's for a JAX one), the median of 3 calls after a first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _vr_main import BATCH, MAIN_SAMPLING, TEMPERATURE, trained_by_ep

import samplers
from thermoeqprop._health import rhat_limit
from thermoeqprop.data import load_dataset
from thermoeqprop.estimators import ThermalCovariance
from thermoeqprop.estimators._statistics import series_window
from thermoeqprop.models import LayeredNetwork

COMPONENTS = 9610
LONG = dataclasses.replace(MAIN_SAMPLING, num_warmup=100, num_samples=450, collapse=None)


def _largest(values) -> float:
    values = np.asarray(values)
    return float(values[np.isfinite(values)].max())


def _seconds(function, argument, reps=3) -> float:
    jax.block_until_ready(function(argument))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(function(argument))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def section_rhat(args) -> list[str]:
    lines = [
        "### Section rhat: the entries behind the largest R-hat",
        "",
        f"1. Independent normal draws, 2 chains, {COMPONENTS} components, 3 repetitions each.",
        "",
        "| entries per chain | largest rank R-hat | largest split R-hat | health limit "
        "(split, 5 % family-wise) |",
        "| --- | --- | --- | --- |",
    ]
    rng = np.random.default_rng(0)
    for entries in (150, 225, 450):
        rank, split = [], []
        for _ in range(3):
            x = rng.normal(size=(2, entries, COMPONENTS))
            rank.append(_largest(samplers.rhat_rank_many(x)))
            split.append(_largest(samplers.rhat_split_many(x)))
        lines.append(
            f"| {entries} | {min(rank):.4f}–{max(rank):.4f} | {min(split):.4f}–{max(split):.4f} "
            f"| {rhat_limit(2, entries, COMPONENTS):.4f} |"
        )
    dataset = load_dataset("digits", seed=0)
    model = LayeredNetwork((64, 128, 10))
    params, accuracy = trained_by_ep(model, dataset)
    estimator = ThermalCovariance(model, TEMPERATURE, LONG)
    picks = np.random.default_rng(1)
    rows = []
    host_seconds = jax_seconds = float("nan")
    for batch in range(args.batches):
        idx = picks.choice(len(dataset.labels_train), BATCH, replace=False)
        x, y = jnp.asarray(dataset.x_train[idx]), model.encode_labels(dataset.labels_train[idx])
        estimate, series = estimator.estimate_with_series(params, x, y, jax.random.key(batch))
        every = np.asarray(series.gradient)
        # A call's series from the same draws: its entries are the means of windows of draws
        # (the statistics are linear in the draws' terms), so no second sampling is needed.
        chains, draws, size = every.shape
        window = series_window(draws, chains, size)
        windowed = every.reshape(chains, draws // window, window, size).mean(axis=2)
        rows.append((
            windowed.shape[1], draws,
            _largest(samplers.rhat_rank_many(windowed)), _largest(samplers.rhat_rank_many(every)),
            _largest(samplers.rhat_split_many(windowed)), _largest(series.rhat),
            float(estimate.diagnostics["relative_stderr"]),
        ))  # fmt: skip
        if batch == 0:
            host_seconds = _seconds(samplers.rhat_rank_many, every)
            jax_seconds = _seconds(samplers.rhat_rank_many, jnp.asarray(every))
    a = np.array(rows)
    lines += [
        "",
        f"2. The main job, EP-trained parameters (test accuracy {100 * accuracy:.2f} %), "
        f"{args.batches} batches of {BATCH} digits, collapsed HMC 2 × (100 + 450), one "
        "estimate per batch; the same draws in windows (a call's series) and every draw "
        "(`estimate_with_series`).",
        "",
        "| series | entries per chain | largest rank R-hat, median (min–max) over batches | "
        "largest split R-hat, median (min–max) |",
        "| --- | --- | --- | --- |",
    ]
    for label, entries, rank, split in (("windows", 0, 2, 4), ("every draw", 1, 3, 5)):
        lines.append(
            f"| {label} | {a[0, entries]:.0f} | {np.median(a[:, rank]):.4f} "
            f"({a[:, rank].min():.4f}–{a[:, rank].max():.4f}) | {np.median(a[:, split]):.4f} "
            f"({a[:, split].min():.4f}–{a[:, split].max():.4f}) |"
        )
    lines += [
        "",
        f"Relative MCSE of these estimates: median {np.median(a[:, 6]):.3f} "
        f"({a[:, 6].min():.3f}–{a[:, 6].max():.3f}). `samplers.rhat_rank_many` on the first "
        f"batch's series of every draw (2 × 450 × {every.shape[2]}): {host_seconds:.2f} s on "
        f"the host route (NumPy), {jax_seconds:.2f} s on XLA's (median of 3 after a first).",
        "",
    ]
    return lines

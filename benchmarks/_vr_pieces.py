"""Section ``pieces`` of ``benchmarks/variance_reduction.py``: where a batch's time goes on the
main job at 2 × (100 + 450) draws (issue 11, item 4's "no more time per epoch").

At the EP-trained parameters of section ``main``, ``--batches`` batches of 32 digits, collapsed
HMC with 2 chains × (100 warm-up + 450 draws) of 8 leapfrog steps per example, three routes on
the same batch and key, interleaved batch by batch (A, B, C, A, B, C, …; every piece
synchronised):

- ``2²², float64``: the series a call kept before commit d1c9012 (``budget=2**22``: 150
  windows of 3 draws a chain) and its diagnostics from every entry (no ``ess_budget``);
- ``2²⁰, float64``: today's series (``SERIES_BUDGET = 2**20``: 50 windows of 9) and
  diagnostics (``ess_budget=SERIES_BUDGET``);
- ``2²⁰, float32 sampler``: the same with ``Sampling(dtype="float32")``.

Per route, the median over the batches after the first (which compiles) of the seconds of the
draw, the statistics (``ThermalCovariance.statistics``) and the diagnostics
(``samplers.mean_diagnostics_many`` of the covariance series: MCSE, ESS, split R-hat), and the
median relative MCSE ``‖MCSE‖ / ‖grad‖``. Imported by ``variance_reduction.py`` after its
thread settings.
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
from thermoeqprop.data import load_dataset
from thermoeqprop.estimators import ThermalCovariance
from thermoeqprop.estimators._statistics import SERIES_BUDGET
from thermoeqprop.models import LayeredNetwork

LONG = dataclasses.replace(MAIN_SAMPLING, num_warmup=100, num_samples=450, collapse=None)
# (label, sampling, series budget, ESS budget)
ROUTES = (
    ("2²², float64", LONG, 2**22, None),
    ("2²⁰, float64", LONG, SERIES_BUDGET, SERIES_BUDGET),
    ("2²⁰, float32 sampler", dataclasses.replace(LONG, dtype="float32"), SERIES_BUDGET,
     SERIES_BUDGET),
)  # fmt: skip


def _pieces(estimator, params, x, y, key, budget, ess_budget):
    """Seconds of the draw, the statistics and the diagnostics of one batch, and the
    relative MCSE."""
    start = time.perf_counter()
    drawn = estimator._drawer()(estimator.model, estimator.sampling, params, x, y, 0.0,
                                TEMPERATURE, key, None, nudged=False)  # fmt: skip
    jax.block_until_ready(drawn.states)
    drawn_at = time.perf_counter()
    stats = estimator.statistics(params, drawn.states, x, y, 0.0, budget=budget)
    jax.block_until_ready(stats.covariance)
    stats_at = time.perf_counter()
    diagnostics = samplers.mean_diagnostics_many(stats.covariance, ess_budget=ess_budget)
    jax.block_until_ready(diagnostics)
    done = time.perf_counter()
    grad = jnp.mean(stats.covariance, axis=(0, 1))
    relative = float(jnp.linalg.norm(diagnostics.mcse) / jnp.linalg.norm(grad))
    return drawn_at - start, stats_at - drawn_at, done - stats_at, relative, stats.draws_per_entry


def section_pieces(args) -> list[str]:
    dataset = load_dataset("digits", seed=0)
    model = LayeredNetwork((64, 128, 10))
    params, accuracy = trained_by_ep(model, dataset)
    estimators = {label: ThermalCovariance(model, TEMPERATURE, sampling)
                  for label, sampling, _, _ in ROUTES}  # fmt: skip
    picks = np.random.default_rng(2)
    rows = {label: [] for label, *_ in ROUTES}
    for batch in range(args.batches + 1):  # the first batch compiles
        idx = picks.choice(len(dataset.labels_train), BATCH, replace=False)
        x, y = jnp.asarray(dataset.x_train[idx]), model.encode_labels(dataset.labels_train[idx])
        for label, _, budget, ess_budget in ROUTES:
            measured = _pieces(estimators[label], params, x, y, jax.random.key(batch), budget,
                               ess_budget)  # fmt: skip
            if batch:
                rows[label].append(measured)
    lines = [
        "### Section pieces: where a batch's time goes at 2 × (100 + 450) draws",
        "",
        f"EP-trained parameters of section main (test accuracy {100 * accuracy:.2f} %), "
        f"{args.batches} batches of {BATCH} digits after one that compiles, collapsed HMC "
        "2 × (100 + 450) with 8 leapfrog steps, the routes interleaved batch by batch on the "
        "same keys; medians over the batches (seconds).",
        "",
        "| route | draws per entry | draw | statistics | diagnostics | sum | relative MCSE, "
        "median |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, *_ in ROUTES:
        a = np.array(rows[label])
        draw, stats, diagnostics = (statistics.median(a[:, i]) for i in range(3))
        lines.append(
            f"| {label} | {a[0, 4]:.0f} | {draw:.4f} | {stats:.4f} | {diagnostics:.4f} | "
            f"{draw + stats + diagnostics:.4f} | {statistics.median(a[:, 3]):.3f} |"
        )
    print("\n".join(lines[-3:]), flush=True)
    return [*lines, ""]

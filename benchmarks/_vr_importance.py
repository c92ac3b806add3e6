"""Section ``importance`` of ``benchmarks/variance_reduction.py``: importance sampling on the
main job (docs/mathematics.md, "Importance sampling").

``thermoeqprop train``'s main job (``LayeredNetwork((64, 128, 10))`` sigmoid, T = 0.02, batches
of 32 digits) at the initial parameters and at parameters trained by T = 0 EP (10 epochs), the
batches of section ``main``. Routes on the same batches, interleaved (a fresh key per call,
every call synchronised):

- ``plain``: ``ThermalCovariance(rao_blackwell=False)``, HMC on every unit, 2 chains × (50
  warm-up + 50 draws), the reference of issue 11's item 3;
- ``collapsed``: today's default (HMC on the outputs' marginal, the hidden layer averaged);
- ``importance``: ``Sampling(method="importance")``, 2 groups × 256 weighted draws after 3
  rounds of 2 × 128 pilot draws, which count in the estimate too (640 draws a group);
- ``importance′``: the draws per group (pilot rounds of half as many) whose call takes as long
  as plain's, from a line fitted to calls timed at 16, 32, 64 and 128 draws in turn with plain
  calls, rounded down to a multiple of 8 (equal wall time, taken literally);
- ``neyman′``: the same with ``Sampling(neyman_share=0.25)``: 8 more rows of draws a batch
  for the digits whose first draws vary most (docs/mathematics.md, "Neyman allocation"), its
  draws per group matched to plain's time the same way;
- ``neyman′ raw``: ``neyman′`` with ``Sampling(pareto_smoothing=False)``, the raw importance
  weights (every other importance route weighs its draws by their Pareto-smoothed weights,
  docs/mathematics.md, "Pareto smoothing"): the same draws per group, so the two differ only
  in the weights the statistics use.

Per route: draws per chain or group (``num_samples``), first call (compilation) and median
steady seconds per call, median and range of the relative MCSE ``‖MCSE‖/‖ĝ‖``, median largest
split R-hat; for importance sampling the smallest Kish ESS fraction and the largest Pareto k̂
of an example's weights over all calls, and the RMS and largest |z| of its estimate against the
collapsed route's on the same batch and repetition (``z = (ĝ_IS − ĝ_HMC)/√(MCSE_IS² +
MCSE_HMC²)`` per component, median over calls: a check that the two samplers estimate the same
gradient, as far as the collapsed route's short chains allow), and the relative spread of the
estimates over the repetitions of each batch, ``‖sd‖ / ‖mean‖`` (median over batches; an MCSE
that is understated shows here as a spread above it). Under the table: the MCSE ratio against
plain and against collapsed, literally at equal wall time (``importance′``, ``neyman′``) and
by the scaling ``MCSE ∝ 1/√time``. Imported by ``variance_reduction.py`` after its thread settings.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import numpy as np
from _vr_main import (
    BATCH,
    MAIN_SAMPLING,
    TEMPERATURE,
    interleaved,
    main_job,
)
from jax.flatten_util import ravel_pytree

from thermoeqprop.estimators import ThermalCovariance

IMPORTANCE_DRAWS = 256
# The routes matched to plain's time, by their Neyman share (Sampling.neyman_share).
NEYMAN_SHARE = 0.25
EQUAL_TIME = {"importance′": 0.0, "neyman′": NEYMAN_SHARE}
# neyman′ with the raw importance weights (no Pareto smoothing).
RAW = "neyman′ raw"
# Draws per group at which importance sampling's calls are timed to match plain's time.
MATCH_GRID = (16, 32, 64, 128)


def _importance(model, draws, neyman_share=0.0, smooth=True):
    sampling = dataclasses.replace(MAIN_SAMPLING, method="importance", num_samples=draws,
                                   num_warmup=draws // 2, neyman_share=neyman_share,
                                   pareto_smoothing=smooth)  # fmt: skip
    return ThermalCovariance(model, TEMPERATURE, sampling)


def _call(estimator, params, batch, key):
    start = time.perf_counter()
    estimate = estimator(params, *batch, key)
    jax.block_until_ready(estimate.grad)
    seconds = time.perf_counter() - start
    diagnostics = {k: float(v) for k, v in estimate.diagnostics.items() if np.size(v) == 1}
    grad, stderr = (np.asarray(ravel_pytree(t)[0]) for t in (estimate.grad, estimate.stderr))
    return seconds, diagnostics, grad, stderr


def _z(a, b):
    """RMS and largest |z| of two estimates (grad, stderr) of the same gradient."""
    scale = np.sqrt(a[3] ** 2 + b[3] ** 2)
    varying = scale > 0
    z = (a[2][varying] - b[2][varying]) / scale[varying]
    return float(np.sqrt(np.mean(z**2))), float(np.max(np.abs(z)))


def _observed_spread(rows, num_batches):
    """Median over batches of ``‖sd‖ / ‖mean‖`` of a route's estimates across repetitions
    (rows ordered repetition after repetition): the relative error actually seen, which an
    understated MCSE does not hide; None with one repetition."""
    grads = np.array([r[2] for r in rows]).reshape(-1, num_batches, len(rows[0][2]))
    if grads.shape[0] < 2:
        return None
    sd = np.linalg.norm(grads.std(axis=0, ddof=1), axis=-1)
    return float(np.median(sd / np.linalg.norm(grads.mean(axis=0), axis=-1)))


def fitted_draws(make, reference, params, batches, grid, reps=5):
    """The draws (a float) at which a call of ``make(draws)`` takes as long as one of
    ``reference``: calls at each draw count of ``grid`` timed in turn with reference calls on the
    same batches (A, B, A, B, …, so that a change of load hits both), the seconds fitted by a
    line in the draws, solved for the reference's median. Near the match the time hardly
    changes with the draws where fixed costs dominate, so a bisection on a few timed calls
    wanders (21 and 55 importance draws in two runs); the fit uses every call."""
    estimators = {draws: make(draws) for draws in grid}
    for draws, est in estimators.items():
        _call(est, params, batches[0], jax.random.key(10**6 + draws))  # compile
    reference_seconds, points = [], []
    for rep in range(reps):
        for i, (draws, est) in enumerate(estimators.items()):
            batch = batches[(rep + i) % len(batches)]
            key = jax.random.key(2 * 10**6 + rep * len(grid) + i)
            reference_seconds.append(_call(reference, params, batch, key)[0])
            points.append((draws, _call(est, params, batch, key)[0]))
    slope, intercept = np.polyfit(*np.array(points).T, 1)
    return (statistics.median(reference_seconds) - intercept) / slope


def _matched_draws(model, plain, params, batches, neyman_share=0.0, grid=MATCH_GRID, reps=5):
    """The draws per group at which a call of ``importance`` (with ``neyman_share``) takes as
    long as one of ``plain`` (:func:`fitted_draws`)."""
    make = functools.partial(_importance, model, neyman_share=neyman_share)
    draws = fitted_draws(make, plain, params, batches, grid, reps)
    # A multiple of 8: a group then holds 2.5 × draws, which the series' windows divide (95
    # draws a group, at 38, left windows of one draw, against two at 100, and took twice the
    # statistics' and three times the diagnostics' time of 100).
    return int(np.clip(8 * np.floor(draws / 8), 16, IMPORTANCE_DRAWS))


def section_importance(args) -> list[str]:
    model, batches, settings, accuracy = main_job(args.batches)
    lines = [
        "### Section importance: importance sampling on the main job's per-batch gradient",
        "",
        f"{args.batches} batches of {BATCH} digits, {args.reps} interleaved repetitions per "
        f"batch; trained parameters: 10 epochs of T = 0 EP, test accuracy {100 * accuracy:.2f} %.",
        "",
        "| parameters | route | draws per chain | first call (s) | steady s / call (median) "
        "| relative MCSE (median, min–max) | largest R-hat (median) | Kish ESS fraction (min) "
        "| Pareto k̂ (median, max) | z against collapsed: RMS, max (median) "
        "| observed relative spread (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    for label, params in settings.items():
        plain = ThermalCovariance(model, TEMPERATURE, MAIN_SAMPLING, rao_blackwell=False)
        default = dataclasses.replace(MAIN_SAMPLING, collapse=None)
        collapsed = ThermalCovariance(model, TEMPERATURE, default)
        routes = {"plain": plain, "collapsed": collapsed,
                  "importance": _importance(model, IMPORTANCE_DRAWS)}  # fmt: skip
        first = {}
        for name, est in routes.items():
            first[name] = _call(est, params, batches[0], jax.random.key(10**6))[0]
        draws = {"plain": 50, "collapsed": 50, "importance": IMPORTANCE_DRAWS}
        for name, share in EQUAL_TIME.items():
            draws[name] = _matched_draws(model, plain, params, batches, share)
            routes[name] = _importance(model, draws[name], share)
            first[name] = _call(routes[name], params, batches[0], jax.random.key(10**6 + 1))[0]
        draws[RAW] = draws["neyman′"]
        routes[RAW] = _importance(model, draws[RAW], NEYMAN_SHARE, smooth=False)
        first[RAW] = _call(routes[RAW], params, batches[0], jax.random.key(10**6 + 1))[0]
        results = interleaved(routes, params, batches, args.reps, label, _call)
        med, spread = {}, {}
        for name, rows in results.items():
            seconds = np.array([r[0] for r in rows])
            relative = np.array([r[1]["relative_stderr"] for r in rows])
            rhat = np.array([r[1]["rhat_max"] for r in rows])
            med[name] = (float(np.median(seconds)), float(np.median(relative)))
            spread[name] = _observed_spread(rows, len(batches))
            weights = zs = "–"
            k_hat = "–"
            if name.startswith(("importance", "neyman")):
                ess = min(r[1]["importance_ess_min"] for r in rows)
                ks = np.array([r[1]["pareto_k_max"] for r in rows])
                weights, k_hat = f"{ess:.3f}", f"{np.median(ks):.2f}, {ks.max():.2f}"
                pairs = np.array([_z(a, b) for a, b in zip(rows, results["collapsed"],
                                                          strict=True)])  # fmt: skip
                zs = f"{np.median(pairs[:, 0]):.2f}, {np.median(pairs[:, 1]):.2f}"
            lines.append(
                f"| {label} | {name} | {draws[name]} | {first[name]:.2f} | "
                f"{med[name][0]:.4f} | {med[name][1]:.3f} ({relative.min():.3f}–"
                f"{relative.max():.3f}) | {np.median(rhat):.3f} | {weights} | {k_hat} | {zs} | "
                + ("–" if spread[name] is None else f"{spread[name]:.3f}")
                + " |"
            )
        for reference in ("plain", "collapsed"):
            t_ref, m_ref = med[reference]
            t_imp, m_imp = med["importance"]
            scaled = m_ref / (m_imp * np.sqrt(t_imp / t_ref))
            summary.append(
                f"- {label} parameters, against {reference}: relative MCSE {reference} "
                f"{m_ref:.3f}, importance {m_imp:.3f} at {t_imp / t_ref:.2f}× {reference}'s "
                f"time: **{scaled:.2f}×** lower by the 1/√time scaling."
            )
            if reference != "plain":
                continue
            for name in (*EQUAL_TIME, RAW):
                summary.append(
                    f"- {label} parameters, at equal wall time: {name} ({draws[name]} draws "
                    f"per group) {med[name][1]:.3f} at {med[name][0] / t_ref:.2f}× plain's "
                    f"time: **{m_ref / med[name][1]:.2f}×** lower than plain's {m_ref:.3f}"
                    + (
                        ""
                        if spread["plain"] is None
                        else f"; by the spread observed over the {args.reps} repetitions "
                        f"(not the reported MCSE), plain {spread['plain']:.3f} and {name} "
                        f"{spread[name]:.3f}: **{spread['plain'] / spread[name]:.2f}×**"
                    )
                    + "."
                )
    return [*lines, "", *summary, ""]

"""Section ``trajectory`` of ``benchmarks/variance_reduction.py``: the default train's gradient
against plain HMC's at the parameters a default training run passes through.

Sections ``main`` and ``importance`` compare estimators at two parameter sets, the initial ones
and ones trained by T = 0 EP. A thermal run passes through others: this section runs the
default ``thermoeqprop train`` itself (``TrainOptions()``: the covariance estimator at T = 0.02,
importance sampling with Neyman rows, the HMC fallback and rounds to a relative MCSE of 0.2;
15 epochs, in a temporary folder) and reads back its parameters after each epoch of
``--trajectory-epochs`` from the checkpoint just written. At the initial parameters, at the
EP-trained ones of sections ``main`` and ``importance`` (``_vr_main.trained_by_ep``) and at each
of those, on the main job's batches (``_vr_main.main_batches``), three routes are called in
turn, repetition after repetition, a fresh key per call, first calls (compilation) apart:

- ``plain``: ``ThermalCovariance(rao_blackwell=False)`` with ``_vr_main.MAIN_SAMPLING``, HMC on
  every unit, 2 chains × (50 + 50) draws, the estimator before variance reduction;
- ``plain, same time``: the same with as many recorded draws per chain (50 warm-up steps kept)
  as make a call take as long as a default one there (:func:`_vr_importance.fitted_draws` on
  ``PLAIN_GRID``, rounded to ten);
- ``default``: the train's own estimator (``_cli_train.build_estimator(TrainOptions())``).

Per parameter set: the run's test accuracy after that epoch, each route's median seconds per
call and median relative MCSE ``‖MCSE‖ / ‖grad‖``, the relative spread of its estimates over
the repetitions (``_vr_importance._observed_spread``), and the default's gain at equal wall
time two ways, from the reported MCSE and from the observed spread: by the scaling ``MCSE ∝
1/√time`` from ``plain``, and measured against ``plain, same time`` (with that scaling for what
is left of the time difference). The two differ because plain's call spends half its steps
warming up: with more draws its MCSE falls faster than ``1/√time``, so the scaling flatters the
default; the measured gain is the one to quote. Imported by ``variance_reduction.py`` after its
thread settings.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import tempfile
from pathlib import Path

import jax
import numpy as np
from _vr_importance import _call, _observed_spread, fitted_draws
from _vr_main import MAIN_SAMPLING, TEMPERATURE, interleaved, main_batches, trained_by_ep

from thermoeqprop._cli_train import build_estimator, temperature_schedule, train_config
from thermoeqprop._runs import latest_checkpoint, read_checkpoint, restore_tree
from thermoeqprop.estimators import ThermalCovariance
from thermoeqprop.options import TrainOptions
from thermoeqprop.training import train

# Recorded draws per chain of plain HMC timed to find the count that takes a default call's time.
PLAIN_GRID = (50, 150, 300, 450)


class _Enough(Exception):
    """Raised by the training callback once the last wanted epoch is saved."""


def trajectory(dataset, wanted: set[int]) -> dict[int, tuple[object, float]]:
    """``{epoch: (parameters, test accuracy)}`` of the default train after each epoch of
    ``wanted``, read from the checkpoint each epoch writes (the run stops after the last)."""
    options = TrainOptions()
    estimator = build_estimator(options, dataset.num_features, dataset.num_classes)
    config = train_config(options)
    like = estimator.model.init_params(jax.random.key(0))
    found: dict[int, tuple[object, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Path(folder) / "checkpoints"

        def grab(record):
            epoch = int(record["epoch"])
            print(f"  default train: epoch {epoch}, test accuracy "
                  f"{100 * record['test_accuracy']:.2f} %", flush=True)  # fmt: skip
            if epoch in wanted:
                path = latest_checkpoint(checkpoints, "epoch")
                params = restore_tree(read_checkpoint(path), "params_", like, path)
                found[epoch] = (params, float(record["test_accuracy"]))
            if epoch >= max(wanted):
                raise _Enough

        try:
            train(estimator, dataset, config, folder, callback=grab,
                  schedule=temperature_schedule(options, config.epochs))  # fmt: skip
        except _Enough:
            pass
    return found


def _plain(model, draws):
    sampling = dataclasses.replace(MAIN_SAMPLING, num_samples=int(draws))
    return ThermalCovariance(model, TEMPERATURE, sampling, rao_blackwell=False)


def _gain(med, spread, name, reference):
    """The default's gain over ``reference`` at equal wall time, from the reported MCSE and
    from the observed spread, ``MCSE ∝ 1/√time`` bridging what is left of the time gap."""
    scale = np.sqrt(med[name][0] / med[reference][0])
    observed = ("–" if spread[name] is None
                else f"{spread[reference] / (spread[name] * scale):.2f}")  # fmt: skip
    return f"**{med[reference][1] / (med[name][1] * scale):.2f}**, {observed}"


def section_trajectory(args) -> list[str]:
    dataset, model, batches = main_batches(args.batches)
    epochs = sorted(set(args.trajectory_epochs))
    trained, trained_accuracy = trained_by_ep(model, dataset)
    points = {"initial": (model.init_params(jax.random.key(0)), None),
              "EP-trained": (trained, trained_accuracy)}  # fmt: skip
    points |= {f"epoch {e}": v for e, v in trajectory(dataset, set(epochs)).items()}
    default = build_estimator(TrainOptions(), dataset.num_features, dataset.num_classes)
    lines = [
        "### Section trajectory: the default train's gradient along a default training run",
        "",
        f"{args.batches} batches of 32 digits, {args.reps} interleaved repetitions per batch; "
        f"parameters: the initial ones (`init_params(key(0))`, those of the run), the EP-trained "
        f"stand-in of sections main and importance (10 epochs of T = 0 EP), and those after "
        f"epochs {', '.join(map(str, epochs))} of the default `thermoeqprop train` (15 epochs). "
        "Gains of the default at equal wall time (reported MCSE, observed spread): by `1/√time` "
        "from plain's 2 × (50 + 50), and measured against plain with the default's time.",
        "",
        "| parameters | test accuracy | route | draws per chain | first call (s) "
        "| steady s / call (median) | relative MCSE (median, min–max) "
        "| observed relative spread (median) | gain by 1/√time | gain measured at equal time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, (params, accuracy) in points.items():
        routes = {"plain": _plain(model, MAIN_SAMPLING.num_samples), "default": default}
        first = {name: _call(est, params, batches[0], jax.random.key(10**6))[0]
                 for name, est in routes.items()}  # fmt: skip
        draws = fitted_draws(functools.partial(_plain, model), default, params, batches,
                             PLAIN_GRID, reps=2)  # fmt: skip
        draws = max(MAIN_SAMPLING.num_samples, 10 * round(draws / 10))
        routes = {"plain": routes["plain"], "plain, same time": _plain(model, draws),
                  "default": default}  # fmt: skip
        first["plain, same time"] = _call(routes["plain, same time"], params, batches[0],
                                          jax.random.key(10**6))[0]  # fmt: skip
        results = interleaved(routes, params, batches, args.reps, label, _call)
        med, spread, ranges = {}, {}, {}
        for name, rows in results.items():
            relative = [np.linalg.norm(r[3]) / np.linalg.norm(r[2]) for r in rows]
            med[name] = (statistics.median(r[0] for r in rows), statistics.median(relative))
            ranges[name] = f"{min(relative):.3f}–{max(relative):.3f}"
            spread[name] = _observed_spread(rows, len(batches))
        chains, warmup = MAIN_SAMPLING.num_chains, MAIN_SAMPLING.num_warmup
        counts = {"plain": f"{chains} × ({warmup} + {MAIN_SAMPLING.num_samples})",
                  "plain, same time": f"{chains} × ({warmup} + {draws})",
                  "default": "–"}  # fmt: skip
        for name in routes:
            gains = ("– | –" if name != "default" else
                     f"{_gain(med, spread, name, 'plain')} "
                     f"| {_gain(med, spread, name, 'plain, same time')}")  # fmt: skip
            lines.append(
                f"| {label} | {'–' if accuracy is None else f'{100 * accuracy:.2f} %'} "
                f"| {name} | {counts[name]} | {first[name]:.2f} | {med[name][0]:.4f} "
                f"| {med[name][1]:.3f} ({ranges[name]}) | "
                + ("–" if spread[name] is None else f"{spread[name]:.3f}")
                + f" | {gains} |"
            )
        print("\n".join(lines[-3:]), flush=True)
    return [*lines, ""]

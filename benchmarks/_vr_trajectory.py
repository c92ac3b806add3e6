"""Section ``trajectory`` of ``benchmarks/variance_reduction.py``: the default train's gradient
against plain HMC's at the parameters a default training run passes through.

Sections ``main`` and ``importance`` compare estimators at two parameter sets, the initial ones
and ones trained by T = 0 EP. A thermal run passes through others: this section runs the
default ``thermoeqprop train`` itself (``TrainOptions()``: the covariance estimator at T = 0.02,
importance sampling with Neyman rows, the HMC fallback and rounds to a relative MCSE of 0.2;
15 epochs, in a temporary folder) and reads back its parameters after each epoch of
``--trajectory-epochs`` from the checkpoint just written. At the initial parameters and at each
of those, on the main job's batches (``_vr_main.main_batches``), two routes are called in
turn, repetition after repetition, a fresh key per call, first calls (compilation) apart:

- ``plain``: ``ThermalCovariance(rao_blackwell=False)`` with ``_vr_main.MAIN_SAMPLING``, HMC on
  every unit, 2 chains × (50 + 50) draws, the estimator before variance reduction;
- ``default``: the train's own estimator (``_cli_train.build_estimator(TrainOptions())``).

Per parameter set: the run's test accuracy after that epoch, each route's median seconds per
call and median relative MCSE ``‖MCSE‖ / ‖grad‖``, the relative spread of its estimates over
the repetitions (``_vr_importance._observed_spread``), and the ratio at equal wall time by the
scaling ``MCSE ∝ 1/√time``, from the reported MCSE and from the observed spread. Imported by
``variance_reduction.py`` after its thread settings.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import jax
import numpy as np
from _vr_importance import _call, _observed_spread
from _vr_main import MAIN_SAMPLING, TEMPERATURE, interleaved, main_batches

from thermoeqprop._cli_train import build_estimator, temperature_schedule, train_config
from thermoeqprop._runs import latest_checkpoint, read_checkpoint, restore_tree
from thermoeqprop.estimators import ThermalCovariance
from thermoeqprop.options import TrainOptions
from thermoeqprop.training import train


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


def section_trajectory(args) -> list[str]:
    dataset, model, batches = main_batches(args.batches)
    epochs = sorted(set(args.trajectory_epochs))
    points = {"initial": (model.init_params(jax.random.key(0)), None)}
    points |= {f"epoch {e}": v for e, v in trajectory(dataset, set(epochs)).items()}
    routes = {
        "plain": ThermalCovariance(model, TEMPERATURE, MAIN_SAMPLING, rao_blackwell=False),
        "default": build_estimator(TrainOptions(), dataset.num_features, dataset.num_classes),
    }
    lines = [
        "### Section trajectory: the default train's gradient along a default training run",
        "",
        f"{args.batches} batches of 32 digits, {args.reps} interleaved repetitions per batch; "
        f"parameters: the initial ones (`init_params(key(0))`, those of the run) and those after "
        f"epochs {', '.join(map(str, epochs))} of the default `thermoeqprop train` (15 epochs).",
        "",
        "| parameters | test accuracy | route | first call (s) | steady s / call (median) "
        "| relative MCSE (median, min–max) | observed relative spread (median) "
        "| ratio at equal time: reported, observed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, (params, accuracy) in points.items():
        first = {name: _call(est, params, batches[0], jax.random.key(10**6))[0]
                 for name, est in routes.items()}  # fmt: skip
        results = interleaved(routes, params, batches, args.reps, label, _call)
        med, spread, ranges = {}, {}, {}
        for name, rows in results.items():
            relative = [np.linalg.norm(r[3]) / np.linalg.norm(r[2]) for r in rows]
            med[name] = (statistics.median(r[0] for r in rows), statistics.median(relative))
            ranges[name] = f"{min(relative):.3f}–{max(relative):.3f}"
            spread[name] = _observed_spread(rows, len(batches))
        for name in routes:
            (t, m), (t0, m0) = med[name], med["plain"]
            ratio = "–"
            if name != "plain":
                scale = np.sqrt(t / t0)
                observed = ("–" if spread[name] is None
                            else f"{spread['plain'] / (spread[name] * scale):.2f}")  # fmt: skip
                ratio = f"**{m0 / (m * scale):.2f}**, {observed}"
            lines.append(
                f"| {label} | {'–' if accuracy is None else f'{100 * accuracy:.2f} %'} "
                f"| {name} | {first[name]:.2f} | {t:.4f} | {m:.3f} ({ranges[name]}) | "
                + ("–" if spread[name] is None else f"{spread[name]:.3f}")
                + f" | {ratio} |"
            )
        print("\n".join(lines[-2:]), flush=True)
    return [*lines, ""]

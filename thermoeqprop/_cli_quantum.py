"""``thermoeqprop quantum``: train a qubit classifier by quantum EP and write a results folder.

Training runs through the shared loop :func:`thermoeqprop.training.train` on a data set from
:func:`thermoeqprop.data.load_dataset` (features mapped to [−1, 1], the range the qubit fields
are scaled for), so a run has what every run has: ``config.json``, ``metrics.jsonl`` (one line
per epoch: loss, train and test accuracy, smallest spectral gap, gradient standard error with
shots), ``checkpoints/``, and after training ``training_curves.png`` (loss and accuracies),
``decision.png`` (the learned decision function over the input plane) and ``summary.txt``.
Interrupted (Ctrl-C, SIGTERM, a kill), the same command resumes after the last finished epoch
and ends with bit-for-bit the same parameters. The defaults (6 qubits, moons, ground-state EP)
take well under a minute on two CPU cores.

This module lives outside :mod:`thermoeqprop.quantum` so that building the command line does
not import that package, whose import sets XLA flags (see its docstring) that the classical
commands should not inherit.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["build_estimator", "configure_parser", "run"]

ESTIMATORS = ("ground", "excited", "thermal", "thermal-nudged")
#: Settings that change what is shown, not what is computed (left out of the run's identity).
PRESENTATION = ("results_dir", "no_progress", "quiet")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``thermoeqprop quantum`` to ``parser`` and return it."""
    parser.description = (
        "Train a qubit network (inputs as fields on the qubits, trainable X/Z fields and "
        "ZZ/XX couplings, output ⟨Z0⟩) by quantum equilibrium propagation on a two-class "
        "scikit-learn data set, and write a results folder with metrics, checkpoints and "
        "plots. An interrupted run resumes when the same command is run again."
    )
    add = parser.add_argument
    add(
        "--estimator",
        choices=ESTIMATORS,
        default="ground",
        help="ground: ground-state EP; excited: EP in level --level; thermal: Kubo–Mori "
        "covariance (no nudge) at --temperature; thermal-nudged: nudged thermal EP",
    )
    add("--dataset", choices=("moons", "circles"), default="moons")
    add("--qubits", type=int, default=6, help="number of qubits (default 6)")
    add("--couplings", choices=("ring", "all"), default="ring")
    add("--temperature", type=float, default=0.05, help="T for the thermal estimators")
    add("--level", type=int, default=1, help="eigenstate index for --estimator excited")
    add(
        "--beta",
        type=float,
        default=None,
        help="nudging strength (default 0.01 exact, 0.1 with --shots)",
    )
    add(
        "--shots",
        type=int,
        default=None,
        help="shots per basis setting (ground, excited, thermal-nudged); default exact",
    )
    add(
        "--cost",
        choices=("expectation-mse", "operator"),
        default="expectation-mse",
        help="½(⟨Z⟩ − y)² nudged by (⟨Z⟩ − y)Z, or the operator cost ½(Z − y)²",
    )
    add("--epochs", type=int, default=20)
    add("--batch-size", type=int, default=20)
    add("--learning-rate", type=float, default=0.05)
    add("--optimizer", default="adam", choices=("adam", "sgd", "momentum"))
    add("--lr-schedule", default="cosine", choices=("cosine", "constant"))
    add("--num-examples", type=int, default=400, help="examples generated (train + test)")
    add("--test-fraction", type=float, default=0.5, help="fraction held out for testing")
    add(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial parameters, the batch order and the shot noise (the data "
        "split is fixed)",
    )
    add(
        "--results-dir",
        default="results/quantum",
        help="results folder; an unfinished run of the same configuration there is resumed",
    )
    add("--no-progress", action="store_true", help="hide progress bars")
    add("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    return parser


def build_estimator(settings: dict[str, Any]):
    """The network and estimator that ``settings`` (the parsed options) describe."""
    from thermoeqprop.quantum import EigenstateEP, ExpectationLoss, ThermalEP, classifier_network

    qubits = settings["qubits"]
    if not 2 <= qubits <= 12:
        raise ValueError(f"--qubits must be in 2 … 12 for training (dense eigh), got {qubits}")
    cost = ExpectationLoss.squared_error() if settings["cost"] == "expectation-mse" else None
    # Fields of ±2 on features in [−1, 1] (load_dataset's feature_range below).
    model = classifier_network(
        num_qubits=qubits,
        num_inputs=2,
        couplings=settings["couplings"],
        input_scale=2.0,
        cost=cost,
    )
    shots, name = settings["shots"], settings["estimator"]
    # Shot noise in the difference of two nudged phases scales like 1/β: a larger β with
    # shots. Not too large: near the decision boundary the trained network's gap closes
    # (down to 0.02 on moons), and at β = 0.2 level tracking was lost there (seed 0).
    beta = settings["beta"] if settings["beta"] is not None else (0.1 if shots else 0.01)
    if name == "ground":
        return EigenstateEP(model, beta=beta, shots=shots)
    if name == "excited":
        return EigenstateEP(model, level=settings["level"], beta=beta, shots=shots)
    if name == "thermal":
        return ThermalEP(model, temperature=settings["temperature"], shots=shots)
    return ThermalEP(
        model, temperature=settings["temperature"], method="nudged", beta=beta, shots=shots
    )


def run(settings: dict[str, Any]) -> int:
    """Train (or resume), then write plots and ``summary.txt``; returns 0.

    Bad settings raise ``ValueError``; the ``thermoeqprop`` command turns that into one line
    and exit status 2.
    """
    from thermoeqprop._cli_train import train_config
    from thermoeqprop.data import load_dataset
    from thermoeqprop.plots import plot_training
    from thermoeqprop.training import train

    tic = time.perf_counter()
    estimator = build_estimator(settings)
    dataset = load_dataset(
        settings["dataset"],
        num_examples=settings["num_examples"],
        test_fraction=settings["test_fraction"],
        seed=0,
        feature_range=(-1.0, 1.0),
    )
    config = train_config(settings)
    results_dir = Path(settings["results_dir"])
    model = estimator.model
    name = settings["estimator"]
    sizes = f"{len(dataset.labels_train)} train / {len(dataset.labels_test)} test"
    print(
        f"thermoeqprop quantum: {name} EP on {dataset.name} ({sizes}), {model.num_qubits} "
        f"qubits, {model.hamiltonian.num_params} parameters, results in {results_dir}",
        flush=True,
    )

    def report(record):
        print(
            f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  "
            f"train {record['train_accuracy']:.3f}  test {record['test_accuracy']:.3f}  "
            f"({record['epoch_seconds']:.1f} s)",
            flush=True,
        )

    quiet = settings["quiet"]
    result = train(
        estimator,
        dataset,
        config,
        results_dir,
        progress=not (quiet or settings["no_progress"]),
        extra_config={
            "command_line": {k: v for k, v in settings.items() if k not in PRESENTATION},
            "num_params": model.hamiltonian.num_params,
        },
        train_accuracy=True,
        callback=None if quiet else report,
    )
    history = result.history
    plot_training(history, results_dir / "training_curves.png", f"{name} EP on {dataset.name}")
    _plot_decision(results_dir / "decision.png", estimator, result.params, dataset)
    final = history[-1]
    best = max(history, key=lambda h: h["test_accuracy"])
    seconds = sum(h["epoch_seconds"] for h in history)
    how = f"T = {settings['temperature']}, " if name.startswith("thermal") else ""
    if name == "excited":
        how = f"level {settings['level']}, "
    if name != "thermal":
        how += f"β = {estimator.beta}, "
    shots = settings["shots"]
    how += f"{shots} shots per basis setting" if shots else "exact expectations"
    lines = [
        f"estimator: {name} ({type(estimator).__name__}, {how})",
        f"dataset: {dataset.name}, {sizes}, features in [-1, 1]",
        f"model: {model.num_qubits} qubits, {settings['couplings']} couplings, "
        f"{model.hamiltonian.num_params} parameters, cost {settings['cost']}",
        f"training: {final['epoch']} epochs, batch {config.batch_size}, {config.optimizer} "
        f"lr {config.learning_rate} ({config.lr_schedule}), seed {config.seed}",
        f"final test accuracy: {100 * final['test_accuracy']:.2f}%",
        f"best test accuracy: {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']})",
        f"final train accuracy: {100 * final['train_accuracy']:.2f}%",
        f"final training loss: {final['train_loss']:.5f}",
        f"seconds in training steps: {seconds:.1f} ({seconds / len(history):.2f} per epoch)",
        f"wall time of this invocation: {time.perf_counter() - tic:.1f} s "
        f"({platform.machine()}, {platform.system()}, JAX {jax.__version__})",
    ]
    lines += [f"{k}: {v}" for k, v in final.items() if k.startswith("diag_")]
    (results_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _plot_decision(path: Path, estimator, params, dataset) -> None:
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays

    grid = np.linspace(-1.2, 1.2, 41)
    gx, gy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
    outputs = np.asarray(estimator.predict(params, points))[:, 0].reshape(gx.shape)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    mesh = ax.contourf(gx, gy, outputs, levels=20, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.contour(gx, gy, outputs, levels=[0.0], colors="k")
    ax.scatter(*dataset.x_test.T, c=dataset.labels_test, cmap="bwr", edgecolors="k", s=14)
    fig.colorbar(mesh, ax=ax, label="⟨Z0⟩")
    ax.set(title="decision function (test points)", xlabel="x0", ylabel="x1")
    fig.savefig(path, dpi=110)

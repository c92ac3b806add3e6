"""``thermoeqprop quantum``: train a qubit classifier by quantum EP and write a results folder.

Wire it as a sub-command with::

    sub = subparsers.add_parser("quantum", help="train a qubit network by quantum EP")
    thermoeqprop.quantum.cli.configure_parser(sub)
    ...
    return thermoeqprop.quantum.cli.run(args)

The results folder holds ``config.json``, ``metrics.csv`` and ``metrics.json`` (one row per
epoch), ``params.npy``, ``training.png`` (loss and accuracies), ``decision.png`` (the learned
decision function over the input plane) and ``summary.txt``. The defaults (6 qubits, moons,
ground-state EP) run in about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["build_estimator", "configure_parser", "run"]

ESTIMATORS = ("ground", "excited", "thermal", "thermal-nudged")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``thermoeqprop quantum`` to ``parser`` and return it."""
    parser.description = (
        "Train a qubit network (inputs as fields on the qubits, trainable X/Z fields and "
        "ZZ/XX couplings, output ⟨Z0⟩) by quantum equilibrium propagation on a two-class "
        "scikit-learn data set, and write a results folder with metrics and plots."
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
        help="nudging strength (default 0.01 exact, 0.2 with --shots)",
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
    add("--train-size", type=int, default=200)
    add("--test-size", type=int, default=200)
    add("--seed", type=int, default=0)
    add(
        "--results-dir",
        type=Path,
        default=None,
        help="output folder (default results/quantum-<estimator>-<time>)",
    )
    add("--quiet", action="store_true", help="no per-epoch lines")
    return parser


def build_estimator(args: argparse.Namespace):
    """The network and estimator that ``args`` describe."""
    from thermoeqprop.quantum import (
        EigenstateEP,
        ExpectationLoss,
        ThermalEP,
        classifier_network,
    )

    cost = ExpectationLoss.squared_error() if args.cost == "expectation-mse" else None
    model = classifier_network(
        num_qubits=args.qubits,
        num_inputs=2,
        couplings=args.couplings,
        input_scale=2.0,
        cost=cost,
    )
    beta = args.beta if args.beta is not None else (0.2 if args.shots else 0.01)
    if args.estimator == "ground":
        return EigenstateEP(model, beta=beta, shots=args.shots)
    if args.estimator == "excited":
        return EigenstateEP(model, level=args.level, beta=beta, shots=args.shots)
    if args.estimator == "thermal":
        return ThermalEP(model, temperature=args.temperature, shots=args.shots)
    return ThermalEP(
        model, temperature=args.temperature, method="nudged", beta=beta, shots=args.shots
    )


def _validate(args) -> None:
    if args.qubits < 2 or args.qubits > 12:
        raise ValueError(f"--qubits must be in 2 … 12 for training (dense eigh), got {args.qubits}")
    for name in ("epochs", "batch_size", "train_size", "test_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.batch_size > args.train_size:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --train-size {args.train_size}")


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and write the results folder; returns the exit status (0 on success)."""
    from thermoeqprop.quantum._train import load_two_class, train_classifier

    try:
        _validate(args)
        estimator = build_estimator(args)
    except ValueError as err:
        print(f"thermoeqprop quantum: error: {err}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = (
        Path(args.results_dir)
        if args.results_dir
        else Path("results") / f"quantum-{args.estimator}-{stamp}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if not k.startswith("_") and isinstance(v, str | int | float | bool | Path | type(None))
    }
    config.update(
        estimator_repr=repr(estimator).split("(model=")[0],
        num_params=estimator.model.hamiltonian.num_params,
        machine=platform.platform(),
        jax_version=jax.__version__,
        started=stamp,
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    data = load_two_class(args.dataset, args.train_size, args.test_size, seed=args.seed)

    def report(record):
        if not args.quiet:
            print(
                f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  "
                f"train {record['train_accuracy']:.3f}  test {record['test_accuracy']:.3f}  "
                f"({record['seconds']:.1f} s)",
                flush=True,
            )

    start = time.perf_counter()
    params, history = train_classifier(
        estimator,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rng_key=jax.random.key(args.seed),
        callback=report,
    )
    seconds = time.perf_counter() - start
    np.save(folder / "params.npy", np.asarray(params))
    _write_metrics(folder, history)
    _plot_training(folder, history)
    _plot_decision(folder, estimator, params, data)
    final = history[-1]
    best = max(h["test_accuracy"] for h in history)
    summary = (
        f"thermoeqprop quantum: {args.estimator} EP on {args.dataset}, {args.qubits} qubits, "
        f"{estimator.model.hamiltonian.num_params} parameters\n"
        f"estimator: {config['estimator_repr']}"
        + (f", T = {args.temperature}" if args.estimator.startswith("thermal") else "")
        + (f", {args.shots} shots per setting" if args.shots else ", exact expectations")
        + "\n"
        f"epochs: {args.epochs}, batch {args.batch_size}, Adam lr {args.learning_rate}, "
        f"seed {args.seed}, {args.train_size} train / {args.test_size} test examples\n"
        f"final: loss {final['loss']:.4f}, train accuracy {final['train_accuracy']:.3f}, "
        f"test accuracy {final['test_accuracy']:.3f} (best {best:.3f})\n"
        f"wall time: {seconds:.1f} s\n"
    )
    (folder / "summary.txt").write_text(summary)
    if not args.quiet:
        print(summary + f"results in {folder}")
    return 0


def _write_metrics(folder: Path, history) -> None:
    (folder / "metrics.json").write_text(json.dumps(history, indent=2) + "\n")
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot_training(folder: Path, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], marker="s", label="test")
    ax_acc.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(folder / "training.png", dpi=110)
    plt.close(fig)


def _plot_decision(folder: Path, estimator, params, data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-1.2, 1.2, 41)
    gx, gy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
    outputs = np.asarray(estimator.predict(params, points))[:, 0].reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    mesh = ax.contourf(gx, gy, outputs, levels=20, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.contour(gx, gy, outputs, levels=[0.0], colors="k")
    ax.scatter(*data.x_test.T, c=data.labels_test, cmap="bwr", edgecolors="k", s=14)
    fig.colorbar(mesh, ax=ax, label="⟨Z0⟩")
    ax.set(title="decision function (test points)", xlabel="x0", ylabel="x1")
    fig.tight_layout()
    fig.savefig(folder / "decision.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """Stand-alone entry point: ``python -m thermoeqprop.quantum.cli``."""
    parser = configure_parser(argparse.ArgumentParser(prog="thermoeqprop quantum"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

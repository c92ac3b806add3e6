"""``thermoeqprop train``: train a network on a bundled data set; write a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ZERO_TEMPERATURE_ESTIMATORS = ("ep", "ep-one-sided", "implicit", "backprop")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", default="digits", choices=("digits", "moons", "circles"))
    add("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes")
    add(
        "--activation",
        default="sigmoid",
        choices=("sigmoid", "hard_sigmoid", "tanh", "linear"),
    )
    add("--cost", default="squared_error", choices=("squared_error", "cross_entropy"))
    add(
        "--estimator",
        default="ep",
        choices=ZERO_TEMPERATURE_ESTIMATORS,
        help="ep: symmetric zero-temperature EP; ep-one-sided; implicit: exact implicit-"
        "function gradient; backprop: the feedforward baseline",
    )
    add("--beta", type=float, default=0.5, help="nudging strength")
    add("--epochs", type=int, default=30)
    add("--batch-size", type=int, default=32)
    add("--learning-rate", type=float, default=2e-3)
    add("--optimizer", default="adam", choices=("adam", "sgd", "momentum"))
    add("--lr-schedule", default="cosine", choices=("cosine", "constant"))
    add("--seed", type=int, default=0)
    add("--tolerance", type=float, default=1e-4, help="relaxation tolerance on |∇F|")
    add("--max-iterations", type=int, default=500, help="relaxation iteration budget")
    add(
        "--results-dir",
        default="results/train",
        help="results folder; an unfinished run of the same configuration there is resumed",
    )
    add("--no-progress", action="store_true", help="hide progress bars")


def build_estimator(settings: dict[str, Any], num_inputs: int, num_classes: int):
    from thermoeqprop.estimators import (
        FeedforwardBackprop,
        ImplicitDifferentiation,
        Relaxation,
        ZeroTemperatureEP,
    )
    from thermoeqprop.models import LayeredNetwork, get_cost

    sizes = (num_inputs, *settings["hidden"], num_classes)
    model = LayeredNetwork(
        sizes, activation=settings["activation"], cost=get_cost(settings["cost"])
    )
    relaxation = Relaxation(
        tolerance=settings["tolerance"], max_iterations=settings["max_iterations"]
    )
    name = settings["estimator"]
    if name == "ep":
        return ZeroTemperatureEP(model, beta=settings["beta"], relaxation=relaxation)
    if name == "ep-one-sided":
        return ZeroTemperatureEP(
            model, beta=settings["beta"], symmetric=False, relaxation=relaxation
        )
    if name == "implicit":
        return ImplicitDifferentiation(model, relaxation)
    if name == "backprop":
        return FeedforwardBackprop(model)
    raise ValueError(f"unknown estimator {name!r}; valid: {list(ZERO_TEMPERATURE_ESTIMATORS)}")


def run(settings: dict[str, Any]) -> int:
    import numpy as np

    from thermoeqprop.data import load_dataset
    from thermoeqprop.plots import plot_training
    from thermoeqprop.training import TrainConfig, train

    dataset = load_dataset(settings["dataset"], seed=0)
    estimator = build_estimator(settings, dataset.num_features, dataset.num_classes)
    config = TrainConfig(
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        optimizer=settings["optimizer"],
        lr_schedule=settings["lr_schedule"],
        seed=settings["seed"],
    )
    results_dir = Path(settings["results_dir"])
    print(
        f"thermoeqprop train: {settings['estimator']} on {dataset.name} "
        f"({len(dataset.labels_train)} train / {len(dataset.labels_test)} test), "
        f"layers {estimator.model.layer_sizes}, results in {results_dir}"
    )
    result = train(
        estimator,
        dataset,
        config,
        results_dir,
        progress=not settings["no_progress"],
        extra_config={"command_line": {k: v for k, v in settings.items() if k != "no_progress"}},
    )
    history = result.history
    plot_training(
        history, results_dir / "training_curves.png", f"{settings['estimator']} on {dataset.name}"
    )
    final = history[-1]
    best = max(history, key=lambda h: h["test_accuracy"])
    seconds = np.mean([h["epoch_seconds"] for h in history])
    lines = [
        f"estimator: {settings['estimator']}",
        f"dataset: {dataset.name}",
        f"layers: {estimator.model.layer_sizes}",
        f"epochs: {final['epoch']}",
        f"final test accuracy: {100 * final['test_accuracy']:.2f}%",
        f"best test accuracy: {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']})",
        f"final training loss: {final['train_loss']:.5f}",
        f"mean seconds per epoch (training only): {seconds:.3f}",
    ]
    lines += [f"{k}: {v}" for k, v in final.items() if k.startswith("diag_")]
    (results_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0

"""``thermoeqprop train``: train a network on a bundled data set; write a results folder.

The default is the main job of the project: finite-temperature EP with the unclamped
covariance estimator, states drawn by HMC, on digits.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from thermoeqprop.results import RunFolder

THERMAL_ESTIMATORS = ("covariance", "nudged", "exact")
ZERO_TEMPERATURE_ESTIMATORS = ("ep", "ep-one-sided", "implicit", "backprop")
ESTIMATORS = THERMAL_ESTIMATORS + ZERO_TEMPERATURE_ESTIMATORS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", default="digits", choices=("digits", "moons", "circles"))
    add(
        "--model",
        default="layered",
        choices=("layered", "spin", "quadratic"),
        help="layered: continuous Scellier–Bengio network; spin: ±1 Ising network; "
        "quadratic: linear units (Gaussian Gibbs law)",
    )
    add("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes")
    add(
        "--activation",
        default="sigmoid",
        choices=("sigmoid", "hard_sigmoid", "tanh", "linear"),
        help="layered model only",
    )
    add("--cost", default="squared_error", choices=("squared_error", "cross_entropy"))
    add(
        "--estimator",
        default="covariance",
        choices=ESTIMATORS,
        help="covariance: thermal, unclamped −Cov(C, ∂θE)/T; nudged: thermal, ±β phases; "
        "exact: thermal by enumeration (spins) or closed form (quadratic); ep, ep-one-sided: "
        "zero-temperature EP; implicit: exact T = 0 gradient; backprop: feedforward baseline",
    )
    add("--temperature", type=float, default=0.02, help="T for the thermal estimators")
    add(
        "--anneal-from",
        type=float,
        default=None,
        help="anneal the temperature geometrically from this value (epoch 1) down to "
        "--temperature (last epoch)",
    )
    add("--beta", type=float, default=0.5, help="nudging strength (nudged, ep)")
    add(
        "--sampler",
        default="auto",
        choices=("auto", "hmc", "nuts", "gibbs", "metropolis"),
        help="auto: HMC for continuous states, block Gibbs for spins",
    )
    add("--num-chains", type=int, default=2, help="chains per example")
    add("--num-samples", type=int, default=50, help="draws per chain and estimate")
    add("--num-warmup", type=int, default=50, help="discarded steps per chain")
    add("--hmc-steps", type=int, default=8, help="leapfrog steps per HMC trajectory")
    add("--hmc-jitter", type=float, default=0.5,
        help="relative step-size jitter of HMC after warm-up (0: off); breaks the resonances "
        "of a fixed trajectory length")  # fmt: skip
    add("--tempering", type=int, default=0, help="parallel-tempering replicas (0: off)")
    add("--collapse", default="auto", choices=("auto", "on", "off"),
        help="collapsed sampling of a layered network: HMC on the outputs' exact marginal, the "
        "other layers averaged (auto: wherever possible; off: sample every unit)")  # fmt: skip
    add("--mode-jumps", default="off", choices=("on", "off"),
        help="with collapsed sampling, Metropolis jumps between the outputs' two T = 0 minima "
        "after every HMC transition (exact; helps inputs with two competing outputs)")  # fmt: skip
    add(
        "--start",
        default="auto",
        choices=("auto", "relaxed", "annealed", "dispersed"),
        help="where chains start (auto: relaxed minimum for continuous states)",
    )
    add("--epochs", type=int, default=15)
    add("--batch-size", type=int, default=32)
    add("--learning-rate", type=float, default=2e-3)
    add("--optimizer", default="adam", choices=("adam", "sgd", "momentum"))
    add("--lr-schedule", default="cosine", choices=("cosine", "constant"))
    add("--seed", type=int, default=0)
    add("--tolerance", type=float, default=1e-4, help="T = 0 relaxation tolerance on |∇F|")
    add("--max-iterations", type=int, default=500, help="T = 0 relaxation iteration budget")
    add(
        "--results-dir",
        default="results/train",
        help="results folder; an unfinished run of the same configuration there is resumed",
    )
    add("--no-progress", action="store_true", help="hide progress bars")


def build_model(settings: dict[str, Any], num_inputs: int, num_classes: int):
    from thermoeqprop.models import LayeredNetwork, QuadraticNetwork, SpinNetwork, get_cost

    kind = settings["model"]
    outputs = 1 if (kind == "spin" and num_classes == 2) else num_classes
    sizes = (num_inputs, *settings["hidden"], outputs)
    if kind == "spin":
        return SpinNetwork.layered(sizes, cost=get_cost(settings["cost"]))
    if kind == "quadratic":
        if settings["cost"] != "squared_error":
            raise ValueError(
                f"the quadratic model needs cost 'squared_error', got {settings['cost']!r}"
            )
        return QuadraticNetwork(sizes)
    return LayeredNetwork(sizes, activation=settings["activation"], cost=get_cost(settings["cost"]))


def build_estimator(settings: dict[str, Any], num_inputs: int, num_classes: int):
    from thermoeqprop.estimators import (
        FeedforwardBackprop,
        ImplicitDifferentiation,
        Relaxation,
        Sampling,
        ThermalCovariance,
        ThermalExact,
        ThermalNudged,
        ZeroTemperatureEP,
    )

    model = build_model(settings, num_inputs, num_classes)
    name = settings["estimator"]
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid: {list(ESTIMATORS)}")
    temperature = settings["temperature"]
    if name in THERMAL_ESTIMATORS:
        if name == "exact":
            return ThermalExact(model, temperature)
        sampling = Sampling(
            method=settings["sampler"],
            num_chains=settings["num_chains"],
            num_samples=settings["num_samples"],
            num_warmup=settings["num_warmup"],
            hmc_steps=settings["hmc_steps"],
            hmc_jitter=settings["hmc_jitter"],
            tempering=settings["tempering"],
            start=settings["start"],
            collapse={"auto": None, "on": True, "off": False}[settings.get("collapse", "auto")],
            mode_jumps=settings.get("mode_jumps", "off") == "on",
        )
        if sampling.method == "auto" and not model.is_spin:
            sampling = dataclasses.replace(sampling, method="hmc")
        if name == "covariance":
            return ThermalCovariance(model, temperature, sampling)
        return ThermalNudged(model, temperature, beta=settings["beta"], sampling=sampling)
    relaxation = Relaxation(
        tolerance=settings["tolerance"], max_iterations=settings["max_iterations"]
    )
    if name == "ep":
        return ZeroTemperatureEP(model, beta=settings["beta"], relaxation=relaxation)
    if name == "ep-one-sided":
        return ZeroTemperatureEP(
            model, beta=settings["beta"], symmetric=False, relaxation=relaxation
        )
    if name == "implicit":
        return ImplicitDifferentiation(model, relaxation)
    return FeedforwardBackprop(model)


def temperature_schedule(settings: dict[str, Any], epochs: int):
    """``(estimator, epoch) -> estimator`` annealing T geometrically, or None."""
    start = settings.get("anneal_from")
    if start is None:
        return None
    from thermoeqprop._validation import check_positive

    start = check_positive("anneal_from", start)
    final = settings["temperature"]
    if not start > final:
        raise ValueError(f"anneal_from must exceed the final temperature {final}, got {start}")
    if settings["estimator"] not in THERMAL_ESTIMATORS:
        raise ValueError(
            f"--anneal-from needs a thermal estimator {list(THERMAL_ESTIMATORS)}, "
            f"got {settings['estimator']!r}"
        )

    def schedule(estimator, epoch):
        fraction = (epoch - 1) / max(1, epochs - 1)
        return dataclasses.replace(estimator, temperature=start * (final / start) ** fraction)

    return schedule


def train_config(settings: dict[str, Any]):
    """The :class:`~thermoeqprop.training.TrainConfig` of a command's training settings."""
    from thermoeqprop.training import TrainConfig

    names = ("epochs", "batch_size", "learning_rate", "optimizer", "lr_schedule", "seed")
    return TrainConfig(**{name: settings[name] for name in names})


def health_table(record) -> str:
    """The gradient-health table of one epoch's record (``thermoeqprop._health``)."""
    from thermoeqprop._health import format_checks, gradient_checks

    heading = (
        f"gradient health, epoch {record['epoch']} ({record['diag_num_chains']:.0f} chains × "
        f"{record['diag_num_draws_per_chain']:.0f} draws per estimate, {record['parameters']} "
        f"components, {record['batches']} batches; split R-hat: Gelman et al., not "
        "rank-normalised, on every batch; `thermoeqprop diagnose` adds ArviZ's rank-normalised "
        "R-hat)"
    )
    return format_checks(gradient_checks(record), heading)


def run(settings: dict[str, Any]) -> int:
    import numpy as np

    from thermoeqprop._health import epoch_line
    from thermoeqprop.data import load_dataset
    from thermoeqprop.plots import plot_training
    from thermoeqprop.training import train

    dataset = load_dataset(settings["dataset"], seed=0)
    estimator = build_estimator(settings, dataset.num_features, dataset.num_classes)
    config = train_config(settings)
    schedule = temperature_schedule(settings, config.epochs)
    results_dir = Path(settings["results_dir"])
    model = estimator.model
    shape = getattr(model, "layer_sizes", None) or f"{model.state_size} spins"
    thermal = settings["estimator"] in THERMAL_ESTIMATORS
    where = f" at T = {settings['temperature']}" if thermal else ""
    print(
        f"thermoeqprop train: {settings['estimator']}{where} on {dataset.name} "
        f"({len(dataset.labels_train)} train / {len(dataset.labels_test)} test), "
        f"{type(model).__name__} {shape}, results in {results_dir}"
    )
    result = train(
        estimator,
        dataset,
        config,
        results_dir,
        schedule=schedule,
        progress=not settings["no_progress"],
        callback=lambda record: print(epoch_line(record, config.epochs), flush=True),
        log=lambda line: print(line, flush=True),
        extra_config={
            "command_line": {
                k: v for k, v in settings.items() if k not in ("no_progress", "results_dir")
            }
        },
    )
    history = result.history
    plot_training(
        history, results_dir / "training_curves.png", f"{settings['estimator']} on {dataset.name}"
    )
    final = history[-1]
    best = max(history, key=lambda h: h["test_accuracy"])
    seconds = np.mean([h["epoch_seconds"] for h in history])
    lines = [
        f"estimator: {settings['estimator']}{where}",
        f"dataset: {dataset.name}",
        f"model: {type(model).__name__} {shape}",
        f"epochs: {final['epoch']}",
        f"final test accuracy: {100 * final['test_accuracy']:.2f}%",
        f"best test accuracy: {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']})",
        f"final training loss: {final['train_loss']:.5f}",
        f"mean seconds per epoch (training only): {seconds:.3f}",
    ]
    if "relative_stderr" in final:
        lines.append(f"mean relative gradient MCSE (last epoch): {final['relative_stderr']:.3f}")
    if "diag_num_chains" in final:
        lines.append(health_table(final))
    RunFolder(results_dir).write_text("summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0

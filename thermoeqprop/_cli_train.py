"""``thermoeqprop train``: train a network on a bundled data set; write a results folder.

The default is the main job of the project: finite-temperature EP with the unclamped
covariance estimator on digits, the outputs' marginal drawn by importance sampling with
Neyman allocation, the hidden layer averaged by its conditional expectations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thermoeqprop import registry
from thermoeqprop._cli_common import build_model, build_sampling, write_summary
from thermoeqprop.options import TrainOptions, recorded

#: The options of ``thermoeqprop train`` (flags, config-file keys, ``config.json``).
OPTIONS = TrainOptions


def thermal_estimators() -> list[str]:
    """The classical estimators of the registry that read a temperature."""
    return [n for n in registry.names("classical")
            if "temperature" in registry.entry(n, "classical").options]  # fmt: skip


def build_estimator(options: TrainOptions, num_inputs: int, num_classes: int):
    """The estimator ``options.estimator`` names (:mod:`thermoeqprop.registry`) on the network
    the options describe; only the settings that estimator reads are built, so a T = 0
    estimator never validates the sampler flags. Without ``--sampler`` (None), importance
    sampling where the estimator accepts it (collapsed sampling of a layered continuous
    network: no tempering, no control variates, ``--collapse`` not off) and the kept class
    is small (:func:`~thermoeqprop.estimators._importance.suits_by_default`), auto
    elsewhere."""
    from thermoeqprop.estimators import Relaxation

    outputs = 1 if (options.model == "spin" and num_classes == 2) else num_classes
    model = build_model(options, (num_inputs, *options.hidden, outputs))
    if options.sampler is None:  # importance sampling wherever the estimator can use it
        from thermoeqprop.estimators._importance import suits_by_default

        if suits_by_default(model):
            try:
                return build_estimator(dataclasses.replace(options, sampler="importance"),
                                       num_inputs, num_classes)  # fmt: skip
            except ValueError:
                pass
        options = dataclasses.replace(options, sampler="auto")
    reads = registry.entry(options.estimator, model.family).options
    settings = {}
    if "temperature" in reads:
        settings["temperature"] = options.temperature
    if "beta" in reads:
        settings["beta"] = options.beta
    if "control_variates" in reads:
        settings["control_variates"] = options.control_variates
    if "sampling" in reads:
        replicas = 0
        if options.tempering:
            replicas = 4 if options.replicas is None else options.replicas
            if replicas < 2:
                raise ValueError(f"--replicas must be an integer ≥ 2, got {replicas}")
        settings["sampling"] = build_sampling(options, model, replicas=replicas, command="train")
    if "relaxation" in reads:
        settings["relaxation"] = Relaxation(
            tolerance=options.tolerance, max_iterations=options.max_iterations
        )
    return registry.build(options.estimator, model, registry.EstimatorOptions(**settings))


def temperature_schedule(options: TrainOptions, epochs: int):
    """``(estimator, epoch) -> estimator`` annealing T geometrically, or None."""
    start = options.anneal_from
    if start is None:
        return None
    from thermoeqprop._validation import check_positive

    start = check_positive("anneal_from", start)
    final = options.temperature
    if not start > final:
        raise ValueError(f"anneal_from must exceed the final temperature {final}, got {start}")
    thermal = thermal_estimators()
    if registry.resolve(options.estimator, "classical") not in thermal:
        raise ValueError(
            f"--anneal-from needs a thermal estimator {thermal}, got {options.estimator!r}"
        )

    def schedule(estimator, epoch):
        fraction = (epoch - 1) / max(1, epochs - 1)
        return dataclasses.replace(estimator, temperature=start * (final / start) ** fraction)

    return schedule


def train_config(options: TrainOptions):
    """The :class:`~thermoeqprop.training.TrainConfig` of a command's training options."""
    from thermoeqprop.training import TrainConfig

    names = ("epochs", "batch_size", "learning_rate", "optimizer", "lr_schedule", "seed")
    return TrainConfig(**{name: getattr(options, name) for name in names})


def health_table(record) -> str:
    """The gradient-health table of one epoch's record (``thermoeqprop._health``)."""
    from thermoeqprop._health import format_checks, gradient_checks

    heading = (
        f"gradient health, epoch {record['epoch']} ({record['diag_num_chains']:.0f} chains × "
        f"{record['diag_num_draws_per_chain']:.0f} draws per estimate, {record['parameters']} "
        f"components, {record['batches']} batches; split R-hat: Gelman et al.'s, on every "
        "batch; rank R-hat: rank-normalised, bulk and tail, as ArviZ's, on the last batch)"
    )
    return format_checks(gradient_checks(record), heading)


def _log(line: str) -> None:
    """The run's lines: its warnings (an epoch that went wrong but can go on) on standard
    error as ``thermoeqprop train: warning: …``, the rest on standard output."""
    import sys

    if line.startswith("warning: "):
        print(f"thermoeqprop train: {line}", file=sys.stderr, flush=True)
    else:
        print(line, flush=True)


def run(options: TrainOptions) -> int:
    import numpy as np

    from thermoeqprop._health import epoch_line
    from thermoeqprop.data import load_dataset
    from thermoeqprop.plots import plot_training
    from thermoeqprop.training import train

    # A deprecated alias warns once here, and the run records the canonical name.
    options = dataclasses.replace(
        options, estimator=registry.resolve(options.estimator, "classical")
    )
    dataset = load_dataset(options.dataset, seed=0)
    estimator = build_estimator(options, dataset.num_features, dataset.num_classes)
    config = train_config(options)
    schedule = temperature_schedule(options, config.epochs)
    results_dir = Path(options.results_dir)
    model = estimator.model
    shape = model.architecture
    thermal = options.estimator in thermal_estimators()
    where = f" at T = {options.temperature}" if thermal else ""
    print(
        f"thermoeqprop train: {options.estimator}{where} on {dataset.name} "
        f"({len(dataset.labels_train)} train / {len(dataset.labels_test)} test), "
        f"{type(model).__name__} {shape}, results in {results_dir}"
    )
    result = train(
        estimator,
        dataset,
        config,
        results_dir,
        schedule=schedule,
        progress=not options.no_progress,
        callback=lambda record: print(epoch_line(record, config.epochs), flush=True),
        log=_log,
        extra_config={"command_line": recorded(options)},
    )
    history = result.history
    plot_training(
        history, results_dir / "training_curves.png", f"{options.estimator} on {dataset.name}"
    )
    final = history[-1]
    best = max(history, key=lambda h: h["test_accuracy"])
    seconds = np.mean([h["epoch_seconds"] for h in history])
    lines = [
        f"estimator: {options.estimator}{where}",
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
    write_summary(results_dir, lines)
    return 0

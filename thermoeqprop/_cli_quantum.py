"""``thermoeqprop quantum``: train a qubit classifier by quantum EP and write a results folder.

Training runs through the step loop :func:`thermoeqprop.training.train_steps` on batches of a
data set from :func:`thermoeqprop.data.load_dataset` (features mapped to [−1, 1], the range
the qubit fields are scaled for) in epochs, evaluated every ``--eval-every`` steps (default:
once per epoch), with the sparse solver's warm-start state carried from step to step. A run
has what every run has: ``config.json``, ``metrics.jsonl`` (one line per evaluation: step,
epoch, loss, train and test accuracy, test loss, smallest spectral gap, gradient standard
error with shots), ``checkpoints/``, and after training ``training_curves.png`` (loss and
accuracies), ``decision.png`` (the learned decision function over the input plane) and
``summary.txt``. Interrupted (Ctrl-C, SIGTERM, a kill), the same command resumes after the
last evaluation and ends with bit-for-bit the same parameters. The defaults (6 qubits, moons,
ground-state EP) take well under a minute on two CPU cores.

This module lives outside :mod:`thermoeqprop.quantum` so that building the command line does
not import that package, whose import sets XLA flags (see its docstring) that the classical
commands should not inherit.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop import registry
from thermoeqprop._cli_common import write_summary
from thermoeqprop.options import QuantumOptions, recorded

__all__ = ["OPTIONS", "build_estimator", "run"]

#: The options of ``thermoeqprop quantum`` (flags, config-file keys, ``config.json``).
OPTIONS = QuantumOptions


def build_estimator(options: QuantumOptions):
    """The network and estimator that ``options`` describe; the estimator by its name in
    :mod:`thermoeqprop.registry`."""
    from thermoeqprop.quantum import ExpectationLoss, classifier_network

    qubits, solver = options.qubits, options.solver
    name = registry.resolve(options.estimator, "quantum")
    if solver == "sparse" and name not in ("ep", "eigenstate"):
        raise ValueError(f"--solver sparse needs --estimator ep or eigenstate, got {name!r}")
    low, high = (3, 16) if solver == "sparse" else (2, 12)
    if not low <= qubits <= high:
        raise ValueError(
            f"--qubits must be in {low} … {high} for training with --solver {solver}, got {qubits}"
        )
    shots = {"shot_model": options.shot_model, "error_signal": options.error_signal}
    if options.shots is None and shots != {"shot_model": "projective", "error_signal": "noisy"}:
        raise ValueError(
            f"--shot-model {shots['shot_model']} and --error-signal {shots['error_signal']} "
            "describe finite shots: give --shots N too (or leave them at projective and noisy)"
        )
    cost = ExpectationLoss.squared_error() if options.cost == "expectation-mse" else None
    # Fields of ±2 on features in [−1, 1] (load_dataset's feature_range below).
    model = classifier_network(
        num_qubits=qubits,
        num_inputs=2,
        couplings=options.couplings,
        input_scale=2.0,
        cost=cost,
    )
    shots |= {"shots": options.shots}
    # Shot noise in the difference of two nudged phases scales like 1/β: a larger β with
    # shots. Not too large: near the decision boundary the trained network's gap closes
    # (down to 0.02 on moons), and at β = 0.2 level tracking was lost there (seed 0).
    beta = options.beta if options.beta is not None else (0.1 if shots["shots"] else 0.01)
    settings = registry.EstimatorOptions(
        temperature=options.temperature, beta=beta, level=options.level, solver=solver, **shots
    )
    return registry.build(name, model, settings)


def step_config(options: QuantumOptions, steps_per_epoch: int):
    """The :class:`~thermoeqprop.training.StepConfig` of ``--epochs`` over batches of the data
    set, evaluated every ``--eval-every`` steps (default: once per epoch)."""
    from thermoeqprop.training import StepConfig

    epochs, every = options.epochs, options.eval_every
    for flag, value in (("epochs", epochs), ("eval_every", every)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{flag} must be an integer ≥ 1, got {value!r}")
    return StepConfig(
        steps=epochs * steps_per_epoch,
        eval_every=steps_per_epoch if every is None else every,
        learning_rate=options.learning_rate,
        optimizer=options.optimizer,
        lr_schedule=options.lr_schedule,
        seed=options.seed,
    )


def evaluation(model, dataset):
    """Test loss and accuracy, and train accuracy, from the exact predicted outputs."""
    from thermoeqprop.training import held_out

    test = held_out(dataset.x_test, model.encode_labels(dataset.labels_test),
                    dataset.labels_test)  # fmt: skip
    train = held_out(dataset.x_train, model.encode_labels(dataset.labels_train),
                     dataset.labels_train, name="train")  # fmt: skip

    def evaluate(estimator, params, rng_key):
        found = test(estimator, params, rng_key)
        found["train_accuracy"] = train(estimator, params, rng_key)["train_accuracy"]
        return found

    return evaluate


def check_scales_and_memory(options: QuantumOptions, estimator) -> None:
    """Refuse a temperature or β meaningless for this network at its initial parameters
    (``_validation``) and a run that would not fit in memory (``_resources``), before the
    data set is made."""
    import jax

    from thermoeqprop._resources import LEVERS, check_memory, estimator_run_bytes
    from thermoeqprop._validation import check_physical_scales

    model = estimator.model
    parts, kind = estimator_run_bytes(estimator, options.batch_size, model.hamiltonian.num_params,
                                      options.num_examples, model.num_inputs)  # fmt: skip
    check_memory(parts, LEVERS[kind])
    check_physical_scales(estimator, model.init_params(jax.random.key(options.seed)))


def run(options: QuantumOptions) -> int:
    """Train (or resume), then write plots and ``summary.txt``; returns 0.

    Bad options raise ``ValueError``; the ``thermoeqprop`` command turns that into one line
    and exit status 2.
    """
    from thermoeqprop.data import load_dataset
    from thermoeqprop.plots import plot_training
    from thermoeqprop.training import dataset_source, train_steps

    tic = time.perf_counter()
    # A deprecated alias warns once here, and the run records the canonical name.
    options = dataclasses.replace(options, estimator=registry.resolve(options.estimator, "quantum"))
    estimator = build_estimator(options)
    check_scales_and_memory(options, estimator)
    dataset = load_dataset(
        options.dataset,
        num_examples=options.num_examples,
        test_fraction=options.test_fraction,
        seed=0,
        feature_range=(-1.0, 1.0),
    )
    model = estimator.model
    targets = model.encode_labels(dataset.labels_train)
    source = dataset_source(dataset.x_train, targets, options.batch_size,
                            seed=options.seed, name=dataset.name)  # fmt: skip
    config = step_config(options, source.steps_per_epoch)
    results_dir = Path(options.results_dir)
    name = f"{options.estimator} ({type(estimator).__name__})"
    sizes = f"{len(dataset.labels_train)} train / {len(dataset.labels_test)} test"
    print(
        f"thermoeqprop quantum: {name} on {dataset.name} ({sizes}), {model.num_qubits} "
        f"qubits, {model.hamiltonian.num_params} parameters, {config.steps} steps, results in "
        f"{results_dir}",
        flush=True,
    )

    def report(record):
        print(
            f"step {record['step']:5d}  epoch {record['epoch']:5.2f}  loss "
            f"{record['train_loss']:.4f}  train {record['train_accuracy']:.3f}  test "
            f"{record['test_accuracy']:.3f}  ({record['seconds']:.1f} s)",
            flush=True,
        )

    quiet = options.quiet
    result = train_steps(
        estimator,
        source,
        config,
        results_dir,
        evaluate=evaluation(model, dataset),
        progress=not (quiet or options.no_progress),
        extra_config={
            "command_line": recorded(options),
            "num_params": model.hamiltonian.num_params,
        },
        callback=None if quiet else report,
        log=None if quiet else (lambda line: print(line, flush=True)),
    )
    history = result.history
    plot_training(history, results_dir / "training_curves.png", f"{name} on {dataset.name}")
    _plot_decision(results_dir / "decision.png", estimator, result.params, dataset)
    lines = _summary(options, estimator, dataset, config, history)
    lines.append(
        f"wall time of this invocation: {time.perf_counter() - tic:.1f} s "
        f"({platform.machine()}, {platform.system()}, JAX {jax.__version__})"
    )
    lines += [f"{k}: {v}" for k, v in history[-1].items() if k.startswith("diag_")]
    write_summary(results_dir, lines)
    return 0


def _summary(options, estimator, dataset, config, history) -> list[str]:
    """The lines of ``summary.txt`` about the run and its final and best records."""
    model, name, shots = estimator.model, options.estimator, options.shots
    final = history[-1]
    best = max(history, key=lambda h: h["test_accuracy"])
    seconds = sum(h["seconds"] for h in history)
    how = f"T = {options.temperature}, " if estimator.temperature is not None else ""
    if name == "eigenstate":
        how = f"level {options.level}, "
    if name != "covariance":
        how += f"β = {estimator.beta}, "
    if shots:
        how += f"{shots} shots ({options.shot_model}, {options.error_signal} error signal)"
    else:
        how += "exact expectations"
    if name in ("ep", "eigenstate"):
        how += f", {options.solver} solver"
    return [
        f"estimator: {name} ({type(estimator).__name__}, {how})",
        f"dataset: {dataset.name}, {len(dataset.labels_train)} train / "
        f"{len(dataset.labels_test)} test, features in [-1, 1]",
        f"model: {model.num_qubits} qubits, {options.couplings} couplings, "
        f"{model.hamiltonian.num_params} parameters, cost {options.cost}",
        f"training: {final['step']} steps ({final['epoch']:g} epochs), batch "
        f"{options.batch_size}, {config.optimizer} lr {config.learning_rate} "
        f"({config.lr_schedule}), evaluated every {config.eval_every} steps, seed {config.seed}",
        f"final test accuracy: {100 * final['test_accuracy']:.2f}%",
        f"best test accuracy: {100 * best['test_accuracy']:.2f}% (step {best['step']})",
        f"final train accuracy: {100 * final['train_accuracy']:.2f}%",
        f"final training loss: {final['train_loss']:.5f}",
        f"final test loss: {final['test_loss']:.5f}",
        f"seconds in training steps: {seconds:.1f} ({seconds / final['step']:.3f} per step)",
    ]


def _plot_decision(path: Path, estimator, params, dataset) -> None:
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays

    grid = np.linspace(-1.2, 1.2, 41)
    gx, gy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
    outputs = np.asarray(estimator.predict(params, points, jax.random.key(0)))[:, 0].reshape(
        gx.shape
    )
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    mesh = ax.contourf(gx, gy, outputs, levels=20, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.contour(gx, gy, outputs, levels=[0.0], colors="k")
    ax.scatter(*dataset.x_test.T, c=dataset.labels_test, cmap="bwr", edgecolors="k", s=14)
    fig.colorbar(mesh, ax=ax, label="⟨Z0⟩")
    ax.set(title="decision function (test points)", xlabel="x0", ylabel="x1")
    fig.savefig(path, dpi=110)


run.description = (
    "Train a qubit network (inputs as fields on the qubits, trainable X/Z fields and ZZ/XX "
    "couplings, output ⟨Z0⟩) by quantum equilibrium propagation on a two-class scikit-learn "
    "data set, and write a results folder with metrics, checkpoints and plots. An interrupted "
    "run resumes when the same command is run again."
)

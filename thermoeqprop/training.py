"""Training any estimator with an optax optimiser, with a results folder that survives
interruptions.

A run writes ``RESULTS_DIR/``:

- ``config.json``: the training configuration, a description of the estimator and, under
  ``"environment"``, the package, JAX and NumPyro versions and the device count of the
  invocation that wrote it (a resume must match the backend and device count, not the
  versions; docs/design.md, section "Results folders");
- ``metrics.jsonl``: one JSON line per finished epoch;
- ``checkpoints/epoch_NNNN.npz``: parameters, optimiser state and epoch, written atomically
  (temporary file, fsync, rename) with a SHA-256 checksum of their contents;
- ``series/epoch_NNNN.nc`` (sampled estimators): the per-draw gradient series of the epoch's
  last batch as ArviZ InferenceData, for ``thermoeqprop diagnose``.

The folder is a :class:`thermoeqprop.results.RunFolder` of kind ``"train"`` (locked while the
run writes it; a second process is refused). Calling :func:`train` again on the same folder
resumes after the last checkpoint. Every
random choice of epoch ``e`` derives from ``(seed, e)`` alone, so a resumed run ends with
bit-for-bit the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from thermoeqprop._health import RunStopped, check_parameters_after
from thermoeqprop._optim import add_penalty, build_optimizer, check_optimizer_settings, project
from thermoeqprop._protocols import Estimator
from thermoeqprop._resources import check_run_memory
from thermoeqprop._runs import (
    RunUnit,
    TrainResult,
    check_finite_losses,
    open_run,
    read_checkpoint,
    restore_tree,
    save_unit,
    summarise_diagnostics,
    write_checkpoint,
)
from thermoeqprop._steps import (
    StepConfig,
    dataset_source,
    held_out,
    on_default_device,
    train_steps,
)
from thermoeqprop._validation import check_physical_scales, check_temperature_of
from thermoeqprop.data import Dataset
from thermoeqprop.results import CheckpointError, RunFolder, describe, write_atomic

__all__ = [
    "CheckpointError",
    "RunStopped",
    "StepConfig",
    "TrainConfig",
    "TrainResult",
    "add_penalty",
    "dataset_source",
    "describe",
    "evaluate",
    "held_out",
    "load_checkpoint",
    "project",
    "train",
    "train_steps",
    "write_atomic",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        epochs: Number of passes over the training set.
        batch_size: Mini-batch size; each epoch uses ``len(train) // batch_size`` full batches
            of a fresh permutation (the remainder rotates through over epochs).
        learning_rate: Peak learning rate.
        optimizer: ``"adam"``, ``"sgd"`` or ``"momentum"`` (SGD with Nesterov momentum 0.9).
        lr_schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 1 % over all epochs).
        seed: Seed of the initial parameters, the batch order and every estimator key.
        eval_batch_size: Batch size of test-set predictions; None: ``batch_size``, so that
            predictions call what training compiled (every call has this many rows, the last
            padded by repeats): with 360 test digits in one call of its own, the default
            ``thermoeqprop train`` compiled the importance sampler once more, 6 s.
    """

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "cosine"
    seed: int = 0
    eval_batch_size: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if name == "eval_batch_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        check_optimizer_settings(self.optimizer, self.learning_rate, self.lr_schedule)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def make_optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        return build_optimizer(
            self.optimizer, self.learning_rate, self.lr_schedule, self.epochs * steps_per_epoch
        )


def save_checkpoint(path: Path, epoch: int, params, opt_state) -> None:
    """Write parameters and optimiser state atomically, with a checksum."""
    write_checkpoint(path, "epoch", epoch, {"params_": params, "opt_": opt_state})


def load_checkpoint(path: Path, params_like, opt_state_like) -> tuple[int, Any, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError`
    naming the file if it is truncated, corrupted or shaped unlike ``params_like``."""
    arrays = read_checkpoint(path)
    params = restore_tree(arrays, "params_", params_like, path)
    return int(arrays["epoch"]), params, restore_tree(arrays, "opt_", opt_state_like, path)


def evaluate(estimator: Estimator, params, x, labels, rng_key, batch_size: int = 400) -> float:
    """Accuracy of the estimator's predictions (decoded by its model) on ``x``, ``labels``, in
    calls of ``batch_size`` rows each (the last padded by repeats of the first rows, whose
    predictions are dropped: one compilation of the estimator's functions)."""
    correct, count = 0, len(labels)
    for i, start in enumerate(range(0, count, batch_size)):
        key = jax.random.fold_in(rng_key, i)
        rows = np.arange(start, start + batch_size) % count
        outputs = estimator.predict(params, x[rows], key)
        predicted = np.asarray(estimator.model.decode_outputs(outputs))[: count - start]
        correct += int(np.sum(predicted == np.asarray(labels[start : start + batch_size])))
    return correct / count


def _save_series(
    folder: RunFolder, name: str, series, estimator, config: TrainConfig, count: int
) -> None:
    """The per-draw gradient series of one estimate as netCDF InferenceData (atomically)."""
    from thermoeqprop._series import gradient_inference_data

    idata = gradient_inference_data(
        series,
        parameters=int(count),
        temperature=math.nan if estimator.temperature is None else float(estimator.temperature),
        seed=config.seed,
        estimator=type(estimator).__name__,
    )
    folder.write_series(name, idata)


def train(
    estimator: Estimator,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    results_dir: str | os.PathLike | None = None,
    *,
    params=None,
    schedule: Callable[[Estimator, int], Estimator] | None = None,
    progress: bool = False,
    extra_config: dict[str, Any] | None = None,
    train_accuracy: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    series_parameters: int | None = 64,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``estimator.model`` on ``dataset`` with gradients from ``estimator``.

    Args:
        estimator: Any :class:`~thermoeqprop.Estimator` (EP at T = 0, thermal, quantum…).
        dataset: Train and test data; labels are encoded by the estimator's model.
        config: Training configuration.
        results_dir: Folder for config, metrics and checkpoints. If it already holds
            checkpoints of the same configuration, training resumes after the last one.
        params: Initial parameters (default: ``model.init_params`` from the seed).
        schedule: Optional ``(estimator, epoch) -> estimator`` used at the start of each epoch,
            for example to anneal the temperature.
        progress: Show a progress bar over batches.
        extra_config: More JSON-friendly facts to record in ``config.json``.
        train_accuracy: Also record the accuracy on the training set after each epoch
            (``train_accuracy``; one more pass of predictions, with a key of its own, so the
            rest of the run is unchanged).
        callback: Called with each epoch's metrics record once it is saved (for example to
            print it); an exception raised there stops the run with that epoch kept.
        series_parameters: With a sampled estimator and a results folder, the per-draw
            gradient series of each epoch's last batch is saved for ArviZ
            (``series/epoch_NNNN.nc``, read by ``thermoeqprop diagnose``): this many evenly
            spaced gradient components (all when fewer); 0 or None saves none.
        log: Called with a line of text when the run resumes from a checkpoint (which epoch,
            which file), and with ``"warning: epoch E: …"`` for an epoch that went wrong but
            can go on (:func:`thermoeqprop._health.epoch_faults`), for example ``print``.

    Raises:
        ValueError: Before anything runs, for bad settings: among them a temperature or a
            nudge meaningless for this network (``thermoeqprop._validation``) and a run that
            would not fit in memory (``thermoeqprop._resources``).
        RunStopped: A ``FloatingPointError``, when an epoch went bad (a non-finite loss,
            gradient or parameters, a sampler that rejected every move, no relaxation
            converged, couplings that blew up); it names the epoch and the reason, and that
            epoch is not saved, so the results folder keeps the last good one.

    Returns:
        A :class:`TrainResult`.
    """
    model = estimator.model
    if dataset.num_features != model.num_inputs:
        raise ValueError(
            f"the model takes {model.num_inputs} inputs but dataset {dataset.name!r} has "
            f"{dataset.num_features} features; set the input layer size to "
            f"{dataset.num_features}"
        )
    if dataset.num_classes != model.num_classes:
        raise ValueError(
            f"the model distinguishes {model.num_classes} classes but dataset "
            f"{dataset.name!r} has {dataset.num_classes}; set the output size to match"
        )
    num_train = len(dataset.labels_train)
    if config.batch_size > num_train:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {num_train} training examples"
        )
    steps_per_epoch = num_train // config.batch_size
    eval_batch = config.eval_batch_size or config.batch_size
    optimizer = config.make_optimizer(steps_per_epoch)
    key_params, key_epochs = jax.random.split(jax.random.key(config.seed))
    shapes = jax.eval_shape(model.init_params, key_params) if params is None else params
    num_parameters = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(shapes))
    check_run_memory(estimator, config.batch_size, num_parameters, dataset)
    if params is None:
        params = model.init_params(key_params)
    opt_state = optimizer.init(params)
    check_physical_scales(estimator, params)

    @jax.jit
    def apply(params, opt_state, grad):
        updates, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    folder = None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if results_dir is not None:
        record = {
            "train": describe(config),
            "estimator": describe(estimator),
            "dataset": dataset.name,
            **(extra_config or {}),
        }
        opened = open_run(results_dir, record, "epoch", config.epochs, log)
        folder, start_epoch, history = opened.folder, opened.start, opened.history

    targets_train = np.asarray(model.encode_labels(dataset.labels_train))
    try:
        if folder is not None and opened.checkpoint is not None:
            params = restore_tree(opened.checkpoint, "params_", params, opened.path)
            opt_state = restore_tree(opened.checkpoint, "opt_", opt_state, opened.path)
        params, opt_state = on_default_device((params, opt_state))
        epochs = range(start_epoch + 1, config.epochs + 1)
        for epoch in epochs:
            tic = time.perf_counter()
            current = schedule(estimator, epoch) if schedule is not None else estimator
            unit = RunUnit.starting(f"epoch {epoch}", "epochs", epoch, folder)
            scale_before = unit.check(check_temperature_of, current, params)
            key_epoch = jax.random.fold_in(key_epochs, epoch)
            key_steps, key_eval = jax.random.split(key_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(num_train)
            batches = range(steps_per_epoch)
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False)
            estimates = []
            series = None
            keep_series = folder is not None and series_parameters
            for step in batches:
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                step_key = jax.random.fold_in(key_steps, step)
                batch = (params, dataset.x_train[idx], targets_train[idx], step_key)
                if step == steps_per_epoch - 1:
                    # The same estimate as current(...) (same key), with the draws behind
                    # it (None from an estimator that does not average draws): saved, and
                    # its rank-normalised R-hat recorded.
                    estimate, series = current.estimate_with_series(*batch)
                else:
                    estimate = current(*batch)
                params, opt_state = apply(params, opt_state, estimate.grad)
                estimates.append(estimate)
            # JAX dispatches asynchronously: without this the clock stops before the last
            # batches' work is done (a T = 0 epoch read about a third short).
            jax.block_until_ready((params, opt_state, estimates))
            train_seconds = time.perf_counter() - tic
            test_accuracy = evaluate(
                current,
                params,
                dataset.x_test,
                dataset.labels_test,
                key_eval,
                eval_batch,
            )
            losses = np.asarray([float(e.loss) for e in estimates])
            unit.check(check_finite_losses, losses, f"epoch {epoch}")
            unit.check(check_parameters_after, params, scale_before, current)
            grad_norm = np.mean([float(optax.tree.norm(e.grad)) for e in estimates])
            record = {
                "epoch": epoch,
                "train_loss": float(losses.mean()),
                "test_accuracy": test_accuracy,
            }
            if train_accuracy:
                record["train_accuracy"] = evaluate(
                    current,
                    params,
                    dataset.x_train,
                    dataset.labels_train,
                    jax.random.fold_in(key_epoch, 1),
                    eval_batch,
                )
            record |= {
                "grad_norm": float(grad_norm),
                "epoch_seconds": train_seconds,
                "batches": steps_per_epoch,
                "parameters": num_parameters,
                **summarise_diagnostics(estimates),
            }
            if series is not None:
                record |= _last_batch_rank_rhat(series)
            if current.temperature is not None:
                record["temperature"] = float(current.temperature)
            unit.stop_on_faults(record, log)
            history.append(record)
            if series is not None and keep_series:
                _save_series(folder, f"epoch_{epoch:04d}", series, current, config,
                             series_parameters)  # fmt: skip
            if folder is not None:
                save_unit(folder, record, "epoch", {"params_": params, "opt_": opt_state})
            if callback is not None:
                callback(record)
    finally:
        if folder is not None:
            folder.release()
    return TrainResult(params, history, None if folder is None else folder.path)


def _last_batch_rank_rhat(series) -> dict[str, float]:
    """The largest and the median rank-normalised split R-hat (ArviZ's, bulk and tail) over
    every gradient component of an epoch's last batch (``rank_rhat_max_last_batch``,
    ``rank_rhat_median_last_batch``) and the entries per chain of its series
    (``rank_rhat_entries_last_batch``: every draw, as ``estimate_with_series`` keeps them);
    nothing for fewer than two chains or a constant series.
    One batch per epoch: on a CPU the two sorts per component cost about what the batch's
    sampling does, too much for every batch."""
    import samplers

    gradient = np.asarray(series.gradient)
    if gradient.shape[0] < 2 or gradient.shape[1] < 4:
        return {}
    rank = np.asarray(samplers.rhat_rank_many(gradient))
    rank = rank[np.isfinite(rank)]
    if rank.size == 0:
        return {}
    return {
        "rank_rhat_max_last_batch": float(rank.max()),
        "rank_rhat_median_last_batch": float(np.median(rank)),
        "rank_rhat_entries_last_batch": gradient.shape[1],
    }

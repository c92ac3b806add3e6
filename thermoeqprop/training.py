"""Training any estimator with an optax optimiser, with a results folder that survives
interruptions.

A run writes ``RESULTS_DIR/``:

- ``config.json``: the training configuration, a description of the estimator and, under
  ``"environment"``, the package, JAX and NumPyro versions and the device count of the
  invocation that wrote it (not compared on resume; docs/design.md, section "Results folders");
- ``metrics.jsonl``: one JSON line per finished epoch;
- ``checkpoints/epoch_NNNN.npz``: parameters, optimiser state and epoch, written atomically
  (temporary file, fsync, rename) with a SHA-256 checksum of their contents;
- ``series/epoch_NNNN.nc`` (sampled estimators): the per-draw gradient series of the epoch's
  last batch as ArviZ InferenceData, for ``thermoeqprop diagnose``.

Calling :func:`train` again on the same folder resumes after the last checkpoint. Every
random choice of epoch ``e`` derives from ``(seed, e)`` alone, so a resumed run ends with
bit-for-bit the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from thermoeqprop._protocols import Estimator
from thermoeqprop._provenance import ENVIRONMENT_KEY, run_environment
from thermoeqprop._validation import check_positive
from thermoeqprop.data import Dataset

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "describe",
    "evaluate",
    "load_checkpoint",
    "train",
    "write_atomic",
]

OPTIMIZERS = ("adam", "sgd", "momentum")


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or does not match the run."""


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
        eval_batch_size: Batch size of test-set predictions.
    """

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "cosine"
    seed: int = 0
    eval_batch_size: int = 400

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        check_positive("learning_rate", self.learning_rate)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {list(OPTIMIZERS)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; valid: ['constant', 'cosine']"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def make_optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        if self.lr_schedule == "cosine":
            lr = optax.cosine_decay_schedule(
                self.learning_rate, self.epochs * steps_per_epoch, alpha=0.01
            )
        else:
            lr = self.learning_rate
        if self.optimizer == "adam":
            return optax.adam(lr)
        if self.optimizer == "momentum":
            return optax.sgd(lr, momentum=0.9, nesterov=True)
        return optax.sgd(lr)


class TrainResult(NamedTuple):
    """Final parameters, the per-epoch metrics, and the results folder (or None)."""

    params: Any
    history: list[dict[str, Any]]
    results_dir: Path | None


def describe(obj: Any) -> Any:
    """A JSON-friendly description of a configuration object (dataclasses, recursively;
    functions by their qualified name), the same in every process."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        for field in dataclasses.fields(obj):
            out[field.name] = describe(getattr(obj, field.name))
        return out
    if isinstance(obj, tuple | list):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if callable(obj) and hasattr(obj, "__qualname__"):  # functions and classes: by name
        return f"{obj.__module__}.{obj.__qualname__}"
    # The description is compared when a run resumes in another process: no memory addresses.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _tree_to_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(a.dtype).encode() + str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file so that a reader never sees it half-written: a temporary file in the same
    folder, flushed and fsynced, renamed over ``path``; then the folder is fsynced."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, epoch: int, params, opt_state) -> None:
    """Write parameters and optimiser state atomically, with a checksum."""
    arrays = _tree_to_arrays("params_", params) | _tree_to_arrays("opt_", opt_state)
    arrays["epoch"] = np.asarray(epoch)
    arrays["checksum"] = np.asarray(_checksum(arrays))
    write_atomic(path, lambda handle: np.savez(handle, **arrays))


def load_checkpoint(path: Path, params_like, opt_state_like) -> tuple[int, Any, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError`
    naming the file if it is truncated, corrupted or shaped unlike ``params_like``."""
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile, OSError, ValueError: all mean the file is unreadable
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}: {exc}); "
            "delete it to resume from the previous checkpoint"
        ) from None
    stored = str(arrays.pop("checksum", ""))
    if stored != _checksum(arrays):
        raise CheckpointError(
            f"checkpoint {path} fails its checksum (corrupted); delete it to resume from the "
            "previous checkpoint"
        )

    def restore(prefix, like):
        leaves, treedef = jax.tree.flatten(like)
        new = []
        for i, leaf in enumerate(leaves):
            key = f"{prefix}{i}"
            if key not in arrays or arrays[key].shape != np.shape(leaf):
                raise CheckpointError(
                    f"checkpoint {path} does not match this run: {key} has shape "
                    f"{arrays[key].shape if key in arrays else 'missing'}, expected "
                    f"{np.shape(leaf)}"
                )
            new.append(jnp.asarray(arrays[key], dtype=jnp.result_type(leaf)))
        return jax.tree.unflatten(treedef, new)

    return int(arrays["epoch"]), restore("params_", params_like), restore("opt_", opt_state_like)


def evaluate(estimator: Estimator, params, x, labels, rng_key, batch_size: int = 400) -> float:
    """Accuracy of the estimator's predictions (decoded by its model) on ``x``, ``labels``."""
    correct = 0
    for i, start in enumerate(range(0, len(labels), batch_size)):
        key = jax.random.fold_in(rng_key, i)
        outputs = estimator.predict(params, x[start : start + batch_size], key)
        predicted = np.asarray(estimator.model.decode_outputs(outputs))
        correct += int(np.sum(predicted == np.asarray(labels[start : start + batch_size])))
    return correct / len(labels)


def _summarise_diagnostics(estimates) -> dict[str, float]:
    """The worst case over an epoch's batches: the smallest converged fraction, minimum and ESS
    (``ess_min``, ``ess_median``, ``min_gap``, ``min_hessian_eigenvalue``), the largest of the
    rest; indices of an example within a batch (``worst_example``) and per-example arrays are
    left out."""
    out = {}
    for key in estimates[0].diagnostics:
        if key.endswith("_example") or np.ndim(estimates[0].diagnostics[key]) > 0:
            continue  # about one batch's examples: no meaning across batches
        values = np.asarray([float(e.diagnostics[key]) for e in estimates])
        lowest = "converged" in key or key.startswith(("min_", "ess_")) or key.endswith("_min")
        reduce = np.min if lowest else np.max
        out[f"diag_{key}"] = float(reduce(values))
    if estimates[0].is_stochastic:
        out["relative_stderr"] = float(np.mean([float(e.relative_stderr()) for e in estimates]))
    return out


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    history = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after the checkpoint is redone
            if record["epoch"] <= upto_epoch:
                history.append(record)
    return history


def _save_series(path: Path, series, estimator, config: TrainConfig, count: int) -> None:
    """The per-draw gradient series of one estimate as netCDF InferenceData (atomically)."""
    import samplers
    from thermoeqprop.diagnostics import gradient_inference_data

    idata = gradient_inference_data(
        series,
        parameters=int(count),
        temperature=float(getattr(estimator, "temperature", math.nan)),
        seed=config.seed,
        estimator=type(estimator).__name__,
    )
    path.parent.mkdir(exist_ok=True)
    samplers.save_inference_data(idata, path)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``train.epochs``)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _latest_checkpoint(folder: Path) -> Path | None:
    files = sorted(folder.glob("epoch_*.npz"))
    return files[-1] if files else None


def _prepare_results_dir(results_dir, config_record) -> Path:
    results_dir = Path(results_dir)
    try:
        (results_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = results_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"results folder {str(results_dir)!r} is not writable ({exc.strerror}); "
            "choose a folder you can write to"
        ) from None
    config_path = results_dir / "config.json"
    if config_path.exists():
        # The environment (versions, device count) describes the invocation, not the run.
        previous, current = (
            {k: v for k, v in _flatten(record).items() if k.split(".")[0] != ENVIRONMENT_KEY}
            for record in (json.loads(config_path.read_text()), config_record)
        )
        # More epochs extend a constant-rate run exactly (epoch e's batches and keys derive
        # from (seed, e) alone); under a cosine schedule they would change every later step.
        extendable = all(
            record.get("train.lr_schedule") == "constant" for record in (previous, current)
        )
        mismatched = sorted(
            key
            for key in set(previous) | set(current)
            if previous.get(key) != current.get(key)
            and not (extendable and key.rpartition(".")[2] == "epochs")
        )
        if mismatched:
            shown = ", ".join(
                f"{key}: {previous.get(key, 'absent')!r} there, {current.get(key, 'absent')!r} now"
                for key in mismatched[:4]
            ) + (f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
            raise ValueError(
                f"results folder {str(results_dir)!r} holds a run with a different "
                f"configuration ({shown}); resume with the same configuration or choose "
                "another folder"
            )
    write_atomic(config_path, lambda h: h.write(json.dumps(config_record, indent=2).encode()))
    return results_dir


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
            which file), for example ``print``.

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
    optimizer = config.make_optimizer(steps_per_epoch)
    key_params, key_epochs = jax.random.split(jax.random.key(config.seed))
    if params is None:
        params = model.init_params(key_params)
    opt_state = optimizer.init(params)
    num_parameters = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))

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
            ENVIRONMENT_KEY: run_environment(),
        }
        folder = _prepare_results_dir(results_dir, record)
        latest = _latest_checkpoint(folder / "checkpoints")
        if latest is not None:
            start_epoch, params, opt_state = load_checkpoint(latest, params, opt_state)
            if log is not None:
                rest = (
                    f"epochs {start_epoch + 1}–{config.epochs} to go"
                    if start_epoch < config.epochs
                    else "nothing left to do"
                )
                log(
                    f"resuming {folder} after epoch {start_epoch} of {config.epochs} "
                    f"(checkpoint {latest.name}): {rest}"
                )
        history = _read_metrics(folder / "metrics.jsonl", start_epoch)
        write_atomic(
            folder / "metrics.jsonl",
            lambda h: h.write("".join(json.dumps(r) + "\n" for r in history).encode()),
        )

    targets_train = np.asarray(model.encode_labels(dataset.labels_train))
    epochs = range(start_epoch + 1, config.epochs + 1)
    for epoch in epochs:
        tic = time.perf_counter()
        current = schedule(estimator, epoch) if schedule is not None else estimator
        key_epoch = jax.random.fold_in(key_epochs, epoch)
        key_steps, key_eval = jax.random.split(key_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(num_train)
        batches = range(steps_per_epoch)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False)
        estimates = []
        series = None
        keep_series = (
            folder is not None and series_parameters and hasattr(current, "estimate_with_series")
        )
        for step in batches:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            step_key = jax.random.fold_in(key_steps, step)
            batch = (params, dataset.x_train[idx], targets_train[idx], step_key)
            if keep_series and step == steps_per_epoch - 1:
                # The same estimate as current(...) (same key), with the draws behind it.
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
            config.eval_batch_size,
        )
        losses = np.asarray([float(e.loss) for e in estimates])
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(
                f"epoch {epoch}: the loss became non-finite at batch "
                f"{int(np.argmin(np.isfinite(losses)))}; lower the learning rate"
            )
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
                config.eval_batch_size,
            )
        record |= {
            "grad_norm": float(grad_norm),
            "epoch_seconds": train_seconds,
            "batches": steps_per_epoch,
            "parameters": num_parameters,
            **_summarise_diagnostics(estimates),
        }
        temperature = getattr(current, "temperature", None)
        if temperature is not None:
            record["temperature"] = float(temperature)
        history.append(record)
        if series is not None:
            _save_series(folder / "series" / f"epoch_{epoch:04d}.nc", series, current, config,
                         series_parameters)  # fmt: skip
        if folder is not None:
            # Metrics first: a kill between the two writes leaves a line past the last
            # checkpoint, which resuming drops and redoes, never a checkpoint without its line.
            with open(folder / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            checkpoint = folder / "checkpoints" / f"epoch_{epoch:04d}.npz"
            save_checkpoint(checkpoint, epoch, params, opt_state)
            for old in sorted((folder / "checkpoints").glob("epoch_*.npz"))[:-2]:
                old.unlink()
        if callback is not None:
            callback(record)
    return TrainResult(params, history, folder)

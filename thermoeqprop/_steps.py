"""Training step by step: fresh examples each step, any targets, evaluation every N steps.

:func:`train_steps` is the loop for experiments that do not fit epochs over a labelled data
set (docs/design.md, section "Training step by step"):

* the data come from a *source*, ``source(rng_key, step) -> (x, targets)``, called once per
  step with a key derived from ``(seed, step)``: a generator of fresh examples, or
  :func:`dataset_source` for batches of a fixed data set in epochs;
* targets are whatever the model's cost takes, shape (batch, num_outputs): for a qubit network
  with ``ExpectationLoss``, any target values of the output observables (for example
  probabilities of projector outputs), not only the ±1 codes of ``encode_labels``;
* every ``eval_every`` steps (and after the last) one metrics line, the optional evaluation
  (:func:`held_out`, or any ``(estimator, params, rng_key) -> dict``) and a checkpoint;
* the optimiser is any ``optax.GradientTransformation``: penalties and constraints are
  transformations in its chain (``thermoeqprop._optim``);
* every estimator is called through ``call_with_state(params, x, targets, rng_key, state)
  -> (estimate, state)``, starting from ``initial_state(batch_size)``
  (:class:`~thermoeqprop.Estimator`): an estimator with a warm-start state (the sparse
  solver of :class:`~thermoeqprop.quantum.EigenstateEP`) gets the state of the previous step,
  and the state is checkpointed with the parameters; a stateless one carries ``None``.

The results folder is the epoch loop's (``thermoeqprop._runs``) counted in steps:
``metrics.jsonl`` with a ``"step"`` per line, ``checkpoints/step_NNNNNNNN.npz`` (parameters,
optimiser state, estimator state). Every random choice of step ``s`` derives from
``(seed, s)`` alone, so a run resumed after a kill ends bit for bit where an uninterrupted
one does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from thermoeqprop._health import check_parameters_after
from thermoeqprop._optim import build_optimizer, check_optimizer_settings
from thermoeqprop._protocols import Estimator
from thermoeqprop._runs import (
    RunUnit,
    TrainResult,
    check_finite_losses,
    open_run,
    restore_tree,
    save_unit,
    summarise_diagnostics,
)
from thermoeqprop._validation import (
    check_matrix,
    check_physical_scales,
    check_temperature_of,
    require_finite,
)
from thermoeqprop.results import describe

__all__ = ["DatasetSource", "StepConfig", "dataset_source", "held_out", "train_steps"]

Source = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def _matrix(name: str, array) -> jax.Array:
    a = require_finite(name, array)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"{name} must have shape (examples, columns), got shape {a.shape}")
    return jnp.asarray(a)


def _check_count(name: str, value: Any) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How to train step by step.

    Args:
        steps: Number of optimiser steps (one batch each).
        eval_every: Write a metrics line (with the evaluation) and a checkpoint every this
            many steps, and after the last; a resumed run restarts after the last of them.
        learning_rate: Peak learning rate of the optimiser built by :meth:`make_optimizer`.
        optimizer: ``"adam"``, ``"sgd"`` or ``"momentum"`` (SGD with Nesterov momentum 0.9).
        lr_schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 1 % over ``steps``).
        seed: Seed of the initial parameters, the source's keys, every estimator key and the
            evaluation keys.
    """

    steps: int = 1000
    eval_every: int = 100
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    seed: int = 0

    def __post_init__(self):
        _check_count("steps", self.steps)
        _check_count("eval_every", self.eval_every)
        check_optimizer_settings(self.optimizer, self.learning_rate, self.lr_schedule)
        if not isinstance(self.seed, int | np.integer) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def make_optimizer(self) -> optax.GradientTransformation:
        """The optax optimiser these settings name (to chain penalties or constraints around)."""
        return build_optimizer(self.optimizer, self.learning_rate, self.lr_schedule, self.steps)


class DatasetSource:
    """Batches of a fixed data set in epochs: a source for :func:`train_steps`.

    Step ``s`` (from 1) is batch ``(s − 1) mod n_b`` of epoch ``⌈s / n_b⌉`` with
    ``n_b = len(x) // batch_size`` full batches of a permutation drawn from
    ``(seed, epoch)`` (the remainder rotates through over epochs). Build with
    :func:`dataset_source`.
    """

    def __init__(self, x, targets, batch_size: int, seed: int = 0, name: str = ""):
        self.x, self.targets = _matrix("x", x), _matrix("targets", targets)
        if len(self.targets) != len(self.x):
            raise ValueError(f"x has {len(self.x)} examples but targets has {len(self.targets)}")
        _check_count("batch_size", batch_size)
        if batch_size > len(self.x):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.x)} training examples")
        self.batch_size, self.seed, self.name = int(batch_size), int(seed), name
        self.steps_per_epoch = len(self.x) // self.batch_size
        digest = hashlib.sha256(np.asarray(self.x).tobytes() + np.asarray(self.targets).tobytes())
        self._digest = digest.hexdigest()[:16]
        self._order = (0, None)

    def epoch(self, step: int) -> float:
        """Passes over the data set after ``step`` steps."""
        return step / self.steps_per_epoch

    def __call__(self, rng_key: jax.Array, step: int) -> tuple[jax.Array, jax.Array]:
        epoch, index = divmod(int(step) - 1, self.steps_per_epoch)
        if self._order[0] != epoch + 1:
            order = np.random.default_rng([self.seed, epoch + 1]).permutation(len(self.x))
            self._order = (epoch + 1, order)
        idx = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[idx], self.targets[idx]

    def __repr__(self) -> str:  # what config.json records: no arrays, a digest of them
        return (
            f"dataset_source({self.name!r}, {len(self.x)} examples, batch_size="
            f"{self.batch_size}, seed={self.seed}, sha256 {self._digest})"
        )


def dataset_source(x, targets, batch_size: int, *, seed: int = 0, name: str = "") -> DatasetSource:
    """A source of batches of the fixed set ``(x, targets)`` in epochs (:class:`DatasetSource`).

    Example:
        >>> source = dataset_source(jnp.arange(8.0)[:, None], jnp.zeros((8, 1)), 4)
        >>> x, targets = source(jax.random.key(0), 1)
        >>> (x.shape, source.steps_per_epoch, source.epoch(3))
        ((4, 1), 2, 1.5)
    """
    return DatasetSource(x, targets, batch_size, seed, name)


def held_out(x, targets, labels=None, *, name: str = "test", batch_size: int = 400):
    """An evaluation on a fixed set for :func:`train_steps`.

    The estimator's predicted outputs (exact expectation values for the quantum estimators,
    whatever its shot settings) give ``{name}_loss``, the mean over examples of the model's
    cost ``model.cost(outputs, targets)``, and with integer ``labels``, ``{name}_accuracy``
    (outputs decoded by the model).

    Returns:
        ``evaluate(estimator, params, rng_key) -> dict[str, float]``.
    """
    x, targets = jnp.asarray(x), jnp.asarray(targets)
    if len(x) != len(targets) or (labels is not None and len(labels) != len(x)):
        raise ValueError(
            f"held_out needs as many targets and labels as inputs, got {len(x)} inputs, "
            f"{len(targets)} targets and {'no' if labels is None else len(labels)} labels"
        )

    def evaluate(estimator: Estimator, params, rng_key: jax.Array) -> dict[str, float]:
        outputs = jnp.concatenate([
            estimator.predict(params, x[i : i + batch_size], jax.random.fold_in(rng_key, i))
            for i in range(0, len(x), batch_size)
        ])  # fmt: skip
        cost = jax.vmap(estimator.model.cost)(outputs, targets)
        out = {f"{name}_loss": float(jnp.mean(cost))}
        if labels is not None:
            predicted = np.asarray(estimator.model.decode_outputs(outputs))
            out[f"{name}_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
        return out

    return evaluate


def _draw(source: Source, rng_key: jax.Array, step: int, model) -> tuple[jax.Array, jax.Array]:
    """The source's batch of ``step``, checked against the model's sizes."""
    drawn = source(rng_key, step)
    if not (isinstance(drawn, tuple | list) and len(drawn) == 2):
        got = f"an array of shape {np.shape(drawn)}" if hasattr(drawn, "shape") else repr(drawn)
        raise ValueError(f"the data source must return (x, targets), got {got} at step {step}")
    x, targets = drawn
    check_matrix(f"x from the data source at step {step}", x, model.num_inputs,
                 "examples × input features")  # fmt: skip
    check_matrix(f"targets from the data source at step {step}", targets, model.num_outputs,
                 "examples × outputs")  # fmt: skip
    if np.shape(x)[0] != np.shape(targets)[0]:
        raise ValueError(
            f"the data source gave {np.shape(x)[0]} inputs but {np.shape(targets)[0]} targets "
            f"at step {step}"
        )
    return x, targets


def on_default_device(tree):
    """``tree``'s arrays committed to the default device. The states drawn are gathered there
    (``estimators._drawing.on_one_device``), so parameters updated from their statistics are
    committed to it after the first step; parameters fresh from ``init_params`` are not, and
    a compiled function called with both compiles twice (measured: every function of the
    first batch, 14 s more for the default ``train``'s first epoch)."""
    return jax.device_put(tree, jax.local_devices()[0])


def _record(step: int, estimates: list, seconds: float, estimator, source, params) -> dict:
    """The metrics line of the steps since the last one (before the evaluation)."""
    losses = np.asarray([float(e.loss) for e in estimates])
    check_finite_losses(losses, f"steps {step - len(estimates) + 1}–{step}",
                        first=step - len(estimates) + 1)  # fmt: skip
    record: dict[str, Any] = {"step": step}
    if isinstance(source, DatasetSource):
        record["epoch"] = source.epoch(step)
    record |= {
        "train_loss": float(losses.mean()),
        "grad_norm": float(np.mean([float(optax.tree.norm(e.grad)) for e in estimates])),
        "seconds": seconds,
        "batches": len(estimates),
        "parameters": sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params)),
        **summarise_diagnostics(estimates),
    }
    if estimator.temperature is not None:
        record["temperature"] = float(estimator.temperature)
    return record


def train_steps(
    estimator: Estimator,
    source: Source,
    config: StepConfig = StepConfig(),
    results_dir: str | os.PathLike | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    params=None,
    evaluate: Callable[[Estimator, Any, jax.Array], dict[str, float]] | None = None,
    extra_config: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``estimator.model`` for ``config.steps`` steps on batches from ``source``.

    Args:
        estimator: Any :class:`~thermoeqprop.Estimator`; its ``call_with_state`` state is
            carried from step to step (module docstring).
        source: ``source(rng_key, step) -> (x, targets)`` with ``x`` (batch, num_inputs) and
            ``targets`` (batch, num_outputs), called for steps 1, 2, …; the key derives from
            ``(config.seed, step)``, so a source that draws from it alone repeats on resume.
        config: A :class:`StepConfig`.
        results_dir: Folder for config, metrics and checkpoints. If it already holds
            checkpoints of the same configuration, training resumes after the last one.
        optimizer: Any optax transformation, for example a chain of penalties, the optimiser
            and projections (``thermoeqprop._optim``); default ``config.make_optimizer()``.
            It replaces the optimiser settings of ``config``: record its own settings in
            ``extra_config``, which a resume compares.
        params: Initial parameters (default: ``model.init_params`` from the seed).
        evaluate: ``(estimator, params, rng_key) -> dict`` merged into each metrics line,
            for example :func:`held_out`.
        extra_config: More JSON-friendly facts to record in ``config.json``.
        callback: Called with each metrics record once it is saved; an exception raised there
            stops the run with that record kept.
        log: Called with a line of text when the run resumes from a checkpoint.
        progress: Show a progress bar over the steps.

    Returns:
        A :class:`~thermoeqprop.training.TrainResult` whose history holds one record per
        ``eval_every`` steps.
    """
    if not isinstance(config, StepConfig):
        raise ValueError(f"config must be a StepConfig, got {type(config).__name__}")
    model = estimator.model
    key_params, key_data, key_estimate, key_eval = jax.random.split(jax.random.key(config.seed), 4)
    if params is None:
        params = model.init_params(key_params)
    check_physical_scales(estimator, params)  # a temperature or β meaningless for the network
    given = optimizer is not None
    optimizer = optimizer if given else config.make_optimizer()
    opt_state = optimizer.init(params)

    @jax.jit
    def apply(params, opt_state, grad):
        updates, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    folder, arrays, path, start, history = None, None, None, 0, []
    if results_dir is not None:
        record = {
            "train": describe(config),
            "estimator": describe(estimator),
            "source": describe(source),
            "optimizer": describe(optimizer) if given else "train.optimizer",
            **(extra_config or {}),
        }
        opened = open_run(results_dir, record, "step", config.steps, log)
        folder, start, history = opened.folder, opened.start, opened.history
        arrays, path = opened.checkpoint, opened.path
    try:
        if arrays is not None:
            params = restore_tree(arrays, "params_", params, path)
            opt_state = restore_tree(arrays, "opt_", opt_state, path)
        params, opt_state = on_default_device((params, opt_state))
        scale = check_temperature_of(estimator, params)
        state, first = None, True
        steps = range(start + 1, config.steps + 1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, total=config.steps, initial=start, desc="steps", leave=False)
        estimates, tic = [], time.perf_counter()
        for step in steps:
            x, targets = _draw(source, jax.random.fold_in(key_data, step), step, model)
            key = jax.random.fold_in(key_estimate, step)
            if first:  # the batch size is known now (a stateless estimator's state is None)
                state = estimator.initial_state(np.shape(x)[0])
                if arrays is not None:  # the state the interrupted run had here
                    state = restore_tree(arrays, "state_", state, path)
                first = False
            estimate, state = estimator.call_with_state(params, x, targets, key, state)
            params, opt_state = apply(params, opt_state, estimate.grad)
            estimates.append(estimate)
            if step % config.eval_every and step != config.steps:
                continue
            jax.block_until_ready((params, opt_state, estimates))  # the clock waits for the work
            seconds = time.perf_counter() - tic
            # Broken steps stop the run before they are saved (as train's epochs do).
            begun = step - len(estimates) + 1
            unit = RunUnit.starting(f"steps {begun}–{step}", "steps", begun, folder)
            record = unit.check(_record, step, estimates, seconds, estimator, source, params)
            scale = unit.check(check_parameters_after, params, scale, estimator)
            unit.stop_on_faults(record, log)
            if evaluate is not None:
                record |= evaluate(estimator, params, jax.random.fold_in(key_eval, step))
            history.append(record)
            if folder is not None:
                trees = {"params_": params, "opt_": opt_state, "state_": state}
                save_unit(folder, record, "step", trees)
            if callback is not None:
                callback(record)
            estimates, tic = [], time.perf_counter()
    finally:
        if folder is not None:
            folder.release()
    return TrainResult(params, history, None if folder is None else folder.path)

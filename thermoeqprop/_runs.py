"""The training loops' use of the results layer: checkpoints of pytrees, resuming, metrics.

Shared by the epoch loop (:func:`thermoeqprop.training.train`) and the step loop
(:func:`thermoeqprop.training.train_steps`); the folder itself (creating, locking, comparing,
atomic and checksummed files, metrics lines) is :class:`thermoeqprop.results.RunFolder`, and
the layout is in docs/design.md, section "Results folders". A run is counted in units (epochs
or steps, the ``counter``): after each finished unit that is recorded, its metrics line is
appended first and its checkpoint written second, so a kill between the two leaves a line past
the last checkpoint, which a resume drops and redoes, never a checkpoint without its line.

Why ``.npz`` and not orbax-checkpoint (the JAX convention; decided 2026-12, orbax 0.12.8,
measured by ``benchmarks/checkpoint_formats.py`` on the default train network and its Adam
state, two CPU cores): orbax loses the checksum guarantee, since a byte flipped in a saved
checkpoint restores silently with changed values where :func:`read_checkpoint` refuses the
file; atomicity under SIGKILL is equal (12 of 12 random kills mid-save left a restorable
newest checkpoint either way); orbax costs 2.4 s of import against numpy's 0.19 s, pulls in
tensorstore (66 MB), protobuf and seven more packages, and takes 88 ms per save and 12 ms per
restore against 10 ms and 1.6 ms. Neither needs a GPU. Revisit for sharded arrays too large
for one host (docs/design.md, "Checkpoints").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.results import (
    METRICS_FILE,
    CheckpointError,
    CorruptFileError,
    RunFolder,
    read_arrays,
    write_arrays,
)

__all__ = [
    "OpenedRun",
    "RunUnit",
    "TrainResult",
    "check_finite_losses",
    "keep_latest",
    "latest_checkpoint",
    "open_run",
    "read_checkpoint",
    "restore_tree",
    "save_unit",
    "summarise_diagnostics",
    "write_checkpoint",
]

#: Configuration keys (last dotted part) that a constant-rate run may grow: more of them
#: extend the run exactly, since unit ``u``'s data and keys derive from ``(seed, u)`` alone.
EXTENDABLE = ("epochs", "steps")
#: Digits of the unit number in checkpoint names (``epoch_0003.npz``, ``step_00000300.npz``).
WIDTH = {"epoch": 4, "step": 8}
#: The run kind (``config.json``'s ``"kind"``) of each counter.
KIND = {"epoch": "train", "step": "train_steps"}


class TrainResult(NamedTuple):
    """Final parameters, the metrics records, and the results folder (or None)."""

    params: Any
    history: list[dict[str, Any]]
    results_dir: Path | None


def _tree_to_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def write_checkpoint(path: Path, counter: str, count: int, trees: dict[str, Any]) -> None:
    """Write the leaves of each pytree in ``trees`` (keyed by a prefix such as ``"params_"``)
    and ``counter = count`` atomically, with a SHA-256 checksum of it all."""
    arrays = {}
    for prefix, tree in trees.items():
        arrays |= _tree_to_arrays(prefix, tree)
    arrays[counter] = np.asarray(count)
    write_arrays(path, arrays)


#: The arrays of a checkpoint, checksum verified (:func:`thermoeqprop.results.read_arrays`).
read_checkpoint = read_arrays


def restore_tree(arrays: dict[str, np.ndarray], prefix: str, like, path: Path):
    """The pytree shaped like ``like`` from the ``prefix`` arrays of a checkpoint."""
    leaves, treedef = jax.tree.flatten(like)
    stored = sum(name.startswith(prefix) and name[len(prefix) :].isdigit() for name in arrays)
    if stored != len(leaves):
        raise CheckpointError(
            f"checkpoint {path} does not match this run: it holds {stored} {prefix}* arrays, "
            f"expected {len(leaves)}"
        )
    new = []
    for i, leaf in enumerate(leaves):
        key = f"{prefix}{i}"
        if arrays[key].shape != np.shape(leaf):
            raise CheckpointError(
                f"checkpoint {path} does not match this run: {key} has shape "
                f"{arrays[key].shape}, expected {np.shape(leaf)}"
            )
        new.append(jnp.asarray(arrays[key], dtype=jnp.result_type(leaf)))
    return jax.tree.unflatten(treedef, new)


def latest_checkpoint(folder: Path, counter: str) -> Path | None:
    files = sorted(folder.glob(f"{counter}_*.npz"))
    return files[-1] if files else None


def keep_latest(folder: Path, counter: str, keep: int = 2) -> None:
    """Delete all but the last ``keep`` checkpoints of ``folder``."""
    for old in sorted(folder.glob(f"{counter}_*.npz"))[:-keep]:
        old.unlink()


class OpenedRun(NamedTuple):
    """A results folder opened (and locked) for a run: where to start and what was kept."""

    folder: RunFolder  # release() it when the run ends
    start: int  # the last finished unit (0: none)
    checkpoint: dict[str, np.ndarray] | None  # its arrays, for restore_tree
    path: Path | None  # its file
    history: list[dict[str, Any]]  # metrics records up to it


def open_run(
    results_dir,
    config_record: dict[str, Any],
    counter: str,
    total: int,
    log: Callable[[str], None] | None = None,
) -> OpenedRun:
    """Create (or check) and lock the folder, read its latest checkpoint and drop metrics
    lines past it.

    Args:
        results_dir: The folder.
        config_record: What the run is (``config.json``; see
            :meth:`thermoeqprop.results.RunFolder.create`). With a constant learning rate
            (``train.lr_schedule``) a resume may grow the run's length (:data:`EXTENDABLE`);
            under a cosine schedule a longer run would change every later step.
        counter: The unit of the run, ``"epoch"`` or ``"step"``.
        total: Units in the whole run (for the message).
        log: Called with one line when the run resumes from a checkpoint.
    """
    constant = config_record.get("train", {}).get("lr_schedule") == "constant"
    folder = RunFolder(results_dir).create(
        KIND[counter],
        config_record,
        extendable=EXTENDABLE if constant else (),
        subfolders=("checkpoints",),
    )
    try:
        latest = latest_checkpoint(folder / "checkpoints", counter)
        arrays, start = None, 0
        if latest is not None:
            arrays = read_checkpoint(latest)
            start = int(arrays[counter])
            if log is not None:
                rest = (
                    f"{counter}s {start + 1}–{total} to go"
                    if start < total
                    else "nothing left to do"
                )
                log(f"resuming {folder.path} after {counter} {start} of {total} "
                    f"(checkpoint {latest.name}): {rest}")  # fmt: skip
        history = folder.read_metrics(counter, start)
        _check_complete(folder, history, counter, start)
        folder.rewrite_metrics(history)
    except BaseException:
        folder.release()
        raise
    return OpenedRun(folder, start, arrays, latest, history)


def _check_complete(folder: RunFolder, history: list[dict], counter: str, start: int) -> None:
    """Refuse a metrics file that lacks units the checkpoint has passed (a unit's line is
    written before its checkpoint, so a gap is damage): resuming would leave them out of the
    run's record for good. Every epoch writes a line; a step run writes one per evaluation,
    so of its steps only the checkpoint's own is sure to have one."""
    expected = set(range(1, start + 1)) if counter == "epoch" else {start} - {0}
    missing = sorted(expected - {int(r[counter]) for r in history})
    if missing:
        span = (f"{counter}s {missing[0]}–{missing[-1]}" if len(missing) > 1
                else f"{counter} {missing[0]}")  # fmt: skip
        raise CorruptFileError(
            f"metrics file {str(folder / METRICS_FILE)!r} lacks {span} "
            f"({len(missing)} of the {len(expected)} it must hold up to the checkpoint's "
            f"{counter} {start}); restore it from a copy, or choose another folder to start the "
            "run again"
        )


def save_unit(folder: RunFolder, record: dict[str, Any], counter: str, trees: dict[str, Any]):
    """Append the metrics line of unit ``record[counter]``, then write its checkpoint of
    ``trees`` (see :func:`write_checkpoint`) and keep the last two."""
    count = int(record[counter])
    folder.append_metrics(record)
    name = f"{counter}_{count:0{WIDTH[counter]}d}.npz"
    write_checkpoint(folder / "checkpoints" / name, counter, count, trees)
    keep_latest(folder / "checkpoints", counter)


def summarise_diagnostics(estimates: Iterable) -> dict[str, float]:
    """The worst case over the estimates since the last record: the smallest converged
    fraction, minimum, ESS and gain (``ess_min``, ``ess_median``, ``min_gap``,
    ``min_hessian_eigenvalue``, ``control_variate_gain``; ``precision_reached``: 0 if any
    estimate's rounds ran out), the mean of shares (``…_share``),
    the largest of the rest; indices of
    an example within a batch (``worst_example``) and per-example arrays are left out. With
    standard errors, also the ``relative_stderr`` of the estimates: its mean and median
    (``relative_stderr_median``; the largest is ``diag_relative_stderr``)."""
    estimates = list(estimates)
    out = {}
    for key in estimates[0].diagnostics:
        if key.endswith("_example") or np.ndim(estimates[0].diagnostics[key]) > 0:
            continue  # about one batch's examples: no meaning across batches
        values = np.asarray([float(e.diagnostics[key]) for e in estimates])
        lowest = (
            "converged" in key
            or key.startswith(("min_", "ess_"))
            or key.endswith(("_min", "_gain", "_reached"))
        )
        reduce = np.mean if key.endswith("_share") else np.min if lowest else np.max
        out[f"diag_{key}"] = float(reduce(values))
    if estimates[0].is_stochastic:
        relative = np.asarray([float(e.relative_stderr()) for e in estimates])
        out["relative_stderr"] = float(np.mean(relative))
        out["relative_stderr_median"] = float(np.median(relative))
    return out


def check_finite_losses(losses: np.ndarray, where: str, first: int = 0) -> None:
    """Raise :class:`~thermoeqprop._health.RunStopped` (a ``FloatingPointError``) naming the
    first non-finite loss (batch ``first + i``)."""
    if not np.all(np.isfinite(losses)):
        from thermoeqprop._health import RunStopped

        raise RunStopped(
            f"{where}: the loss became non-finite at batch "
            f"{first + int(np.argmin(np.isfinite(losses)))}; lower the learning rate"
        )


class RunUnit(NamedTuple):
    """An epoch, or the steps between two records, as a stop names it.

    Attributes:
        name: ``"epoch 3"``, ``"steps 11–20"``.
        first: Whether it is the run's first unit (a ``ValueError`` there is bad input).
        saved: What the results folder keeps before it (None: nothing to say).
    """

    name: str
    first: bool
    saved: str | None

    @classmethod
    def starting(cls, name: str, units: str, start: int, folder) -> RunUnit:
        """The unit ``name`` whose first epoch or step is ``start``; ``units`` (``"epochs"``,
        ``"steps"``) names the earlier ones, which ``folder`` (a results folder, or None)
        keeps."""
        saved = None
        if folder is not None and start > 1:
            saved = f"{units} 1–{start - 1} are saved in {folder.path}"
        return cls(name, start == 1, saved)

    def stopped(self, reason: str):
        """:class:`~thermoeqprop._health.RunStopped` naming the unit and what the folder keeps
        (the bad unit is never saved)."""
        from thermoeqprop._health import RunStopped

        prefix = f"{self.name}: "
        reason = reason if reason.startswith(prefix) else prefix + reason
        if self.saved is not None:
            reason += f" ({self.saved})"
        return RunStopped(reason)

    def check(self, check: Callable, *args) -> Any:
        """``check(*args)``'s value; a fault it raises becomes :meth:`stopped`. In the first
        unit a ``ValueError`` is bad input and passes unchanged."""
        from thermoeqprop._health import RunStopped

        try:
            return check(*args)
        except (RunStopped, ValueError) as error:
            if isinstance(error, ValueError) and self.first:  # bad input, before any update
                raise
            raise self.stopped(str(error)) from None

    def stop_on_faults(self, record: dict, log: Callable[[str], None] | None) -> None:
        """Stop on what :func:`thermoeqprop._health.epoch_faults` finds broken in the unit's
        metrics ``record``; pass its notes to ``log`` as warnings naming the unit."""
        from thermoeqprop._health import epoch_faults

        fault, notes = epoch_faults(record)
        if fault is not None:
            raise self.stopped(fault)
        if log is not None:
            for note in notes:
                log(f"warning: {self.name}: {note}")

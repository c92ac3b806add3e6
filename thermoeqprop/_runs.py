"""Results folders of training runs: atomic files, checksummed checkpoints, metrics lines.

Shared by the epoch loop (:func:`thermoeqprop.training.train`) and the step loop
(:func:`thermoeqprop.training.train_steps`); the layout is in docs/design.md, section
"Results folders". A run is counted in units (epochs or steps, the ``counter``): after each
finished unit that is recorded, its metrics line is appended first and its checkpoint written
second, so a kill between the two leaves a line past the last checkpoint, which a resume drops
and redoes, never a checkpoint without its line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._provenance import ENVIRONMENT_KEY

__all__ = [
    "CheckpointError",
    "OpenedRun",
    "TrainResult",
    "append_line",
    "check_finite_losses",
    "describe",
    "keep_latest",
    "latest_checkpoint",
    "open_run",
    "prepare_results_dir",
    "read_checkpoint",
    "read_metrics",
    "restore_tree",
    "rewrite_metrics",
    "save_unit",
    "summarise_diagnostics",
    "write_atomic",
    "write_checkpoint",
]

#: Configuration keys (last dotted part) that a constant-rate run may grow: more of them
#: extend the run exactly, since unit ``u``'s data and keys derive from ``(seed, u)`` alone.
EXTENDABLE = ("epochs", "steps")
#: Digits of the unit number in checkpoint names (``epoch_0003.npz``, ``step_00000300.npz``).
WIDTH = {"epoch": 4, "step": 8}


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or does not match the run."""


class TrainResult(NamedTuple):
    """Final parameters, the metrics records, and the results folder (or None)."""

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


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and fsync it."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_metrics(folder: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` holding exactly ``history`` (lines past the checkpoint dropped)."""
    text = "".join(json.dumps(r) + "\n" for r in history).encode()
    write_atomic(folder / "metrics.jsonl", lambda handle: handle.write(text))


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


def write_checkpoint(path: Path, counter: str, count: int, trees: dict[str, Any]) -> None:
    """Write the leaves of each pytree in ``trees`` (keyed by a prefix such as ``"params_"``)
    and ``counter = count`` atomically, with a SHA-256 checksum of it all."""
    arrays = {}
    for prefix, tree in trees.items():
        arrays |= _tree_to_arrays(prefix, tree)
    arrays[counter] = np.asarray(count)
    arrays["checksum"] = np.asarray(_checksum(arrays))
    write_atomic(path, lambda handle: np.savez(handle, **arrays))


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint written by :func:`write_checkpoint`, checksum verified;
    :class:`CheckpointError` naming the file if it is truncated or corrupted."""
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
    return arrays


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


def read_metrics(path: Path, counter: str, upto: int) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` whose ``counter`` is at most ``upto``."""
    if not path.exists():
        return []
    history = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after the checkpoint is redone
            if record[counter] <= upto:
                history.append(record)
    return history


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``train.epochs``)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _mismatched(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ, leaving out the environment and, when both runs have a
    constant learning rate, the length of the run (:data:`EXTENDABLE`)."""
    previous, current = (
        {k: v for k, v in _flatten(r).items() if k.split(".")[0] != ENVIRONMENT_KEY}
        for r in (previous, current)
    )
    # Under a cosine schedule a longer run would change every later step.
    extendable = all(r.get("train.lr_schedule") == "constant" for r in (previous, current))
    return sorted(
        key
        for key in set(previous) | set(current)
        if previous.get(key) != current.get(key)
        and not (extendable and key.rpartition(".")[2] in EXTENDABLE)
    )


def prepare_results_dir(results_dir, config_record: dict[str, Any]) -> Path:
    """Create (or check) a results folder for a run described by ``config_record``.

    A folder that holds another configuration is refused with one line naming the first
    differing keys; the ``"environment"`` is not compared (docs/design.md, section "Results
    folders"). Writes ``config.json``.
    """
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
        previous = json.loads(config_path.read_text())
        mismatched = _mismatched(previous, config_record)
        if mismatched:
            flat_previous, flat_current = _flatten(previous), _flatten(config_record)
            shown = ", ".join(
                f"{key}: {flat_previous.get(key, 'absent')!r} there, "
                f"{flat_current.get(key, 'absent')!r} now"
                for key in mismatched[:4]
            ) + (f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
            raise ValueError(
                f"results folder {str(results_dir)!r} holds a run with a different "
                f"configuration ({shown}); resume with the same configuration or choose "
                "another folder"
            )
    write_atomic(config_path, lambda h: h.write(json.dumps(config_record, indent=2).encode()))
    return results_dir


class OpenedRun(NamedTuple):
    """A results folder opened for a run: where to start and what was kept."""

    folder: Path
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
    """Prepare the folder, read its latest checkpoint and drop metrics lines past it.

    Args:
        results_dir: The folder.
        config_record: What the run is (``config.json``; see :func:`prepare_results_dir`).
        counter: The unit of the run, ``"epoch"`` or ``"step"``.
        total: Units in the whole run (for the message).
        log: Called with one line when the run resumes from a checkpoint.
    """
    folder = prepare_results_dir(results_dir, config_record)
    latest = latest_checkpoint(folder / "checkpoints", counter)
    arrays, start = None, 0
    if latest is not None:
        arrays = read_checkpoint(latest)
        start = int(arrays[counter])
        if log is not None:
            rest = (
                f"{counter}s {start + 1}–{total} to go" if start < total else "nothing left to do"
            )
            log(f"resuming {folder} after {counter} {start} of {total} "
                f"(checkpoint {latest.name}): {rest}")  # fmt: skip
    history = read_metrics(folder / "metrics.jsonl", counter, start)
    rewrite_metrics(folder, history)
    return OpenedRun(folder, start, arrays, latest, history)


def save_unit(folder: Path, record: dict[str, Any], counter: str, trees: dict[str, Any]) -> None:
    """Append the metrics line of unit ``record[counter]``, then write its checkpoint of
    ``trees`` (see :func:`write_checkpoint`) and keep the last two."""
    count = int(record[counter])
    append_line(folder / "metrics.jsonl", record)
    name = f"{counter}_{count:0{WIDTH[counter]}d}.npz"
    write_checkpoint(folder / "checkpoints" / name, counter, count, trees)
    keep_latest(folder / "checkpoints", counter)


def summarise_diagnostics(estimates: Iterable) -> dict[str, float]:
    """The worst case over the estimates since the last record: the smallest converged
    fraction, minimum and ESS (``ess_min``, ``ess_median``, ``min_gap``,
    ``min_hessian_eigenvalue``), the largest of the rest; indices of an example within a batch
    (``worst_example``) and per-example arrays are left out. With standard errors, also the
    mean ``relative_stderr``."""
    estimates = list(estimates)
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


def check_finite_losses(losses: np.ndarray, where: str, first: int = 0) -> None:
    """Raise ``FloatingPointError`` naming the first non-finite loss (batch ``first + i``)."""
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(
            f"{where}: the loss became non-finite at batch "
            f"{first + int(np.argmin(np.isfinite(losses)))}; lower the learning rate"
        )

"""The results layer: one run's folder on disk, for every command.

Training by epochs and by steps, temperature sweeps, the T → 0 study and quantum runs write
their results through a :class:`RunFolder`, and ``thermoeqprop diagnose`` reads them through
it (docs/design.md, section "Results folders"). A run folder

- is *created* (with its sub-folders) and *probed*: a folder that cannot be written is refused
  before any work, with one line naming it;
- is *locked* while a run writes it: a second process on the same folder is refused
  (:class:`FolderLockedError`) instead of interleaving its files with the first's;
- *describes* its run in ``config.json``: the run's ``"kind"`` (``"train"``, ``"train_steps"``,
  ``"temperature_sweep"``, ``"low_temperature_study"``), its configuration, and under
  ``"environment"`` the package, JAX and NumPyro versions and the device count of the
  invocation that wrote it last;
- is *compared* on resume: a folder holding another configuration is refused with one line
  naming the differing keys and their values there and now, and so is one written on another
  JAX backend or device count (results follow the devices; the versions are not compared);
- is written *atomically*: every file goes to a temporary file in the same folder, is fsynced
  and renamed over its name, so a reader (or a resume after a kill) sees the old file or the
  new one, never half of one; checkpoints (``.npz``) and Datasets (``.nc``) carry a SHA-256
  checksum of their contents, verified on reading (:class:`CorruptFileError` names the file);
- keeps *metrics lines* (``metrics.jsonl``, one JSON record a line, appended and fsynced; a
  last line cut short by a kill is ignored when read, any other damage is refused naming the
  file and the line) and *series files* (``series/*.nc``,
  ArviZ InferenceData of per-draw gradient series, for ``diagnose``).

Example:
    >>> import tempfile
    >>> folder = RunFolder(tempfile.mkdtemp()).create("train", {"train": {"epochs": 2}})
    >>> folder.append_metrics({"epoch": 1, "train_loss": 0.5})
    >>> folder.release()
    >>> RunFolder(folder.path).kind, RunFolder(folder.path).read_metrics("epoch", upto=1)
    ('train', [{'epoch': 1, 'train_loss': 0.5}])
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import numpy as np

from thermoeqprop._deprecated import upgrade_record
from thermoeqprop._files import (
    CheckpointError,
    CorruptFileError,
    read_arrays,
    read_dataset,
    write_arrays,
    write_atomic,
    write_dataset,
)
from thermoeqprop._provenance import ENVIRONMENT_KEY, run_environment

__all__ = [
    "KINDS",
    "CheckpointError",
    "CorruptFileError",
    "FolderLockedError",
    "RunFolder",
    "describe",
    "fingerprint",
    "read_arrays",
    "read_dataset",
    "write_arrays",
    "write_atomic",
    "write_dataset",
]

#: What a folder may hold, recorded as ``config.json``'s ``"kind"``.
KINDS = ("train", "train_steps", "temperature_sweep", "low_temperature_study")
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


#: JSON's names of the types ``json.loads`` returns.
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}  # fmt: skip


class FolderLockedError(ValueError):
    """Another process is writing the results folder."""


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


def fingerprint(*arrays) -> str:
    """SHA-256 of arrays as float64: what a configuration records of the data a run used."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


# Configurations.


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``train.epochs``)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(
    previous: dict[str, Any],
    current: dict[str, Any],
    compared: Collection[str] | None = None,
    extendable: Collection[str] = (),
) -> list[str]:
    """The dotted keys whose values differ, leaving out the environment, the top-level keys
    not in ``compared`` (None: all are) and keys whose last part is in ``extendable``."""

    def kept(record):
        return {
            k: v
            for k, v in _flatten(record).items()
            if k.split(".")[0] != ENVIRONMENT_KEY
            and (compared is None or k.split(".")[0] in compared)
        }

    previous, current = kept(previous), kept(current)
    return sorted(
        key
        for key in set(previous) | set(current)
        if previous.get(key) != current.get(key) and key.rpartition(".")[2] not in extendable
    )


def _legacy_kind(record: dict[str, Any]) -> str | None:
    """The kind of a folder written before ``config.json`` recorded one (to be removed one
    release after 0.x): sweeps named themselves, training runs had a ``"train"`` section."""
    if record.get("kind") in KINDS:
        return record["kind"]
    if "train" in record:
        return "train_steps" if "steps" in record["train"] else "train"
    return None


class RunFolder:
    """One run's results folder (module docstring).

    ``RunFolder(path)`` touches nothing; :meth:`create` makes, probes, locks and describes it
    for a run that writes; readers (``diagnose``) use :attr:`kind`, :meth:`read_config`,
    :meth:`read_metrics` and :meth:`read_series` without a lock. A created folder holds its
    lock until :meth:`release` (or the end of a ``with`` block).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # Writing: create, probe, lock, describe, compare.

    def create(
        self,
        kind: str,
        config: dict[str, Any],
        *,
        compared: Collection[str] | None = None,
        extendable: Collection[str] = (),
        subfolders: Collection[str] = (),
        devices: int | None = None,
    ) -> RunFolder:
        """Make the folder (and ``subfolders``), probe it, lock it, and write ``config.json``.

        Args:
            kind: One of :data:`KINDS`.
            config: What the run is (JSON-friendly; see :func:`describe`).
            compared: Top-level keys of ``config`` that a resume must match (default all);
                of the ``"environment"`` only the backend and device count are compared.
            extendable: Keys (last dotted part) that may differ on resume, such as the
                number of epochs of a constant-rate run.
            subfolders: Folders to make inside.
            devices: The JAX device count that computes the run, when not this process's
                (the workers' of a Dask sweep): recorded and compared in its place.

        Raises:
            ValueError: The folder cannot be written, or holds another kind of run, another
                configuration (naming the differing keys) or a run on other devices.
            FolderLockedError: Another process is writing it.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown run kind {kind!r}; valid: {list(KINDS)}")
        self.probe(subfolders)
        self.lock()
        try:
            record = json.loads(json.dumps({"kind": kind} | dict(config)))
            record[ENVIRONMENT_KEY] = run_environment()
            if devices is not None:
                record[ENVIRONMENT_KEY]["device_count"] = int(devices)
            previous = self.read_config()
            if previous is not None:
                self._check_resumable(previous, record, compared, extendable)
            self.write_json(CONFIG_FILE, record)
        except BaseException:
            self.release()
            raise
        return self

    def probe(self, subfolders: Collection[str] = ()) -> None:
        """Make the folder and ``subfolders`` and write a test file; ``ValueError`` naming the
        folder if that fails."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in subfolders:
                (self.path / name).mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(
                f"results folder {str(self.path)!r} is not writable ({exc.strerror}); "
                "choose a folder you can write to"
            ) from None

    def lock(self) -> None:
        """Take the folder's lock (an advisory ``flock`` on ``.lock``, released by the
        operating system if the process dies); :class:`FolderLockedError` if another process
        (or another open :class:`RunFolder`) holds it."""
        if self._lock is not None:
            return
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderLockedError(
                f"results folder {str(self.path)!r} is being written by another process "
                f"(pid {holder}); wait for it to finish, or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Give the lock back (nothing if not held)."""
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _check_resumable(self, previous, record, compared, extendable) -> None:
        there = _legacy_kind(previous)
        if there is not None and there != record["kind"]:
            raise ValueError(
                f"results folder {str(self.path)!r} holds a {there} run, not a "
                f"{record['kind']} run; choose another folder"
            )
        self._check_devices(previous.get(ENVIRONMENT_KEY), record[ENVIRONMENT_KEY])
        # Legacy folders recorded no kind, and fields and options by their former names.
        previous = upgrade_record({"kind": record["kind"]} | previous)
        mismatched = config_differences(previous, record, compared, extendable)
        if mismatched:
            flat_previous, flat_current = _flatten(previous), _flatten(record)
            shown = ", ".join(
                f"{key}: {flat_previous.get(key, 'absent')!r} there, "
                f"{flat_current.get(key, 'absent')!r} now"
                for key in mismatched[:4]
            ) + (f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
            raise ValueError(
                f"results folder {str(self.path)!r} holds a run with a different "
                f"configuration ({shown}); resume with the same configuration or choose "
                "another folder"
            )

    def _check_devices(self, there: Any, now: dict[str, Any]) -> None:
        """Refuse a resume on another JAX backend or device count than the folder's: the
        shards of a sampled estimate, and so its rounding, follow the devices (1 and 2 CPU
        devices differ by ~1e-12 after one epoch), and a resumed run is bit for bit the
        uninterrupted one only on the same devices. Folders that recorded none pass."""
        if not isinstance(there, dict) or not isinstance(there.get("device_count"), int):
            return
        was = (there.get("jax_backend", now["jax_backend"]), there["device_count"])
        if was == (now["jax_backend"], now["device_count"]):
            return
        count = was[1]
        how = (
            f"set THERMOEQPROP_CPU_DEVICES={count} (or JAX_NUM_CPU_DEVICES={count}, which wins)"
            if was[0] == "cpu"
            else f"make {count} {was[0]} device(s) visible"
        )
        raise ValueError(
            f"results folder {str(self.path)!r} was written on {count} {was[0]} device(s) and "
            f"this run computes on {now['device_count']} {now['jax_backend']} device(s); a resume "
            f"is bit for bit only on the same devices: {how}, or choose another folder"
        )

    # Reading what the folder records.

    def read_config(self) -> dict[str, Any] | None:
        """``config.json``, or None if there is none; ``ValueError`` if it is not a JSON
        object."""
        path = self.path / CONFIG_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(
                f"{str(path)!r} is not valid JSON; it is not a results folder's configuration "
                "(choose another folder)"
            ) from None
        if not isinstance(record, dict):
            kind = _JSON_TYPES.get(type(record), "value")
            raise ValueError(
                f"{str(path)!r} holds a JSON {kind}, not an object; it is not a results "
                "folder's configuration (choose another folder)"
            )
        return record

    @property
    def kind(self) -> str | None:
        """What the folder holds (one of :data:`KINDS`), as its ``config.json`` records it;
        None without one."""
        record = self.read_config()
        return None if record is None else _legacy_kind(record)

    # Files inside the folder.

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``name`` (relative to the folder) atomically."""
        path = self.path / name
        write_atomic(path, data)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_json(self, name: str, record: Any) -> Path:
        return self.write_bytes(name, json.dumps(record, indent=2).encode())

    def write_dataset(self, name: str, dataset) -> Path:
        """Write an ``xarray.Dataset`` to ``name``, checksummed (:func:`write_dataset`)."""
        return write_dataset(dataset, self.path / name)

    def read_dataset(self, name: str, remedy: str = "delete it to recompute it"):
        return read_dataset(self.path / name, remedy)

    # Metrics lines.

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` and fsync it."""
        with open(self.path / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self, counter: str | None = None, upto: int | None = None) -> list[dict]:
        """The records of ``metrics.jsonl`` (those whose ``counter`` is at most ``upto``, if
        given). A last line cut short by a kill (no newline at its end) is left out; any other
        line that is not a JSON object is damage, refused with :class:`CorruptFileError`
        naming the file and the line (the checkpoints keep parameters, not past metrics, so
        the file cannot be rebuilt from them, and dropping the line would lose epochs)."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        lines = text.split("\n")
        history = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # the last line, without its newline: cut short
                    break
                record, problem = None, f"not JSON: {exc.msg}"
            else:
                problem = "not a JSON object" if not isinstance(record, dict) else None
                if problem is None and counter is not None and counter not in record:
                    problem = f"no {counter!r}"
            if problem is not None:
                raise CorruptFileError(
                    f"metrics file {str(path)!r} is damaged at line {number} ({problem}); "
                    "restore it from a copy, or choose another folder to start the run again"
                )
            if upto is None or record[counter] <= upto:
                history.append(record)
        return history

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` holding exactly ``history`` (lines past a checkpoint dropped)."""
        self.write_bytes(METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())

    # Series files.

    def write_series(self, name: str, idata) -> Path:
        """Save InferenceData of per-draw series as ``series/NAME.nc`` (atomically)."""
        import samplers

        (self.path / "series").mkdir(exist_ok=True)
        return samplers.save_inference_data(idata, self.path / "series" / f"{name}.nc")

    def read_series(self, prefix: str = "") -> list[tuple[Path, Any]]:
        """The (path, InferenceData) pairs of ``series/PREFIX*.nc``, sorted by name."""
        import samplers

        out = []
        for path in sorted((self.path / "series").glob(f"{prefix}*.nc")):
            try:
                out.append((path, samplers.load_inference_data(path)))
            except Exception as exc:  # h5py/OSError: an unreadable file
                raise ValueError(
                    f"gradient series {str(path)!r} is unreadable ({type(exc).__name__}); "
                    "delete it and re-run to recompute it"
                ) from None
        return out

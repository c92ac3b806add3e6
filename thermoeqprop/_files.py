"""Files of a results folder: written atomically, checkpoints and Datasets checksummed.

The file layer of :mod:`thermoeqprop.results` (where the guarantees are described): every
write goes to a temporary file in the same folder, fsynced and renamed over its name, so a
reader sees the old file or the new one, never half of one; ``.npz`` arrays and netCDF
Datasets carry a SHA-256 checksum of their contents, verified when they are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CheckpointError",
    "CorruptFileError",
    "arrays_bytes",
    "dataset_bytes",
    "read_arrays",
    "read_dataset",
    "write_arrays",
    "write_atomic",
    "write_dataset",
]

NETCDF_ENGINE = "h5netcdf"
#: The attribute of a Dataset file that holds its checksum (:func:`write_dataset`).
CHECKSUM_ATTRIBUTE = "sha256"


class CorruptFileError(ValueError):
    """A results file is truncated, corrupted (fails its checksum) or does not match the run."""


class CheckpointError(CorruptFileError, RuntimeError):
    """A checkpoint file is truncated, corrupted or does not match the run (a
    ``RuntimeError`` too, as it was before the results layer)."""


def write_atomic(path: Path, write: Callable[[Any], None] | bytes) -> None:
    """Write a file so that a reader never sees it half-written: a temporary file in the same
    folder, flushed and fsynced, renamed over ``path``; then the folder is fsynced.

    ``write`` is the bytes, or a function that writes them to a binary file handle. If it
    fails, the temporary file is removed and ``path`` is as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            if isinstance(write, bytes | bytearray | memoryview):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(a.dtype).encode() + str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What :func:`write_arrays` writes: named arrays as ``.npz`` with a SHA-256 checksum of
    them all (made where the arrays are, written elsewhere: a Dask worker's task)."""
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    arrays["checksum"] = np.asarray(_checksum(arrays))
    buffer = io.BytesIO()
    try:
        np.savez(buffer, **arrays)
    except ValueError as exc:
        # A signal's KeyboardInterrupt raised while zipfile has a member open for writing
        # leaves that handle open, and closing the archive then raises "Can't close the ZIP
        # file while there is an open writing handle" in the interrupt's place: the command
        # reported an error (exit 2) instead of the interrupt (130; tests/test_signals.py).
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        raise
    return buffer.getvalue()


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as ``.npz`` atomically, with a SHA-256 checksum of them all."""
    write_atomic(path, arrays_bytes(arrays))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays written by :func:`write_arrays`, checksum verified; :class:`CheckpointError`
    naming the file if it is truncated or corrupted."""
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


def _dataset_checksum(dataset) -> str:
    """SHA-256 of a Dataset's variables and coordinates, as they read back from netCDF:
    numbers as float64 with one NaN, strings by their JSON text."""
    digest = hashlib.sha256()
    for name in sorted(map(str, dataset.variables)):
        variable = dataset.variables[name]
        values = np.asarray(variable.values)
        digest.update(f"{name}{variable.dims}{values.shape}".encode())
        if values.dtype.kind in "biuf":
            values = values.astype(np.float64)
            values = np.ascontiguousarray(np.where(np.isnan(values), np.nan, values))
            digest.update(values.tobytes())
        else:
            digest.update(json.dumps(values.tolist(), default=str).encode())
    return digest.hexdigest()


def dataset_bytes(dataset) -> bytes:
    """What :func:`write_dataset` writes: the netCDF (h5netcdf) bytes of an
    ``xarray.Dataset``, its checksum in the attribute ``sha256`` (``dataset`` is not
    changed)."""
    stamped = dataset.copy(deep=False)
    stamped.attrs = dict(dataset.attrs) | {CHECKSUM_ATTRIBUTE: _dataset_checksum(dataset)}
    return bytes(stamped.to_netcdf(engine=NETCDF_ENGINE))


def write_dataset(dataset, path: Path) -> Path:
    """Write an ``xarray.Dataset`` as netCDF (h5netcdf) atomically, its checksum in the
    attribute ``sha256`` of the file (the Dataset passed in is not changed)."""
    path = Path(path)
    write_atomic(path, dataset_bytes(dataset))
    return path


def read_dataset(path: Path, remedy: str = "delete it to recompute it"):
    """A Dataset written by :func:`write_dataset`, fully in memory, checksum verified (files
    without one, from earlier versions, are read as they are); :class:`CorruptFileError`
    naming the file and ``remedy`` if it is unreadable or fails its checksum."""
    import xarray as xr

    try:
        dataset = xr.load_dataset(path, engine=NETCDF_ENGINE)
    except Exception as exc:  # h5py/OSError/ValueError all mean an unreadable file
        raise CorruptFileError(
            f"{str(path)!r} is unreadable, truncated or corrupted ({type(exc).__name__}); {remedy}"
        ) from None
    stored = dataset.attrs.pop(CHECKSUM_ATTRIBUTE, None)
    if stored is not None and stored != _dataset_checksum(dataset):
        raise CorruptFileError(f"{str(path)!r} fails its checksum (corrupted); {remedy}")
    return dataset

"""A sweep's results folder, through :class:`thermoeqprop.results.RunFolder`.

One *unit* (a temperature, or with tempering a seed) at a time: its Dataset part
(``parts/UNIT.nc``, checksummed), the per-draw gradient series of each estimator
(``series/UNIT_EST.nc``) and the joined ``sweep.nc``, each written atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import xarray as xr

from thermoeqprop._files import NETCDF_ENGINE, dataset_bytes
from thermoeqprop._series import gradient_series_data
from thermoeqprop.results import RunFolder, read_dataset, write_dataset
from thermoeqprop.sweep._grid import Plan

__all__ = ["load_sweep", "open_folder", "save_series", "save_sweep", "unit_files"]

REMEDY_SWEEP = "delete it and re-run the sweep to recompute it"
REMEDY_PART = "delete it to recompute that part"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", label)


def save_sweep(dataset: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a sweep Dataset as netCDF (h5netcdf engine), atomically, with a checksum of its
    contents (:func:`thermoeqprop.results.write_dataset`)."""
    return write_dataset(dataset, Path(path))


def load_sweep(path: str | os.PathLike) -> xr.Dataset:
    """Read a sweep Dataset written by :func:`save_sweep` (fully into memory; a folder: its
    ``sweep.nc``), checksum verified."""
    path = Path(path)
    if path.is_dir():
        path = path / "sweep.nc"
    if not path.is_file():
        raise ValueError(f"no sweep file at {str(path)!r}; run a sweep there first")
    return read_dataset(path, REMEDY_SWEEP)


def open_folder(path, record: dict[str, Any], compared, devices: int | None = None) -> RunFolder:
    """Create (or check) and lock the sweep's folder; ``record`` is its ``config.json``, of
    which the keys ``compared`` must match on resume; ``devices``: the device count that
    computes the estimates, if not this process's (a Dask cluster's workers')."""
    return RunFolder(path).create(
        "temperature_sweep", record, compared=compared, subfolders=("parts", "series"),
        devices=devices,
    )  # fmt: skip


def finished_part(folder: RunFolder, unit: str) -> xr.Dataset | None:
    """The saved part of ``unit``, or None if it is not finished."""
    if not (folder / "parts" / f"{unit}.nc").exists():
        return None
    return folder.read_dataset(f"parts/{unit}.nc", REMEDY_PART)


def save_unit(
    folder: RunFolder, unit: str, plan: Plan, part: xr.Dataset, series, dataset: xr.Dataset
) -> None:
    """Save a finished unit: its series, its part, then the joined Dataset."""
    save_series(folder, unit, plan, part, series)
    folder.write_dataset(f"parts/{unit}.nc", part)
    folder.write_dataset("sweep.nc", dataset)


def save_series(folder: RunFolder, unit: str, plan: Plan, part: xr.Dataset, series) -> None:
    """The per-draw gradient series of each estimator of a unit that has them, for
    ``diagnose``."""
    for name, idata in _series_data(unit, plan, part, series):
        folder.write_series(name, idata)


def unit_files(unit: str, plan: Plan, part: xr.Dataset, series) -> dict[str, bytes]:
    """The files :func:`save_unit` writes for a finished unit but the joined Dataset, as
    bytes by their names in the folder (the series first, then the part that marks the unit
    finished): made by a Dask worker, written by the process that holds the folder."""
    files = {}
    with tempfile.TemporaryDirectory(prefix="thermoeqprop-series-") as scratch:
        for name, idata in _series_data(unit, plan, part, series):
            path = Path(scratch) / f"{name}.nc"
            idata.to_netcdf(str(path), engine=NETCDF_ENGINE)  # as RunFolder.write_series
            files[f"series/{name}.nc"] = path.read_bytes()
    return files | {f"parts/{unit}.nc": dataset_bytes(part)}


def _series_data(unit: str, plan: Plan, part: xr.Dataset, series):
    """(file name, InferenceData) of each estimator of the unit with a per-draw series."""
    names = [plan.names[i] for i in plan.series_indices]
    for spec in plan.specs:
        if spec.label not in series:  # no per-draw series (exact expectations, shots)
            continue
        grads, costs = series[spec.label]
        idata = gradient_series_data(
            grads,
            costs,
            names,
            temperatures=part.temperature.values,
            seeds=part.seed.values,
            attrs={
                "estimator": spec.label,
                "beta": spec.beta,
                "unit": unit,
                "model": type(plan.model).__name__,
            },
        )
        yield f"{unit}_{_slug(spec.label)}", idata

"""ArviZ calls for diagnostics of gradient estimates (to move into ``samplers/_arviz.py``).

DESIGN.md keeps every ArviZ call in one module so that the move to ArviZ 1.x is one file. These
functions are the only ArviZ calls of :mod:`thermoeqprop.sweep` and
:mod:`thermoeqprop.diagnostics`; they know nothing of EP beyond the names of their dimensions
and belong beside :func:`samplers.to_inference_data`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from samplers._arviz import _az

__all__ = [
    "gradient_inference_data",
    "load_inference_data",
    "save_inference_data",
    "save_rank_plot",
    "save_trace_plot",
    "summary_table",
]


def gradient_inference_data(
    gradient: Any,
    cost: Any,
    parameter_names: list[str],
    *,
    temperatures: Any,
    seeds: Any,
    attrs: dict[str, Any] | None = None,
):
    """InferenceData whose posterior holds per-draw gradient series.

    Args:
        gradient: (chain, draw, temperature, seed, parameter) series whose draw means are the
            gradient estimates.
        cost: (chain, draw, temperature, seed) per-draw batch-mean cost.
        parameter_names: Coordinates of ``parameter``.
        temperatures: Coordinates of ``temperature``.
        seeds: Coordinates of ``seed``.
        attrs: Attributes of the posterior group (numbers and strings).

    Returns:
        ``arviz.InferenceData`` with ``posterior["gradient"]`` and ``posterior["cost"]``.
    """
    idata = _az().from_dict(
        posterior={"gradient": np.asarray(gradient), "cost": np.asarray(cost)},
        coords={
            "temperature": np.asarray(temperatures, dtype=float),
            "seed": np.asarray(seeds),
            "parameter": list(parameter_names),
        },
        dims={
            "gradient": ["temperature", "seed", "parameter"],
            "cost": ["temperature", "seed"],
        },
    )
    idata.posterior.attrs.update(attrs or {})
    return idata


def save_inference_data(idata, path: str | os.PathLike) -> Path:
    """Write InferenceData as netCDF (h5netcdf) atomically: temporary file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    idata.to_netcdf(str(tmp), engine="h5netcdf")
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_inference_data(path: str | os.PathLike):
    """Read InferenceData written by :func:`save_inference_data` (into memory)."""
    idata = _az().from_netcdf(str(path), engine="h5netcdf")
    for group in idata.groups():
        idata[group].load()
    return idata


def summary_table(idata, coords: dict[str, Any] | None = None):
    """ArviZ's summary of ``posterior["gradient"]``: mean, sd, MCSE, bulk/tail ESS, R-hat.

    Args:
        idata: From :func:`gradient_inference_data`.
        coords: Optional selection, e.g. ``{"seed": [0]}``.

    Returns:
        ``xarray.Dataset`` with one variable per statistic (``mean``, ``sd``, ``mcse_mean``,
        ``mcse_sd``, ``ess_bulk``, ``ess_tail``, ``r_hat``), dims as the gradient's event.
    """
    # Components that never change give NaN diagnostics: the honest answer; NumPy's warnings
    # for them carry nothing more.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _az().summary(
            idata,
            var_names=["gradient"],
            coords=coords,
            kind="all",
            fmt="xarray",
            hdi_prob=0.9,
        )


@contextlib.contextmanager
def _quiet_plotting():
    # ArviZ 0.23's matplotlib backend calls normalize_kwargs in a way matplotlib 3.11
    # deprecates; the warning is about ArviZ's internals, not our call, and the suite turns
    # warnings into errors.
    import matplotlib

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Passing a dict or None as alias_mapping",
            category=matplotlib.MatplotlibDeprecationWarning,
        )
        yield


def _save_figure(axes, path: str | os.PathLike, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure = np.ravel(axes)[0].figure
    if title:
        figure.suptitle(title)
    figure.set_layout_engine("constrained")
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def save_trace_plot(
    idata, path: str | os.PathLike, coords: dict[str, Any], title: str = ""
) -> Path:
    """ArviZ trace plot (density and trace per chain) of selected gradient components."""
    az = _az()
    with _quiet_plotting():
        axes = az.plot_trace(
            idata,
            var_names=["gradient"],
            coords=coords,
            compact=False,
            labeller=az.labels.DimCoordLabeller(),
        )
    return _save_figure(axes, path, title)


def save_rank_plot(idata, path: str | os.PathLike, coords: dict[str, Any], title: str = "") -> Path:
    """ArviZ rank plot (rank histograms per chain) of selected gradient components."""
    az = _az()
    with _quiet_plotting():
        axes = az.plot_rank(
            idata, var_names=["gradient"], coords=coords, labeller=az.labels.DimCoordLabeller()
        )
    return _save_figure(axes, path, title)

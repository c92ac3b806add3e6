"""ArviZ's trace and rank plots of any posterior variable (the other ArviZ calls are in
``samplers/_arviz.py``).

Drawn on a ``matplotlib.figure.Figure`` made without pyplot and saved as PNG, so they never
switch the user's backend (a notebook's ``%matplotlib inline`` stays) nor leave a figure open
in pyplot, and need no display.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

from samplers._arviz import _az, to_inference_data  # noqa: F401 (the doctest's)

__all__ = ["save_rank_plot", "save_trace_plot"]


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


def _plotted(idata, var_names: Any, coords: dict[str, Any] | None, limit: int) -> tuple:
    """``(var_names, coords, count)``: the posterior variables checked (None: all), and how
    many panels ArviZ draws for them (one per variable and selected element of its event
    dims)."""
    if var_names is None:
        var_names = list(getattr(getattr(idata, "posterior", None), "data_vars", ()))
    if isinstance(var_names, str):
        var_names = [var_names]
    var_names = list(var_names)
    posterior = getattr(idata, "posterior", None)
    if posterior is None:
        raise ValueError("idata has no posterior group; make it with to_inference_data.")
    missing = [name for name in var_names if name not in posterior.data_vars]
    if not var_names or missing:
        raise ValueError(
            f"var_names must name variables of idata.posterior {sorted(posterior.data_vars)}, "
            f"got {var_names!r}."
        )
    coords = dict(coords or {})
    unknown = sorted(set(coords) - set(posterior.dims) - {"chain", "draw"})
    if unknown:
        raise ValueError(
            f"coords has dimensions {unknown} that idata.posterior lacks; its dimensions are "
            f"{sorted(posterior.dims)}."
        )
    try:  # on the whole posterior, as ArviZ selects: a variable without a dim keeps all of it
        selected = posterior.sel(coords)
    except KeyError as error:
        raise ValueError(f"coords select values idata.posterior lacks: {error}") from None
    sizes = [selected[name].sizes for name in var_names]
    count = sum(math.prod(n for dim, n in s.items() if dim not in ("chain", "draw")) for s in sizes)
    if not 1 <= count <= limit:
        raise ValueError(
            f"var_names {var_names} with coords {coords} select {count} panels; select between "
            f"1 and {limit} with coords (e.g. {{'parameter': [...]}})."
        )
    return var_names, coords, count


def _panel_limit(az) -> int:
    # ArviZ's own cap (rcParams["plot.max_subplots"], None for none); beyond it ArviZ would
    # warn and draw only the first panels.
    limit = az.rcParams["plot.max_subplots"]
    return 10**9 if limit is None else max(int(limit), 2)


def _figure(figsize: tuple[float, float]):
    # A Figure of the object-oriented API, never pyplot's: no backend switch, nothing left
    # open in pyplot's list of figures, no display needed; ArviZ draws on its axes.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save_figure(figure, path: str | os.PathLike, title: str) -> Path:
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=90)
    return path


def save_trace_plot(
    idata,
    path: str | os.PathLike,
    coords: dict[str, Any] | None = None,
    title: str = "",
    *,
    var_names: str | list[str] | None = None,
) -> Path:
    """ArviZ trace plot (density and trace per chain) of selected posterior elements, as PNG.

    One row per variable and selected element, e.g. per element of a series from
    :func:`series_inference_data`, or per unit of a sampler's positions from
    :func:`to_inference_data` (``var_names="position"``).

    Args:
        idata: ``arviz.InferenceData`` with a ``posterior`` group.
        path: The PNG file to write.
        coords: Selection of each dimension's coordinates, e.g.
            ``{"parameter": ["weights[0][1,2]"]}`` or ``{"unit": ["x"]}``; None keeps all.
        title: Figure title.
        var_names: The posterior variable(s) to plot (default all).

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> import jax, jax.numpy as jnp
        >>> import samplers
        >>> kernel = samplers.metropolis(lambda s, c: -s[0] * s[1])
        >>> trace = samplers.sample(jax.random.key(0), kernel, jnp.ones((2, 2)), num_samples=20)
        >>> idata = to_inference_data(trace, unit_names=["a", "b"])
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_trace_plot(idata, folder / "a.png", {"unit": ["a"]}, var_names="position").name
        'a.png'
    """
    az = _az()
    var_names, coords, rows = _plotted(idata, var_names, coords, _panel_limit(az) // 2)
    figsize = (12.0, 2.0 * rows + 0.6)
    figure = _figure(figsize)
    with _quiet_plotting():
        az.plot_trace(
            idata,
            var_names=var_names,
            coords=coords,
            compact=False,
            labeller=az.labels.DimCoordLabeller(),
            figsize=figsize,
            axes=figure.subplots(rows, 2, squeeze=False),
            show=False,
        )
    return _save_figure(figure, path, title)


def save_rank_plot(
    idata,
    path: str | os.PathLike,
    coords: dict[str, Any] | None = None,
    title: str = "",
    *,
    var_names: str | list[str] | None = None,
) -> Path:
    """ArviZ rank plot (rank histograms per chain) of selected posterior elements, as PNG.

    One panel per variable and selected element, in rows of at most three; arguments as
    :func:`save_trace_plot`.

    Returns:
        The path written.
    """
    az = _az()
    var_names, coords, count = _plotted(idata, var_names, coords, _panel_limit(az))
    cols = min(count, 3)
    rows = -(-count // cols)
    figsize = (4.5 * cols, 3.2 * rows)
    figure = _figure(figsize)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_axis_off()
    with _quiet_plotting():
        az.plot_rank(
            idata,
            var_names=var_names,
            coords=coords,
            labeller=az.labels.DimCoordLabeller(),
            figsize=figsize,
            ax=axes[:count],
            show=False,
        )
    for ax in axes[:count]:  # ArviZ sizes its text for 7-inch panels; these are 4.5 wide
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(10)
        ax.yaxis.label.set_fontsize(10)
        ax.tick_params(labelsize=9)
    return _save_figure(figure, path, title)

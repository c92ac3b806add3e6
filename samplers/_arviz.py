"""Every ArviZ call of the package, in one module (ArviZ 1.x will need a one-file move).

Two kinds of functions:

- plain array diagnostics, vectorised over event dimensions: :func:`ess_bulk`,
  :func:`ess_tail`, :func:`rhat`, :func:`mcse_mean` take ``x`` of shape
  ``(chain, draw, *event)`` and return NumPy arrays of shape ``event`` (ArviZ's rank-normalised
  split R-hat, bulk/tail ESS, and MCSE of the mean, which uses the bulk ESS);
- :func:`to_inference_data`, which turns a :class:`samplers.Trace` into ArviZ
  ``InferenceData`` with the kernel's Info as ``sample_stats``, and :func:`summary`;
- :func:`save_trace_plot`, :func:`save_rank_plot`: ArviZ's plots of any posterior variable,
  drawn on a ``matplotlib.figure.Figure`` made without pyplot and saved as PNG, so they never
  switch the user's backend (a notebook's ``%matplotlib inline`` stays) nor leave a figure
  open in pyplot, and need no display.

ArviZ is imported lazily, so ``import samplers`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from samplers._idata_layout import (
    _event_dims,
    _flatten_info,
    _unit_names,
    tempering_summaries,
)

__all__ = ["ess_bulk", "ess_tail", "mcse_mean", "rhat", "summary", "to_inference_data"]


@functools.cache
def _az():
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.x refactor with a FutureWarning at import; it says
        # nothing about our use, and the suite turns warnings into errors.
        warnings.filterwarnings("ignore", message="\\s*ArviZ is undergoing", category=FutureWarning)
        import arviz

    return arviz


def _as_dataset(x: Any):
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (chain, draw, *event), got shape {x.shape}.")
    if x.shape[1] < 4:
        raise ValueError(f"x needs at least 4 draws per chain, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"x must be real-valued, got dtype {x.dtype}.")
    return _az().convert_to_dataset(x.astype(float))


def _diagnostic(function: str, x: Any, **kwargs) -> np.ndarray:
    # Chains that never move (zero within-chain variance) give inf/NaN, which is the honest
    # answer; NumPy's divide warnings for them carry no further information.
    with np.errstate(divide="ignore", invalid="ignore"):
        result = getattr(_az(), function)(_as_dataset(x), **kwargs)
    return np.asarray(result["x"].values)


def ess_bulk(x: Any) -> np.ndarray:
    """Bulk effective sample size (rank-normalised, split chains), per event element.

    Args:
        x: Draws of shape ``(chain, draw, *event)``, at least 4 draws.

    Returns:
        Array of shape ``event``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 200, 3))
        >>> ess_bulk(x).shape
        (3,)
    """
    return _diagnostic("ess", x, method="bulk")


def ess_tail(x: Any) -> np.ndarray:
    """Tail effective sample size (minimum over the 5% and 95% quantiles), per element.

    Args:
        x: Draws of shape ``(chain, draw, *event)``.

    Returns:
        Array of shape ``event``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 200))
        >>> bool(ess_tail(x) > 100)
        True
    """
    return _diagnostic("ess", x, method="tail")


def rhat(x: Any) -> np.ndarray:
    """Rank-normalised split R-hat, per event element (needs at least 2 chains).

    Args:
        x: Draws of shape ``(chain, draw, *event)``, ``chain >= 2``.

    Returns:
        Array of shape ``event``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(4, 500, 2))
        >>> x[0] += 3.0  # one chain elsewhere
        >>> (rhat(x) > 1.1).tolist()
        [True, True]
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"rhat needs x of shape (chain >= 2, draw, *event), got {x.shape}.")
    return _diagnostic("rhat", x)


def mcse_mean(x: Any) -> np.ndarray:
    """Monte Carlo standard error of the mean, ``sd / sqrt(ESS_bulk)``-type, per element.

    Args:
        x: Draws of shape ``(chain, draw, *event)``.

    Returns:
        Array of shape ``event``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(4, 1000))
        >>> bool(0.01 < float(mcse_mean(x)) < 0.03)
        True
    """
    return _diagnostic("mcse", x, method="mean")


def to_inference_data(trace: Any, *, unit_names: Any = None):
    """Convert a :class:`samplers.Trace` to ArviZ ``InferenceData``.

    ``posterior["position"]`` has dims ``(chain, draw, [target,] [temperature,] unit)``: a
    batch of targets becomes the dimension ``target`` after ``draw``, and parallel tempering's
    slots the dimension ``temperature`` (coordinates: the ladder when every chain and target
    shares one, else slot indices). ``sample_stats`` holds every Info field with ArviZ's
    names where they exist: ``diverging``, ``energy`` (HMC's Hamiltonian, for BFMI),
    ``acceptance_rate``, ``step_size``, ``n_steps``; the unscaled ``E`` is
    ``potential_energy``; parallel tempering adds, per draw, ``swap_proposed``,
    ``swap_accepted``, ``swap_probability`` (dim ``pair``: slots ``(k, k+1)``), ``temperatures``
    and ``round_trips``, and per chain (no ``draw`` dim) ``swap_acceptance_probability``,
    ``swap_accepted_count``, ``swap_proposed_count``, ``swap_acceptance_rate`` (dims ``(chain,
    [target,] pair)``) and ``round_trips_completed`` (:mod:`samplers._idata_layout`), each with
    a ``description`` attribute.

    Args:
        trace: A :class:`samplers.Trace` from :func:`samplers.sample`.
        unit_names: Optional coordinate values for the ``unit`` dimension (the last axis of
            a position), one distinct name per unit, e.g. ``["x", "y"]``.

    Returns:
        ``arviz.InferenceData`` with groups ``posterior`` and ``sample_stats``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import samplers
        >>> kernel = samplers.metropolis(lambda s, c: -s[0] * s[1])
        >>> trace = samplers.sample(jax.random.key(0), kernel, jnp.ones((2, 2)), num_samples=10)
        >>> idata = to_inference_data(trace)
        >>> idata.posterior["position"].dims, "acceptance_rate" in idata.sample_stats
        (('chain', 'draw', 'unit'), True)
    """
    samples = np.asarray(trace.samples)
    stats = _flatten_info(trace.info)
    tempering = "swap_accepted" in stats
    batched = np.asarray(trace.nonfinite_step).ndim == 2
    if batched:
        samples = np.moveaxis(samples, 0, 2)
        stats = {k: np.moveaxis(v, 0, 2) for k, v in stats.items()}
    lead = ("target",) if batched else ()
    base = (*lead, "temperature", "unit") if tempering else (*lead, "unit")
    coords: dict[str, Any] = {}
    if unit_names is not None:
        coords["unit"] = _unit_names(unit_names, samples.shape)
    if tempering:
        ladder = np.asarray(trace.final_state.inverse_temperatures)
        ladder = 1.0 / ladder.reshape(-1, ladder.shape[-1])
        if np.all(ladder == ladder[0]):
            coords["temperature"] = ladder[0]
    dims = {"position": _event_dims("position", samples.shape[2:], base)}
    for name, value in stats.items():
        extra = value.shape[2:]
        if name.startswith("swap_"):
            dims[name] = _event_dims(name, extra, (*lead, "pair"))
        elif tempering and name != "round_trips":
            dims[name] = _event_dims(name, extra, (*lead, "temperature"))
        else:
            dims[name] = _event_dims(name, extra, lead)
    idata = _az().from_dict(
        posterior={"position": samples}, sample_stats=stats, coords=coords, dims=dims
    )
    if tempering:
        for name, variable in tempering_summaries(stats, lead).items():
            idata.sample_stats[name] = variable
    return idata


def summary(trace: Any, *, unit_names: Any = None, **kwargs):
    """ArviZ's summary table (means, sd, MCSE, ESS, R-hat) of a trace's positions.

    Rows are named by the coordinates of :func:`to_inference_data`: ``position[x]`` with
    ``unit_names=["x", ...]``, else ``position[0]``; with a batch of targets or parallel
    tempering, ``position[target, unit]`` or ``position[temperature, unit]``.

    Args:
        trace: A :class:`samplers.Trace`.
        unit_names: Optional names of the units, as in :func:`to_inference_data`.
        **kwargs: Passed to ``arviz.summary`` (e.g. ``coords={"unit": ["x"]}``, ``kind``).

    Returns:
        A ``pandas.DataFrame``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import samplers
        >>> kernel = samplers.metropolis(lambda s, c: -s[0] * s[1])
        >>> trace = samplers.sample(jax.random.key(0), kernel, jnp.ones((2, 2)), num_samples=20)
        >>> list(summary(trace, unit_names=["a", "b"]).index)
        ['position[a]', 'position[b]']
    """
    idata = to_inference_data(trace, unit_names=unit_names)
    with np.errstate(divide="ignore", invalid="ignore"):  # frozen chains: inf/NaN, see above
        return _az().summary(idata, var_names=["position"], **kwargs)


# Gradient-estimate series (moved from thermoeqprop so that every ArviZ call lives here).


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


def _plotted(idata, var_names: Any, coords: dict[str, Any] | None, limit: int) -> tuple:
    """``(var_names, coords, count)``: the posterior variables checked, and how many panels
    ArviZ draws for them (one per variable and selected element of its event dims)."""
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
    var_names: str | list[str] = "gradient",
) -> Path:
    """ArviZ trace plot (density and trace per chain) of selected posterior elements, as PNG.

    One row per variable and selected element, e.g. per gradient component of
    :func:`gradient_inference_data`, or per unit of a sampler's positions from
    :func:`to_inference_data` (``var_names="position"``).

    Args:
        idata: ``arviz.InferenceData`` with a ``posterior`` group.
        path: The PNG file to write.
        coords: Selection of each dimension's coordinates, e.g.
            ``{"parameter": ["weights[0][1,2]"]}`` or ``{"unit": ["x"]}``; None keeps all.
        title: Figure title.
        var_names: The posterior variable(s) to plot.

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
    var_names: str | list[str] = "gradient",
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

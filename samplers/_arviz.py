"""Every ArviZ call of the package, in one module (ArviZ 1.x will need a one-file move).

Two kinds of functions:

- plain array diagnostics, vectorised over event dimensions: :func:`ess_bulk`,
  :func:`ess_tail`, :func:`rhat`, :func:`mcse_mean` take ``x`` of shape
  ``(chain, draw, *event)`` and return NumPy arrays of shape ``event`` (ArviZ's rank-normalised
  split R-hat, bulk/tail ESS, and MCSE of the mean, which uses the bulk ESS);
- :func:`to_inference_data`, which turns a :class:`samplers.Trace` into ArviZ
  ``InferenceData`` with the kernel's Info as ``sample_stats``, and :func:`summary`;
- :func:`series_inference_data` (per-draw series of any quantities), netCDF saving and
  loading, and :func:`summary_table`;
- the plots are in ``samplers/_arviz_plots.py``: :func:`save_trace_plot`,
  :func:`save_rank_plot`.

ArviZ is imported lazily, so ``import samplers`` stays fast.
"""

from __future__ import annotations

import functools
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


# Series of per-draw quantities (what they mean is the caller's business).


def series_inference_data(
    variables: dict[str, Any],
    *,
    coords: dict[str, Any] | None = None,
    dims: dict[str, list[str]] | None = None,
    attrs: dict[str, Any] | None = None,
):
    """InferenceData whose posterior holds per-draw series of any quantities.

    Args:
        variables: Name to array of shape ``(chain, draw, *event)``.
        coords: Coordinates of the event dims.
        dims: Name to the names of its event dims.
        attrs: Attributes of the posterior group (numbers and strings).

    Returns:
        ``arviz.InferenceData`` with one posterior variable per entry of ``variables``.

    Example:
        >>> idata = series_inference_data({"x": np.zeros((2, 5, 3))}, dims={"x": ["unit"]},
        ...                               coords={"unit": ["a", "b", "c"]})
        >>> idata.posterior["x"].dims
        ('chain', 'draw', 'unit')
    """
    idata = _az().from_dict(
        posterior={name: np.asarray(value) for name, value in variables.items()},
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.update(attrs or {})
    return idata


def gradient_inference_data(
    gradient: Any,
    cost: Any,
    parameter_names: list[str],
    *,
    temperatures: Any,
    seeds: Any,
    attrs: dict[str, Any] | None = None,
):
    """Deprecated alias (removed in the next release; kept because it was exported): use
    :func:`series_inference_data`, which names nothing of what the series are. The builder
    of this layout moved out of ``samplers``, as ``thermoeqprop._series.gradient_series_data``
    (the one public form is ``thermoeqprop.diagnostics.gradient_inference_data``)."""
    warnings.warn(
        "samplers.gradient_inference_data is deprecated and will be removed in the next "
        "release; use samplers.series_inference_data (or, for the series of a gradient "
        "estimate, thermoeqprop.diagnostics.gradient_inference_data)",
        FutureWarning,
        stacklevel=2,
    )
    return series_inference_data(
        {"gradient": gradient, "cost": cost},
        coords={
            "temperature": np.asarray(temperatures, dtype=float),
            "seed": np.asarray(seeds),
            "parameter": list(parameter_names),
        },
        dims={"gradient": ["temperature", "seed", "parameter"], "cost": ["temperature", "seed"]},
        attrs=attrs,
    )


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


def summary_table(
    idata, coords: dict[str, Any] | None = None, *, var_names: str | list[str] | None = None
):
    """ArviZ's summary of posterior variables: mean, sd, MCSE, bulk/tail ESS, R-hat.

    Args:
        idata: From :func:`series_inference_data` or :func:`to_inference_data`.
        coords: Optional selection, e.g. ``{"seed": [0]}``.
        var_names: The posterior variable(s) to summarise (default all).

    Returns:
        ``xarray.Dataset`` with one variable per posterior variable, each with a ``metric``
        dim (``mean``, ``sd``, ``mcse_mean``, ``mcse_sd``, ``ess_bulk``, ``ess_tail``,
        ``r_hat``…) beside the variable's event dims.
    """
    if isinstance(var_names, str):
        var_names = [var_names]
    # Components that never change give NaN diagnostics: the honest answer; NumPy's warnings
    # for them carry nothing more.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _az().summary(
            idata,
            var_names=var_names,
            coords=coords,
            kind="all",
            fmt="xarray",
            hdi_prob=0.9,
        )

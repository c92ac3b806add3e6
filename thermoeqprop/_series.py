"""Per-draw gradient series as ArviZ InferenceData: what ``series/*.nc`` files hold.

A sampled gradient is the mean over draws of a per-draw series (chain, draw, P)
(:class:`~thermoeqprop.estimators.GradientSeries`). Training runs and sweeps save a selection
of its components (:func:`series_indices`) through :meth:`thermoeqprop.results.RunFolder.
write_series`, as ``posterior["gradient"]`` with dims ``(chain, draw, temperature, seed,
parameter)`` and ``posterior["cost"]`` ``(chain, draw, temperature, seed)``
(:func:`gradient_series_data`); ``thermoeqprop diagnose`` reads them back. The generic
ArviZ call is :func:`samplers.series_inference_data`: ``samplers`` knows nothing of gradients.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import samplers

__all__ = [
    "DEFAULT_SERIES_PARAMETERS",
    "gradient_inference_data",
    "gradient_series_data",
    "series_indices",
]

DEFAULT_SERIES_PARAMETERS = 64


def series_indices(names: list[str], selection) -> np.ndarray:
    """Indices of the gradient components to save: a count (evenly spaced over ``names``;
    None: :data:`DEFAULT_SERIES_PARAMETERS`, all when fewer) or names and indices."""
    num = len(names)
    if selection is None:
        selection = DEFAULT_SERIES_PARAMETERS
    if isinstance(selection, int | np.integer) and not isinstance(selection, bool):
        if selection < 1:
            raise ValueError(f"series_parameters must be ≥ 1, got {selection}")
        if selection >= num:
            return np.arange(num)
        return np.unique(np.linspace(0, num - 1, int(selection)).round().astype(int))
    lookup = {name: i for i, name in enumerate(names)}
    indices = []
    for item in selection:
        if isinstance(item, str):
            if item not in lookup:
                raise ValueError(
                    f"series parameter {item!r} is not a parameter name; names look like "
                    f"{names[:3]}"
                )
            indices.append(lookup[item])
        elif isinstance(item, int | np.integer) and 0 <= item < num:
            indices.append(int(item))
        else:
            raise ValueError(f"series parameter {item!r} must be a name or an index < {num}")
    return np.asarray(sorted(set(indices)), dtype=int)


def gradient_series_data(
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
    return samplers.series_inference_data(
        {"gradient": gradient, "cost": cost},
        coords={
            "temperature": np.asarray(temperatures, dtype=float),
            "seed": np.asarray(seeds),
            "parameter": list(parameter_names),
        },
        dims={"gradient": ["temperature", "seed", "parameter"], "cost": ["temperature", "seed"]},
        attrs=attrs,
    )


def gradient_inference_data(
    series,
    *,
    parameters: int | list[str] | None = None,
    temperature: float = math.nan,
    seed: int = 0,
    estimator: str = "",
):
    """InferenceData of one estimate's per-draw gradient series.

    Args:
        series: The :class:`~thermoeqprop.estimators.GradientSeries` returned by
            ``estimate_with_series``.
        parameters: Which components: names, or a count of evenly spaced ones (default all).
        temperature: Coordinate value of the ``temperature`` dim.
        seed: Coordinate value of the ``seed`` dim.
        estimator: Recorded as an attribute.

    Returns:
        ``arviz.InferenceData``; ``posterior["gradient"]`` has dims
        ``(chain, draw, temperature, seed, parameter)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.estimators import Sampling, ThermalCovariance
        >>> from thermoeqprop.models import SpinNetwork
        >>> net = SpinNetwork.layered((2, 2, 1))
        >>> est = ThermalCovariance(net, 1.0, Sampling(num_chains=2, num_samples=50))
        >>> _, series = est.estimate_with_series(net.init_params(jax.random.key(0)),
        ...     jnp.ones((2, 2)), jnp.ones((2, 1)), jax.random.key(1))
        >>> gradient_inference_data(series).posterior["gradient"].shape
        (2, 50, 1, 1, 9)
    """
    names = list(series.parameter_names)
    if parameters is None:
        parameters = len(names)
    indices = series_indices(names, parameters)
    gradient = np.asarray(series.gradient)[:, :, None, None, indices]
    cost = np.asarray(series.cost)[:, :, None, None]
    return gradient_series_data(
        gradient,
        cost,
        [names[i] for i in indices],
        temperatures=[temperature],
        seeds=[seed],
        attrs={"estimator": estimator},
    )

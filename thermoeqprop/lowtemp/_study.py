r"""The T → 0 study: sampled thermal gradients against the Laplace prediction
(docs/mathematics.md#temperature-slope-of-the-gradient).

For a model, parameters and a batch, :func:`low_temperature_study` runs the thermal
covariance and nudged estimators over a grid of low temperatures, each with its Monte Carlo
standard error, next to the expansion :math:`dL_T/dθ = g_0 + T g_1 + O(T^2)`, and fits the
slope in T by weighted least squares. The scalar summary is the projection on
:math:`\hat g_1 = g_1/\lVert g_1\rVert`:

.. math::
    p(T) = \hat g_1 \cdot (G_T - g_0) = \lVert g_1\rVert\, T + O(T^2),

whose standard error is the MCSE of the projected per-draw series (so correlations between
gradient components are accounted for). For the nudged estimator that series is the
draw-by-draw difference of two independent phases; its autocovariances are the sums of the
phases', so its MCSE is the root-sum-square of theirs, as the estimator's ``stderr`` is.

A fit :math:`p = a + bT` should give :math:`b = \lVert g_1 \rVert` and :math:`a = 0` (the
thermal gradient tends to the T = 0 EP gradient) within their standard errors, provided the
fitted grid stays where the O(T²) term is small against the noise (check the χ² of the
prediction, or fit with ``fit_degree=2``, whose T² term absorbs the curvature). How far the
linear regime reaches depends on the network: T ≲ 0.003 for a (4, 8, 3) sigmoid network at its
initial parameters (``benchmarks/results/lowtemp.md``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

import samplers
from thermoeqprop import registry
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.thermal import Sampling, parameter_names
from thermoeqprop.estimators.zero_temperature import Relaxation
from thermoeqprop.lowtemp._expansion import (
    DEFAULT_RELAXATION,
    check_smooth_model,
    low_temperature_gradient,
)
from thermoeqprop.lowtemp._fit import weighted_line_fit
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.results import RunFolder, describe, fingerprint

__all__ = ["DEFAULT_TEMPERATURES", "ESTIMATORS", "low_temperature_study"]

DEFAULT_TEMPERATURES = (0.005, 0.01, 0.02, 0.04, 0.07, 0.1)
ESTIMATORS = ("covariance", "nudged")
STUDY_SAMPLING = Sampling(num_chains=4, num_samples=1000, num_warmup=500)
STUDY_FILE = "study.nc"
#: Variables named as the temperature sweep names them, and their names before (deprecated
#: aliases in the Dataset for one release).
RENAMED = {"gradient": "grad", "predicted_gradient": "predicted_grad", "wall_time": "seconds"}


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def _basin_distance(trace, state, inverse_hessian, temperature) -> float:
    """Largest over examples and chains of ``sqrt((m − s*)ᵀ H (m − s*) / T)``, m a chain mean.

    In the basin of s* it is small (O(√(n/ESS)) plus the O(√T) mean shift, plus the nudge's
    displacement for the nudged phases); a chain sitting in another basin gives a distance of
    order (basin separation)/√T, much larger than 1.
    """
    means = np.asarray(jnp.mean(trace.samples, axis=2))  # (batch, chain, n)
    diff = means - np.asarray(state)[:, None, :]
    hessian = np.linalg.inv(np.asarray(inverse_hessian))
    quad = np.einsum("bci,bij,bcj->bc", diff, hessian, diff)
    return float(np.sqrt(np.max(quad) / temperature))


def low_temperature_study(
    model: EnergyModel,
    params,
    x,
    targets,
    rng_key,
    temperatures=DEFAULT_TEMPERATURES,
    estimators=ESTIMATORS,
    sampling: Sampling = STUDY_SAMPLING,
    beta: float = 0.02,
    relaxation: Relaxation = DEFAULT_RELAXATION,
    fit_max_temperature: float | None = None,
    fit_degree: int = 1,
    progress: bool = False,
    results_dir: str | os.PathLike | None = None,
) -> xr.Dataset:
    r"""Thermal gradients over a grid of low temperatures against :math:`g_0 + T g_1`.

    Every sampled estimator reuses one compiled kernel across temperatures (the temperature is
    a traced argument of the sampler), so the grid costs one compilation per estimator.

    Args:
        model: A smooth continuous energy model (states in R^n).
        params: Parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        rng_key: PRNG key; estimator e at temperature i uses ``fold_in(fold_in(key, e), i)``.
        temperatures: Increasing grid of T > 0, at least two.
        estimators: Any of ``"covariance"`` (:class:`ThermalCovariance`) and ``"nudged"``
            (:class:`ThermalNudged`, symmetric at ±β), built by :mod:`thermoeqprop.registry`.
        sampling: Sampler settings (NUTS by default).
        beta: Nudging strength of the nudged estimator. Its O(β²) bias is recorded as
            ``nudge_bias`` (the T = 0 EP estimate at this β minus g_0; NaN when the nudged
            estimator is not run): keep it well under the standard errors.
        relaxation: Settings of the free relaxation for the expansion.
        fit_max_temperature: Fit the slopes over temperatures ≤ this only (at least two);
            default: all. Points above it show where the O(T²) term takes over.
        fit_degree: 1 fits ``a + bT``; 2 fits ``a + bT + cT²`` (then ``projected_curvature``
            estimates the O(T²) coefficient, and the slope stays unbiased over a wider grid).
        progress: Print one line per sampled estimate.
        results_dir: A folder to keep the study in (``config.json`` and ``study.nc``,
            through :class:`thermoeqprop.results.RunFolder`): a finished study of the same
            configuration there is read back instead of recomputed, another is refused.

    Returns:
        An ``xarray.Dataset`` with coordinates ``temperature``, ``estimator`` and
            ``parameter`` (names from :func:`~thermoeqprop.estimators.parameter_names`) and

            - ``gradient``, ``stderr``, ``z_score`` ((gradient − prediction)/stderr):
              (estimator, temperature, parameter);
            - ``g0``, ``g1``, ``nudge_bias``: (parameter); ``predicted_gradient`` = g0 + T g1:
              (temperature, parameter);
            - ``loss``, ``loss_stderr``, ``projection`` (:math:`\hat g_1 \cdot (G − g_0)`),
              ``projection_stderr``, ``cosine_with_g0``, ``relative_error_to_prediction``,
              ``relative_error_to_g0``, ``mean_squared_z``, ``ess_min``, ``rhat_max``,
              ``acceptance_rate``, ``divergences``, ``basin_distance``, ``wall_time``:
              (estimator, temperature); ``predicted_loss`` = L0 + T c1: (temperature);
            - fits by :func:`weighted_line_fit`: ``slope``, ``slope_stderr``, ``intercept``,
              ``intercept_stderr`` per (estimator, parameter); ``projected_slope``,
              ``projected_slope_stderr``, ``projected_intercept``, ``projected_intercept_stderr``,
              ``projected_chi2``, ``slope_z`` ((projected_slope − ‖g1‖)/stderr) and
              ``intercept_z`` (projected_intercept/stderr) per estimator; the χ² of the prediction
              ``T‖g1‖`` against the projections, ``prediction_chi2``, per estimator (all over the
              fitted temperatures, marked by ``in_fit``);
            - attributes: ``g1_norm``, ``g0_norm``, ``loss_zero_temperature``,
              ``loss_first_order``, ``min_hessian_eigenvalue``, ``free_residual``, ``beta``,
              the sampling settings, ``num_examples``.

            ``grad``, ``predicted_grad`` and ``seconds``, the names before the temperature
            sweep's were adopted, remain one release as deprecated aliases.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import LayeredNetwork
        >>> net = LayeredNetwork((2, 1, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> ds = low_temperature_study(net, params, jnp.ones((2, 2)), jnp.ones((2, 1)),
        ...     jax.random.key(1), temperatures=(0.01, 0.02), estimators=("covariance",),
        ...     sampling=Sampling(num_chains=2, num_samples=50, num_warmup=50))
        >>> ds["gradient"].dims
        ('estimator', 'temperature', 'parameter')
    """
    check_smooth_model(model)
    x, targets = model.validate_inputs(x, targets)
    temperatures = np.asarray([check_positive("temperature", t) for t in temperatures])
    if temperatures.size < 2 or np.any(np.diff(temperatures) <= 0):
        raise ValueError(
            f"temperatures must be an increasing grid of at least two values, got {temperatures}"
        )
    estimators = tuple(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if not estimators or unknown:
        raise ValueError(f"estimators must be a non-empty subset of {ESTIMATORS}, got {estimators}")
    check_positive("beta", beta)
    if fit_degree not in (1, 2):
        raise ValueError(f"fit_degree must be 1 or 2, got {fit_degree!r}")
    in_fit = np.ones(temperatures.size, dtype=bool)
    if fit_max_temperature is not None:
        in_fit = temperatures <= check_positive("fit_max_temperature", fit_max_temperature)
    if in_fit.sum() < fit_degree + 1:
        raise ValueError(
            f"fit_max_temperature={fit_max_temperature} leaves {in_fit.sum()} temperature(s) of "
            f"{temperatures}; a degree-{fit_degree} fit needs at least {fit_degree + 1}"
        )

    if sampling.collapse:  # the basin check reads every unit of the drawn states
        raise ValueError(
            "the low-temperature study samples every unit: pass Sampling(collapse=None or False)"
        )
    sampling = dataclasses.replace(sampling, collapse=False)
    if results_dir is not None:
        record = {
            "model": describe(model),
            "data_sha256": fingerprint(_flat(params), x, targets),
            "rng_key": np.asarray(jax.random.key_data(rng_key)).tolist(),
            "temperatures": temperatures.tolist(),
            "estimators": list(estimators),
            "sampling": describe(sampling),
            "beta": float(beta),
            "relaxation": describe(relaxation),
            "fit_max_temperature": fit_max_temperature,
            "fit_degree": fit_degree,
        }
        arguments = (model, params, x, targets, rng_key, temperatures, estimators, sampling,
                     beta, relaxation, fit_max_temperature, fit_degree, progress)  # fmt: skip
        return _kept_study(results_dir, record, lambda: low_temperature_study(*arguments))

    expansion = low_temperature_gradient(model, params, x, targets, relaxation)
    laplace = expansion.expansion
    g0, g1 = _flat(expansion.grad), _flat(expansion.grad_first_order)
    g1_norm = float(np.linalg.norm(g1))
    if not g1_norm > 0:
        raise ValueError("g1 = 0 (for example a network with no nonlinearity in the cost's path)")
    direction = g1 / g1_norm
    names = parameter_names(params)
    predicted = g0[None, :] + temperatures[:, None] * g1[None, :]
    nudge_bias = np.full_like(g0, np.nan)
    if "nudged" in estimators:
        ep = registry.build(
            "ep", model, registry.EstimatorOptions(beta=beta, relaxation=relaxation)
        )
        nudge_bias = _flat(ep(params, x, targets).grad) - g0

    shape = (len(estimators), temperatures.size)
    grads = np.zeros(shape + (g0.size,))
    stderrs = np.zeros_like(grads)
    per_run: dict[str, np.ndarray] = {
        key: np.full(shape, np.nan)
        for key in (
            "loss",
            "loss_stderr",
            "projection",
            "projection_stderr",
            "ess_min",
            "rhat_max",
            "acceptance_rate",
            "divergences",
            "basin_distance",
            "wall_time",
        )
    }
    for e, name in enumerate(estimators):
        for i, temperature in enumerate(temperatures):
            key = jax.random.fold_in(jax.random.fold_in(rng_key, e), i)
            start = time.perf_counter()
            options = registry.EstimatorOptions(
                temperature=float(temperature), beta=beta, sampling=sampling
            )
            estimate, series = registry.build(name, model, options).estimate_with_series(
                params, x, targets, key
            )
            grads[e, i], stderrs[e, i] = _flat(estimate.grad), _flat(estimate.stderr)
            projected = np.asarray(series.gradient) @ direction  # (chain, draw)
            values = {
                "loss": estimate.loss,
                "loss_stderr": estimate.loss_stderr,
                "projection": direction @ (grads[e, i] - g0),
                "projection_stderr": samplers.mcse_mean_many(projected[..., None])[0],
                "basin_distance": max(
                    _basin_distance(
                        trace, laplace.state, laplace.inverse_hessian, float(temperature)
                    )
                    for trace in series.sampler_traces
                ),
            }
            for diag in ("ess_min", "rhat_max", "acceptance_rate", "divergences"):
                if diag in estimate.diagnostics:
                    values[diag] = estimate.diagnostics[diag]
            for k, v in values.items():
                per_run[k][e, i] = float(v)
            per_run["wall_time"][e, i] = time.perf_counter() - start
            if progress:
                print(
                    f"{name:10s} T={temperature:<8.4g} projection "
                    f"{per_run['projection'][e, i]:+.4g} ± {per_run['projection_stderr'][e, i]:.2g}"
                    f" (predicted {temperature * g1_norm:+.4g}), "
                    f"{per_run['wall_time'][e, i]:.1f} s",
                    flush=True,
                )

    fit = weighted_line_fit(
        temperatures[in_fit],
        np.moveaxis(grads[:, in_fit], 1, 0),
        np.moveaxis(stderrs[:, in_fit], 1, 0),
        fit_degree,
    )
    projected_fit = weighted_line_fit(
        temperatures[in_fit],
        per_run["projection"][:, in_fit].T,
        per_run["projection_stderr"][:, in_fit].T,
        fit_degree,
    )
    residual = per_run["projection"] - temperatures[None, :] * g1_norm
    prediction_chi2 = np.sum((residual / per_run["projection_stderr"])[:, in_fit] ** 2, axis=1)
    z = (grads - predicted[None]) / np.where(stderrs > 0, stderrs, np.nan)
    norm = np.linalg.norm
    dims3 = ("estimator", "temperature", "parameter")
    dims2 = ("estimator", "temperature")
    dims_fit = ("estimator", "parameter")
    data = {
        "gradient": (dims3, grads),
        "stderr": (dims3, stderrs),
        "z_score": (dims3, z),
        "g0": (("parameter",), g0),
        "g1": (("parameter",), g1),
        "nudge_bias": (("parameter",), nudge_bias),
        "predicted_gradient": (("temperature", "parameter"), predicted),
        "predicted_loss": (
            ("temperature",),
            float(expansion.loss) + temperatures * float(expansion.loss_first_order),
        ),
        "cosine_with_g0": (dims2, grads @ g0 / (norm(grads, axis=-1) * norm(g0))),
        "relative_error_to_prediction": (
            dims2,
            norm(grads - predicted[None], axis=-1) / norm(predicted, axis=-1)[None],
        ),
        "relative_error_to_g0": (dims2, norm(grads - g0, axis=-1) / norm(g0)),
        "mean_squared_z": (dims2, np.nanmean(z**2, axis=-1)),
        **{k: (dims2, v) for k, v in per_run.items()},
        "slope": (dims_fit, fit["slope"]),
        "slope_stderr": (dims_fit, fit["slope_stderr"]),
        "intercept": (dims_fit, fit["intercept"]),
        "intercept_stderr": (dims_fit, fit["intercept_stderr"]),
        "projected_slope": (("estimator",), projected_fit["slope"]),
        "projected_slope_stderr": (("estimator",), projected_fit["slope_stderr"]),
        "projected_intercept": (("estimator",), projected_fit["intercept"]),
        "projected_intercept_stderr": (("estimator",), projected_fit["intercept_stderr"]),
        "projected_chi2": (("estimator",), projected_fit["chi2"]),
        "slope_z": (
            ("estimator",),
            (projected_fit["slope"] - g1_norm) / projected_fit["slope_stderr"],
        ),
        "intercept_z": (
            ("estimator",),
            projected_fit["intercept"] / projected_fit["intercept_stderr"],
        ),
        "prediction_chi2": (("estimator",), prediction_chi2),
        "in_fit": (("temperature",), in_fit),
    }
    if fit_degree == 2:
        data["projected_curvature"] = (("estimator",), projected_fit["curvature"])
        data["projected_curvature_stderr"] = (("estimator",), projected_fit["curvature_stderr"])
    attrs: dict[str, Any] = {
        "g0_norm": float(norm(g0)),
        "g1_norm": g1_norm,
        "loss_zero_temperature": float(expansion.loss),
        "loss_first_order": float(expansion.loss_first_order),
        "min_hessian_eigenvalue": float(expansion.diagnostics["min_hessian_eigenvalue"]),
        "free_residual": float(expansion.diagnostics["free_residual"]),
        "beta": float(beta),
        "fit_degree": int(fit_degree),
        "num_examples": int(x.shape[0]),
        "sampling_method": sampling.resolve_method(model),
        "num_chains": sampling.num_chains,
        "num_samples": sampling.num_samples,
        "num_warmup": sampling.num_warmup,
        "model": repr(model),
    }
    dataset = xr.Dataset(
        data,
        coords={
            "estimator": list(estimators),
            "temperature": temperatures,
            "parameter": names,
        },
        attrs=attrs,
    )
    for name, old in RENAMED.items():
        dataset[old] = dataset[name]
        dataset[old].attrs["description"] = f"deprecated alias of {name} (one release)"
    return dataset


def _with_current_names(dataset: xr.Dataset) -> xr.Dataset:
    """A kept study as this version writes it: a ``study.nc`` saved before the names of
    :data:`RENAMED` were adopted holds only the former names (``grad``, ``seconds``, …)."""
    for name, old in RENAMED.items():
        if name not in dataset and old in dataset:
            dataset[name] = dataset[old].copy()
            dataset[name].attrs.pop("description", None)
            dataset[old].attrs["description"] = f"deprecated alias of {name} (one release)"
    return dataset


def _kept_study(results_dir, record: dict[str, Any], compute) -> xr.Dataset:
    """The study kept in ``results_dir``, or ``compute()`` saved there."""
    with RunFolder(results_dir).create("low_temperature_study", record) as folder:
        if (folder / STUDY_FILE).exists():
            return _with_current_names(folder.read_dataset(STUDY_FILE))
        dataset = compute()
        folder.write_dataset(STUDY_FILE, dataset)
        return dataset

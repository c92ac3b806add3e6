r"""The T → 0 study: sampled thermal gradients against the Laplace prediction (MATH.md §3).

For a model, parameters and a batch, :func:`low_temperature_study` runs the thermal
covariance and nudged estimators over a grid of low temperatures, each with its Monte Carlo
standard error, next to the expansion :math:`dL_T/dθ = g_0 + T g_1 + O(T^2)`, and fits the
slope in T by weighted least squares. The scalar summary is the projection on
:math:`\hat g_1 = g_1/\lVert g_1\rVert`:

.. math::
    p(T) = \hat g_1 \cdot (G_T - g_0) = \lVert g_1\rVert\, T + O(T^2),

whose standard error is the MCSE of the projected per-draw series (so correlations between
gradient components are accounted for). A fit :math:`p = a + bT` should give
:math:`b = \lVert g_1 \rVert` and :math:`a = 0` (the thermal gradient tends to the T = 0 EP
gradient) within their standard errors, provided the grid stays where the O(T²) term is
small against the noise: check the reduced χ² of the prediction, or run a grid of smaller T.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

import samplers
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.thermal import (
    Sampling,
    ThermalCovariance,
    ThermalNudged,
    parameter_names,
)
from thermoeqprop.estimators.zero_temperature import Relaxation, ZeroTemperatureEP
from thermoeqprop.lowtemp._expansion import (
    DEFAULT_RELAXATION,
    check_smooth_model,
    low_temperature_gradient,
)
from thermoeqprop.models._base import EnergyModel

__all__ = [
    "DEFAULT_TEMPERATURES",
    "ESTIMATORS",
    "low_temperature_study",
    "plot_low_temperature_study",
    "weighted_line_fit",
]

DEFAULT_TEMPERATURES = (0.005, 0.01, 0.02, 0.04, 0.07, 0.1)
ESTIMATORS = ("covariance", "nudged")
STUDY_SAMPLING = Sampling(num_chains=4, num_samples=1000, num_warmup=500)


def weighted_line_fit(t, y, stderr, degree: int = 1) -> dict[str, np.ndarray]:
    r"""Weighted least squares ``y ≈ a + b t (+ c t²)`` with weights ``1/stderr²``, vectorised.

    Args:
        t: (K,) abscissae.
        y: (K, ...) values, fitted independently along the trailing axes.
        stderr: Standard errors, shaped like ``y``; a column with an entry ≤ 0 gives NaN.
        degree: 1 (a line) or 2 (a line plus a ``c t²`` term that absorbs curvature, so that
            the slope ``b`` at t = 0 is unbiased to O(t²) instead of O(t)).

    Returns:
        ``intercept``, ``slope`` (and ``curvature`` for degree 2), their standard errors
        ``intercept_stderr``, ``slope_stderr`` (``curvature_stderr``) from the stated errors,
        not rescaled by the residuals, and ``chi2`` of the fit (K − degree − 1 degrees of
        freedom), each shaped like ``y[0]``.

    Example:
        >>> fit = weighted_line_fit(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]),
        ...                         np.ones(3))
        >>> float(fit["slope"]), float(fit["intercept"]), float(fit["slope_stderr"]) ** 2
        (2.0, 1.0, 0.5)
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    stderr = np.asarray(stderr, dtype=float)
    if degree not in (1, 2):
        raise ValueError(f"degree must be 1 or 2, got {degree!r}")
    if t.ndim != 1 or y.shape[0] != t.shape[0] or y.shape != stderr.shape:
        raise ValueError(
            f"need t (K,), y and stderr (K, ...) of one shape; got {t.shape}, {y.shape}, "
            f"{stderr.shape}"
        )
    if np.unique(t).size < degree + 1:
        raise ValueError(
            f"a degree-{degree} fit needs at least {degree + 1} distinct abscissae, got t={t}"
        )
    columns = y.reshape(t.size, -1)
    errors = stderr.reshape(t.size, -1)
    valid = np.all(errors > 0, axis=0)
    w = 1.0 / np.where(errors > 0, errors, 1.0) ** 2  # (K, M)
    design = np.vander(t, degree + 1, increasing=True)  # (K, D)
    normal = np.einsum("km,kd,ke->mde", w, design, design)  # (M, D, D)
    covariance = np.linalg.inv(normal)
    coefficients = np.einsum("mde,km,ke,km->md", covariance, w, design, columns)
    chi2 = np.sum(w * (columns - design @ coefficients.T) ** 2, axis=0)
    names = ("intercept", "slope", "curvature")[: degree + 1]
    out = {}
    for i, name in enumerate(names):
        out[name] = np.where(valid, coefficients[:, i], np.nan).reshape(y.shape[1:])
        stderr_i = np.sqrt(covariance[:, i, i])
        out[f"{name}_stderr"] = np.where(valid, stderr_i, np.nan).reshape(y.shape[1:])
    out["chi2"] = np.where(valid, chi2, np.nan).reshape(y.shape[1:])
    return out


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def _estimator(name, model, temperature, beta, sampling):
    if name == "covariance":
        return ThermalCovariance(model, temperature, sampling)
    return ThermalNudged(model, temperature, beta=beta, symmetric=True, sampling=sampling)


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
            (:class:`ThermalNudged`, symmetric at ±β).
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

    Returns:
        An ``xarray.Dataset`` with coordinates ``temperature``, ``estimator`` and
        ``parameter`` (names from :func:`~thermoeqprop.estimators.parameter_names`) and

        - ``grad``, ``stderr``, ``z_score`` ((grad − prediction)/stderr): (estimator,
          temperature, parameter);
        - ``g0``, ``g1``, ``nudge_bias``: (parameter); ``predicted_grad`` = g0 + T g1:
          (temperature, parameter);
        - ``loss``, ``loss_stderr``, ``projection`` (:math:`\hat g_1 \cdot (G − g_0)`),
          ``projection_stderr``, ``cosine_with_g0``, ``relative_error_to_prediction``,
          ``relative_error_to_g0``, ``mean_squared_z``, ``ess_min``, ``rhat_max``,
          ``acceptance_rate``, ``divergences``, ``basin_distance``, ``seconds``:
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

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import LayeredNetwork
        >>> net = LayeredNetwork((2, 1, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> ds = low_temperature_study(net, params, jnp.ones((2, 2)), jnp.ones((2, 1)),
        ...     jax.random.key(1), temperatures=(0.01, 0.02), estimators=("covariance",),
        ...     sampling=Sampling(num_chains=2, num_samples=50, num_warmup=50))
        >>> ds["grad"].dims
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
        ep = ZeroTemperatureEP(model, beta=beta, symmetric=True, relaxation=relaxation)
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
            "seconds",
        )
    }
    for e, name in enumerate(estimators):
        for i, temperature in enumerate(temperatures):
            key = jax.random.fold_in(jax.random.fold_in(rng_key, e), i)
            start = time.perf_counter()
            estimate, series = _estimator(
                name, model, float(temperature), beta, sampling
            ).estimate_with_series(params, x, targets, key)
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
            per_run["seconds"][e, i] = time.perf_counter() - start
            if progress:
                print(
                    f"{name:10s} T={temperature:<8.4g} projection "
                    f"{per_run['projection'][e, i]:+.4g} ± {per_run['projection_stderr'][e, i]:.2g}"
                    f" (predicted {temperature * g1_norm:+.4g}), "
                    f"{per_run['seconds'][e, i]:.1f} s",
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
        "grad": (dims3, grads),
        "stderr": (dims3, stderrs),
        "z_score": (dims3, z),
        "g0": (("parameter",), g0),
        "g1": (("parameter",), g1),
        "nudge_bias": (("parameter",), nudge_bias),
        "predicted_grad": (("temperature", "parameter"), predicted),
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
    return xr.Dataset(
        data,
        coords={
            "estimator": list(estimators),
            "temperature": temperatures,
            "parameter": names,
        },
        attrs=attrs,
    )


def plot_low_temperature_study(
    dataset: xr.Dataset, path: str | Path, num_components: int = 3, title: str = ""
) -> Path:
    r"""Plot a :func:`low_temperature_study` dataset and save it as PNG.

    Three panels against T, error bars one standard error: (left) the projection
    :math:`\hat g_1 \cdot G_T` of each estimator with the prediction
    :math:`\hat g_1 \cdot g_0 + T \lVert g_1 \rVert`, the weighted fit, and T = 0 EP at T = 0;
    points outside the fitted range are hollow;
    (middle) the ``num_components`` components with the largest predicted change
    :math:`|g_{1}| T_{max}` relative to their standard error, with their lines
    :math:`g_0 + T g_1`; (right) the sampled loss :math:`⟨C⟩_T` against
    :math:`L_0 + T c_1`.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = dataset["temperature"].values
    t_line = np.linspace(0.0, temps.max() * 1.05, 50)
    g0, g1 = dataset["g0"].values, dataset["g1"].values
    g1_norm = dataset.attrs["g1_norm"]
    direction = g1 / g1_norm
    base = float(direction @ g0)
    estimators = list(dataset["estimator"].values)
    offsets = (np.arange(len(estimators)) - (len(estimators) - 1) / 2) * 0.012 * temps.max()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)

    ax = axes[0]
    ax.plot(t_line, base + g1_norm * t_line, c="k", lw=1.2, label=r"Laplace $g_0 + T g_1$")
    ax.plot([0], [base], marker="*", ms=14, c="k", ls="none", label="T = 0 EP")
    in_fit = dataset["in_fit"].values if "in_fit" in dataset else np.ones(temps.size, bool)
    t_fit = t_line[t_line <= temps[in_fit].max() * 1.05]
    for e, name in enumerate(estimators):
        sel = dataset.sel(estimator=name)
        for mask, fill, label in ((in_fit, f"C{e}", f"{name} (sampled)"), (~in_fit, "none", None)):
            if mask.any():
                ax.errorbar(
                    temps[mask] + offsets[e],
                    base + sel["projection"].values[mask],
                    yerr=sel["projection_stderr"].values[mask],
                    fmt="o",
                    ms=4,
                    capsize=3,
                    c=f"C{e}",
                    mfc=fill,
                    label=label,
                )
        slope, icpt = float(sel["projected_slope"]), float(sel["projected_intercept"])
        curv = float(sel["projected_curvature"]) if "projected_curvature" in sel else 0.0
        ax.plot(
            t_fit,
            base + icpt + slope * t_fit + curv * t_fit**2,
            c=f"C{e}",
            ls="--",
            lw=1,
            label=f"fit: slope {slope:.3g} ± {float(sel['projected_slope_stderr']):.2g}",
        )
    ax.set(
        xlabel="temperature T",
        ylabel=r"$\hat g_1 \cdot dL_T/d\theta$",
        title=f"projection on $\\hat g_1$ (predicted slope {g1_norm:.3g})",
    )
    ax.legend(fontsize=7)

    ax = axes[1]
    reference = dataset.sel(estimator=estimators[0])
    signal = np.abs(g1) * temps.max() / np.maximum(reference["stderr"].values.mean(axis=0), 1e-300)
    picked = np.argsort(signal)[::-1][:num_components]
    for k, j in enumerate(picked):
        name = str(dataset["parameter"].values[j])
        ax.plot(t_line, g0[j] + g1[j] * t_line, c=f"C{k}", lw=1)
        ax.plot([0], [g0[j]], marker="*", ms=12, c=f"C{k}", ls="none")
        for e, est in enumerate(estimators):
            sel = dataset.sel(estimator=est)
            ax.errorbar(
                temps + offsets[e],
                sel["grad"].values[:, j],
                yerr=sel["stderr"].values[:, j],
                fmt="os"[e % 2],
                ms=3.5,
                capsize=2,
                c=f"C{k}",
                mfc="none" if e else f"C{k}",
                label=f"{name} ({est})",
            )
    ax.set(xlabel="temperature T", ylabel="gradient component", title="components")
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.plot(t_line, dataset.attrs["loss_zero_temperature"] + dataset.attrs["loss_first_order"]
            * t_line, c="k", lw=1.2, label=r"Laplace $L_0 + T c_1$")  # fmt: skip
    ax.plot([0], [dataset.attrs["loss_zero_temperature"]], marker="*", ms=14, c="k", ls="none")
    for e, name in enumerate(estimators):
        sel = dataset.sel(estimator=name)
        ax.errorbar(
            temps + offsets[e],
            sel["loss"].values,
            yerr=sel["loss_stderr"].values,
            fmt="o",
            ms=4,
            capsize=3,
            c=f"C{e}",
            label=name + (" (mean of ±β phases)" if name == "nudged" else ""),
        )
    ax.set(xlabel="temperature T", ylabel=r"loss $⟨C⟩_T$", title="loss")
    ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

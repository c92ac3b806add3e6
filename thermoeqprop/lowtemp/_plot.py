"""The figure of a T → 0 study (:func:`~thermoeqprop.lowtemp.low_temperature_study`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_low_temperature_study"]


def plot_low_temperature_study(
    dataset: xr.Dataset, path: str | Path, num_components: int = 3, title: str = ""
) -> Path:
    r"""Plot a :func:`low_temperature_study` dataset and save it as PNG.

    Four panels against T, error bars one standard error, T = 0 EP as a star at T = 0:
    (top) the projection :math:`\hat g_1 \cdot G_T` of each estimator with the prediction
    :math:`\hat g_1 \cdot g_0 + T \lVert g_1 \rVert` and the weighted fit, over the fitted
    range (left) and over the whole grid (right; points outside the fit are hollow);
    (bottom left) the ``num_components`` components with the largest predicted change
    :math:`|g_1| T` relative to their standard error over the fitted range, with their lines
    :math:`g_0 + T g_1`; (bottom right) the sampled loss :math:`⟨C⟩_T` against
    :math:`L_0 + T c_1`.

    Returns:
        The path written.
    """
    # The object-oriented API only: no pyplot, so the user's backend and figures stay as they were.
    from matplotlib.figure import Figure

    temps = dataset["temperature"].values
    in_fit = dataset["in_fit"].values if "in_fit" in dataset else np.ones(temps.size, bool)
    g0, g1 = dataset["g0"].values, dataset["g1"].values
    g1_norm = dataset.attrs["g1_norm"]
    base = float(g1 @ g0) / g1_norm
    estimators = list(dataset["estimator"].values)
    spread = np.arange(len(estimators)) - (len(estimators) - 1) / 2
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)

    def draw(ax, values, errors, t_max, fitted_curve=None, predicted=None, star=None, **style):
        """Points (filled inside the fit, hollow outside) up to t_max, with lines."""
        t_line = np.linspace(0.0, t_max * 1.05, 100)
        if predicted is not None:
            ax.plot(t_line, predicted(t_line), c=style.get("line_color", "k"), lw=1.2,
                    label=style.get("line_label"))  # fmt: skip
        if star is not None:
            ax.plot([0], [star], marker="*", ms=14, c=style.get("line_color", "k"), ls="none",
                    label=style.get("star_label"))  # fmt: skip
        for e, name in enumerate(estimators):
            color = style.get("color", f"C{e}")
            shown = temps <= t_max * 1.001
            offset = spread[e] * 0.01 * t_max
            for mask, fill, label in (
                (shown & in_fit, color, style.get("label", "{name}").format(name=name)),
                (shown & ~in_fit, "none", None),
            ):
                if mask.any():
                    ax.errorbar(temps[mask] + offset, values[e][mask], yerr=errors[e][mask],
                                fmt="os"[e % 2], ms=4, capsize=3, c=color, mfc=fill,
                                label=label)  # fmt: skip
            if fitted_curve is not None:
                t_fit = t_line[t_line <= temps[in_fit].max() * 1.02]
                slope, curve = fitted_curve(e, t_fit)
                ax.plot(t_fit, curve, c=color, ls="--", lw=1,
                        label=f"{name} fit: slope {slope}")  # fmt: skip

    projections = [base + dataset.sel(estimator=n)["projection"].values for n in estimators]
    projection_errors = [dataset.sel(estimator=n)["projection_stderr"].values for n in estimators]

    def fitted(e, t):
        sel = dataset.sel(estimator=estimators[e])
        curvature = float(sel["projected_curvature"]) if "projected_curvature" in sel else 0.0
        curve = base + float(sel["projected_intercept"]) + float(sel["projected_slope"]) * t
        slope = f"{float(sel['projected_slope']):.3g} ± {float(sel['projected_slope_stderr']):.2g}"
        return slope, curve + curvature * t**2

    fit_max = temps[in_fit].max()
    for ax, t_max in ((axes[0, 0], fit_max), (axes[0, 1], temps.max())):
        draw(ax, projections, projection_errors, t_max, fitted_curve=fitted,
             predicted=lambda t: base + g1_norm * t, star=base,
             line_label=r"Laplace $g_0 + T g_1$", star_label="T = 0 EP")  # fmt: skip
        ax.set(xlabel="temperature T", ylabel=r"$\hat g_1 \cdot dL_T/d\theta$")
    axes[0, 0].set_title(f"projection on $\\hat g_1$, fitted range (predicted slope {g1_norm:.3g})")
    axes[0, 1].set_title("projection on $\\hat g_1$, whole grid")

    ax = axes[1, 0]
    reference = dataset.sel(estimator=estimators[0])["stderr"].values[in_fit].mean(axis=0)
    picked = np.argsort(np.abs(g1) * fit_max / np.maximum(reference, 1e-300))[::-1]
    for k, j in enumerate(picked[:num_components]):
        name = str(dataset["parameter"].values[j])
        values = [dataset.sel(estimator=n)["gradient"].values[:, j] for n in estimators]
        errors = [dataset.sel(estimator=n)["stderr"].values[:, j] for n in estimators]
        draw(ax, values, errors, fit_max, predicted=lambda t, j=j: g0[j] + g1[j] * t,
             star=g0[j], color=f"C{k}", line_color=f"C{k}",
             label=name + " ({name})")  # fmt: skip
    ax.set(xlabel="temperature T", ylabel="gradient component", title="components")

    ax = axes[1, 1]
    losses = [dataset.sel(estimator=n)["loss"].values for n in estimators]
    loss_errors = [dataset.sel(estimator=n)["loss_stderr"].values for n in estimators]
    l0, c1 = dataset.attrs["loss_zero_temperature"], dataset.attrs["loss_first_order"]
    draw(ax, losses, loss_errors, temps.max(), predicted=lambda t: l0 + c1 * t, star=l0,
         line_label=r"Laplace $L_0 + T c_1$")  # fmt: skip
    ax.set(xlabel="temperature T", ylabel=r"loss $⟨C⟩_T$ (nudged: mean of ±β phases)",
           title="loss")  # fmt: skip
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path

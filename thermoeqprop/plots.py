"""Figures written into results folders, drawn with matplotlib's object-oriented API.

Every figure is a :class:`matplotlib.figure.Figure` made directly, never through pyplot, and
written with ``Figure.savefig``: this module neither selects nor switches matplotlib's backend
and leaves no pyplot figure open, so a notebook with ``%matplotlib inline`` keeps its backend,
and a machine without a display needs nothing (PNG files go through Agg whatever the backend).

Temperature axes are logarithmic. With fewer than two powers of ten in view, matplotlib would
label the minor ticks (``2×10⁻²``, ``3×10⁻²``, …), and on a narrow grid those labels overlap;
:func:`readable_log_axis` labels the grid temperatures instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

__all__ = ["plot_training"]

# Tick-label sizes in units of the font size (DejaVu Sans digits are 0.64 em wide), and the
# fraction of a panel's initial size left after constrained layout: enough to keep labels
# from colliding without measuring rendered text.
_CHARACTER_WIDTH = 0.64
_LINE_HEIGHT = 1.3
_LABEL_GAP = 0.6
_LAYOUT_SHRINK = 0.85


def _tick_label(value: float) -> str:
    return f"{value:g}"


def readable_log_axis(axis, preferred: Any = None) -> None:
    """Tick labels that cannot overlap on a log-scaled axis; call it once the data are drawn.

    With two or more powers of ten in view, the decade labels stay (``10⁻²``, ``10⁻¹``) and
    the minor ticks go unlabelled. With fewer, the labels go to the ``preferred`` values (a
    sweep's temperatures), else to 1, 2 and 5 times powers of ten, else to 1 to 9 times them,
    written plainly (``0.02``), keeping from the lowest value up only labels that do not
    collide with the one before.

    Args:
        axis: A matplotlib ``XAxis`` or ``YAxis`` on a log scale (``ax.xaxis``).
        preferred: Optional values to label first, e.g. the grid of temperatures.
    """
    axis.set_minor_formatter(NullFormatter())
    low, high = sorted(axis.get_view_interval())
    if not (low > 0 and math.isfinite(high) and high > low):
        return
    log_low, log_high = math.log10(low), math.log10(high)
    if math.floor(log_high) - math.ceil(log_low) >= 1:
        return
    vertical = axis.axis_name == "y"
    ax = axis.axes
    width, height = ax.get_position().size * ax.figure.get_size_inches()
    length = 72.0 * _LAYOUT_SHRINK * (height if vertical else width)  # points
    size = matplotlib.rcParams[f"{axis.axis_name}tick.labelsize"]
    font = FontProperties(size=size).get_size_in_points()

    def extent(value: float) -> float:
        text = _tick_label(value)
        return _LINE_HEIGHT * font if vertical else len(text) * _CHARACTER_WIDTH * font

    def thin(values) -> list[float]:
        kept: list[float] = []
        for value in sorted({float(v) for v in np.ravel(values) if low <= v <= high}):
            if kept:
                gap = math.log10(value / kept[-1]) / (log_high - log_low) * length
                if gap < (extent(kept[-1]) + extent(value)) / 2 + _LABEL_GAP * font:
                    continue
            kept.append(value)
        return kept

    decades = 10.0 ** np.arange(math.floor(log_low), math.ceil(log_high) + 1)
    candidates = [] if preferred is None else [np.asarray(preferred, dtype=float)]
    candidates += [np.outer(decades, subs) for subs in ((1, 2, 5), range(1, 10))]
    labelled: list[float] = []
    for values in candidates:
        kept = thin(values)
        if len(kept) > len(labelled):
            labelled = kept
        if len(labelled) >= 2:
            break
    if labelled:
        axis.set_major_locator(FixedLocator(labelled))
        axis.set_major_formatter(FuncFormatter(lambda value, _: _tick_label(value)))


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def training_figure(history: list[dict[str, Any]], title: str = "") -> Figure:
    """The figure of :func:`plot_training`, unsaved (it displays in a notebook)."""
    unit = "epoch" if all("epoch" in h for h in history) else "step"
    at = [h[unit] for h in history]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_right = fig.subplots(1, 2)
    ax_loss.plot(at, [h["train_loss"] for h in history], marker="o", ms=3)
    ax_loss.set(xlabel=unit, ylabel="training loss (mean cost)", yscale="log")
    if all("test_accuracy" in h for h in history):
        if all("train_accuracy" in h for h in history):
            ax_right.plot(at, [100 * h["train_accuracy"] for h in history], marker="s", ms=3,
                          c="C1", label="train")  # fmt: skip
        ax_right.plot(at, [100 * h["test_accuracy"] for h in history], marker="o", ms=3,
                      c="C2", label="test")  # fmt: skip
        ax_right.set(xlabel=unit, ylabel="accuracy (%)")
        ax_right.legend()
    elif all("test_loss" in h for h in history):  # train_steps with held_out, no labels
        ax_right.plot(at, [h["test_loss"] for h in history], marker="o", ms=3, c="C2")
        ax_right.set(xlabel=unit, ylabel="held-out loss (exact outputs)")
    ax_right.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_training(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss and accuracy against epoch, side by side, saved as PNG.

    The accuracy panel shows ``test_accuracy``, and ``train_accuracy`` where the records have
    it (``train(..., train_accuracy=True)``). Records of ``train_steps`` without epochs are
    drawn against the step, and without accuracies the second panel shows ``test_loss``."""
    return _save(training_figure(history, title), path, dpi=110)


def _sweep_lines(ax, dataset, name, *, style="-", marker="o", label_suffix="", scale=None):
    """One line per estimator: the mean over seeds of ``dataset[name]`` against T."""
    for k, estimator in enumerate(dataset.estimator.values):
        values = dataset[name].sel(estimator=estimator)
        if "seed" in values.dims:
            values = values.mean("seed")
        if scale is not None:
            values = values / scale
        ax.plot(
            dataset.temperature.values,
            values.values,
            style,
            marker=marker,
            ms=4,
            c=f"C{k}",
            label=f"{estimator}{label_suffix}",
        )


def _finish_sweep_axes(axes, dataset) -> None:
    """Readable log axes, grid and legend on every panel of a sweep figure."""
    for ax in axes:
        readable_log_axis(ax.xaxis, preferred=dataset.temperature.values)
        if ax.get_yscale() == "log":
            readable_log_axis(ax.yaxis)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)


def sweep_error_figure(dataset) -> Figure:
    """The figure of :func:`plot_sweep_error`, unsaved (it displays in a notebook)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_abs, ax_rel = fig.subplots(1, 2)
    exact = "exact_gradient" in dataset
    if exact:
        _sweep_lines(ax_abs, dataset, "error_norm", label_suffix=": ‖error‖")
        _sweep_lines(ax_rel, dataset, "relative_error", label_suffix=": ‖error‖/‖g‖")
    _sweep_lines(ax_abs, dataset, "stderr_norm", style="--", marker="x", label_suffix=": ‖MCSE‖")
    _sweep_lines(ax_rel, dataset, "relative_stderr", style="--", marker="x",
                 label_suffix=": ‖MCSE‖/‖g‖")  # fmt: skip
    if exact and "bias" in dataset:
        bias = (dataset.bias**2).sum("parameter") ** 0.5
        for k, estimator in enumerate(dataset.estimator.values):
            if float(bias.sel(estimator=estimator).max()) > 0:
                ax_abs.plot(dataset.temperature.values, bias.sel(estimator=estimator).values, ":",
                            c=f"C{k}", label=f"{estimator}: ‖exact bias‖")  # fmt: skip
    what = "against exact" if exact else "(no exact reference)"
    ax_abs.set(xscale="log", yscale="log", xlabel="temperature T", ylabel="norm over parameters",
               title=f"gradient error {what}")  # fmt: skip
    ax_rel.set(xscale="log", yscale="log", xlabel="temperature T", ylabel="relative to ‖g‖",
               title="relative error and MCSE")  # fmt: skip
    _finish_sweep_axes((ax_abs, ax_rel), dataset)
    return fig


def plot_sweep_error(dataset, path: str | Path) -> Path:
    """Gradient error against the exact answer and the Monte Carlo standard error against T
    (log-log, mean over seeds), absolute and relative to the exact gradient's norm.

    Without an exact reference only the standard errors are drawn."""
    return _save(sweep_error_figure(dataset), path, dpi=110)


def sweep_cosine_figure(dataset) -> Figure:
    """The figure of :func:`plot_sweep_cosine`, unsaved (it displays in a notebook)."""
    if "zero_temperature_gradient" not in dataset:
        raise ValueError("the sweep has no T = 0 EP gradient (spin networks have none)")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_cos, ax_dist = fig.subplots(1, 2)
    zero = dataset.zero_temperature_gradient
    zero_norm = float((zero**2).sum() ** 0.5)
    distance = ((dataset.gradient - zero) ** 2).sum("parameter") ** 0.5 / zero_norm
    for k, estimator in enumerate(dataset.estimator.values):
        cos = dataset.cosine_zero_temperature.sel(estimator=estimator)
        ax_cos.errorbar(dataset.temperature.values, cos.mean("seed").values,
                        yerr=cos.std("seed").values if cos.sizes["seed"] > 1 else None,
                        marker="o", ms=4, c=f"C{k}", label=estimator, capsize=2)  # fmt: skip
        ax_dist.plot(dataset.temperature.values,
                     distance.sel(estimator=estimator).mean("seed").values, "o-", ms=4,
                     c=f"C{k}", label=estimator)  # fmt: skip
    if "exact_gradient" in dataset:
        ax_cos.plot(dataset.temperature.values, dataset.exact_cosine_zero_temperature.values,
                    "k-", lw=1, label="exact")  # fmt: skip
        exact_distance = ((dataset.exact_gradient - zero) ** 2).sum("parameter") ** 0.5
        ax_dist.plot(dataset.temperature.values, exact_distance.values / zero_norm, "k-", lw=1,
                     label="exact")  # fmt: skip
    ax_cos.set(xscale="log", xlabel="temperature T", ylabel="cos(g_T, g_EP at T = 0)",
               title="alignment with T = 0 EP")  # fmt: skip
    ax_dist.set(xscale="log", yscale="log", xlabel="temperature T",
                ylabel="‖g_T − g_0‖ / ‖g_0‖", title="distance from the T = 0 gradient")  # fmt: skip
    _finish_sweep_axes((ax_cos, ax_dist), dataset)
    return fig


def plot_sweep_cosine(dataset, path: str | Path) -> Path:
    """Cosine between the thermal gradient and the T = 0 EP gradient against T, and the
    distance ``‖g_T − g_0‖/‖g_0‖`` (log-log), which the Laplace expansion predicts is O(T)."""
    return _save(sweep_cosine_figure(dataset), path, dpi=110)


def sweep_loss_figure(dataset) -> Figure:
    """The figure of :func:`plot_sweep_loss`, unsaved (it displays in a notebook)."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    temperatures = dataset.temperature.values
    for k, estimator in enumerate(dataset.estimator.values):
        loss = dataset.loss.sel(estimator=estimator)
        stderr = dataset.loss_stderr.sel(estimator=estimator)
        err = (stderr**2).mean("seed") ** 0.5 / loss.sizes["seed"] ** 0.5
        ax.errorbar(temperatures * (1 + 0.03 * k), loss.mean("seed").values, yerr=err.values,
                    marker="o", ms=4, ls="none", c=f"C{k}", capsize=2, label=estimator)  # fmt: skip
    if "exact_loss" in dataset:
        ax.plot(temperatures, dataset.exact_loss.values, "k-", lw=1, label="exact ⟨C⟩₀")
    if "zero_temperature_loss" in dataset:
        ax.axhline(float(dataset.zero_temperature_loss), c="gray", ls="--", lw=1,
                   label="T = 0: C(s*)")  # fmt: skip
    ax.set(xscale="log", xlabel="temperature T", ylabel="loss ⟨C⟩ (batch mean)",
           title="loss against temperature")  # fmt: skip
    _finish_sweep_axes((ax,), dataset)
    return fig


def plot_sweep_loss(dataset, path: str | Path) -> Path:
    """The sampled loss ⟨C⟩ against T with MCSE error bars, the exact ⟨C⟩_0 and the T = 0
    loss C(s*) where they exist."""
    return _save(sweep_loss_figure(dataset), path, dpi=110)


def sweep_barrier_figure(dataset) -> Figure:
    """The figure of :func:`plot_sweep_barrier`, unsaved (it displays in a notebook)."""
    if "local_barrier" not in dataset:
        raise ValueError(
            "the sweep has no communication barrier: it ran without tempering; run it with "
            "tempering=True (thermoeqprop sweep --tempering)"
        )
    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    low, high = dataset.pair_temperature_low.values, dataset.pair_temperature_high.values
    middle = dataset.pair_temperature.values
    for k, estimator in enumerate(dataset.estimator.values):
        local = dataset.local_barrier.sel(estimator=estimator)
        seeds = local.sizes["seed"]
        mean = local.mean("seed").values
        total = float(dataset.global_barrier.sel(estimator=estimator).mean("seed"))
        ax.hlines(mean, low, high, colors=f"C{k}", lw=1.5)  # λ is constant on each interval
        ax.errorbar(middle, mean, yerr=local.std("seed").values / seeds**0.5 if seeds > 1 else None,
                    marker="o", ms=4, ls="none", c=f"C{k}", capsize=2,
                    label=f"{estimator}: Λ = {total:.3g}")  # fmt: skip
        peak = int(np.argmax(mean))
        where = f"T = {low[peak]:.3g}–{high[peak]:.3g}"
        ax.plot(middle[peak], mean[peak], "*", ms=13, c=f"C{k}", mec="k", mew=0.6,
                label=f"peak λ = {mean[peak]:.3g} at {where}")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.set(xscale="log", xlabel="temperature T (k_B = 1)",
           ylabel="local barrier λ = dΛ/dβ (units of T)",
           title="communication barrier of the tempering ladder")  # fmt: skip
    _finish_sweep_axes((ax,), dataset)
    return fig


def plot_sweep_barrier(dataset, path: str | Path) -> Path:
    """The local communication barrier λ(T) of a tempered sweep's ladder (mean over seeds,
    constant on each pair's interval, error bars: standard error over seeds), its peak
    starred, and the global barrier Λ in the legend (:mod:`thermoeqprop._barrier`)."""
    return _save(sweep_barrier_figure(dataset), path, dpi=110)


def plot_sweep(dataset, folder: str | Path, prefix: str = "sweep_") -> list[Path]:
    """Every sweep figure that applies, as ``{prefix}error.png``, ``{prefix}cosine.png``
    (continuous models), ``{prefix}loss.png`` and ``{prefix}barrier.png`` (tempered sweeps)
    in ``folder``."""
    folder = Path(folder)
    paths = [plot_sweep_error(dataset, folder / f"{prefix}error.png")]
    if "zero_temperature_gradient" in dataset:
        paths.append(plot_sweep_cosine(dataset, folder / f"{prefix}cosine.png"))
    paths.append(plot_sweep_loss(dataset, folder / f"{prefix}loss.png"))
    if "local_barrier" in dataset:
        paths.append(plot_sweep_barrier(dataset, folder / f"{prefix}barrier.png"))
    return paths


__all__ += [
    "plot_sweep",
    "plot_sweep_barrier",
    "plot_sweep_cosine",
    "plot_sweep_error",
    "plot_sweep_loss",
    "readable_log_axis",
    "sweep_barrier_figure",
    "sweep_cosine_figure",
    "sweep_error_figure",
    "sweep_loss_figure",
    "training_figure",
]

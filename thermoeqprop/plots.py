"""Figures written into results folders (matplotlib, non-interactive backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_training"]


def plot_training(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss and accuracy against epoch, side by side, saved as PNG.

    The accuracy panel shows ``test_accuracy``, and ``train_accuracy`` where the records have
    it (``train(..., train_accuracy=True)``)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean cost)", yscale="log")
    if all("train_accuracy" in h for h in history):
        ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], marker="s", ms=3,
                    c="C1", label="train")  # fmt: skip
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", ms=3, c="C2",
                label="test")  # fmt: skip
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def plot_sweep_error(dataset, path: str | Path) -> Path:
    """Gradient error against the exact answer and the Monte Carlo standard error against T
    (log-log, mean over seeds), absolute and relative to the exact gradient's norm.

    Without an exact reference only the standard errors are drawn."""
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
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
    for ax in (ax_abs, ax_rel):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep_cosine(dataset, path: str | Path) -> Path:
    """Cosine between the thermal gradient and the T = 0 EP gradient against T, and the
    distance ``‖g_T − g_0‖/‖g_0‖`` (log-log), which the Laplace expansion predicts is O(T)."""
    if "zero_temperature_gradient" not in dataset:
        raise ValueError("the sweep has no T = 0 EP gradient (spin networks have none)")
    fig, (ax_cos, ax_dist) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
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
    for ax in (ax_cos, ax_dist):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep_loss(dataset, path: str | Path) -> Path:
    """The sampled loss ⟨C⟩ against T with MCSE error bars, the exact ⟨C⟩_0 and the T = 0
    loss C(s*) where they exist."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
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
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(dataset, folder: str | Path, prefix: str = "sweep_") -> list[Path]:
    """Every sweep figure that applies, as ``{prefix}error.png``, ``{prefix}cosine.png``
    (continuous models) and ``{prefix}loss.png`` in ``folder``."""
    folder = Path(folder)
    paths = [plot_sweep_error(dataset, folder / f"{prefix}error.png")]
    if "zero_temperature_gradient" in dataset:
        paths.append(plot_sweep_cosine(dataset, folder / f"{prefix}cosine.png"))
    paths.append(plot_sweep_loss(dataset, folder / f"{prefix}loss.png"))
    return paths


__all__ += ["plot_sweep", "plot_sweep_cosine", "plot_sweep_error", "plot_sweep_loss"]

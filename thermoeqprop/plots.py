"""Figures written into results folders (matplotlib, non-interactive backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_training"]


def plot_training(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss and test accuracy against epoch, side by side, saved as PNG."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean cost)", yscale="log")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", ms=3, c="C2")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

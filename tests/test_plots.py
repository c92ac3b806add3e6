"""Library figures and matplotlib's global state; readable log axes (deterministic, no sampling).

A notebook selects its own backend (``%matplotlib inline``); library code that switched it, or
left pyplot figures open, broke every later ``plt.show()`` there. These tests run the plotting
code under a backend that is not Agg and check it is still selected afterwards; the sweep,
low-temperature, diagnose and ArviZ plots get the same check in their own modules, on the data
those modules already compute. The tick-label tests draw figures and compare the labels' boxes.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation
from plot_testing import foreign_backend, overlapping_tick_labels, tick_labels

from thermoeqprop._cli_quantum import _plot_decision
from thermoeqprop.plots import plot_training, readable_log_axis, training_figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_plotting_modules_selects_no_backend():
    # A fresh interpreter: in this one the modules are long imported.
    code = (
        "import matplotlib\n"
        "import samplers, thermoeqprop.plots, thermoeqprop.lowtemp, thermoeqprop.diagnostics\n"
        "import thermoeqprop._cli_quantum\n"
        "samplers._arviz._az()\n"  # ArviZ itself is imported lazily
        "print(matplotlib.get_backend())\n"
    )
    env = dict(os.environ, MPLBACKEND="template", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "template"


HISTORY = [
    {"epoch": 1, "train_loss": 0.5, "test_accuracy": 0.7, "train_accuracy": 0.72},
    {"epoch": 2, "train_loss": 0.3, "test_accuracy": 0.8, "train_accuracy": 0.83},
]


def test_training_and_decision_plots_keep_the_backend(tmp_path):
    estimator = types.SimpleNamespace(predict=lambda params, x, rng_key: np.tanh(x[:, :1]))
    dataset = types.SimpleNamespace(
        x_test=np.array([[0.1, 0.2], [-0.5, 0.4]]), labels_test=np.array([1, 0])
    )
    with foreign_backend():
        path = plot_training(HISTORY, tmp_path / "training.png", title="two epochs")
        _plot_decision(tmp_path / "decision.png", estimator, None, dataset)
        assert isinstance(training_figure(HISTORY), Figure)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "decision.png").read_bytes()[:4] == b"\x89PNG"


def test_training_figure_of_a_stream_of_steps():
    """``train_steps`` on fresh examples: no epochs, no accuracy, a held-out loss."""
    steps = [{"step": 50, "train_loss": 0.34, "test_loss": 0.33},
             {"step": 100, "train_loss": 0.30, "test_loss": 0.29}]  # fmt: skip
    loss, right = training_figure(steps).axes
    assert loss.get_xlabel() == right.get_xlabel() == "step"
    assert right.get_ylabel() == "held-out loss (exact outputs)"
    np.testing.assert_array_equal(right.lines[0].get_xydata(), [[50, 0.33], [100, 0.29]])


def log_axis_figure(temperatures, values, width=5.0):
    fig = Figure(figsize=(width, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(temperatures, values, "o-")
    ax.set(xscale="log", yscale="log")
    readable_log_axis(ax.xaxis, preferred=temperatures)
    readable_log_axis(ax.yaxis)
    return fig, ax


def test_log_axis_under_two_decades_labels_the_grid():
    # Matplotlib alone labels 2×10⁻², 3×10⁻², … here, and the x labels overlap.
    fig, ax = log_axis_figure([0.02, 0.1, 0.5], [0.15, 0.4, 1.3])
    assert overlapping_tick_labels(fig) == []
    assert tick_labels(ax.xaxis) == ["0.02", "0.1", "0.5"]
    assert tick_labels(ax.xaxis, minor=True) == [] and tick_labels(ax.yaxis, minor=True) == []
    assert tick_labels(ax.yaxis) == ["0.2", "0.5", "1"]  # 1-2-5 values, written plainly


@pytest.mark.parametrize(
    "temperatures",
    [np.geomspace(0.01, 0.09, 25), [0.05, 0.055, 0.06], [0.0005, 0.001, 0.0015, 0.002, 0.003]],
)
def test_log_axis_thins_labels_that_would_collide(temperatures):
    fig, ax = log_axis_figure(temperatures, np.linspace(1.0, 2.0, len(temperatures)), width=4.0)
    assert overlapping_tick_labels(fig) == []
    assert len(tick_labels(ax.xaxis)) >= 2


def test_log_axis_over_two_decades_keeps_matplotlib_decades():
    fig, ax = log_axis_figure([0.001, 0.01, 0.1, 1.0], [1e-3, 1e-1, 1.0, 30.0])
    assert isinstance(ax.xaxis.get_major_formatter(), LogFormatterSciNotation)
    assert overlapping_tick_labels(fig) == []
    assert len(tick_labels(ax.xaxis)) == 4 and tick_labels(ax.xaxis, minor=True) == []

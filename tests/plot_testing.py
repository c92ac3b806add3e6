"""Checks on figures: library plotting leaves matplotlib's global state alone, and tick labels
do not overlap.

The suite runs with ``MPLBACKEND=Agg`` (conftest.py), the backend the old code forced, so a
library call that switched to Agg would go unnoticed there. :func:`foreign_backend` selects
matplotlib's do-nothing ``template`` backend instead, as a notebook selects its inline one, and
fails if the block leaves another backend selected or a pyplot figure open.
"""

from __future__ import annotations

import contextlib
import itertools

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg


@contextlib.contextmanager
def foreign_backend():
    """Run the block under the ``template`` backend; assert it switched nothing and left no
    pyplot figure open. The previous backend is restored afterwards."""
    previous = matplotlib.get_backend()
    plt.switch_backend("template")
    try:
        yield
        assert matplotlib.get_backend() == "template", (
            f"library code switched matplotlib's backend to {matplotlib.get_backend()!r}"
        )
        assert plt.get_fignums() == [], f"library code left pyplot figures {plt.get_fignums()}"
    finally:
        plt.close("all")
        plt.switch_backend(previous)


def tick_labels(axis, minor: bool = False) -> list[str]:
    """The non-empty tick labels of ``axis`` inside its view, from its locator and formatter."""
    low, high = sorted(axis.get_view_interval())
    locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    locs = [loc for loc in locs if low <= loc <= high]
    formatter = axis.get_minor_formatter() if minor else axis.get_major_formatter()
    return [label for label in formatter.format_ticks(locs) if label]


def overlapping_tick_labels(figure) -> list[tuple[str, str]]:
    """Pairs of tick labels (major and minor) of one axis whose drawn boxes overlap.

    The figure is drawn with an Agg canvas of its own (no pyplot, no backend change)."""
    FigureCanvasAgg(figure)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    pairs = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            boxes = [
                (tick.label1.get_text(), tick.label1.get_window_extent(renderer))
                for tick in itertools.chain(axis.get_major_ticks(), axis.get_minor_ticks())
                if tick.label1.get_text()
                and tick.label1.get_visible()
                and low <= tick.get_loc() <= high
            ]
            for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
                if box_a.overlaps(box_b):
                    pairs.append((a, b))
    return pairs

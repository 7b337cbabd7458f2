"""
Matplotlib backend of the RL Zoo tests (``MPLBACKEND=module://zoo_plot_backend``): renders with Agg
and, instead of opening a window, ``show()`` appends what was drawn (figure label, and the label and
number of points of every line) as one JSON line to the file named by ``ZOO_PLOT_RECORD``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from matplotlib._pylab_helpers import Gcf
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas

__all__ = ["FigureCanvas", "show"]


def show(*args: Any, **kwargs: Any) -> None:
    figures = []
    for manager in Gcf.get_all_fig_managers():
        figure = manager.canvas.figure
        lines = [
            {"label": str(line.get_label()), "n_points": len(line.get_xdata())}
            for axes in figure.axes
            for line in axes.get_lines()
        ]
        figures.append({"label": figure.get_label(), "lines": lines})
    with open(os.environ["ZOO_PLOT_RECORD"], "a") as file:
        file.write(json.dumps(figures) + "\n")

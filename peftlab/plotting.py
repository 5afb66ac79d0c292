"""Shared matplotlib helpers of the report plots: a display-free pyplot, group colours, legend and save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NO_DATA_TEXT = "no finished run has these figures"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_colour(index: int) -> str:
    """The same colour for a report group in every plot (matplotlib's default cycle)."""
    colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return colours[index % len(colours)]


def decorate_axes(axes: Any) -> None:
    """A legend when something was drawn (else a note saying there was nothing to draw), and a grid."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, NO_DATA_TEXT, ha="center", va="center", transform=axes.transAxes)
    axes.grid(True, alpha=0.3)


def save_figure(figure: Any, path: Path) -> None:
    """Lay out, write the PNG and release the figure."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)

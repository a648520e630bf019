"""The search report's plots show what a person decides on: a few points of Dice between a merge and its inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from search import report

TABLE = {
    "base": {"liver": {"test": 0.712}, "spleen": {"test": 0.655}},
    "uniform linear": {"liver": {"test": 0.705}, "spleen": {"test": 0.662}},
    "MedSAMix": {"liver": {"test": 0.731}, "spleen": {"test": 0.668}},
}


@pytest.fixture
def drawn(monkeypatch, tmp_path: Path) -> plt.Figure:
    """The figure `dice_plot` saves (captured before it is closed), and the PNG written."""
    figures: list[plt.Figure] = []
    save = report._save
    monkeypatch.setattr(report, "_save", lambda figure, path: (figures.append(figure), save(figure, path))[1])
    assert report.dice_plot(TABLE, "test", tmp_path / "dice_test.png") == "dice_test.png"
    assert (tmp_path / "dice_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return figures[0]


def test_the_dice_axis_is_zoomed_to_the_differences(drawn: plt.Figure) -> None:
    low, high = drawn.axes[0].get_ylim()
    assert 0.55 < low < 0.655 and 0.731 < high <= 1.0  # not 0-1: a 0.02 difference must be visible


def test_every_bar_carries_its_value(drawn: plt.Figure) -> None:
    labels = sorted(t.get_text() for t in drawn.axes[0].texts)
    assert labels == sorted(f"{v['test']:.3f}" for row in TABLE.values() for v in row.values())


def test_the_legend_covers_no_bar(drawn: plt.Figure) -> None:
    canvas = FigureCanvasAgg(drawn)  # the saved figure was closed: lay it out again to measure it
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = drawn.axes[0]
    legend = axes.get_legend().get_window_extent(renderer)
    assert legend.x0 >= axes.get_window_extent(renderer).x1  # beside the axes, not over them
    assert [t.get_text() for t in axes.get_legend().get_texts()] == list(TABLE)

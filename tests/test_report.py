"""The search report's plots show what a person decides on: a few points of Dice between a merge and its inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from search import report
from search.scores import case_bootstrap

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


def test_the_case_bootstrap_is_the_resampling_distribution_of_the_mean() -> None:
    """Two cases scoring 0 and 1: the mean of a resample is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    95% interval spans [0, 1]; at the 40% level it is the middle value alone."""
    two = {"task": {"a": 0.0, "b": 1.0}}
    assert case_bootstrap(two) == (0.0, 1.0)
    assert case_bootstrap(two, level=0.4) == (0.5, 0.5)


def test_the_case_bootstrap_resamples_within_each_task_and_averages_over_tasks() -> None:
    # One case per task: nothing to resample, the interval is the mean over tasks itself.
    assert case_bootstrap({"ct": {"a": 0.9}, "mr": {"b": 0.6}}) == pytest.approx((0.75, 0.75))
    # Equal cases: zero width whatever the draw.
    assert case_bootstrap({"ct": dict.fromkeys("abcd", 0.8)}) == pytest.approx((0.8, 0.8))
    # More cases of the same spread narrow it (the standard error falls as 1/sqrt(n)), around the mean.
    few = case_bootstrap({"ct": {str(i): float(i % 2) for i in range(4)}})
    many = case_bootstrap({"ct": {str(i): float(i % 2) for i in range(64)}})
    assert few[0] < many[0] < 0.5 < many[1] < few[1]
    assert case_bootstrap({"ct": {"a": 0.2, "b": 0.7, "c": 0.4}}, seed=3) == case_bootstrap(
        {"ct": {"a": 0.2, "b": 0.7, "c": 0.4}}, seed=3
    )

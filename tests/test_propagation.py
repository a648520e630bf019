"""The walk through a volume (`service.propagation`), against a stand-in model whose answers are known: the
ground truth inside the box it is given. So every step can be checked against the rule it follows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from service.errors import RequestError
from service.propagation import LOOKAHEAD, Ask, plan, propagate
from service.schemas import SeriesPrompt

SLICES, ROWS, COLUMNS = 15, 40, 50


def ellipsoid(center=(7, 20, 25), axes=(5, 12, 15)) -> np.ndarray:
    z, y, x = np.ogrid[:SLICES, :ROWS, :COLUMNS]
    return ((z - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2 + ((x - center[2]) / axes[2]) ** 2 <= 1


class BoxedTruth:
    """A model that answers the ground truth inside the box (clicks ignored) and records what it was asked."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.steps: list[list[Ask]] = []
        self.upcoming: list[list[tuple[int, int]]] = []

    def __call__(self, asks: Sequence[Ask], upcoming: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, float]]:
        self.steps.append(list(asks))
        self.upcoming.append(list(upcoming))
        out = []
        for ask in asks:
            inside = np.zeros((ROWS, COLUMNS), bool)
            if ask.prompt.box is None:
                inside[:] = True
            else:
                x0, y0, x1, y1 = ask.prompt.box
                inside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
            out.append((self.truth[ask.slice] & inside, 0.9))
        return out


def walk_of(prompt: dict, max_points: int = 32):
    return plan(SeriesPrompt(**prompt), 0, SLICES, ROWS, COLUMNS, max_points)


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def test_one_box_on_the_middle_slice_recovers_the_ellipsoid_and_stops_where_it_ends() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    (answers,) = propagate([walk_of({"box": box_of(truth[7]), "slice": 7, "min_area": 10})], model)
    spanned = [z for z in range(SLICES) if truth[z].sum() >= 10]
    assert [a.slice for a in answers] == spanned  # the walk stops at the first slice under the minimum area
    for a in answers:
        np.testing.assert_array_equal(a.mask, truth[a.slice])
    # Both directions advance in one step: the start, then pairs (z-1, z+1), (z-2, z+2), ...
    assert [sorted(ask.slice for ask in step) for step in model.steps[:3]] == [[7], [6, 8], [5, 9]]


def test_each_next_box_is_the_previous_mask_box_grown_by_the_margin() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    margin = 0.2
    propagate([walk_of({"box": box_of(truth[7]), "slice": 7, "margin": margin})], model)
    for step in model.steps[1:]:
        for ask in step:
            previous = ask.slice - 1 if ask.slice > 7 else ask.slice + 1
            x0, y0, x1, y1 = box_of(truth[previous])
            dx, dy = max(1, margin * (x1 - x0)), max(1, margin * (y1 - y0))
            expected = (max(0, x0 - dx), max(0, y0 - dy), min(COLUMNS, x1 + dx), min(ROWS, y1 + dy))
            assert ask.prompt.box == pytest.approx(expected)


def test_a_3d_box_starts_on_its_middle_slice_and_clips_every_box_to_itself() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    (answers,) = propagate([walk_of({"box3d": (12, 10, 4, 30, 30, 8)})], model)
    assert model.steps[0][0].slice == 6 and model.steps[0][0].prompt.box == (12, 10, 30, 30)
    assert [a.slice for a in answers] == [4, 5, 6, 7, 8]
    for step in model.steps:
        for ask in step:
            x0, y0, x1, y1 = ask.prompt.box
            assert 12 <= x0 < x1 <= 30 and 10 <= y0 < y1 <= 30
    assert all(4 <= z <= 8 for hint in model.upcoming for _, z in hint)


def test_clicks_only_start_on_the_middle_click_slice_and_join_the_slice_they_are_on() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    prompt = {"foreground": [(25, 20, 5), (25, 20, 7), (26, 21, 9)], "background": [(2, 2, 9)]}
    (answers,) = propagate([walk_of(prompt)], model)
    start = model.steps[0][0]
    assert start.slice == 7 and start.prompt.box is None and start.prompt.foreground == [(25, 20)]
    on_nine = next(ask.prompt for step in model.steps for ask in step if ask.slice == 9)
    assert on_nine.foreground == [(26, 21)] and on_nine.background == [(2, 2)] and on_nine.box is not None
    assert answers[0].slice < 7 < answers[-1].slice


def test_an_empty_start_is_answered_and_not_walked() -> None:
    model = BoxedTruth(np.zeros((SLICES, ROWS, COLUMNS), bool))
    (answers,) = propagate([walk_of({"box": (1, 1, 5, 5), "slice": 3})], model)
    assert [a.slice for a in answers] == [3] and not answers[0].mask.any() and len(model.steps) == 1


def test_the_hints_name_the_next_slices_of_every_moving_direction() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    propagate([walk_of({"box": box_of(truth[7]), "slice": 7})], model)
    first = set(model.upcoming[0])
    assert first == {(0, 7 + k) for k in range(1, LOOKAHEAD + 1)} | {(0, 7 - k) for k in range(1, LOOKAHEAD + 1)}
    asked = [(ask.walk, ask.slice) for step in model.steps for ask in step]
    assert len(asked) == len(set(asked))  # no slice asked twice by one walk


def test_two_prompts_walk_together() -> None:
    truth = ellipsoid()
    model = BoxedTruth(truth)
    walks = [walk_of({"box": box_of(truth[7]), "slice": 7}), walk_of({"box3d": (0, 0, 6, 50, 40, 8)})]
    first, second = propagate(walks, model)
    assert [a.slice for a in second] == [6, 7, 8] and len(first) > 3
    assert {ask.walk for ask in model.steps[1]} == {0, 1}


@pytest.mark.parametrize(
    ("prompt", "phrase"),
    [
        ({"box": (1, 1, 5, 5), "slice": SLICES}, f"the volume has {SLICES} slices"),
        ({"box3d": (0, 0, 0, 10, 10, SLICES)}, "3-D box reaches outside the volume"),
        ({"box3d": (0, 0, 0, COLUMNS + 1, 10, 2)}, "3-D box reaches outside the volume"),
        ({"box3d": (0, 0, 0.5, 10, 10, 2)}, "fractional slice indices"),
        ({"foreground": [(COLUMNS + 3, 1, 1)]}, "foreground click 0 is outside the volume"),
        ({"foreground": [(1, 1, SLICES)]}, "foreground click 0 is outside the volume"),
        ({"box3d": (0, 0, 2, 10, 10, 4), "foreground": [(1, 1, 3)], "background": [(1, 1, 9)]}, "background click 0"),
    ],
)
def test_a_prompt_off_the_volume_is_one_sentence(prompt: dict, phrase: str) -> None:
    with pytest.raises(RequestError, match=phrase) as error:
        walk_of(prompt)
    assert error.value.status == 400 and str(error.value).count(".") <= 1


def test_more_clicks_than_the_limit_is_a_413() -> None:
    with pytest.raises(RequestError, match="at most 2 per prompt") as error:
        walk_of({"foreground": [(1, 1, 1)] * 3}, max_points=2)
    assert error.value.status == 413


@pytest.mark.parametrize(
    ("prompt", "phrase"),
    [
        ({"box": (1, 1, 5, 5)}, "together with the slice"),
        ({"box3d": (0, 0, 0, 5, 5, 1), "box": (1, 1, 5, 5), "slice": 1}, "either a 3-D box or a box"),
        ({"background": [(1, 1, 1)]}, "at least one foreground click"),
    ],
)
def test_the_schema_wants_one_way_to_start(prompt: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        SeriesPrompt(**prompt)

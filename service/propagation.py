"""From one prompt on a series to masks on every slice the structure spans: MedSAM's 3-D inference, as a walk.

MedSAM's own 3-D inference (the CVPR 2024 LiteMedSAM script) segments the prompted slice, then each neighbour
outward, prompting it with the bounding box of the previous slice's mask. Here a walk starts on the prompted slice
(a 3-D box: its middle slice; clicks only: the middle of the foreground clicks' slices), goes up and down the volume
at once, and gives each next slice the previous mask's box grown by a margin (clipped to the image, and to the 3-D
box when one was given) plus the clicks drawn on that slice. A direction stops at the volume's end, at the 3-D box's
end, or at the first slice whose mask has fewer than `min_area` pixels (that mask is dropped: below the minimum it is
the model answering a box around nothing). The start slice is always answered.

No model here: `propagate` calls a `Decode` with the 2-D prompts of one step (every walk, both directions) and the
slices the walks will ask for next, so the caller can encode those in one batch before they are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np

from service.errors import RequestError
from service.schemas import Prompt, SeriesPrompt

__all__ = ["Ask", "Decode", "SliceAnswer", "Walk", "plan", "propagate"]

#: Slices ahead of each walking direction whose embeddings are asked for with the current step's: encoding them in
#: one batch is cheaper than one encoder call per slice; a direction that stops wastes at most this many encodes.
LOOKAHEAD = 4


@dataclass(frozen=True)
class Walk:
    """One series prompt placed on a volume: where it starts, with which box, and how far it may go."""

    start: int
    box: tuple[float, float, float, float] | None  # on the start slice
    low: int  # first and last slice it may reach (inclusive)
    high: int
    clip: tuple[float, float, float, float] | None  # a 3-D box's x0, y0, x1, y1: no box grows past it
    clicks: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = field(default_factory=dict)
    margin: float = 0.0
    min_area: int = 25

    def prompt(self, z: int, box: tuple[float, float, float, float] | None) -> Prompt:
        """The 2-D prompt of slice `z`: `box` and the clicks drawn on that slice."""
        foreground, background = self.clicks.get(z, ([], []))
        return Prompt(box=box, foreground=foreground, background=background)


@dataclass(frozen=True)
class Ask:
    """One 2-D prompt a walk asks to be segmented: walk `walk`'s prompt on slice `slice`."""

    walk: int
    slice: int
    prompt: Prompt


@dataclass(frozen=True)
class SliceAnswer:
    """A slice a walk segmented: the box it was prompted with (None: clicks only), its bool mask, predicted IoU."""

    slice: int
    box: tuple[float, float, float, float] | None
    mask: np.ndarray
    iou: float


#: (this step's asks, the (walk, slice) pairs asked for next) -> one (mask, iou) per ask, in order.
Decode = Callable[[Sequence[Ask], Sequence[tuple[int, int]]], list[tuple[np.ndarray, float]]]


def plan(prompt: SeriesPrompt, index: int, slices: int, rows: int, columns: int, max_points: int) -> Walk:
    """`prompt` (number `index` of the request) placed on a volume of `slices` slices of rows x columns, or a
    RequestError naming the prompt and the rule it breaks (never its values)."""
    clicks = [*prompt.foreground, *prompt.background]
    if len(clicks) > max_points:
        raise RequestError(
            f"prompt {index} has {len(clicks)} clicks; this server takes at most {max_points} per prompt",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    low, high, clip = 0, slices - 1, None
    if prompt.box3d is not None:
        x0, y0, z0, x1, y1, z1 = prompt.box3d
        if not all(np.isfinite(prompt.box3d)) or not (float(z0).is_integer() and float(z1).is_integer()):
            raise RequestError(
                f"prompt {index}'s 3-D box has non-finite coordinates or fractional slice indices; expected x0, y0, "
                "z0, x1, y1, z1 with whole z"
            )
        if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows and 0 <= z0 <= z1 <= slices - 1):
            raise RequestError(
                f"prompt {index}'s 3-D box reaches outside the volume of {slices} slices of {rows}x{columns}; "
                f"expected 0 <= x0 < x1 <= {columns}, 0 <= y0 < y1 <= {rows} and 0 <= z0 <= z1 <= {slices - 1}"
            )
        low, high, clip = int(z0), int(z1), (x0, y0, x1, y1)
        start, box = (low + high) // 2, clip
    elif prompt.box is not None:
        assert prompt.slice is not None  # the schema asks for both or neither
        if prompt.slice >= slices:
            raise RequestError(
                f"prompt {index}'s slice is out of range; the volume has {slices} slices (0-{slices - 1})"
            )
        start, box = prompt.slice, prompt.box
    else:
        planes = sorted(z for _, _, z in prompt.foreground)
        start, box = planes[(len(planes) - 1) // 2], None
    per_slice: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {}
    for kind, points in enumerate((prompt.foreground, prompt.background)):
        for j, (x, y, z) in enumerate(points):
            if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= columns and 0 <= y <= rows and low <= z <= high):
                which = "foreground" if kind == 0 else "background"
                raise RequestError(
                    f"prompt {index}'s {which} click {j} is outside the volume (or its 3-D box); expected "
                    f"0 <= x <= {columns}, 0 <= y <= {rows} and a slice from {low} to {high}"
                )
            per_slice.setdefault(z, ([], []))[kind].append((x, y))
    return Walk(start, box, low, high, clip, per_slice, prompt.margin, prompt.min_area)


def propagate(walks: Sequence[Walk], decode: Decode) -> list[list[SliceAnswer]]:
    """Every walk's answers, each list in slice order: the start slice, then outward in both directions, one step
    of all walks at a time."""
    answers: list[dict[int, SliceAnswer]] = [{} for _ in walks]
    asks = [Ask(i, w.start, w.prompt(w.start, w.box)) for i, w in enumerate(walks)]
    fronts = [(i, step) for i in range(len(walks)) for step in (-1, 1)]
    results = decode(asks, _upcoming(walks, {f: walks[f[0]].start for f in fronts}))
    for ask, (mask, iou) in zip(asks, results, strict=True):
        answers[ask.walk][ask.slice] = SliceAnswer(ask.slice, ask.prompt.box, mask, iou)
    last = {(i, step): answers[i][walks[i].start] for i, step in fronts}
    fronts = [f for f in fronts if last[f].mask.sum() >= walks[f[0]].min_area]
    while fronts:
        asks, moving = [], []
        for i, step in fronts:
            walk, previous = walks[i], last[(i, step)]
            z = previous.slice + step
            box = _next_box(previous.mask, walk) if walk.low <= z <= walk.high else None
            if box is not None:
                asks.append(Ask(i, z, walk.prompt(z, box)))
                moving.append((i, step))
        if not asks:
            break
        results = decode(asks, _upcoming(walks, {key: a.slice for key, a in zip(moving, asks, strict=True)}))
        fronts = []
        for key, ask, (mask, iou) in zip(moving, asks, results, strict=True):
            if mask.sum() < walks[ask.walk].min_area:
                continue
            answer = SliceAnswer(ask.slice, ask.prompt.box, mask, iou)
            answers[ask.walk][ask.slice] = answer
            last[key] = answer
            fronts.append(key)
    return [[found[z] for z in sorted(found)] for found in answers]


def _upcoming(walks: Sequence[Walk], fronts: dict[tuple[int, int], int]) -> list[tuple[int, int]]:
    """The (walk, slice) pairs the `fronts` ((walk, direction) -> the slice it is on) may ask for in the next
    `LOOKAHEAD` steps."""
    ahead = []
    for (i, step), z in fronts.items():
        for k in range(1, LOOKAHEAD + 1):
            if walks[i].low <= z + k * step <= walks[i].high:
                ahead.append((i, z + k * step))
    return ahead


def _next_box(mask: np.ndarray, walk: Walk) -> tuple[float, float, float, float] | None:
    """The bounding box of `mask` (pixel edges: x1 is one past the last column) grown by the walk's margin, inside
    the image and the walk's clip; None where nothing of it is left."""
    rows, columns = mask.shape
    ys, xs = np.nonzero(np.any(mask, axis=1))[0], np.nonzero(np.any(mask, axis=0))[0]
    x0, x1, y0, y1 = float(xs[0]), float(xs[-1] + 1), float(ys[0]), float(ys[-1] + 1)
    dx, dy = max(1.0, walk.margin * (x1 - x0)), max(1.0, walk.margin * (y1 - y0))
    bounds = walk.clip or (0.0, 0.0, float(columns), float(rows))
    x0, y0 = max(x0 - dx, bounds[0], 0.0), max(y0 - dy, bounds[1], 0.0)
    x1, y1 = min(x1 + dx, bounds[2], float(columns)), min(y1 + dy, bounds[3], float(rows))
    if x0 >= x1 or y0 >= y1:
        return None
    return (x0, y0, x1, y1)

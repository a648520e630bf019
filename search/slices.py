"""Calibration tasks: what the evaluator scores a merge on, whatever file format the data came from.

A `Task` is a list of 2-D slices in a fixed order, each with its image (already through the modality's intensity
preset, so uint8), its ground-truth mask and the box prompts derived from that mask, and the case (patient/volume)
it came from. Loaders (one per data format) produce tasks; the evaluator only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Slice:
    """One 2-D image with its ground truth.

    image: HxW or HxWx3 uint8 (after the intensity preset). mask: HxW bool, the label's foreground.
    boxes: Nx4 float64 XYXY prompts in the image's pixel coordinates (N >= 1), e.g. one per connected component;
    the slice's prediction is the union of the N box predictions. case: the case (volume, patient) it belongs to;
    index: its position along the slicing axis in that case.
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    case: str
    index: int = 0


@dataclass(frozen=True)
class Task:
    """A named segmentation task: slices in evaluation order (a smaller budget is a prefix of a larger one)."""

    name: str
    slices: tuple[Slice, ...]
    modality: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    def budget(self, n: int | None) -> tuple[Slice, ...]:
        """The first `n` slices (all when n is None): multi-fidelity compares like with like."""
        return self.slices if n is None else self.slices[:n]

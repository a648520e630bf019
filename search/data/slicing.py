"""Calibration data, step 2: a volume cut into 2-D slices with their masks and box prompts.

`case_slices` cuts a volume along an axis, applies the intensity preset of `service.imaging` to the whole volume (so
percentile presets use per-volume statistics, as MedSAM's preparation does), keeps the slices where the selected
label(s) have foreground after small connected components are dropped, and derives the box prompts from the mask
(`mask_boxes`, optionally grown by `jitter_boxes`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from search.data.formats import Volume
from search.errors import DataError
from search.slices import Slice
from service.imaging import PRESETS, ImagingError, to_uint8

__all__ = ["CONNECTIVITY", "case_slices", "jitter_boxes", "mask_boxes"]

# 8-connectivity: pixels touching at a corner are one object (one box).
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def mask_boxes(mask: np.ndarray, per: Literal["component", "label"] = "component", label: np.ndarray | None = None):
    """Tight XYXY boxes (N x 4 float64, image pixel coordinates) of an H x W bool `mask`.

    A box spans its pixels: x0/y0 are the smallest column/row index, x1/y1 the largest + 1. `per="component"` gives
    one box per 8-connected component (raster order); `per="label"` one per label id of `label` (H x W) inside the
    mask, in increasing id order.
    """
    if per == "component":
        regions, _ = ndimage.label(mask, structure=CONNECTIVITY)
    else:
        if label is None:
            raise TypeError("mask_boxes(per='label') needs `label`, the H x W label map; found None")
        regions = np.where(mask, label, 0)
        ids = np.unique(regions[regions != 0])
        regions = np.searchsorted(ids, regions) + 1
        regions[~mask] = 0
    found = [s for s in ndimage.find_objects(regions) if s is not None]
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in found], dtype=np.float64).reshape(-1, 4)


def jitter_boxes(
    boxes: np.ndarray, jitter: int, shape: tuple[int, int], seed: int, case: str, index: int
) -> np.ndarray:
    """Boxes grown outward by up to `jitter` pixels per side (each side an independent integer in [0, jitter]), as
    MedSAM perturbs its box prompts; clipped to the h x w image. Seeded by (seed, case, index): the same slice gets
    the same boxes in every run, whatever else is loaded."""
    if jitter <= 0 or len(boxes) == 0:
        return boxes
    rng = np.random.default_rng([seed, zlib.crc32(case.encode()), index])
    grow = rng.integers(0, jitter, size=boxes.shape, endpoint=True) * np.array([-1, -1, 1, 1])
    h, w = shape
    return np.clip(boxes + grow, 0, [w, h, w, h]).astype(np.float64)


def _preset_uint8(volume: Volume, preset: str | None) -> np.ndarray:
    if preset is None:
        if volume.image.dtype != np.uint8:
            raise DataError(
                f"case {volume.case}: {volume.source} holds {volume.image.dtype} intensities; name an intensity preset "
                f"({', '.join(PRESETS)}) to map them to uint8"
            )
        return volume.image
    rgb = volume.image.ndim == 4
    if rgb and not volume.planar:
        raise DataError(f"case {volume.case}: {volume.source} is an RGB volume of shape {volume.image.shape}")
    try:
        return to_uint8(volume.image[0], preset)[None] if rgb else to_uint8(volume.image, preset)
    except ImagingError as error:
        raise DataError(f"case {volume.case}: {volume.source}: {error}") from None


def case_slices(
    volume: Volume,
    labels: Sequence[int],
    preset: str | None,
    axis: int = 0,
    min_component: int = 0,
    boxes: Literal["component", "label"] = "component",
    jitter: int = 0,
    seed: int = 0,
) -> list[Slice]:
    """The slices of `volume` along `axis` (ignored for 2-D images) where `labels` have foreground, in index order.

    The preset is applied to the whole volume first. Connected components (8-connected, per slice) smaller than
    `min_component` pixels are removed from the mask; a slice left empty is dropped.
    """
    image = _preset_uint8(volume, preset)
    label = volume.label
    if not volume.planar and axis != 0:
        image, label = np.moveaxis(image, axis, 0), np.moveaxis(label, axis, 0)
    selected = np.isin(label, np.asarray(labels))
    slices = []
    for k in np.flatnonzero(selected.reshape(len(selected), -1).any(axis=1)):
        mask = selected[k]
        if min_component > 1:
            regions, _ = ndimage.label(mask, structure=CONNECTIVITY)
            sizes = np.bincount(regions.ravel())
            mask = (sizes >= min_component)[regions] & mask
            if not mask.any():
                continue
        index = volume.index + int(k)
        found = mask_boxes(mask, boxes, label[k])
        found = jitter_boxes(found, jitter, mask.shape, seed, volume.case, index)
        # Copies, so a slice does not keep its whole volume alive.
        slices.append(Slice(np.ascontiguousarray(image[k]).copy(), mask.copy(), found, volume.case, index))
    return slices

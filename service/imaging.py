"""The one image-preprocessing implementation of MedSAMix, shared by the offline search and the online service.

A model is chosen by the search under exactly the preprocessing it is served with, so both import this module;
it uses only numpy and the standard library (the serving image has no torch and no Pillow).

Three steps, each a registry whose `get_*(name)` fails listing the valid names:

1. **Intensity presets** (`PRESETS`): raw intensities (CT in HU, MR in scanner units, any real dtype) -> uint8
   0..255, as MedSAM's data preparation does per modality.
2. **Geometries** (`GEOMETRIES`): the uint8 image -> the square model input, and boxes, clicks and masks between
   the image's frame and the model's frame. `sam` resizes the longest side and pads bottom/right (SAM, MedicoSAM);
   `medsam` stretches to a square (MedSAM). The image resize is bit-identical to what `segment_anything` feeds
   its encoder (Pillow's BILINEAR, reimplemented here in numpy).
3. **Normalisations** (`NORMALIZATIONS`): the uint8 model input -> the float32 encoder input (`sam`: ImageNet
   mean/std on the 0-255 scale; `medsam`: min-max to [0, 1]).

Coordinate frames. *Image* coordinates are the decoded image's pixel coordinates: x to the right, y down, the
image spanning [0, w] x [0, h], boxes as XYXY (x0, y0, x1, y1), points (clicks) as (x, y). *Model* coordinates are
the same for the size x size model input. Shapes are written (h, w), as numpy does, unless a name says otherwise.

A prompt for the decoder (`SparsePrompt`) is an optional box and foreground / background clicks; `to_model` turns it
into SAM's sparse-prompt points and labels (`PointLabel`), the decoder graph's `point_coords` / `point_labels`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Literal, TypeVar, get_args

import numpy as np
import numpy.typing as npt

from service.errors import unknown_name

__all__ = [
    "GEOMETRIES",
    "NORMALIZATIONS",
    "NORMALIZATION_NAMES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PRESETS",
    "Frame",
    "Geometry",
    "ImagingError",
    "IntensityPreset",
    "MedSamGeometry",
    "MinMax",
    "Normalization",
    "NormalizationName",
    "Percentile",
    "PointLabel",
    "SamGeometry",
    "SparsePrompt",
    "Window",
    "check_boxes",
    "check_points",
    "encoder_input",
    "get_geometry",
    "get_normalization",
    "get_preset",
    "normalize",
    "pad_normalized",
    "resize",
    "to_uint8",
]

# ImageNet statistics on the 0-255 scale, per RGB channel: SAM's (and MedicoSAM's) encoder input convention.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class ImagingError(ValueError):
    """An image, box or mask input that does not meet its contract; the message is one sentence naming what was
    expected and what was found (shapes and dtypes only, never pixel values)."""


T = TypeVar("T")


def _lookup(registry: Mapping[str, T], kind: str, name: object) -> T:
    if isinstance(name, str) and name in registry:
        return registry[name]
    raise ImagingError(unknown_name(kind, name, registry))


def _describe(array: np.ndarray) -> str:
    return f"shape {tuple(array.shape)} and dtype {array.dtype}"


# --------------------------------------------------------------------------------------------------------------
# Intensity presets: raw intensities -> uint8 0..255.
# --------------------------------------------------------------------------------------------------------------


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """float64 values in [0, 255] -> uint8, rounding half to even (np.rint, IEEE's default, like torch.round).
    `values` is a temporary of the caller's and is overwritten (every preset's hot path: no more copies)."""
    np.clip(values, 0.0, 255.0, out=values)
    return np.rint(values, out=values).astype(np.uint8)


def _min_max_255(values: np.ndarray) -> np.ndarray:
    """Min-max of float64 `values` to [0, 255] (float64); a constant array maps to zeros, never NaN."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low) * 255.0


class IntensityPreset(ABC):
    """A mapping of raw intensities to uint8 0..255; `to_uint8` validates the input and calls `apply`."""

    @abstractmethod
    def apply(self, values: np.ndarray) -> np.ndarray:
        """Finite float64 `values` (any shape) -> uint8 of the same shape."""


@dataclass(frozen=True)
class Window(IntensityPreset):
    """CT windowing (HU): clip to [level - width/2, level + width/2], scale linearly to 0..255, round.

    The scale uses the window's bounds, so a given HU always maps to the same grey level. (MedSAM's script
    rescales by the clipped volume's own min and max, which is the same whenever the volume spans the window, and
    truncates instead of rounding.)
    """

    level: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and math.isfinite(self.width) and self.width > 0):
            raise ImagingError(f"expected a finite window level and a positive width, found {self.level}/{self.width}")

    def apply(self, values: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2
        high = self.level + self.width / 2
        scaled = np.clip(values, low, high)  # then in place: the same operations in the same order
        scaled -= low
        scaled /= self.width
        scaled *= 255.0
        return _round_to_uint8(scaled)


@dataclass(frozen=True)
class Percentile(IntensityPreset):
    """MR: clip to the [low, high] percentiles of the non-zero voxels, min-max to 0..255, round; voxels that were
    exactly 0 (background outside the field of view) stay 0, as MedSAM's preprocessing keeps them.

    Percentiles use numpy's default linear interpolation. They are taken over every voxel passed, so pass a
    whole DxHxW volume to get MedSAM's per-volume statistics. (MedSAM selects voxels > 0; the same for MR's
    non-negative intensities.) An image with no non-zero voxel maps to zeros.
    """

    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ImagingError(f"expected percentiles with 0 <= low < high <= 100, found {self.low} and {self.high}")

    def apply(self, values: np.ndarray) -> np.ndarray:
        zero = values == 0
        foreground = values[~zero]
        if foreground.size == 0:
            return np.zeros(values.shape, np.uint8)
        low, high = np.percentile(foreground, [self.low, self.high])
        scaled = _min_max_255(np.clip(values, low, high))
        scaled[zero] = 0.0
        return _round_to_uint8(scaled)


@dataclass(frozen=True)
class MinMax(IntensityPreset):
    """Plain min-max to 0..255, rounded; a constant image maps to zeros."""

    def apply(self, values: np.ndarray) -> np.ndarray:
        return _round_to_uint8(_min_max_255(values))


# Level/width in HU: the usual radiological windows (abdomen is MedSAM's CT window).
PRESETS: dict[str, IntensityPreset] = {
    "ct_abdomen": Window(level=40, width=400),
    "ct_brain": Window(level=40, width=80),
    "ct_lung": Window(level=-600, width=1500),
    "ct_bone": Window(level=400, width=1800),
    "mr": Percentile(),
    "minmax": MinMax(),
}


def get_preset(name: object) -> IntensityPreset:
    """The intensity preset called `name` (any value: a manifest's); an unknown name fails listing the known ones."""
    return _lookup(PRESETS, "intensity preset", name)


def to_uint8(image: np.ndarray, preset: IntensityPreset | str) -> np.ndarray:
    """HxW (or DxHxW) raw intensities of any real dtype -> uint8 of the same shape, through `preset`.

    Computed in float64 (exact for every integer type up to 32 bits, and for float32); rounding is half to even.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0 or image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise ImagingError(f"expected a non-empty HxW (or DxHxW) array of real numbers, found {_describe(image)}")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise ImagingError(f"expected real intensities, found {_describe(image)}")
    values = np.asarray(image, dtype=np.float64)  # no copy when it is float64 already; presets do not write to it
    if not np.isfinite(values).all():
        raise ImagingError(
            f"expected finite intensities, found NaN or infinite values in an image of {_describe(image)}"
        )
    return preset.apply(values)


# --------------------------------------------------------------------------------------------------------------
# Pillow-exact bilinear resize.
# --------------------------------------------------------------------------------------------------------------

# Pillow's fixed-point format for 8-bit images (libImaging/Resample.c): 32 bits less 8 for the value and 2 for
# overshoot, so a coefficient of 1.0 is 1 << 22.
_PRECISION_BITS = 22


@lru_cache(maxsize=64)
def _pillow_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indexes and fixed-point weights (both (out_size, k) int64, read-only) of Pillow's BILINEAR filter.

    Mirrors `precompute_coeffs` + `normalize_coeffs_8bpc` operation for operation, in float64 as the C code works
    in double: on downscaling the triangle filter is widened by the scale (antialiasing); each output pixel's
    window [xmin, xmin + xmax) is rounded from its centre; weights are normalised by their sequential sum, then
    rounded to 22-bit fixed point. Taps past a window's end get weight 0 (their index is clamped in range).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle's support is 1 pixel, widened when downscaling
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates toward zero; so does astype.
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    x = (((xmin[:, None] + taps[None, :]).astype(np.float64) - center[:, None]) + 0.5) * (1.0 / filterscale)
    x = np.abs(x)
    weights = np.where(x < 1.0, 1.0 - x, 0.0)
    weights[taps[None, :] >= xmax[:, None]] = 0.0
    total = np.zeros(out_size)
    for j in range(ksize):  # sequential, as C sums (a pairwise sum can differ in the last bit)
        total += weights[:, j]
    np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    fixed = np.trunc(0.5 + weights * (1 << _PRECISION_BITS)).astype(np.int64)  # bilinear weights are >= 0
    index = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    index.flags.writeable = False
    fixed.flags.writeable = False
    return index, fixed


def _resample_axis(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One of Pillow's two passes: uint8 `image` resampled along `axis` to `out_size`, in int64 fixed point."""
    index, fixed = _pillow_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    acc = np.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1 :], 1 << (_PRECISION_BITS - 1), np.int64)
    for j in range(index.shape[1]):
        if fixed[:, j].any():
            acc += np.take(image, index[:, j], axis=axis) * fixed[:, j].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxW or HxWxC uint8 -> (out_h, out_w)[xC] uint8, bit-identical to Pillow's
    `Image.resize((out_w, out_h), Image.BILINEAR)` (what `segment_anything`'s `ResizeLongestSide.apply_image` and
    torchvision's PIL `resize` call).

    Two separable passes, each rounding to uint8, in Pillow's order (horizontal first, unless the height shrinks
    much more than the width); channels are independent. An axis that keeps its size is not resampled (Pillow
    skips it; it would be the identity).
    """
    image = np.asarray(image)
    out_h, out_w = (int(s) for s in shape)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImagingError(f"expected a non-empty HxW or HxWxC uint8 image to resize, found {_describe(image)}")
    if out_h < 1 or out_w < 1:
        raise ImagingError(f"expected a resize target of at least 1x1 pixels, found {out_h}x{out_w}")
    in_h, in_w = image.shape[:2]
    if (out_h, out_w) == (in_h, in_w):
        return image.copy()
    # Pillow >= 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more than
    # twice what the width shrinks; the order matters because each pass rounds to uint8.
    axes = (0, 1) if out_h < in_h and in_h - out_h > 2 * (in_w - out_w) else (1, 0)
    for axis in axes:
        target = (out_h, out_w)[axis]
        if target != image.shape[axis]:
            image = _resample_axis(image, axis, target)
    return image


# --------------------------------------------------------------------------------------------------------------
# Torch-compatible bilinear interpolation of float maps (masks).
# --------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of `torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)` along one axis (no antialiasing), read-only.

    Source position (i + 0.5) * in/out - 0.5, clamped at 0; the two neighbours, the upper one clamped at the last
    index. Bilinear interpolation is separable, so a 2-D resize is `rows @ x @ cols.T`.
    """
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = np.clip(src - low, 0.0, 1.0)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    matrix.flags.writeable = False
    return matrix


def _check_low_res(low_res_logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(low_res_logits)
    if logits.ndim < 2 or logits.shape[-1] < 1 or logits.shape[-2] < 1 or not np.issubdtype(logits.dtype, np.floating):
        raise ImagingError(
            f"expected low-resolution mask logits of shape (N, h, w) and a float dtype, found {_describe(logits)}"
        )
    return logits.astype(np.float32, copy=False)


def _apply_separable(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 (..., h_in, w_in) -> float32 (..., h_out, w_out) as rows @ maps @ cols.T (float32 matmuls)."""
    return rows.astype(np.float32) @ maps @ cols.T.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Geometries: image <-> model input.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """Where an image sits in the model input: its `original` (h, w), and the (h, w) it was `resized` to inside
    the size x size model input (top-left aligned; the rest is padding). Enough to map boxes and masks both ways
    without the image, so a service can cache it next to an image embedding."""

    original: tuple[int, int]
    resized: tuple[int, int]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ImagingError(f"expected a positive integer model input size, found {size!r}")
    return int(size)


def _check_shape(h: int, w: int) -> tuple[int, int]:
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in (h, w)):
        raise ImagingError(f"expected an image shape of two positive integers, found ({h!r}, {w!r})")
    return int(h), int(w)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW uint8 (replicated to 3 channels) or HxWx3 uint8 -> HxWx3 uint8."""
    image = np.asarray(image)
    gray = image.ndim == 2
    rgb = image.ndim == 3 and image.shape[2] == 3
    if image.dtype != np.uint8 or not (gray or rgb) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImagingError(f"expected a non-empty HxW or HxWx3 uint8 image, found {_describe(image)}")
    return np.repeat(image[:, :, None], 3, axis=2) if gray else image


class Geometry(ABC):
    """How an image becomes the square model input, and how boxes and masks move between the two frames."""

    name: str
    #: `mask_scores` above this value are foreground.
    threshold: float

    @abstractmethod
    def frame(self, h: int, w: int, size: int) -> Frame:
        """The frame of an h x w image in a size x size model input."""

    def prepare(self, image: np.ndarray, size: int) -> tuple[np.ndarray, Frame]:
        """HxW or HxWx3 uint8 image -> (size x size x 3 uint8 model input, its Frame); gray is replicated to RGB.

        The image is resized Pillow-exactly to `frame.resized` and zero-padded bottom/right to size x size.
        """
        rgb = _as_rgb(image)
        frame = self.frame(rgb.shape[0], rgb.shape[1], size)
        resized = resize(rgb, frame.resized)
        if frame.resized == (size, size):
            return resized, frame
        model_input = np.zeros((size, size, 3), np.uint8)
        model_input[: frame.resized[0], : frame.resized[1]] = resized
        return model_input, frame

    def box_to_model(self, boxes: np.ndarray, frame: Frame) -> np.ndarray:
        """Nx4 XYXY boxes in image coordinates -> Nx4 float64 in model coordinates.

        x is scaled by resized_w / w and y by resized_h / h, exactly as `ResizeLongestSide.apply_boxes` computes it
        (and, for `medsam`, MedSAM's box / [w, h, w, h] * size up to rounding). Boxes are checked first.
        """
        boxes = check_boxes(boxes, *frame.original)
        return boxes * np.tile(self._point_scale(frame), 2)

    def box_to_image(self, boxes: np.ndarray, frame: Frame) -> np.ndarray:
        """Nx4 XYXY boxes in model coordinates -> Nx4 float64 in image coordinates (the inverse of `box_to_model`)."""
        boxes = _check_rows(boxes, 4, "boxes of shape Nx4 (XYXY)")
        return boxes / np.tile(self._point_scale(frame), 2)

    def points_to_model(self, points: np.ndarray, frame: Frame) -> np.ndarray:
        """Px2 (x, y) points in image coordinates -> Px2 float64 in model coordinates, scaled as `box_to_model`
        scales a box's corners (`ResizeLongestSide.apply_coords`). Points are checked first."""
        points = check_points(points, *frame.original)
        return points * self._point_scale(frame)

    @staticmethod
    def _point_scale(frame: Frame) -> np.ndarray:
        (h, w), (rh, rw) = frame.original, frame.resized
        return np.array([rw / w, rh / h])  # Python float division, as apply_coords

    def mask_scores(self, low_res_logits: np.ndarray, frame: Frame, size: int) -> np.ndarray:
        """(..., h_lr, w_lr) float mask logits from the decoder -> (..., h, w) float32 scores in image coordinates,
        foreground where > `threshold`; `frame` must be this geometry's frame for `size`."""
        logits = _check_low_res(low_res_logits)
        expected = self.frame(*frame.original, size)
        if frame != expected:
            raise ImagingError(
                f"expected the {self.name} frame of a {frame.original} image at model input size {size}, found one "
                f"resized to {frame.resized} instead of {expected.resized}"
            )
        return self._mask_scores(logits, frame, size)

    def _mask_scores(self, logits: np.ndarray, frame: Frame, size: int) -> np.ndarray:
        """Checked float32 (..., h_lr, w_lr) logits -> (..., h, w) float32 scores."""
        rows, cols = self.mask_matrices(logits.shape[-2:], frame, size)
        return _apply_separable(self.pointwise(logits), rows, cols)

    def pointwise(self, logits: np.ndarray) -> np.ndarray:
        """float32 logits -> float32 values that the upsampling interpolates (the logits themselves by default)."""
        return logits

    @abstractmethod
    def mask_matrices(self, low_res: tuple[int, int], frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
        """float64 (h, h_lr) and (w, w_lr) matrices taking `pointwise(logits)` (..., h_lr, w_lr) to image-frame
        scores as rows @ x @ cols.T: what a device-side twin of `mask_scores` multiplies by."""

    def mask_to_image(self, low_res_logits: np.ndarray, frame: Frame, size: int) -> np.ndarray:
        """(N, h_lr, w_lr) float32 mask logits from the decoder (any leading dims) -> (N, h, w) bool masks in
        image coordinates."""
        return self.mask_scores(low_res_logits, frame, size) > self.threshold


class SamGeometry(Geometry):
    """SAM's (and MedicoSAM's): resize the longest side to `size` keeping the aspect ratio, pad bottom/right.

    The resized shape is `ResizeLongestSide.get_preprocess_shape`'s. Masks follow `Sam.postprocess_masks`:
    bilinear upsampling of the low-res logits to size x size, crop to the resized image, bilinear resize to the
    original shape (the two linear steps are composed into one matrix per axis), then logits > 0.
    """

    name = "sam"
    threshold = 0.0

    def frame(self, h: int, w: int, size: int) -> Frame:
        (h, w), size = _check_shape(h, w), _check_size(size)
        scale = size * 1.0 / max(h, w)
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
        if new_h < 1 or new_w < 1:
            raise ImagingError(
                f"expected an image whose shorter side survives resizing to {size}, found shape ({h}, {w})"
            )
        return Frame(original=(h, w), resized=(new_h, new_w))

    def mask_matrices(self, low_res: tuple[int, int], frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
        (h, w), (rh, rw) = frame.original, frame.resized
        h_lr, w_lr = low_res
        rows = _interpolation_matrix(rh, h) @ _interpolation_matrix(h_lr, size)[:rh]
        cols = _interpolation_matrix(rw, w) @ _interpolation_matrix(w_lr, size)[:rw]
        return rows, cols


class MedSamGeometry(Geometry):
    """MedSAM's: stretch to size x size (non-uniform scale, no padding).

    Masks follow MedSAM's inference: sigmoid of the low-res logits, bilinear upsampling straight to the original
    shape, then probabilities > 0.5.
    """

    name = "medsam"
    threshold = 0.5

    def frame(self, h: int, w: int, size: int) -> Frame:
        (h, w), size = _check_shape(h, w), _check_size(size)
        return Frame(original=(h, w), resized=(size, size))

    def pointwise(self, logits: np.ndarray) -> np.ndarray:
        # 0.5 * (1 + tanh(x / 2)) is the logistic function without exp overflow for very negative logits.
        return (0.5 * (1.0 + np.tanh(logits.astype(np.float64) / 2.0))).astype(np.float32)

    def mask_matrices(self, low_res: tuple[int, int], frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray]:
        (h, w), (h_lr, w_lr) = frame.original, low_res
        return _interpolation_matrix(h_lr, h), _interpolation_matrix(w_lr, w)


GEOMETRIES: dict[str, Geometry] = {g.name: g for g in (SamGeometry(), MedSamGeometry())}


def get_geometry(name: str) -> Geometry:
    """The geometry called `name`; an unknown name fails listing the known ones."""
    return _lookup(GEOMETRIES, "geometry", name)


# --------------------------------------------------------------------------------------------------------------
# Normalisations: uint8 model input -> float32 encoder input.
# --------------------------------------------------------------------------------------------------------------


def _sam_normalize(image: np.ndarray) -> np.ndarray:
    # float32 throughout, as `Sam.preprocess` computes it: bit-identical to segment_anything.
    mean = np.asarray(PIXEL_MEAN, np.float32)[:, None, None]
    std = np.asarray(PIXEL_STD, np.float32)[:, None, None]
    return (image.transpose(2, 0, 1).astype(np.float32) - mean) / std


def _medsam_normalize(image: np.ndarray) -> np.ndarray:
    # MedSAM: (x - min) / clip(max - min, 1e-8) over all channels, in float64, then float32.
    values = image.transpose(2, 0, 1).astype(np.float64)
    low = values.min()
    return ((values - low) / max(values.max() - low, 1e-8)).astype(np.float32)


NormalizationName = Literal["sam", "medsam"]
"""The names of the encoder input conventions: the one spelling of the vocabulary (recipes, configs, the CLI)."""
NORMALIZATION_NAMES: tuple[NormalizationName, ...] = get_args(NormalizationName)


@dataclass(frozen=True)
class Normalization:
    """An encoder input convention: HxWx3 uint8 -> 3xHxW float32."""

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    summary: str


NORMALIZATIONS: dict[str, Normalization] = {
    n.name: n
    for n in (
        Normalization("sam", _sam_normalize, "(x - ImageNet mean) / std per channel, on the 0-255 scale"),
        Normalization("medsam", _medsam_normalize, "(x - min) / max(max - min, 1e-8) over the image, to [0, 1]"),
    )
}


def get_normalization(name: str) -> Normalization:
    """The normalisation called `name`; an unknown name fails listing the known ones."""
    return _lookup(NORMALIZATIONS, "normalization", name)


def normalize(image: np.ndarray, normalization: Normalization | str) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 under `normalization` (pixels only; no padding, see `encoder_input`)."""
    normalization = get_normalization(normalization) if isinstance(normalization, str) else normalization
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImagingError(f"expected a non-empty HxWx3 uint8 image to normalize, found {_describe(image)}")
    return normalization.function(image)


def pad_normalized(chw: np.ndarray, size: int) -> np.ndarray:
    """3xHxW float32 -> 3 x size x size float32, zero-padded bottom/right.

    SAM pads after normalising, so the padding is 0 in normalised space (not the normalised value of black).
    """
    size = _check_size(size)
    chw = np.asarray(chw)
    if chw.ndim != 3 or chw.shape[1] > size or chw.shape[2] > size:
        raise ImagingError(f"expected a 3xHxW array with H, W <= {size} to pad, found {_describe(chw)}")
    out = np.zeros((chw.shape[0], size, size), np.float32)
    out[:, : chw.shape[1], : chw.shape[2]] = chw
    return out


def encoder_input(model_input: np.ndarray, frame: Frame, normalization: Normalization | str) -> np.ndarray:
    """A geometry's size x size x 3 uint8 model input -> the 3 x size x size float32 the encoder takes.

    Normalises only the image (`frame.resized`), then zero-pads: exactly `Sam.preprocess` of the resized image for
    the `sam` normalisation; for `medsam` the min and max are those of the image without padding.
    """
    model_input = np.asarray(model_input)
    if model_input.ndim != 3 or model_input.shape[0] != model_input.shape[1]:
        raise ImagingError(f"expected a square size x size x 3 model input, found {_describe(model_input)}")
    rh, rw = frame.resized
    if rh > model_input.shape[0] or rw > model_input.shape[1]:
        raise ImagingError(
            f"expected a model input of at least {rh}x{rw} for this frame, found {_describe(model_input)}"
        )
    return pad_normalized(normalize(model_input[:rh, :rw], normalization), model_input.shape[0])


# --------------------------------------------------------------------------------------------------------------
# Boxes and points.
# --------------------------------------------------------------------------------------------------------------


def _check_rows(values: object, width: int, what: str) -> np.ndarray:
    """`values` as float64 rows of `width` real coordinates, or ImagingError naming `what` was expected."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != width or array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ImagingError(f"expected {what} with real coordinates, found {_describe(array)}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ImagingError(f"expected {what} with real coordinates, found {_describe(array)}")
    return array.astype(np.float64)


def _first_bad(
    array: np.ndarray, bad: np.ndarray, names: Sequence[str] | None, kind: str, layout: str
) -> tuple[int, str] | None:
    """None when no row of `array` is `bad` or non-finite, else the first such row's index and name (`names[i]`,
    default '<kind> i'); ImagingError at once when that row is non-finite."""
    nonfinite = ~np.isfinite(array).all(axis=1)
    bad = bad | nonfinite
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    name = names[i] if names is not None else f"{kind} {i}"
    if nonfinite[i]:
        raise ImagingError(f"{name} has NaN or infinite coordinates; expected finite {layout} pixel coordinates")
    return i, name


def check_boxes(boxes: npt.ArrayLike, h: int, w: int, names: Sequence[str] | None = None) -> np.ndarray:
    """Nx4 XYXY boxes in the coordinates of an h x w image -> a float64 copy, or ImagingError naming the first bad
    box (`names[i]`, default 'box i'): non-finite coordinates, zero or negative width or height, or a box reaching
    outside [0, w] x [0, h]."""
    array = _check_rows(boxes, 4, "boxes of shape Nx4 (XYXY)")
    x0, y0, x1, y1 = array.T
    with np.errstate(invalid="ignore"):  # NaN comparisons are False; non-finite boxes are named as such first
        flat_x, flat_y = ~(x0 < x1), ~(y0 < y1)
        outside = (x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h)
    first = _first_bad(array, flat_x | flat_y | outside, names, "box", "XYXY")
    if first is None:
        return array
    i, name = first
    if flat_x[i] or flat_y[i]:
        side = "width (x1 <= x0)" if flat_x[i] else "height (y1 <= y0)"
        raise ImagingError(f"{name} has zero or negative {side}; expected XYXY with x0 < x1 and y0 < y1")
    raise ImagingError(
        f"{name} reaches outside the image of shape ({h}, {w}); expected 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}"
    )


def check_points(points: npt.ArrayLike, h: int, w: int, names: Sequence[str] | None = None) -> np.ndarray:
    """Px2 (x, y) points in the coordinates of an h x w image (an empty sequence is no points) -> a float64 copy,
    or ImagingError naming the first bad point (`names[i]`, default 'point i'): non-finite coordinates or a point
    outside [0, w] x [0, h]."""
    array = np.zeros((0, 2)) if np.size(points) == 0 else _check_rows(points, 2, "points of shape Px2 (x, y)")
    x, y = array.T
    with np.errstate(invalid="ignore"):
        outside = (x < 0) | (y < 0) | (x > w) | (y > h)
    first = _first_bad(array, outside, names, "point", "(x, y)")
    if first is None:
        return array
    raise ImagingError(
        f"{first[1]} lies outside the image of shape ({h}, {w}); expected 0 <= x <= {w} and 0 <= y <= {h}"
    )


# --------------------------------------------------------------------------------------------------------------
# Sparse prompts: a box and clicks -> SAM's points and labels.
# --------------------------------------------------------------------------------------------------------------


class PointLabel(IntEnum):
    """SAM's point labels (`PromptEncoder`, its ONNX decoder's `point_labels`): what each sparse-prompt point is."""

    PADDING = -1  # no point: stands in for the absent box, as `PromptEncoder._embed_points(pad=True)` adds it
    BACKGROUND = 0
    FOREGROUND = 1
    BOX_TOP_LEFT = 2
    BOX_BOTTOM_RIGHT = 3


def _no_points() -> np.ndarray:
    return np.zeros((0, 2))


@dataclass(frozen=True, eq=False)
class SparsePrompt:
    """One prompt for the decoder in image coordinates: an optional XYXY box (4,) and foreground and background
    clicks (F, 2) and (B, 2) as (x, y), all float64. Build it with `checked` from untrusted values."""

    box: np.ndarray | None = None
    foreground: np.ndarray = field(default_factory=_no_points)
    background: np.ndarray = field(default_factory=_no_points)

    @classmethod
    def checked(
        cls,
        box: Sequence[float] | None,
        foreground: Sequence[Sequence[float]],
        background: Sequence[Sequence[float]],
        h: int,
        w: int,
        name: str = "the prompt",
    ) -> SparsePrompt:
        """The prompt on an h x w image, or ImagingError naming `name`'s bad box or click (by its index)."""
        return cls(
            None if box is None else check_boxes([box], h, w, [f"{name}'s box"])[0],
            check_points(foreground, h, w, [f"{name}'s foreground click {i}" for i in range(len(foreground))]),
            check_points(background, h, w, [f"{name}'s background click {i}" for i in range(len(background))]),
        )

    def to_model(self, geometry: Geometry, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(P, 2) float32 points in model coordinates and their (P,) float32 `PointLabel`s, in SamPredictor's order:
        the clicks (foreground, then background), then the box's two corners, or one padding point where there is
        no box. P = clicks + 2 with a box, clicks + 1 without."""
        clicks = np.concatenate([self.foreground, self.background])
        labels = [PointLabel.FOREGROUND] * len(self.foreground) + [PointLabel.BACKGROUND] * len(self.background)
        points = [geometry.points_to_model(clicks, frame)]
        if self.box is None:
            points.append(np.zeros((1, 2)))
            labels.append(PointLabel.PADDING)
        else:
            points.append(geometry.box_to_model(self.box[None], frame).reshape(2, 2))
            labels += [PointLabel.BOX_TOP_LEFT, PointLabel.BOX_BOTTOM_RIGHT]
        return np.concatenate(points).astype(np.float32), np.array(labels, np.float32)

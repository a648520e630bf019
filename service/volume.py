"""A DICOM series as a volume: its 2-D slices in order along the slice normal, one regular stack.

Propagation (a box on one slice -> the structure on every slice it spans) and one DICOM SEG per series need the
slices in space, and a client's slice index z means the same slice on every call: the order is the position of each
slice along the normal of its ImageOrientationPatient (row cosines x column cosines), never InstanceNumber or the
order files came in, which archives and scanners do not keep consistent. A volume is either several single-frame
instances of one series or one enhanced multi-frame instance (a position per frame in its
PerFrameFunctionalGroupsSequence); a classic multi-frame image has no per-frame position and is refused.

Only header attributes are read, never a pixel. Every refusal is a `RequestError` sentence naming the rule, counts
and indices (an instance's index in the input, or a frame's in the multi-frame instance), never a UID or another
value from the files: 400 when the request put together what is not one series (too few slices, several series, an
instance twice), 422 when the series cannot form a volume.

Tolerances. Orientations may differ by `ORIENTATION_TOLERANCE` per direction cosine (round-off in the DS strings;
about 0.006 degrees, under a twentieth of a millimetre across a 500 mm field). Neighbouring slices must lie within
`SPACING_TOLERANCE` (relative) plus `SLACK_MM` of the median spacing: a missing slice is a 100% deviation, a slice
that round-off moved is under 1%, and the absolute slack keeps thin slices (0.5 mm, positions written to 0.01 mm)
from failing on round-off alone. Slices closer than `SLACK_MM` are the same position (a duplicate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from service.dicom import DicomImage, _functional_group
from service.errors import RequestError

__all__ = [
    "ORIENTATION_TOLERANCE",
    "SLACK_MM",
    "SPACING_TOLERANCE",
    "Slice",
    "SliceImage",
    "Stack",
    "Volume",
    "build_volume",
    "patient_affine",
    "stack_planes",
]

ORIENTATION_TOLERANCE = 1e-4  # the most a direction cosine of a slice may differ from the first slice's
SPACING_TOLERANCE = 0.10  # the most a neighbour spacing may differ from the median spacing, relative to it
SLACK_MM = 0.01  # what DS round-off moves a position by: spacing slack, and the distance of a duplicate
_UNIT_SLACK = 1e-2  # how far direction cosines may be from unit length and orthogonality (not a plane otherwise)


class SliceImage(Protocol):
    """What segmenting a slice needs of the image it is a frame of: a DICOM image, or an uploaded NIfTI or NRRD volume
    (`service.volumes`), whose frames are its slices."""

    @property
    def file_digest(self) -> str: ...

    def display(self, frame: int, preset: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Slice:
    """One 2-D slice of a volume: frame `frame` (0 for a single-frame instance) of `image`, `position` mm along the
    volume's normal."""

    image: SliceImage
    frame: int
    uid: str  # the instance's SOP Instance UID
    position: float


@dataclass(frozen=True)
class Volume:
    """The slices of one series in ascending position along `normal` (a unit vector in patient coordinates); a
    slice's index in `slices` is the slice index z clients use."""

    slices: tuple[Slice, ...]
    rows: int
    columns: int
    spacing: float  # mm between neighbouring slices (the median)
    normal: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.slices)


@dataclass(frozen=True)
class Stack:
    """Where the planes of some instances of one series lie: what a volume and a DICOM SEG over several instances
    both need (one series, size, frame of reference and orientation; a position of its own for each plane)."""

    planes: tuple[tuple[int, int], ...]  # (instance index, frame), ascending along the normal
    positions: tuple[float, ...]  # mm along the normal, of `planes` in their order
    normal: tuple[float, float, float]


def build_volume(images: Sequence[DicomImage], *, tolerance: float = SPACING_TOLERANCE) -> Volume:
    """The volume of `images` (several single-frame instances of one series, in any order, or one enhanced
    multi-frame instance); `tolerance` is the relative deviation from the median spacing a neighbour spacing may
    have (plus `SLACK_MM`). Header attributes only: no pixel is decoded."""
    count = sum(image.frames for image in images)
    if count < 2:
        raise RequestError(f"expected a series of at least 2 slices to form a volume, found {count}")
    stack = stack_planes([image.dataset for image in images])
    positions = np.asarray(stack.positions)
    spacings = np.diff(positions)
    spacing = float(np.median(spacings))
    off = np.flatnonzero(np.abs(spacings - spacing) > tolerance * spacing + SLACK_MM)
    if off.size:
        z = int(off[0])
        raise RequestError(
            f"expected neighbouring slices equally spaced along the normal (within {tolerance:.0%} of the median "
            f"spacing), found {spacings[z] / spacing:.2f} times the median between sorted slices {z} and {z + 1} "
            f"(a missing or an extra slice)",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    slices = tuple(
        Slice(images[instance], frame, str(images[instance].dataset.SOPInstanceUID), position)
        for (instance, frame), position in zip(stack.planes, stack.positions, strict=True)
    )
    return Volume(slices, images[0].rows, images[0].columns, spacing, stack.normal)


def patient_affine(volume: Volume) -> np.ndarray:
    """4x4 float64: voxel index (i, j, k) = (column, row, slice along the normal) -> patient coordinates in mm (LPS,
    DICOM's frame). The array order ITK gives a DICOM series, so a label volume written with it overlays the series
    in every viewer. Slices are equally spaced (`build_volume` checked), so slice 0's position and the normal fix
    them all."""
    first = volume.slices[0]
    ds = first.image.dataset  # type: ignore[attr-defined]  # a DICOM volume's slices are DicomImages
    name = "slice 0"
    orientation = _numbers(ds, first.frame, "PlaneOrientationSequence", "ImageOrientationPatient", 6, name)
    origin = _numbers(ds, first.frame, "PlanePositionSequence", "ImagePositionPatient", 3, name)
    spacing = _numbers(ds, first.frame, "PixelMeasuresSequence", "PixelSpacing", 2, name)  # row, column spacing
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * spacing[1]  # along a row: the next column
    affine[:3, 1] = orientation[3:] * spacing[0]  # down a column: the next row
    affine[:3, 2] = np.asarray(volume.normal) * volume.spacing
    affine[:3, 3] = origin
    return affine


def stack_planes(datasets: Sequence[Dataset]) -> Stack:
    """The planes of `datasets` (at least one: several single-frame instances, or one enhanced multi-frame one)
    sorted along their common normal, or a `RequestError` naming the rule they break (see the module docstring)."""
    frames = [_frames(ds) for ds in datasets]
    multiframe = [index for index, count in enumerate(frames) if count > 1]
    if multiframe and len(datasets) > 1:
        raise _unstackable(
            f"expected several single-frame instances of one series or one enhanced multi-frame instance, found a "
            f"multi-frame instance (instance {multiframe[0]}) among {len(datasets)} instances"
        )
    if multiframe and "PerFrameFunctionalGroupsSequence" not in datasets[0]:
        raise _unstackable(
            "expected an enhanced multi-frame image (a position per frame in its PerFrameFunctionalGroupsSequence), "
            "found a classic multi-frame image without per-frame positions"
        )
    _check_one_series(datasets)
    planes = [(instance, frame) for instance, count in enumerate(frames) for frame in range(count)]
    # A plane is named in a message by its frame in the one multi-frame instance, else by its instance's index.
    kind, part = ("frame", 1) if multiframe else ("instance", 0)
    names = [f"{kind} {plane[part]}" for plane in planes]
    orientations = [
        _numbers(datasets[i], f, "PlaneOrientationSequence", "ImageOrientationPatient", 6, name)
        for (i, f), name in zip(planes, names, strict=True)
    ]
    for name, orientation in zip(names, orientations, strict=True):
        if np.abs(orientation - orientations[0]).max() > ORIENTATION_TOLERANCE:
            raise _unstackable(
                f"expected every slice in one orientation (direction cosines within {ORIENTATION_TOLERANCE:g} of "
                f"{names[0]}'s), found {name} in another"
            )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    normal /= np.linalg.norm(normal)
    positions = np.array(
        [
            _numbers(datasets[i], f, "PlanePositionSequence", "ImagePositionPatient", 3, name) @ normal
            for (i, f), name in zip(planes, names, strict=True)
        ]
    )
    order = np.argsort(positions, kind="stable")
    close = np.flatnonzero(np.diff(positions[order]) <= SLACK_MM)
    if close.size:
        first, second = (planes[order[close[0] + k]][part] for k in (0, 1))
        where = " (PlanePositionSequence)" if multiframe else " (ImagePositionPatient)"
        raise _unstackable(
            f"expected each slice at its own position along the slice normal{where}, found {kind}s that share one "
            f"({kind}s {first} and {second})"
        )
    return Stack(
        tuple(planes[k] for k in order),
        tuple(float(p) for p in positions[order]),
        (float(normal[0]), float(normal[1]), float(normal[2])),
    )


def _frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):  # `read_dicom` refuses such a header; a dataset built elsewhere may have one
        raise _unstackable("expected NumberOfFrames to be one integer, found another value") from None


def _check_one_series(datasets: Sequence[Dataset]) -> None:
    """One series (400), each instance once (400), one study, frame of reference and size (422)."""
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    if len(series) > 1:
        raise RequestError(
            f"mixed series: expected instances of one series (one SeriesInstanceUID), found {len(series)} series "
            f"among {len(datasets)} instances"
        )
    seen: dict[str, int] = {}
    for index, ds in enumerate(datasets):
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if not uid:
            raise _unstackable(f"expected a SOPInstanceUID on every instance, found instance {index} without one")
        if uid in seen:
            raise RequestError(
                f"expected each instance once, found instance {index} repeating instance {seen[uid]} (the same "
                "SOPInstanceUID)"
            )
        seen[uid] = index
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")) for ds in datasets}
        if len(values) > 1:
            raise _unstackable(
                f"expected the instances of a series to share one {keyword} (positions are compared within one), "
                f"found {len(values)} different ones"
            )
    sizes = [(int(ds.Rows), int(ds.Columns)) for ds in datasets]
    for index, size in enumerate(sizes):
        if size != sizes[0]:
            raise _unstackable(
                f"expected every instance to have instance 0's {sizes[0][0]}x{sizes[0][1]} pixels (rows x columns), "
                f"found instance {index} with {size[0]}x{size[1]}"
            )


def _numbers(ds: Dataset, frame: int, sequence: str, keyword: str, count: int, name: str) -> np.ndarray:
    """`count` finite numbers of `keyword`, for frame `frame`: from the frame's functional group `sequence` in an
    enhanced image, from the top level in a classic one. Direction cosines (6) must be two orthogonal unit vectors."""
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    item = _functional_group(ds, frame, sequence) if enhanced else ds
    try:
        value = None if item is None else item.get(keyword)
        numbers = None if value is None or value == "" else np.array([float(v) for v in value], np.float64)
    except Exception:  # one value, or text that is not a number (pydicom's texts may quote the value)
        numbers = np.array([])
    if numbers is None:
        where = f" (in its {sequence})" if enhanced else ""
        raise _unstackable(f"expected an {keyword} for every slice{where}, found {name} without one")
    valid = numbers.shape == (count,) and bool(np.isfinite(numbers).all())
    if valid and count == 6:
        row, column = numbers[:3], numbers[3:]
        valid = bool(
            abs(np.linalg.norm(row) - 1) <= _UNIT_SLACK
            and abs(np.linalg.norm(column) - 1) <= _UNIT_SLACK
            and abs(row @ column) <= _UNIT_SLACK
        )
    if not valid:
        raise _unstackable(
            "expected each slice's ImageOrientationPatient and ImagePositionPatient to be six and three numbers (the "
            f"orientation two orthogonal unit vectors), found other values for {name}"
        )
    return numbers


def _unstackable(sentence: str) -> RequestError:
    return RequestError(sentence, HTTPStatus.UNPROCESSABLE_ENTITY)

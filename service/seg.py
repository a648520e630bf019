"""The `/segment/seg` answer: one DICOM SEG instance (highdicom, BINARY) that references the source image.

PACS viewers show a SEG over the image it references, so the SEG copies the source's patient and study and
points at its SOPInstanceUID (and, for a multi-frame source, at each frame it segments). One segment per distinct
request label, in order of first appearance; the masks of one label on one frame are OR-ed.

Supported sources: single-frame images (CT, MR, secondary capture, ...) and *enhanced* multi-frame images (a
frame of reference and per-frame functional groups, e.g. Enhanced CT/MR or legacy-converted enhanced images).
Classic multi-frame images (RT Dose, multi-frame secondary capture, cine ultrasound) have no per-frame geometry
highdicom can reference, and are refused with a 422. So is an enhanced image whose functional groups do not give
highdicom what it copies (one per-frame item per frame, a shared orientation and pixel spacing, a distinct position
per frame): `build_seg` checks those rules before highdicom runs and names the attribute, never its value.

One SEG may also cover a whole series (`build_series_seg`, over a `service.volume.Volume`) or several single-frame
instances of one series (`build_instances_seg`): its source images are all those instances (one series, size, frame
of reference and orientation, each at its own position; `service.volume.stack_planes` checks that), and each of its
frames references the instance it segments. All three builders are one core, `build_instances_seg`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import get_image_coordinate_system
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from service.dicom import DicomImage, check_per_frame_groups
from service.errors import RequestError
from service.schemas import check_segment_label
from service.volume import SliceImage, Volume, stack_planes

__all__ = [
    "Algorithm",
    "InstanceMask",
    "SegmentMask",
    "SliceMask",
    "build_instances_seg",
    "build_seg",
    "build_series_seg",
]

MANUFACTURER = "MedSAMix"
# dcmqi's convention for derived segmentation series; one SEG instance per series, so instance number 1.
SERIES_NUMBER = 300
INSTANCE_NUMBER = 1
# What a segment is, for a viewer: the label says which structure; the coded concepts only say "some tissue".
PROPERTY_CATEGORY = codes.SCT.Tissue
PROPERTY_TYPE = codes.SCT.Tissue


@dataclass(frozen=True)
class SegmentMask:
    """One prompt's mask: HxW bool in the source image's pixel grid, on frame `frame` (0-based)."""

    label: str
    frame: int
    mask: np.ndarray


@dataclass(frozen=True)
class Algorithm:
    """The model that made the masks, written into each segment's algorithm identification."""

    name: str
    version: str
    manifest_sha256: str


@dataclass(frozen=True)
class SliceMask:
    """One mask on slice `slice` of a volume (an index into `Volume.slices`): HxW bool in the series' pixel grid."""

    label: str
    slice: int
    mask: np.ndarray


@dataclass(frozen=True)
class InstanceMask:
    """One mask on frame `frame` (0-based; 0 for a single-frame image) of source image `instance` (an index into
    the source images): HxW bool in that image's pixel grid."""

    label: str
    instance: int
    frame: int
    mask: np.ndarray


def build_seg(
    source: pydicom.Dataset, masks: Sequence[SegmentMask], algorithm: Algorithm, *, frames: int
) -> hd.seg.Segmentation:
    """A DICOM SEG (explicit VR little endian) for `masks` drawn on `source` (`frames` frames); `service.dicom.part10`
    writes it as a file, STOW-RS stores it as it is."""
    source_frames = _frame_count(source)
    if frames != source_frames:
        raise ValueError(f"expected frames to equal the source's {source_frames} frames, found {frames}")
    return build_instances_seg([source], [InstanceMask(m.label, 0, m.frame, m.mask) for m in masks], algorithm)


def build_series_seg(volume: Volume, masks: Sequence[SliceMask], algorithm: Algorithm) -> hd.seg.Segmentation:
    """One DICOM SEG for a whole series: its source images are every instance of `volume` (a single-frame series'
    instances, or the one enhanced multi-frame instance), its frames the slices `masks` are not empty on."""
    instances: dict[int, tuple[int, SliceImage]] = {}  # id(image) -> (source index, image), in slice order
    for plane in volume.slices:
        instances.setdefault(id(plane.image), (len(instances), plane.image))
    items = []
    for index, mask in enumerate(masks):
        if not 0 <= mask.slice < len(volume):
            raise RequestError(f"expected mask {index}'s slice in 0..{len(volume) - 1}, found {mask.slice}")
        where = volume.slices[mask.slice]
        items.append(InstanceMask(mask.label, instances[id(where.image)][0], where.frame, mask.mask))
    sources = []
    for _, image in instances.values():
        assert isinstance(image, DicomImage), "a series SEG is asked for only on a DICOM series' volume"
        sources.append(image.dataset)
    return build_instances_seg(sources, items, algorithm)


def build_instances_seg(
    sources: Sequence[pydicom.Dataset], masks: Sequence[InstanceMask], algorithm: Algorithm
) -> hd.seg.Segmentation:
    """A DICOM SEG (explicit VR little endian) for `masks` drawn on `sources`: one source image (single- or enhanced
    multi-frame) or several single-frame instances of one series (in any order). One segment per distinct label in
    order of first appearance, the masks of one label on one frame OR-ed; frames only where a mask is not empty."""
    if not masks:
        raise RequestError("expected at least one mask to write into a DICOM SEG, found none")
    if not sources:
        raise ValueError("expected at least one source image, found none")
    frames = [_frame_count(source) for source in sources]
    sources = _check_sources(sources, frames)
    first = sources[0]
    labels, pixels = _stack(masks, rows=int(first.Rows), columns=int(first.Columns), frames=frames)
    identification = hd.AlgorithmIdentificationSequence(
        name=f"{MANUFACTURER} {algorithm.name}",
        family=codes.DCM.ArtificialIntelligence,
        version=algorithm.version,
        parameters={"manifest_sha256": algorithm.manifest_sha256},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=PROPERTY_CATEGORY,
            segmented_property_type=PROPERTY_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for number, label in enumerate(labels, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=INSTANCE_NUMBER,
            series_description=f"{MANUFACTURER} {algorithm.name} segmentation",
            manufacturer=MANUFACTURER,
            manufacturer_model_name=f"{MANUFACTURER} {algorithm.name}",
            software_versions=algorithm.version,
            device_serial_number=algorithm.manifest_sha256,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            # Omitting every frame is impossible; an all-empty answer keeps its (empty) frames instead of warning.
            omit_empty_frames=bool(pixels.any()),
            # Labels are free text from the request; UTF-8 holds any of them and any copied patient name.
            specific_character_set="ISO_IR 192",
        )
    except AttributeError as error:
        # pydicom names the missing attribute's keyword (never a value); anything else is our bug.
        if error.name is None or tag_for_keyword(error.name) is None:
            raise
        raise _lacks(error.name) from error
    except ValueError as error:
        # highdicom's one ValueError about the source itself that our checks above cannot foresee.
        if "FrameOfReferenceUID" in first:
            raise
        raise _lacks("FrameOfReferenceUID") from error
    return seg


def _frame_count(source: pydicom.Dataset) -> int:
    return int(source.get("NumberOfFrames") or 1)


def _check_sources(sources: Sequence[pydicom.Dataset], frames: Sequence[int]) -> list[pydicom.Dataset]:
    """The sources as highdicom is given them, after the checks of `_check_source` (each) and, for several, of
    `service.volume.stack_planes`: copies (sharing the elements) where a copied attribute is malformed or an
    orientation differs from the first source's by round-off only (`_highdicom_copy`; highdicom requires the very
    same ImageOrientationPatient of a series' instances, `stack_planes` allows `ORIENTATION_TOLERANCE`)."""
    if len(sources) > 1:
        stack_planes(sources)
    for source, count in zip(sources, frames, strict=True):
        _check_source(source, count)
    orientation = sources[0].get("ImageOrientationPatient")
    return [
        _highdicom_copy(source, orientation if len(sources) > 1 and index > 0 else None)
        for index, source in enumerate(sources)
    ]


# What highdicom parses of the source's Patient and General Study modules to copy it into the SEG, by the parser it
# uses; all are Type 2 there, so an empty value is valid DICOM.
_PARSED_ATTRIBUTES: dict[str, Callable[[Any], object]] = {
    "PatientBirthDate": DA,
    "PatientSex": hd.PatientSexValues,
    "StudyDate": DA,
    "StudyTime": TM,
}


def _highdicom_copy(source: pydicom.Dataset, orientation: Any = None) -> pydicom.Dataset:
    """`source`, or a copy of it (sharing its elements; the source itself is not changed) in which each of
    `_PARSED_ATTRIBUTES` whose value its parser rejects is empty, and the ImageOrientationPatient is `orientation`
    where one is given and the source's differs: archives hold images with malformed dates, and a malformed date is
    no reason to refuse their segmentation (highdicom would raise, with the value in its message)."""
    replaced: dict[str, Any] = {}
    for keyword, parse in _PARSED_ATTRIBUTES.items():
        value = source.get(keyword)
        if value in (None, ""):
            continue
        try:
            parse(value)
        except (ValueError, TypeError):
            replaced[keyword] = ""
    if orientation is not None and source.get("ImageOrientationPatient") != orientation:
        replaced["ImageOrientationPatient"] = orientation
    if not replaced:
        return source
    copy = pydicom.Dataset(dict(source.items()))
    copy.file_meta = source.file_meta
    for keyword, value in replaced.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, "the keywords replaced are the dictionary keywords named above"
        copy[tag] = pydicom.DataElement(tag, dictionary_VR(tag), value)
    return copy


def _check_source(source: pydicom.Dataset, frames: int) -> None:
    """Refuse (422) a source whose frames a DICOM SEG cannot reference, by the rule highdicom would break on.

    highdicom derives a SEG's geometry from a multi-frame source's functional groups: the pixel measures and the
    plane orientation from the shared item, one plane position from each per-frame item, and it sorts the frames
    along the slice normal, so every frame needs a position of its own. A single frame without a position is
    referenced as a whole; attributes the SEG only copies (patient, study, ...) are named when highdicom misses them.
    """
    if frames > 1 and not _is_enhanced(source):
        raise _unreferenceable(
            "expected a single-frame or an enhanced multi-frame source image (a frame of reference and per-frame "
            "functional groups), found a classic multi-frame image, which a DICOM SEG cannot reference"
        )
    if "PerFrameFunctionalGroupsSequence" not in source:
        return
    check_per_frame_groups(source, frames)
    shared = source.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    if not shared[0].get("PixelMeasuresSequence"):
        raise _unreferenceable(_lacks_shared("PixelMeasuresSequence"))
    system = get_image_coordinate_system(source)
    if system == hd.CoordinateSystemNames.SLIDE or (system is None and frames == 1):
        return
    if not shared[0].get("PlaneOrientationSequence"):
        raise _unreferenceable(_lacks_shared("PlaneOrientationSequence"))
    stack_planes([source])  # a position of its own for every frame


def _lacks_shared(keyword: str) -> str:
    return (
        f"expected the source image's SharedFunctionalGroupsSequence to hold a {keyword} (a DICOM SEG shares one "
        "over its frames), found none"
    )


def _unreferenceable(sentence: str) -> RequestError:
    return RequestError(sentence, HTTPStatus.UNPROCESSABLE_ENTITY)


def _is_enhanced(source: pydicom.Dataset) -> bool:
    """Whether a multi-frame source carries the per-frame geometry a SEG's frame references need."""
    return all(
        keyword in source
        for keyword in ("FrameOfReferenceUID", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
    )


def _stack(
    masks: Sequence[InstanceMask], *, rows: int, columns: int, frames: Sequence[int]
) -> tuple[list[str], np.ndarray]:
    """Distinct labels (first-appearance order) and the planes x rows x columns x labels bool array, OR-ed: a plane
    per frame of each source image in turn (highdicom's order: one multi-frame image's frames, or the instances)."""
    labels: dict[str, int] = {}
    for index, item in enumerate(masks):
        _check_label(item.label, index)
        labels.setdefault(item.label, len(labels))
    first_plane = np.cumsum([0, *frames])
    pixels = np.zeros((first_plane[-1], rows, columns, len(labels)), dtype=bool)
    for index, item in enumerate(masks):
        if not 0 <= item.instance < len(frames):
            raise RequestError(f"expected mask {index}'s source image in 0..{len(frames) - 1}, found {item.instance}")
        count = frames[item.instance]
        if not 0 <= item.frame < count:
            raise RequestError(f"expected mask {index}'s frame in 0..{count - 1}, found {item.frame}")
        if item.mask.shape != (rows, columns):
            raise RequestError(
                f"expected mask {index} to be {rows}x{columns} (the source image's rows x columns), "
                f"found shape {tuple(item.mask.shape)}"
            )
        pixels[first_plane[item.instance] + item.frame, :, :, labels[item.label]] |= item.mask.astype(bool, copy=False)
    return list(labels), pixels


def _check_label(label: str, index: int) -> None:
    """The request schema's SegmentLabel rule (`service.schemas.check_segment_label`), for callers that build
    masks themselves."""
    try:
        check_segment_label(label)
    except ValueError as error:
        raise RequestError(f"mask {index}'s label cannot be a DICOM segment label: {error}") from None


def _lacks(keyword: str) -> RequestError:
    """The 422 for a source without an attribute the SEG must copy; names the keyword, never a value."""
    return RequestError(
        f"expected the source image to carry the attributes a DICOM SEG must copy, found it lacks {keyword}",
        HTTPStatus.UNPROCESSABLE_ENTITY,
    )

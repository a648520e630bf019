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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import get_image_coordinate_system, get_normal_vector
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from service.dicom import check_per_frame_groups
from service.errors import RequestError
from service.schemas import check_segment_label

__all__ = ["Algorithm", "SegmentMask", "build_seg"]

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


def build_seg(
    source: pydicom.Dataset, masks: Sequence[SegmentMask], algorithm: Algorithm, *, frames: int
) -> hd.seg.Segmentation:
    """A DICOM SEG (explicit VR little endian) for `masks` drawn on `source` (`frames` frames); `service.dicom.part10`
    writes it as a file, STOW-RS stores it as it is."""
    if not masks:
        raise RequestError("expected at least one mask to write into a DICOM SEG, found none")
    source_frames = int(source.get("NumberOfFrames") or 1)
    if frames != source_frames:
        raise ValueError(f"expected frames to equal the source's {source_frames} frames, found {frames}")
    _check_source(source, frames)
    source = _parseable_copy(source)
    labels, pixels = _stack(masks, rows=int(source.Rows), columns=int(source.Columns), frames=frames)
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
            source_images=[source],
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
        if "FrameOfReferenceUID" in source:
            raise
        raise _lacks("FrameOfReferenceUID") from error
    return seg


# What highdicom parses of the source's Patient and General Study modules to copy it into the SEG, by the parser it
# uses; all are Type 2 there, so an empty value is valid DICOM.
_PARSED_ATTRIBUTES: dict[str, Callable[[Any], object]] = {
    "PatientBirthDate": DA,
    "PatientSex": hd.PatientSexValues,
    "StudyDate": DA,
    "StudyTime": TM,
}


def _parseable_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """`source`, or a copy of it (sharing its elements) in which each of `_PARSED_ATTRIBUTES` whose value its
    parser rejects is empty: archives hold images with malformed dates, and a malformed date is no reason to refuse
    their segmentation (highdicom would raise, with the value in its message)."""
    malformed = []
    for keyword, parse in _PARSED_ATTRIBUTES.items():
        value = source.get(keyword)
        if value in (None, ""):
            continue
        try:
            parse(value)
        except (ValueError, TypeError):
            malformed.append(keyword)
    if not malformed:
        return source
    copy = pydicom.Dataset(dict(source.items()))  # the same element objects: the source itself is not changed
    copy.file_meta = source.file_meta
    for keyword in malformed:
        tag = tag_for_keyword(keyword)
        copy[tag] = pydicom.DataElement(tag, dictionary_VR(tag), "")
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
    items = source.PerFrameFunctionalGroupsSequence
    for index, item in enumerate(items):
        if "ImagePositionPatient" not in (item.get("PlanePositionSequence") or [pydicom.Dataset()])[0]:
            raise _unreferenceable(
                "expected a PlanePositionSequence with an ImagePositionPatient in each "
                f"PerFrameFunctionalGroupsSequence item of the source image, found frame {index} without one"
            )
    try:
        normal = get_normal_vector(shared[0].PlaneOrientationSequence[0].ImageOrientationPatient)
        positions = np.array([item.PlanePositionSequence[0].ImagePositionPatient for item in items], np.float64)
        distances = positions @ normal
    except (AttributeError, TypeError, ValueError):  # not six and three numbers
        raise _unreferenceable(
            "expected the source image's ImageOrientationPatient and ImagePositionPatient to be six and three "
            "numbers, found other values or none"
        ) from None
    if len(np.unique(distances)) < frames:
        raise _unreferenceable(
            "expected each frame of the source image at its own position along the slice normal "
            "(PlanePositionSequence), found frames that share one, which a DICOM SEG cannot tell apart"
        )


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


def _stack(masks: Sequence[SegmentMask], *, rows: int, columns: int, frames: int) -> tuple[list[str], np.ndarray]:
    """Distinct labels (first-appearance order) and the frames x rows x columns x labels bool array, OR-ed."""
    labels: dict[str, int] = {}
    for index, item in enumerate(masks):
        _check_label(item.label, index)
        labels.setdefault(item.label, len(labels))
    pixels = np.zeros((frames, rows, columns, len(labels)), dtype=bool)
    for index, item in enumerate(masks):
        if not 0 <= item.frame < frames:
            raise RequestError(f"expected mask {index}'s frame in 0..{frames - 1}, found {item.frame}")
        if item.mask.shape != (rows, columns):
            raise RequestError(
                f"expected mask {index} to be {rows}x{columns} (the source image's rows x columns), "
                f"found shape {tuple(item.mask.shape)}"
            )
        pixels[item.frame, :, :, labels[item.label]] |= item.mask.astype(bool, copy=False)
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

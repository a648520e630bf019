"""The `/segment/seg` answer: one DICOM SEG instance (highdicom, BINARY) that references the source image.

PACS viewers show a SEG over the image it references, so the SEG copies the source's patient and study and
points at its SOPInstanceUID (and, for a multi-frame source, at each frame it segments). One segment per distinct
request label, in order of first appearance; the masks of one label on one frame are OR-ed.

Supported sources: single-frame images (CT, MR, secondary capture, ...) and *enhanced* multi-frame images (a
frame of reference and per-frame functional groups, e.g. Enhanced CT/MR or legacy-converted enhanced images).
Classic multi-frame images (RT Dose, multi-frame secondary capture, cine ultrasound) have no per-frame geometry
highdicom can reference, and are refused with a 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import highdicom as hd
import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from service.errors import RequestError

__all__ = ["Algorithm", "SegmentMask", "build_seg"]

MANUFACTURER = "MedSAMix"
# dcmqi's convention for derived segmentation series; one SEG instance per series, so instance number 1.
SERIES_NUMBER = 300
INSTANCE_NUMBER = 1
# What a segment is, for a viewer: the label says which structure; the coded concepts only say "some tissue".
PROPERTY_CATEGORY = codes.SCT.Tissue
PROPERTY_TYPE = codes.SCT.Tissue
LABEL_MAX_CHARS = 64  # SegmentLabel is an LO


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
    if frames > 1 and not _is_enhanced(source):
        raise RequestError(
            "expected a single-frame or an enhanced multi-frame source image (a frame of reference and per-frame "
            "functional groups), found a classic multi-frame image, which a DICOM SEG cannot reference",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
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
    """A SegmentLabel is an LO: 1..64 characters, no backslash, no control characters."""
    if not (isinstance(label, str) and 0 < len(label) <= LABEL_MAX_CHARS and "\\" not in label and label.isprintable()):
        raise RequestError(
            f"expected mask {index}'s label to be 1 to {LABEL_MAX_CHARS} printable characters without a backslash, "
            "found something else"
        )


def _lacks(keyword: str) -> RequestError:
    """The 422 for a source without an attribute the SEG must copy; names the keyword, never a value."""
    return RequestError(
        f"expected the source image to carry the attributes a DICOM SEG must copy, found it lacks {keyword}",
        HTTPStatus.UNPROCESSABLE_ENTITY,
    )

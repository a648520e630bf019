"""service/dicom: decoding checked against the files' own tags read by hand, and every refusal's status and sentence.

References are independent of the module under test: stored values are read straight from the Pixel Data bytes
with numpy, the Modality LUT is stored * slope + intercept from the tags, and display references go through
`service.imaging` (the one preprocessing implementation) on those hand-computed values.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from service.dicom import DicomImage, Limits, PixelBudget, _decodable_syntaxes, _truncated, default_preset, read_dicom
from service.errors import RequestError
from service.imaging import PRESETS, Window, to_uint8
from tests import dicomfiles as F
from tests.dicom_references import DCMTK_JPG_EXTENDED_SHA256, NONFINITE_SENTENCE, palette_rgb

HU = F.ct_hu()
FRAMES = np.stack([F.ct_hu(seed=10 + i) for i in range(3)])
RGB = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
CT = F.ct_image(HU)


# --------------------------------------------------------------------------------------------------------------
# Decoding and display.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_samples_decode_through_the_modality_lut(name: str) -> None:
    data = F.testdata(name)
    tags = F.read(data)
    assert tags.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian and tags.BitsAllocated == 16
    dtype = "<i2" if tags.PixelRepresentation else "<u2"
    stored = np.frombuffer(tags.PixelData, dtype).reshape(tags.Rows, tags.Columns)
    expected = stored * float(tags.get("RescaleSlope", 1)) + float(tags.get("RescaleIntercept", 0))

    image = read_dicom(data)
    assert (image.rows, image.columns, image.frames, image.samples) == (tags.Rows, tags.Columns, 1, 1)
    assert image.modality == tags.Modality
    values = image.values(0)
    assert values.dtype == np.float64 and values.shape == (tags.Rows, tags.Columns)
    np.testing.assert_array_equal(values, expected)

    display = image.display(0)
    if "WindowCenter" in tags:  # MR_small: the file's first window
        window = Window(float(tags.WindowCenter), float(tags.WindowWidth))
        np.testing.assert_array_equal(display, to_uint8(expected, window))
    else:  # CT_small: no VOI, so the CT default
        np.testing.assert_array_equal(display, to_uint8(expected, "ct_abdomen"))


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1000.0), (1.0, 0.0)])
def test_ct_values_and_every_preset_match_hand_computed_hu(slope: float, intercept: float) -> None:
    image = read_dicom(F.ct_image(HU, slope=slope, intercept=intercept))
    tags = image.dataset
    dtype = "<i2" if tags.PixelRepresentation else "<u2"
    stored = np.frombuffer(tags.PixelData, dtype).reshape(HU.shape)
    np.testing.assert_array_equal(stored * slope + intercept, HU)  # the file holds what we meant to write
    np.testing.assert_array_equal(image.values(0), HU)
    for name in PRESETS:
        np.testing.assert_array_equal(image.display(0, name), to_uint8(HU.astype(np.float64), name))


def test_file_window_is_used_unless_a_preset_is_given() -> None:
    image = read_dicom(F.ct_image(HU, window=(300.0, 1500.0)))
    np.testing.assert_array_equal(image.display(0), to_uint8(HU, Window(300.0, 1500.0)))
    np.testing.assert_array_equal(image.display(0, "ct_lung"), to_uint8(HU, "ct_lung"))


def test_modality_defaults_without_a_window() -> None:
    ct = read_dicom(CT)
    assert default_preset(ct) == "ct_abdomen"
    np.testing.assert_array_equal(ct.display(0), to_uint8(HU, "ct_abdomen"))
    mr = read_dicom(F.with_changes(CT, Modality="MR"))
    assert default_preset(mr) == "mr"
    np.testing.assert_array_equal(mr.display(0), to_uint8(HU, "mr"))
    other = read_dicom(F.with_changes(CT, Modality="OT"))
    assert default_preset(other) == "minmax"
    np.testing.assert_array_equal(other.display(0), to_uint8(HU, "minmax"))
    unnamed = read_dicom(F.with_changes(CT, delete=["Modality"]))
    assert unnamed.modality == "" and default_preset(unnamed) == "minmax"


@pytest.mark.parametrize("window", [None, (40.0, 400.0)])
def test_monochrome1_is_inverted_after_windowing(window: tuple[float, float] | None) -> None:
    image = read_dicom(F.ct_image(HU, monochrome1=True, window=window))
    np.testing.assert_array_equal(image.values(0), HU)  # the Modality LUT does not invert
    np.testing.assert_array_equal(image.display(0), 255 - to_uint8(HU, Window(*window) if window else "ct_abdomen"))
    np.testing.assert_array_equal(image.display(0, "ct_bone"), 255 - to_uint8(HU, "ct_bone"))


def test_voi_lut_sequence_then_min_max() -> None:
    values = np.random.default_rng(4).integers(0, 2500, (64, 80)).astype(np.int16)
    ds = F.ct_dataset(values, intercept=0.0)
    first, entries = 100, 2000
    table = (np.arange(entries, dtype=np.int64) ** 2 // entries).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [entries, first, 16])
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    ds.VOILUTSequence = [item]
    image = read_dicom(F.to_bytes(ds))
    mapped = table[np.clip(values.astype(np.int64) - first, 0, entries - 1)]  # PS3.3 C.11.2.1.1 by hand
    np.testing.assert_array_equal(image.display(0), to_uint8(mapped, "minmax"))


def test_multiframe_frames_are_the_frames_written() -> None:
    image = read_dicom(F.multiframe(FRAMES))
    assert (image.frames, image.rows, image.columns, image.samples) == (3, 64, 80, 1)
    for i, frame in enumerate(FRAMES):
        np.testing.assert_array_equal(image.values(i), frame)
        np.testing.assert_array_equal(image.display(i), to_uint8(frame, Window(40.0, 400.0)))  # Frame VOI LUT
    with pytest.raises(RequestError) as error:
        image.check_frame(3)
    assert error.value.status == 400
    assert str(error.value) == "frame 3 is out of range; the image has 3 frames (0-2)"


def test_rgb_round_trip_ignores_presets() -> None:
    image = read_dicom(F.rgb_image(RGB))
    assert image.samples == 3
    values = image.values(0)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, RGB)
    np.testing.assert_array_equal(image.display(0), RGB)
    np.testing.assert_array_equal(image.display(0, "ct_abdomen"), RGB)


SOURCES: dict[str, Callable[[], bytes]] = {
    "ct_unsigned": lambda: CT,
    "ct_signed": lambda: F.ct_image(HU, intercept=0.0),
    "multiframe": lambda: F.multiframe(FRAMES),
    "rgb": lambda: F.rgb_image(RGB),
}


@pytest.mark.parametrize("syntax", F.LOSSLESS_SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize("source", SOURCES)
def test_lossless_syntaxes_decode_bit_identically(source: str, syntax: str) -> None:
    plain = read_dicom(SOURCES[source]())
    packed = read_dicom(F.compressed(plain.dataset, syntax))
    assert packed.dataset.file_meta.TransferSyntaxUID == syntax
    for i in range(plain.frames):
        np.testing.assert_array_equal(packed.values(i), plain.values(i))
        np.testing.assert_array_equal(packed.display(i), plain.display(i))


def segmentation(source: Dataset, mask: np.ndarray) -> hd.seg.Segmentation:
    """A one-segment binary SEG of `mask` (HxW, or FxHxW for a multi-frame source) referencing `source`."""
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="liver",
                segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
                segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    "tests", hd.sr.CodedConcept("123109", "DCM", "Manual Processing"), "1"
                ),
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tests",
        manufacturer_model_name="tests",
        software_versions="1",
        device_serial_number="1",
    )


@pytest.mark.parametrize("source", ["ct_unsigned", "multiframe", "rgb"])
def test_a_seg_can_reference_the_decoded_dataset(source: str) -> None:
    """The service builds SEGs from `DicomImage.dataset`: highdicom must accept every test file kind as a source."""
    image = read_dicom(SOURCES[source]())
    mask = np.zeros((image.frames, image.rows, image.columns), bool)
    mask[:, 10:20, 10:30] = True
    seg = segmentation(image.dataset, mask if image.frames > 1 else mask[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.dataset.SeriesInstanceUID
    assert seg.NumberOfFrames == image.frames


def test_frames_are_cached_and_read_only() -> None:
    image = read_dicom(F.multiframe(FRAMES))
    first = image.values(1)
    assert image.values(1) is first and not first.flags.writeable


# --------------------------------------------------------------------------------------------------------------
# Refusals: status, one sentence, no tag value.
# --------------------------------------------------------------------------------------------------------------

_HEADER = F.read(CT)
SECRETS = [
    F.PATIENT_NAME,
    "Doe",
    "Secret",
    F.PATIENT_ID,
    F.ACCESSION_NUMBER,
    F.STUDY_DESCRIPTION,
    str(_HEADER.SOPInstanceUID),
    str(_HEADER.StudyInstanceUID),
    str(_HEADER.SeriesInstanceUID),
    "20240102",
    "19700101",
]


def assert_clean_sentence(error: RequestError) -> None:
    message = str(error)
    assert message and "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message), message
    assert "Traceback" not in message and "Error" not in message, message
    for secret in SECRETS:
        assert secret not in message, (secret, message)


def refuse(data: bytes, status: int, fragment: str, limits: Limits | None = None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        image = read_dicom(data, limits or Limits())
        for i in range(image.frames):
            image.values(i)
    assert caught.value.status == status, str(caught.value)
    assert fragment in str(caught.value), str(caught.value)
    assert_clean_sentence(caught.value)
    return caught.value


REFUSALS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "empty": (lambda: b"", 400, "not a DICOM file"),
    "random bytes": (lambda: np.random.default_rng(5).bytes(4000), 400, "not a DICOM file"),
    "png": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(500), 400, "not a DICOM file"),
    "truncated file meta": (lambda: CT[:200], 400, "truncated"),
    "truncated header": (lambda: CT[:1000], 400, "truncated"),
    "truncated pixel data": (lambda: CT[:-1], 400, "truncated"),
    "truncated encapsulated pixel data": (lambda: F.compressed(CT, JPEG2000Lossless)[:-300], 400, "truncated"),
    "frames without data": (lambda: F.with_changes(CT, NumberOfFrames=3), 400, "truncated"),
    "no pixel data": (lambda: F.with_changes(CT, delete=["PixelData"]), 422, "no pixel data"),
    "no rows": (lambda: F.with_changes(CT, delete=["Rows"]), 422, "Rows"),
    "zero rows": (lambda: F.with_changes(CT, Rows=0), 422, "0 row(s)"),
    "zero frames": (lambda: F.with_changes(CT, NumberOfFrames=0), 422, "0 frame(s)"),
    "huge frame": (lambda: F.with_changes(CT, Rows=60000, Columns=60000), 413, "3600000000 pixels"),
    "too many frames": (lambda: F.with_changes(CT, NumberOfFrames=100_000), 413, "100000 frames"),
    "two samples": (lambda: F.with_changes(CT, SamplesPerPixel=2), 422, "2 samples per pixel"),
    "palette colour without a palette": (
        lambda: F.with_changes(CT, PhotometricInterpretation="PALETTE COLOR"),
        422,
        "palette could not be applied",
    ),
    "photometric holding a name": (
        lambda: F.with_changes(CT, PhotometricInterpretation=F.PATIENT_NAME),
        422,
        "an unknown value",
    ),
    "12 bits allocated": (lambda: F.with_changes(CT, BitsAllocated=12), 422, "12 bits allocated"),
    "more bits stored than allocated": (lambda: F.with_changes(CT, BitsStored=17), 422, "17 bits stored"),
    "pixel representation 2": (lambda: F.with_changes(CT, PixelRepresentation=2), 422, "pixel representation 2"),
    "16-bit colour": (lambda: F.with_changes(F.rgb_image(RGB), BitsAllocated=16, BitsStored=16), 422, "16 bits"),
    "mpeg2": (lambda: F.compressed(CT, F.UNDECODABLE_SYNTAX), 415, "1.2.840.10008.1.2.4.100 (MPEG2"),
    "unknown syntax": (lambda: F.with_changes(CT, TransferSyntaxUID="1.2.3.4.5"), 415, "1.2.3.4.5"),
    "corrupt rle": (lambda: F.junk_frames(CT, RLELossless), 400, "frame 0 could not be decoded"),
    "corrupt 12-bit jpeg": (
        lambda: F.junk_frames(F.testdata("JPGExtended.dcm"), JPEGExtended12Bit),
        400,
        "frame 0 could not be decoded",
    ),
    # An element after Pixel Data whose declared length runs past the end of the file.
    "over-long padding after pixel data": (
        lambda: F.append_element(CT, 0xFFFCFFFC, "OB", 1000, bytes(10)),
        400,
        "truncated",
    ),
    "huge (not undefined) length after pixel data": (
        lambda: F.append_element(CT, 0xFFFCFFFC, "OB", 0xFFFFFFF0, bytes(10)),
        400,
        "truncated",
    ),
    "over-long private element after pixel data": (
        lambda: F.append_element(CT, 0x7FE11001, "UN", 0x7FFFFFFF, b"ABCD"),
        400,
        "truncated",
    ),
    "over-long element with a smaller tag after pixel data": (
        lambda: F.append_element(CT, 0x00091001, "OB", 1000, b"AB"),
        400,
        "truncated",
    ),
    "over-long short-length element with a smaller tag after pixel data": (
        lambda: F.append_element(CT, 0x00100010, "PN", 100, b"AB"),
        400,
        "truncated",
    ),
    "per-frame groups for fewer frames": (
        lambda: F.to_bytes(_drop_per_frame_items(F.multiframe_dataset(FRAMES), keep=1)),
        422,
        "1 PerFrameFunctionalGroupsSequence item(s) for 3 frame(s)",
    ),
    "per-frame groups for more frames (pydicom's liver_1frame.dcm)": (
        lambda: F.testdata("liver_1frame.dcm"),
        422,
        "3 PerFrameFunctionalGroupsSequence item(s) for 1 frame(s)",
    ),
    "corrupt jpeg 2000": (lambda: F.junk_frames(CT, JPEG2000Lossless), 400, "frame 0 could not be decoded"),
}


def _drop_per_frame_items(ds: Dataset, keep: int) -> Dataset:
    del ds.PerFrameFunctionalGroupsSequence[keep:]
    return ds


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("case", REFUSALS)
def test_refusals(case: str) -> None:
    build, status, fragment = REFUSALS[case]
    refuse(build(), status, fragment)


def test_undecodable_syntax_lists_the_installed_decoders() -> None:
    error = refuse(F.compressed(CT, F.UNDECODABLE_SYNTAX), 415, "cannot be decoded by this server")
    assert "RLE Lossless" in str(error) and "JPEG 2000 Image Compression (Lossless Only)" in str(error)


def test_limits_are_configurable_and_checked_before_pixels_are_touched() -> None:
    refuse(CT, 413, "at most 1000", Limits(max_pixels=1000))
    refuse(F.multiframe(FRAMES), 413, "at most 2", Limits(max_frames=2))
    start = time.perf_counter()
    refuse(F.with_changes(CT, Rows=65535, Columns=65535, NumberOfFrames=2000), 413, "pixels per frame")
    assert time.perf_counter() - start < 1.0


def test_decoded_pixels_are_bounded_per_request_across_its_images() -> None:
    frame = HU.size  # 64 x 80
    multi = read_dicom(F.multiframe(FRAMES), Limits(max_decoded_pixels=2 * frame))
    multi.reserve({0, 1})
    multi.values(1)  # reserved already: free
    with pytest.raises(RequestError, match=f"decodes at most {2 * frame} per request") as caught:
        multi.values(2)
    assert caught.value.status == 413
    budget = PixelBudget(3 * frame)  # a DICOMweb request: several instances, one budget
    first, second = read_dicom(CT, budget=budget), read_dicom(F.multiframe(FRAMES), budget=budget)
    first.values(0)
    second.reserve({0, 1})
    with pytest.raises(RequestError, match="1 more frame"):
        second.values(2)
    assert budget.spent == 3 * frame


def test_frame_and_preset_errors() -> None:
    image: DicomImage = read_dicom(CT)
    for frame, fragment in [(1, "frame 1 is out of range; the image has 1 frame (0)"), (-1, "frame -1"), ("0", "str")]:
        with pytest.raises(RequestError) as caught:
            image.values(frame)  # type: ignore[arg-type]
        assert caught.value.status == 400 and fragment in str(caught.value)
        assert_clean_sentence(caught.value)
    with pytest.raises(RequestError) as caught:
        image.display(0, "ct_liver")
    assert caught.value.status == 400 and "ct_abdomen" in str(caught.value)


def test_invalid_file_window_is_refused_not_guessed() -> None:
    image = read_dicom(F.with_changes(CT, WindowCenter=40, WindowWidth=0))
    with pytest.raises(RequestError) as caught:
        image.display(0)
    assert caught.value.status == 422 and "pass an intensity preset" in str(caught.value)
    assert_clean_sentence(caught.value)
    np.testing.assert_array_equal(image.display(0, "ct_abdomen"), to_uint8(HU, "ct_abdomen"))


def test_truncation_is_judged_without_the_values_pydicom_defers(tmp_path: Path) -> None:
    """A value pydicom defers (not read, because long: how an upload read lazily from a file holds Pixel Data) still
    counts: the element's declared length against the bytes from its offset to the end of the file."""
    over_long = F.append_element(CT, 0xFFFCFFFC, "OB", 0xFFFFFFF0, bytes(10))
    for data, truncated in ((CT, False), (CT[:-1], True), (over_long, True)):
        path = tmp_path / "upload.dcm"
        path.write_bytes(data)
        deferred = pydicom.dcmread(path, defer_size=256)
        last = deferred.get_item(0xFFFCFFFC if data is over_long else 0x7FE00010, keep_deferred=True)
        assert last.value is None  # deferred: not in memory
        assert _truncated(deferred, len(data)) is truncated


# --------------------------------------------------------------------------------------------------------------
# Non-finite intensities: one status and one sentence, whatever the display path.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rescale", [{"RescaleSlope": "1e308"}, {"RescaleSlope": "NaN"}, {"RescaleIntercept": "inf"}])
@pytest.mark.parametrize("path", ["file window", "voi lut", "preset", "modality default"])
def test_non_finite_values_are_one_422_whatever_the_display_path(rescale: dict[str, str], path: str) -> None:
    data = F.with_changes(CT, **rescale)  # 1e308 times a stored value overflows to inf
    if path == "file window":
        data = F.with_changes(data, WindowCenter=40, WindowWidth=400)
    elif path == "voi lut":
        data = F.with_voi_lut(data, np.arange(16))
    image = read_dicom(data)
    with pytest.raises(RequestError) as caught:
        image.display(0, "ct_abdomen" if path == "preset" else None)
    assert caught.value.status == 422 and str(caught.value) == NONFINITE_SENTENCE
    with pytest.raises(RequestError) as again:
        image.values(0)  # checked where the values are computed, so every caller sees it
    assert str(again.value) == NONFINITE_SENTENCE


def test_finite_extremes_still_decode() -> None:
    image = read_dicom(F.with_changes(CT, RescaleSlope="1e300"))
    np.testing.assert_array_equal(image.values(0), (HU.astype(np.float64) + 1024.0) * 1e300)


# --------------------------------------------------------------------------------------------------------------
# 12-bit JPEG Extended through GDCM; every syntax the 415 names really decodes.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm"])
def test_12_bit_jpeg_extended_decodes_as_dcmtk_does(name: str) -> None:
    data = F.testdata(name)
    tags = F.read(data)
    assert tags.file_meta.TransferSyntaxUID == JPEGExtended12Bit and tags.BitsStored == 12
    image = read_dicom(data)
    values = image.values(0)
    assert values.shape == (1024, 256)
    assert hashlib.sha256(values.astype("<u2").tobytes()).hexdigest() == DCMTK_JPG_EXTENDED_SHA256
    assert (values[420, 140], values[230, 120]) == (244, 95)  # pydicom's own reference values for these files
    np.testing.assert_array_equal(image.display(0), to_uint8(values, "minmax"))


def test_pydicoms_own_plugins_still_refuse_12_bit_jpeg_extended() -> None:
    """Why service/jpeg12.py exists: when this fails, pydicom decodes 12-bit JPEG Extended itself and the plugin
    can go."""
    ds = F.read(F.testdata("JPGExtended.dcm"))
    decoder = get_decoder(JPEGExtended12Bit)
    for plugin in ("gdcm", "pillow"):
        with pytest.raises(RuntimeError, match="does not support 'JPEG Extended' for samples with 12-bit precision"):
            decoder.as_array(ds, decoding_plugin=plugin)


# One sample per standard syntax that can be had here: pydicom's test files, pydicom's encoders, or a rewrite.
SYNTAX_SAMPLES: dict[UID, Callable[[], bytes]] = {
    ImplicitVRLittleEndian: lambda: F.with_changes(CT, TransferSyntaxUID=ImplicitVRLittleEndian),
    ExplicitVRLittleEndian: lambda: CT,
    DeflatedExplicitVRLittleEndian: lambda: F.testdata("image_dfl.dcm"),
    ExplicitVRBigEndian: lambda: F.testdata("MR_small_bigendian.dcm"),
    JPEGBaseline8Bit: lambda: F.testdata("SC_rgb_jpeg_dcmtk.dcm"),
    JPEGExtended12Bit: lambda: F.testdata("JPGExtended.dcm"),
    JPEGLosslessSV1: lambda: F.testdata("SC_rgb_jpeg_gdcm.dcm"),
    JPEGLSLossless: lambda: F.compressed(CT, JPEGLSLossless),
    JPEGLSNearLossless: lambda: F.testdata("JPEGLSNearLossless_08.dcm"),
    JPEG2000Lossless: lambda: F.compressed(CT, JPEG2000Lossless),
    JPEG2000: lambda: F.testdata("JPEG2000.dcm"),
    RLELossless: lambda: F.compressed(CT, RLELossless),
}
# Listed through GDCM (JPEG Lossless, any selection value) and pylibjpeg-openjpeg (HTJ2K), but nothing installed here
# writes them and pydicom ships no sample; checked by hand (DCMTK's `dcmcjpeg +el +sv 2`) for JPEG Lossless only.
UNSAMPLED = {JPEGLossless, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K}


def test_every_syntax_the_415_lists_decodes() -> None:
    error = str(refuse(F.compressed(CT, F.UNDECODABLE_SYNTAX), 415, "the decoders installed handle: "))
    listed = _decodable_syntaxes()  # what the sentence lists (names with commas in them: not split back here)
    assert error.endswith(", ".join(uid.name for uid in listed))
    assert JPEGExtended12Bit in listed and set(listed) <= {*SYNTAX_SAMPLES, *UNSAMPLED}
    for syntax in set(listed) - UNSAMPLED:
        image = read_dicom(SYNTAX_SAMPLES[syntax]())
        assert image.dataset.file_meta.TransferSyntaxUID == syntax
        assert image.values(0).shape[:2] == (image.rows, image.columns), syntax.name


# --------------------------------------------------------------------------------------------------------------
# Palette colour: through the image's own LUTs to RGB, then as any RGB image.
# --------------------------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(21)
PALETTES = {
    "8-bit indices, 16-bit entries": (
        _RNG.integers(0, 256, (64, 80), dtype=np.uint8),
        _RNG.integers(0, 65536, (256, 3), dtype=np.uint16),
    ),
    "8-bit indices, 8-bit entries": (
        _RNG.integers(0, 256, (64, 80), dtype=np.uint8),
        _RNG.integers(0, 256, (256, 3), dtype=np.uint8),
    ),
    "16-bit indices, 16-bit entries": (
        _RNG.integers(0, 4096, (64, 80), dtype=np.uint16),
        _RNG.integers(0, 65536, (4096, 3), dtype=np.uint16),
    ),
}


@pytest.mark.parametrize("case", PALETTES)
def test_palette_colour_is_decoded_through_its_palette(case: str) -> None:
    indices, lut = PALETTES[case]
    image = read_dicom(F.to_bytes(F.palette_dataset(indices, lut)))
    assert image.samples == 3
    expected = palette_rgb(indices, lut)
    np.testing.assert_array_equal(image.values(0), expected)
    np.testing.assert_array_equal(image.display(0), expected)
    np.testing.assert_array_equal(image.display(0, "ct_abdomen"), expected)  # presets do not apply to colour


def test_pydicoms_palette_sample_matches_its_lut_read_by_hand() -> None:
    data = F.testdata("examples_palette.dcm")
    tags = F.read(data)
    assert list(tags.RedPaletteColorLookupTableDescriptor) == [256, 0, 16]
    luts = np.stack(
        [np.frombuffer(tags[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")], -1
    )
    indices = np.frombuffer(tags.PixelData, np.uint8).reshape(tags.Rows, tags.Columns)
    np.testing.assert_array_equal(read_dicom(data).values(0), palette_rgb(indices, luts))


def _broken_palette(change: str) -> bytes:
    ds = F.palette_dataset(*PALETTES["8-bit indices, 16-bit entries"])
    if change == "no green data":
        del ds.GreenPaletteColorLookupTableData
    elif change == "12 bits per entry":
        ds.RedPaletteColorLookupTableDescriptor = [256, 0, 12]
    elif change == "short red data":
        ds.RedPaletteColorLookupTableData = ds.RedPaletteColorLookupTableData[:100]
    elif change == "no descriptors":
        for colour in ("Red", "Green", "Blue"):
            delattr(ds, f"{colour}PaletteColorLookupTableDescriptor")
    return F.to_bytes(ds)


@pytest.mark.parametrize("change", ["no green data", "12 bits per entry", "short red data", "no descriptors"])
def test_a_malformed_palette_is_one_422(change: str) -> None:
    error = refuse(_broken_palette(change), 422, "palette could not be applied")
    assert str(error) == (
        "the image's palette could not be applied; expected red, green and blue Palette Color Lookup Table "
        "descriptors and data of 8 or 16 bits per entry"
    )

"""service/seg.py: the DICOM SEG read back strictly with pydicom and highdicom, pixels against the masks given."""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from service import redaction
from service.dicom import DicomImage, part10, read_dicom
from service.errors import RequestError
from service.schemas import Prompt
from service.seg import (
    Algorithm,
    InstanceMask,
    SegmentMask,
    SliceMask,
    build_instances_seg,
    build_seg,
    build_series_seg,
)
from service.volume import ORIENTATION_TOLERANCE, Volume, build_volume
from tests import dicomfiles as F

ALGORITHM = Algorithm(name="demo", version="0.3.1", manifest_sha256="0123456789abcdef" * 4)
N_FRAMES = 4


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Invalid values raise while writing and reading (pydicom's strict mode), as highdicom's own tests do."""
    with pydicom.config.strict_reading():
        previous = pydicom.config.settings.writing_validation_mode
        pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
        try:
            yield
        finally:
            pydicom.config.settings.writing_validation_mode = previous


def single_frame(name: str) -> pydicom.Dataset:
    """One of pydicom's bundled single-frame images (shipped with the package, no download)."""
    return pydicom.dcmread(get_testdata_file(name, download=False))


@pytest.fixture(scope="module")
def enhanced_ct() -> pydicom.Dataset:
    """A 4-frame Legacy Converted Enhanced CT: CT_small restacked along z, through highdicom's own converter."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    series = hd.UID()
    slices = []
    for index in range(N_FRAMES):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = hd.UID()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 5.0 * index]
        ds.PixelData = (base.pixel_array + 10 * index).astype(base.pixel_array.dtype).tobytes()
        slices.append(ds)
    image = hd.legacy.LegacyConvertedEnhancedCTImage(slices, hd.UID(), 7, hd.UID(), 1)
    return pydicom.dcmread(io.BytesIO(part10(image)))


def read_back(seg: hd.seg.Segmentation) -> hd.seg.Segmentation:
    """Write the SEG as the service answers it (a Part-10 file), parse that (strict) and read it with highdicom."""
    data = part10(seg)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    return hd.seg.segread(io.BytesIO(data))


def box_mask(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def segment_pixels(seg: hd.seg.Segmentation, source: pydicom.Dataset, number: int) -> np.ndarray:
    """Frames x rows x columns of one segment, in the source's frame order."""
    if int(source.get("NumberOfFrames") or 1) == 1:
        return seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[number])[..., 0]
    return seg.get_pixels_by_source_frame(
        source.SOPInstanceUID, source_frame_numbers=list(range(1, N_FRAMES + 1)), segment_numbers=[number]
    )[..., 0]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_single_frame_source_is_referenced_with_one_segment_per_label(name: str) -> None:
    source = single_frame(name)
    shape = (int(source.Rows), int(source.Columns))
    liver, kidney = box_mask(shape, 5, 20, 10, 30), box_mask(shape, 30, 40, 2, 9)
    seg = read_back(
        build_seg(source, [SegmentMask("liver", 0, liver), SegmentMask("kidney", 0, kidney)], ALGORITHM, frames=1)
    )

    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)]
    assert seg.SegmentationType == "BINARY" and seg.Manufacturer == "MedSAMix"
    assert seg.SoftwareVersions == "0.3.1" and seg.SeriesDescription == "MedSAMix demo segmentation"
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()] == ["liver", "kidney"]
    for number in (1, 2):
        description = seg.get_segment_description(number)
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert description.segmented_property_category.meaning == "Tissue"
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == "MedSAMix demo"
        assert algorithm.AlgorithmVersion == "0.3.1"
        assert ALGORITHM.manifest_sha256 in algorithm.AlgorithmParameters
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    np.testing.assert_array_equal(segment_pixels(seg, source, 1)[0], liver)
    np.testing.assert_array_equal(segment_pixels(seg, source, 2)[0], kidney)


def test_multi_frame_source_frames_map_to_the_source_frames(enhanced_ct: pydicom.Dataset) -> None:
    shape = (int(enhanced_ct.Rows), int(enhanced_ct.Columns))
    masks = [
        SegmentMask("liver", 1, box_mask(shape, 5, 20, 10, 30)),
        SegmentMask("spleen", 3, box_mask(shape, 50, 60, 70, 90)),
        SegmentMask("liver", 2, box_mask(shape, 40, 41, 0, 128)),
    ]
    seg = read_back(build_seg(enhanced_ct, masks, ALGORITHM, frames=N_FRAMES))

    assert int(seg.NumberOfFrames) == 3  # frame 0 segments nothing: omitted
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()] == ["liver", "spleen"]
    expected = np.zeros((2, N_FRAMES, *shape), bool)
    for item in masks:
        expected[0 if item.label == "liver" else 1, item.frame] = item.mask
    for number in (1, 2):
        np.testing.assert_array_equal(segment_pixels(seg, enhanced_ct, number), expected[number - 1])
    referenced = {
        (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber))
        for frame in seg.PerFrameFunctionalGroupsSequence
        for ref in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced == {(enhanced_ct.SOPInstanceUID, n) for n in (2, 3, 4)}


def test_same_label_on_the_same_frame_is_or_ed() -> None:
    source = single_frame("CT_small.dcm")
    a, b = box_mask((128, 128), 0, 10, 0, 10), box_mask((128, 128), 5, 20, 5, 20)
    seg = read_back(build_seg(source, [SegmentMask("lesion", 0, a), SegmentMask("lesion", 0, b)], ALGORITHM, frames=1))
    assert seg.get_segment_numbers() == [1]
    np.testing.assert_array_equal(segment_pixels(seg, source, 1)[0], a | b)


def test_all_empty_masks_still_make_a_valid_seg() -> None:
    source = single_frame("MR_small.dcm")
    seg = read_back(build_seg(source, [SegmentMask("nothing", 0, np.zeros((64, 64), bool))], ALGORITHM, frames=1))
    assert not segment_pixels(seg, source, 1).any()


def test_non_ascii_label_round_trips() -> None:
    source = single_frame("CT_small.dcm")
    mask = box_mask((128, 128), 1, 3, 1, 3)
    seg = read_back(build_seg(source, [SegmentMask("Leber – Läsion", 0, mask)], ALGORITHM, frames=1))
    assert seg.get_segment_description(1).SegmentLabel == "Leber – Läsion"
    assert seg.PatientName == source.PatientName


def test_no_masks_is_refused() -> None:
    with pytest.raises(RequestError, match="at least one mask") as info:
        build_seg(single_frame("CT_small.dcm"), [], ALGORITHM, frames=1)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "item, match",
    [
        (SegmentMask("liver", 0, np.zeros((128, 127), bool)), "mask 1 to be 128x128 .* found shape \\(128, 127\\)"),
        (SegmentMask("liver", 0, np.zeros((1, 128, 128), bool)), "mask 1 to be 128x128"),
        (SegmentMask("liver", 1, np.zeros((128, 128), bool)), "mask 1's frame in 0..0, found 1"),
        (SegmentMask("liver", -1, np.zeros((128, 128), bool)), "frame in 0..0, found -1"),
        (SegmentMask("", 0, np.zeros((128, 128), bool)), "mask 1's label .* found 0 characters"),
        (SegmentMask("x" * 65, 0, np.zeros((128, 128), bool)), "1 to 64 printable .* found 65 characters"),
        (SegmentMask("a\\b", 0, np.zeros((128, 128), bool)), "without a backslash, found a backslash"),
        (SegmentMask("a\nb", 0, np.zeros((128, 128), bool)), "found a control or other non-printable character"),
    ],
)
def test_bad_masks_are_refused(item: SegmentMask, match: str) -> None:
    good = SegmentMask("liver", 0, np.zeros((128, 128), bool))
    with pytest.raises(RequestError, match=match) as info:
        build_seg(single_frame("CT_small.dcm"), [good, item], ALGORITHM, frames=1)
    assert info.value.status == 400


@pytest.mark.parametrize("keyword", ["PatientID", "StudyDate", "FrameOfReferenceUID", "ImageOrientationPatient"])
def test_source_without_required_attributes_is_a_422_naming_the_keyword(keyword: str) -> None:
    source = single_frame("CT_small.dcm")
    values = {
        str(e.value) for e in source if e.keyword and e.VR in ("LO", "PN", "UI", "DA", "SH") and len(str(e.value)) > 3
    }
    delattr(source, keyword)
    with pytest.raises(RequestError, match=f"lacks {keyword}") as info:
        build_seg(source, [SegmentMask("liver", 0, np.ones((128, 128), bool))], ALGORITHM, frames=1)
    assert info.value.status == 422
    assert not any(value in str(info.value) for value in values)  # no name, UID or date leaks


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "rtdose.dcm"])
def test_classic_multi_frame_source_is_a_422(name: str) -> None:
    source = single_frame(name)
    frames = int(source.NumberOfFrames)
    masks = [SegmentMask("liver", 1, np.ones((int(source.Rows), int(source.Columns)), bool))]
    with pytest.raises(RequestError, match="classic multi-frame image") as info:
        build_seg(source, masks, ALGORITHM, frames=frames)
    assert info.value.status == 422


def test_frames_must_match_the_source() -> None:
    with pytest.raises(ValueError, match="source's 1 frames, found 2"):
        build_seg(single_frame("CT_small.dcm"), [SegmentMask("a", 0, np.ones((128, 128), bool))], ALGORITHM, frames=2)


@pytest.mark.parametrize("label", ["", "x" * 65, "a\\b", "a\nb", "tab\there", "nul\x00"])
def test_the_request_schema_and_the_seg_builder_refuse_a_label_with_one_sentence(label: str) -> None:
    """One SegmentLabel rule: what `/segment` refuses (the prompt schema) is what a SEG cannot hold, said alike."""
    with pytest.raises(ValidationError) as schema:
        Prompt(box=(0, 0, 1, 1), label=label)
    with pytest.raises(RequestError) as seg:
        build_seg(single_frame("CT_small.dcm"), [SegmentMask(label, 0, np.ones((128, 128), bool))], ALGORITHM, frames=1)
    sentence = schema.value.errors()[0]["msg"].removeprefix("Value error, ")
    assert str(seg.value) == f"mask 0's label cannot be a DICOM segment label: {sentence}"
    assert label not in sentence or not label


# --------------------------------------------------------------------------------------------------------------
# Enhanced multi-frame sources: what highdicom needs of them, checked up front (422 naming the attribute).
# --------------------------------------------------------------------------------------------------------------

MR_FRAMES = np.stack([F.ct_hu(64, 80, seed=40 + i) for i in range(N_FRAMES)]) + 1000


@pytest.fixture(scope="module")
def enhanced_mr() -> pydicom.Dataset:
    """A 4-frame Legacy Converted Enhanced MR (highdicom's converter), as parsed from its Part 10 bytes."""
    return pydicom.dcmread(io.BytesIO(part10(F.enhanced_mr_dataset(MR_FRAMES))))


def _one_item(ds: pydicom.Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[1:]


def _orientation_per_frame(ds: pydicom.Dataset) -> None:
    shared = ds.SharedFunctionalGroupsSequence[0]
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
    del shared.PlaneOrientationSequence


def _measures_per_frame(ds: pydicom.Dataset) -> None:
    shared = ds.SharedFunctionalGroupsSequence[0]
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence = copy.deepcopy(shared.PixelMeasuresSequence)
    del shared.PixelMeasuresSequence


def _no_position_on_frame_2(ds: pydicom.Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence


def _one_position_for_all(ds: pydicom.Dataset) -> None:  # a dynamic series: every frame on the same slice
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlanePositionSequence[0].ImagePositionPatient = [-100.0, -120.0, 0.0]


def _position_not_numbers(ds: pydicom.Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = [1.0, 2.0]


BROKEN_ENHANCED: dict[str, tuple[Callable[[pydicom.Dataset], None], str]] = {
    "4 frames, 1 per-frame item": (
        _one_item,
        "1 PerFrameFunctionalGroupsSequence item(s) for 4 frame(s) (NumberOfFrames); expected one item per frame",
    ),
    "orientation per frame": (
        _orientation_per_frame,
        "SharedFunctionalGroupsSequence to hold a PlaneOrientationSequence",
    ),
    "pixel measures per frame": (_measures_per_frame, "SharedFunctionalGroupsSequence to hold a PixelMeasuresSequence"),
    "a frame without a position": (_no_position_on_frame_2, "found frame 2 without one"),
    "frames sharing a position": (_one_position_for_all, "found frames that share one"),
    "a position of two numbers": (_position_not_numbers, "to be six and three numbers"),
}


@pytest.mark.parametrize("case", BROKEN_ENHANCED)
def test_enhanced_source_highdicom_cannot_reference_is_a_422_naming_the_rule(
    enhanced_mr: pydicom.Dataset, case: str
) -> None:
    change, fragment = BROKEN_ENHANCED[case]
    source = copy.deepcopy(enhanced_mr)
    change(source)
    mask = [SegmentMask("liver", 1, np.ones((64, 80), bool))]
    with pytest.raises(RequestError) as info:
        build_seg(source, mask, ALGORITHM, frames=N_FRAMES)
    assert info.value.status == 422 and fragment in str(info.value), str(info.value)


def test_enhanced_mr_masks_read_back_at_their_frames(enhanced_mr: pydicom.Dataset) -> None:
    masks = [
        SegmentMask("lesion", 3, box_mask((64, 80), 5, 30, 10, 50)),
        SegmentMask("lesion", 1, box_mask((64, 80), 1, 2, 1, 2)),
    ]
    seg = read_back(build_seg(enhanced_mr, masks, ALGORITHM, frames=N_FRAMES))
    expected = np.zeros((N_FRAMES, 64, 80), bool)
    for item in masks:
        expected[item.frame] = item.mask
    np.testing.assert_array_equal(segment_pixels(seg, enhanced_mr, 1), expected)


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "liver_expb_1frame.dcm"])
def test_pydicoms_one_frame_liver_seg_with_three_per_frame_items_is_a_422(name: str) -> None:
    """pydicom's 1-frame cut of a 3-frame SEG keeps all three per-frame items: which one is the frame's is a guess."""
    source = single_frame(name)
    with pytest.raises(RequestError, match="3 PerFrameFunctionalGroupsSequence item\\(s\\) for 1 frame") as info:
        build_seg(source, [SegmentMask("liver", 0, np.ones((512, 512), bool))], ALGORITHM, frames=1)
    assert info.value.status == 422


def test_a_consistent_one_frame_enhanced_source_makes_a_seg() -> None:
    source = single_frame("liver_1frame.dcm")
    del source.PerFrameFunctionalGroupsSequence[1:]  # the item of its one frame
    mask = box_mask((512, 512), 100, 300, 50, 400)
    seg = read_back(build_seg(source, [SegmentMask("liver", 0, mask)], ALGORITHM, frames=1))
    stored = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [1], segment_numbers=[1])[0, ..., 0]
    np.testing.assert_array_equal(stored, mask)


def test_no_source_value_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """highdicom warns about a patient name without '^' by quoting it: through the filter the server logs with
    (`service.redaction`), the warning's category and source line reach the log, its text does not."""
    source = pydicom.dcmread(io.BytesIO(F.marked(F.testdata("CT_small.dcm"))))
    caplog.set_level(logging.DEBUG)
    shown = warnings.showwarning
    try:
        redaction.install()  # on every handler now configured: caplog's among them
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            build_seg(source, [SegmentMask("liver", 0, np.ones((128, 128), bool))], ALGORITHM, frames=1)
    finally:
        warnings.showwarning = shown
    assert "UserWarning raised at" in caplog.text and "highdicom" in caplog.text  # it did warn
    assert not [value for value in F.MARKERS.values() if value in caplog.text], caplog.text


@pytest.mark.parametrize(
    "keyword, value",
    [("PatientBirthDate", "ZQXbirth"), ("StudyDate", "2024-01-02"), ("StudyTime", "99xx"), ("PatientSex", "female")],
)
def test_a_malformed_date_or_sex_in_the_source_is_left_empty_not_refused(keyword: str, value: str) -> None:
    """highdicom parses these four to copy them (and raised, quoting the value); they are Type 2, so the SEG is
    built with the malformed one empty, and the source itself is not changed."""
    settings = pydicom.config.settings
    strict = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:  # the source as an archive holds it, which strict pydicom would neither write nor read
        source = pydicom.dcmread(io.BytesIO(F.with_changes(F.ct_image(F.ct_hu(64, 80, 2)), **{keyword: value})))
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = strict
    seg = read_back(build_seg(source, [SegmentMask("liver", 0, np.ones((64, 80), bool))], ALGORITHM, frames=1))
    assert seg.get(keyword) == "" and source.get(keyword) == value
    assert (seg.PatientID, seg.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)


# --------------------------------------------------------------------------------------------------------------
# One SEG for a whole series (a volume), and for several single-frame instances of one series.
# --------------------------------------------------------------------------------------------------------------

SERIES_HU = np.stack([F.ct_hu(16, 20, seed=60 + z) for z in range(5)])
OBLIQUE = (1.0, 0.0, 0.0, 0.0, 0.8, 0.6)  # rotated about x; exact in a DS


def read_all(datasets: list[pydicom.Dataset]) -> list[DicomImage]:
    return [read_dicom(part10(ds)) for ds in datasets]


def series_volume(series: list[pydicom.Dataset]) -> Volume:
    """The volume of `series`, its files handed over in a shuffled order."""
    images = read_all(series)
    np.random.default_rng(5).shuffle(images)
    return build_volume(images)


def instance_pixels(seg: hd.seg.Segmentation, volume: Volume) -> np.ndarray:
    """Slices x rows x columns x segments, by the SOP Instance UID of each of the volume's single-frame slices."""
    numbers = seg.get_segment_numbers()
    return seg.get_pixels_by_source_instance([s.uid for s in volume.slices], segment_numbers=numbers).astype(bool)


def frame_references(seg: hd.seg.Segmentation) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, frame number or None) each SEG frame references."""
    return [
        (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for ref in frame.DerivationImageSequence[0].SourceImageSequence
    ]


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), OBLIQUE], ids=["axial", "oblique"])
def test_a_series_seg_references_every_instance_with_frames_only_where_masks_are(orientation: tuple) -> None:
    series = F.ct_series(SERIES_HU, orientation=orientation)
    volume = series_volume(series)
    a, b = box_mask((16, 20), 1, 6, 2, 9), box_mask((16, 20), 4, 12, 5, 15)
    masks = [
        SliceMask("liver", 1, a),
        SliceMask("kidney", 3, b),
        SliceMask("liver", 3, a),
        SliceMask("liver", 3, b),  # OR-ed with the one before
        SliceMask("kidney", 4, np.zeros((16, 20), bool)),  # empty: no frame
    ]
    seg = read_back(build_series_seg(volume, masks, ALGORITHM))

    assert [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()] == ["liver", "kidney"]
    assert (
        seg.StudyInstanceUID == series[0].StudyInstanceUID and seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    )
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in series
    }
    assert int(seg.NumberOfFrames) == 3  # liver on slices 1 and 3, kidney on 3
    assert sorted(frame_references(seg)) == sorted(
        [(volume.slices[1].uid, None), (volume.slices[3].uid, None), (volume.slices[3].uid, None)]
    )
    expected = np.zeros((5, 16, 20, 2), bool)
    expected[1, ..., 0], expected[3, ..., 0], expected[3, ..., 1] = a, a | b, b
    np.testing.assert_array_equal(instance_pixels(seg, volume), expected)
    # slice z of the volume is ct_series' slice z, whatever the order the files came in
    assert [s.uid for s in volume.slices] == [ds.SOPInstanceUID for ds in series]


def test_an_all_empty_series_seg_is_still_valid() -> None:
    volume = series_volume(F.ct_series(SERIES_HU))
    seg = read_back(build_series_seg(volume, [SliceMask("nothing", 2, np.zeros((16, 20), bool))], ALGORITHM))
    assert int(seg.NumberOfFrames) == len(volume)  # every (empty) frame kept: a SEG cannot omit them all
    assert not instance_pixels(seg, volume).any()


@pytest.mark.parametrize("builder", [F.multiframe_dataset, F.enhanced_mr_dataset], ids=["enhanced ct", "enhanced mr"])
def test_an_enhanced_volume_seg_maps_slices_to_their_frames(builder: Callable) -> None:
    image = read_dicom(part10(builder(SERIES_HU[:4] + 1024)))
    volume = build_volume([image])
    assert [s.frame for s in volume.slices] == [3, 2, 1, 0]  # frame i at z = -i: ascending z is descending frames
    a, b = box_mask((16, 20), 0, 3, 0, 20), box_mask((16, 20), 8, 16, 10, 12)
    seg = read_back(build_series_seg(volume, [SliceMask("lesion", 0, a), SliceMask("lesion", 2, b)], ALGORITHM))

    uid = image.dataset.SOPInstanceUID
    assert sorted(frame_references(seg)) == [(uid, 2), (uid, 4)]  # slices 2 and 0 are frames 1 and 3 (1-based 2, 4)
    stored = seg.get_pixels_by_source_frame(uid, source_frame_numbers=[1, 2, 3, 4], segment_numbers=[1])[..., 0]
    expected = np.zeros((4, 16, 20), bool)
    expected[3], expected[1] = a, b
    np.testing.assert_array_equal(stored.astype(bool), expected)


def test_orientations_within_the_volume_tolerance_make_one_seg_without_changing_the_sources() -> None:
    """highdicom requires the very same ImageOrientationPatient of a series' instances; round-off the volume
    accepts must not make the SEG fail."""
    series = F.ct_series(SERIES_HU)
    series[3].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, ORIENTATION_TOLERANCE / 2]
    volume = build_volume(read_all(series))
    mask = box_mask((16, 20), 2, 9, 3, 8)
    seg = read_back(build_series_seg(volume, [SliceMask("liver", 3, mask)], ALGORITHM))
    np.testing.assert_array_equal(instance_pixels(seg, volume)[3, ..., 0], mask)
    assert volume.slices[3].image.dataset.ImageOrientationPatient[5] == ORIENTATION_TOLERANCE / 2


@pytest.mark.parametrize(
    "item, match",
    [
        (SliceMask("liver", 5, np.zeros((16, 20), bool)), "mask 1's slice in 0..4, found 5"),
        (SliceMask("liver", -1, np.zeros((16, 20), bool)), "mask 1's slice in 0..4, found -1"),
        (SliceMask("liver", 0, np.zeros((20, 16), bool)), "mask 1 to be 16x20 .* found shape \\(20, 16\\)"),
        (SliceMask("a\\b", 0, np.zeros((16, 20), bool)), "mask 1's label .* found a backslash"),
    ],
)
def test_bad_slice_masks_are_refused_with_one_sentence(item: SliceMask, match: str) -> None:
    volume = series_volume(F.ct_series(SERIES_HU))
    with pytest.raises(RequestError, match=match) as info:
        build_series_seg(volume, [SliceMask("liver", 0, np.ones((16, 20), bool)), item], ALGORITHM)
    assert info.value.status == 400


def test_a_series_seg_without_masks_is_refused() -> None:
    with pytest.raises(RequestError, match="at least one mask") as info:
        build_series_seg(series_volume(F.ct_series(SERIES_HU)), [], ALGORITHM)
    assert info.value.status == 400


def test_a_series_seg_of_instances_without_a_patient_id_names_the_keyword_only() -> None:
    series = F.ct_series(SERIES_HU[:2])
    for ds in series:
        del ds.PatientID
    volume = build_volume(read_all(series))
    with pytest.raises(RequestError, match="lacks PatientID") as info:
        build_series_seg(volume, [SliceMask("liver", 0, np.ones((16, 20), bool))], ALGORITHM)
    assert info.value.status == 422 and F.PATIENT_NAME not in str(info.value)


def test_several_instances_of_a_series_make_one_seg_from_their_datasets() -> None:
    """The per-instance mapping of `/segment/dicomweb`: a few instances of one series (not a regular volume: slices
    0, 1 and 4), given in any order, one SEG referencing each."""
    series = F.ct_series(SERIES_HU)
    sources = [series[4], series[0], series[1]]
    a, b = box_mask((16, 20), 0, 4, 0, 4), box_mask((16, 20), 10, 16, 10, 20)
    masks = [InstanceMask("liver", 0, 0, a), InstanceMask("liver", 2, 0, b), InstanceMask("spleen", 2, 0, a)]
    seg = read_back(build_instances_seg(sources, masks, ALGORITHM))

    (referenced,) = seg.ReferencedSeriesSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence] == [
        ds.SOPInstanceUID for ds in sources
    ]
    uids = [ds.SOPInstanceUID for ds in sources]
    stored = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2]).astype(bool)
    expected = np.zeros((3, 16, 20, 2), bool)
    expected[0, ..., 0], expected[2, ..., 0], expected[2, ..., 1] = a, b, a
    np.testing.assert_array_equal(stored, expected)


def _mixed_series(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    other = F.ct_series(SERIES_HU[:1], positions=[30.0], series_instance_uid=F.uid("other series"))
    return [series[0], *other]


def _shared_position(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    twin = copy.deepcopy(series[1])
    twin.SOPInstanceUID = F.uid("twin")
    return [series[0], series[1], twin]


REFUSED_SOURCES: dict[str, tuple[Callable[[list[pydicom.Dataset]], list[pydicom.Dataset]], int, str]] = {
    "mixed series": (_mixed_series, 400, "mixed series: expected instances of one series"),
    "an instance twice": (lambda s: [s[0], s[1], s[0]], 400, "found instance 2 repeating instance 0"),
    "a shared position": (_shared_position, 422, "found instances that share one \\(instances 1 and 2\\)"),
    "a multi-frame among them": (
        lambda s: [s[0], F.multiframe_dataset(SERIES_HU[:2])],
        422,
        "found a multi-frame instance \\(instance 1\\) among 2 instances",
    ),
}


@pytest.mark.parametrize("case", REFUSED_SOURCES)
def test_instances_one_seg_cannot_reference_together_are_refused_before_highdicom(case: str) -> None:
    change, status, match = REFUSED_SOURCES[case]
    sources = change(F.ct_series(SERIES_HU))
    mask = [InstanceMask("liver", 0, 0, np.ones((16, 20), bool))]
    with pytest.raises(RequestError, match=match) as info:
        build_instances_seg(sources, mask, ALGORITHM)
    assert info.value.status == status
    uids = {str(e.value) for ds in sources for e in ds.iterall() if e.VR == "UI"}
    assert not [value for value in uids | {F.PATIENT_NAME, F.PATIENT_ID} if value in str(info.value)]


def test_an_instance_index_out_of_range_is_one_sentence() -> None:
    series = F.ct_series(SERIES_HU[:2])
    with pytest.raises(RequestError, match="mask 0's source image in 0..1, found 2") as info:
        build_instances_seg(series, [InstanceMask("liver", 2, 0, np.ones((16, 20), bool))], ALGORITHM)
    assert info.value.status == 400

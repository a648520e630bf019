"""service/seg.py: the DICOM SEG read back strictly with pydicom and highdicom, pixels against the masks given."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.dicom import part10
from service.errors import RequestError
from service.seg import Algorithm, SegmentMask, build_seg

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
        (SegmentMask("", 0, np.zeros((128, 128), bool)), "mask 1's label"),
        (SegmentMask("x" * 65, 0, np.zeros((128, 128), bool)), "1 to 64 printable"),
        (SegmentMask("a\\b", 0, np.zeros((128, 128), bool)), "without a backslash"),
        (SegmentMask("a\nb", 0, np.zeros((128, 128), bool)), "printable"),
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

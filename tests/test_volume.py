"""service/volume.py: a series' slices in order along the normal, from real Part 10 files; each refusal one sentence
without a UID or a patient value."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import pydicom
import pytest

from service.dicom import DicomImage, Limits, PixelBudget, read_dicom
from service.errors import RequestError
from service.volume import ORIENTATION_TOLERANCE, build_volume
from tests import dicomfiles as F

SLICES = 6
HU = np.stack([F.ct_hu(16, 20, seed=z) for z in range(SLICES)])
# Rotated about x (a 3-4-5 triangle, so every cosine is exact in a DS): the normal is (0, -0.6, 0.8).
OBLIQUE = (1.0, 0.0, 0.0, 0.0, 0.8, 0.6)


def images(datasets: list[pydicom.Dataset]) -> list[DicomImage]:
    """The datasets as the service reads them: Part 10 bytes through `read_dicom`."""
    return [read_dicom(F.to_bytes(ds)) for ds in datasets]


def shuffled(items: list, seed: int = 3) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


TEXT_VRS = ("UI", "PN", "LO", "SH", "DA")


def secrets(datasets: list[pydicom.Dataset]) -> set[str]:
    """Every UID and patient or study value of the files: none may appear in a message."""
    found = {F.PATIENT_NAME, F.PATIENT_ID, F.STUDY_DESCRIPTION, F.ACCESSION_NUMBER}
    for ds in datasets:
        found |= {str(e.value) for e in ds.iterall() if e.VR in TEXT_VRS and len(str(e.value)) > 3}
    return found


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), OBLIQUE], ids=["axial", "oblique"])
def test_slices_are_ordered_along_the_normal_not_by_instance_number_or_input_order(orientation: tuple) -> None:
    series = F.ct_series(HU, spacing=2.5, orientation=orientation)
    volume = build_volume(shuffled(images(series)))

    assert len(volume) == SLICES and (volume.rows, volume.columns) == (16, 20)
    assert [s.uid for s in volume.slices] == [str(ds.SOPInstanceUID) for ds in series]
    assert [int(s.image.dataset.InstanceNumber) for s in volume.slices] == list(range(SLICES, 0, -1))
    assert all(s.frame == 0 for s in volume.slices)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    np.testing.assert_allclose(volume.normal, normal)
    origin = np.array([-100.0, -120.0, 0.0]) @ normal
    np.testing.assert_allclose([s.position for s in volume.slices], origin + 2.5 * np.arange(SLICES))
    assert volume.spacing == pytest.approx(2.5)
    for z, item in enumerate(volume.slices):  # the pixels follow: slice z is HU[z] (decoded here, in the test only)
        np.testing.assert_array_equal(item.image.values(item.frame), HU[z])


def test_the_volume_decodes_no_pixel() -> None:
    budget = PixelBudget(Limits().max_decoded_pixels)
    build_volume([read_dicom(F.to_bytes(ds), Limits(), budget) for ds in F.ct_series(HU)])
    assert budget.spent == 0


@pytest.mark.parametrize("builder", [F.multiframe_dataset, F.enhanced_mr_dataset], ids=["enhanced ct", "enhanced mr"])
def test_an_enhanced_multi_frame_image_gives_its_frames_as_slices(builder: Callable) -> None:
    frames = HU[:4] + 1024  # non-negative: the MR builder stores uint16
    image = read_dicom(F.to_bytes(builder(frames)))
    volume = build_volume([image])

    # The builders put frame i at z = -i (highdicom orders by decreasing z): ascending along +z, slice k is frame 3-k.
    assert [s.frame for s in volume.slices] == [3, 2, 1, 0]
    assert [s.position for s in volume.slices] == pytest.approx([-3.0, -2.0, -1.0, 0.0])
    assert {s.uid for s in volume.slices} == {str(image.dataset.SOPInstanceUID)}
    assert volume.spacing == pytest.approx(1.0) and volume.normal == pytest.approx((0.0, 0.0, 1.0))
    for z, item in enumerate(volume.slices):
        np.testing.assert_array_equal(item.image.values(item.frame), frames[3 - z])


def test_round_off_in_orientation_and_spacing_is_accepted() -> None:
    series = F.ct_series(HU[:4], positions=[0.0, 2.5, 5.2, 7.5])  # 2.7 mm is 8% over the median 2.5 mm
    series[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, ORIENTATION_TOLERANCE / 2]
    volume = build_volume(images(series))
    assert [s.uid for s in volume.slices] == [str(ds.SOPInstanceUID) for ds in series]


def _other_series(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    other = F.ct_series(HU[:2], positions=[20.0, 22.5], series_instance_uid=F.uid("another series"))
    return series + other


def _repeated(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return [*series, series[1]]


def _other_size(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    (odd,) = F.ct_series(F.ct_hu(16, 24, seed=9)[None], series_instance_uid=series[0].SeriesInstanceUID)
    odd.SOPInstanceUID = F.uid("odd size")
    odd.ImagePositionPatient = [-100.0, -120.0, 15.0]
    return [*series, odd]


def _changed(index: int, **values: object) -> Callable[[list[pydicom.Dataset]], list[pydicom.Dataset]]:
    def change(series: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
        series = copy.deepcopy(series)
        for keyword, value in values.items():
            if value is None:
                delattr(series[index], keyword)
            else:
                setattr(series[index], keyword, value)
        return series

    return change


def _at(*positions: float) -> Callable[[list[pydicom.Dataset]], list[pydicom.Dataset]]:
    return lambda series: F.ct_series(HU[: len(positions)], positions=positions)


REFUSED: dict[str, tuple[Callable[[list[pydicom.Dataset]], list[pydicom.Dataset]], int, str]] = {
    "one slice": (lambda s: s[:1], 400, "at least 2 slices to form a volume, found 1"),
    "no slice": (lambda s: [], 400, "at least 2 slices to form a volume, found 0"),
    "mixed series": (_other_series, 400, "mixed series: expected instances of one series .* found 2 series among 8"),
    "an instance twice": (_repeated, 400, "each instance once, found instance 6 repeating instance 1"),
    "another size": (_other_size, 422, "instance 0's 16x20 pixels .* found instance 6 with 16x24"),
    "another frame of reference": (
        _changed(2, FrameOfReferenceUID=F.uid("elsewhere")),
        422,
        "share one FrameOfReferenceUID .* found 2 different ones",
    ),
    "no position": (
        _changed(3, ImagePositionPatient=None),
        422,
        "ImagePositionPatient for every slice, found instance 3 ",
    ),
    "no orientation": (_changed(1, ImageOrientationPatient=None), 422, "ImageOrientationPatient for every slice"),
    "a position of two numbers": (
        _changed(4, ImagePositionPatient=[1.0, 2.0]),
        422,
        "six and three numbers .* found other values for instance 4",
    ),
    "parallel direction cosines": (
        _changed(0, ImageOrientationPatient=[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        422,
        "orthogonal unit vectors\\), found other values for instance 0",
    ),
    "another orientation": (
        _changed(2, ImageOrientationPatient=list(OBLIQUE)),
        422,
        "every slice in one orientation .* of instance 0's\\), found instance 2 in another",
    ),
    "a duplicate position": (_at(0.0, 2.5, 2.5, 5.0), 422, "found instances that share one \\(instances 1 and 2\\)"),
    "a gap": (_at(0.0, 2.5, 5.0, 10.0, 12.5), 422, "within 10% .* found 2.00 times the median between sorted slices 2"),
    "slices too close": (_at(0, 2.5, 3, 5, 7.5, 10), 422, "found 0.20 times the median between sorted slices 1 and 2"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_series_that_cannot_form_a_volume_is_refused_with_one_sentence(case: str) -> None:
    change, status, match = REFUSED[case]
    datasets = change(F.ct_series(HU))
    with pytest.raises(RequestError, match=match) as info:
        build_volume(images(datasets))
    assert info.value.status == status
    message = str(info.value)
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert not [value for value in secrets(datasets) if value in message], message


def test_a_classic_multi_frame_image_is_refused() -> None:
    image = read_dicom(F.repeated_frames(3, size=16))
    with pytest.raises(RequestError, match="found a classic multi-frame image without per-frame positions") as info:
        build_volume([image])
    assert info.value.status == 422


def test_a_multi_frame_image_among_other_instances_is_refused() -> None:
    parts = [read_dicom(F.multiframe(HU[:3])), *images(F.ct_series(HU[:2]))]
    with pytest.raises(RequestError, match="found a multi-frame instance \\(instance 0\\) among 3 instances") as info:
        build_volume(parts)
    assert info.value.status == 422


def test_an_enhanced_frame_without_a_position_is_named_by_its_frame() -> None:
    ds = F.multiframe_dataset(HU[:4])
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    with pytest.raises(RequestError, match="\\(in its PlanePositionSequence\\), found frame 2 without one") as info:
        build_volume([read_dicom(F.to_bytes(ds))])
    assert info.value.status == 422


def test_a_position_that_is_not_a_number_is_refused_without_quoting_it() -> None:
    data = [F.to_bytes(ds) for ds in F.ct_series(HU[:3])]
    data[1] = data[1].replace(b"\\-120.0\\", b"\\-12x.0\\")  # the one ImagePositionPatient's y, kept as text
    with pytest.raises(RequestError, match="six and three numbers .* found other values for instance 1") as info:
        build_volume([read_dicom(item) for item in data])
    assert info.value.status == 422 and "12x" not in str(info.value)

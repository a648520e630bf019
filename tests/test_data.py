"""search/data/: every loader on small files written in the real format, slicing, boxes, split, order, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from search.data import (
    LOADERS,
    DicomSegLoader,
    LoadedTask,
    NnUNetLoader,
    Volume,
    case_slices,
    get_loader,
    jitter_boxes,
    load_task,
    mask_boxes,
    parse_spec,
    split_cases,
)
from search.errors import DataError, MedSAMixError
from service.imaging import to_uint8

# A canonical D x H x W label volume: slices 0 and 4 empty; rectangles give known tight XYXY boxes.
D, H, W = 5, 12, 16
RECT_A = (3, 2, 8, 6)  # label 1 on slices 1 and 2: rows 2..5, cols 3..7
RECT_B = (10, 8, 14, 10)  # label 1 on slice 1
RECT_C = (1, 7, 5, 11)  # label 2 on slices 2 and 3
PIXEL = (15, 11, 16, 12)  # label 1 on slice 2: a one-pixel component
# An affine that permutes and flips axes and is not unit-spaced: loaders must keep voxel order, never reorient.
AFFINE = np.array([[0.0, -0.7, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])


def paint(label: np.ndarray, box: tuple[int, int, int, int], value: int) -> None:
    x0, y0, x1, y1 = box
    label[y0:y1, x0:x1] = value


def label_volume() -> np.ndarray:
    label = np.zeros((D, H, W), np.uint8)
    paint(label[1], RECT_A, 1)
    paint(label[1], RECT_B, 1)
    paint(label[2], RECT_A, 1)
    paint(label[2], RECT_C, 2)
    paint(label[2], PIXEL, 1)
    paint(label[3], RECT_C, 2)
    return label


def ct_volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, (D, H, W)).astype(np.int16)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def check_tight(slice_) -> None:
    """Each box's four edges touch the mask, and the boxes cover the whole mask (independent of the code's method)."""
    covered = np.zeros_like(slice_.mask)
    for x0, y0, x1, y1 in slice_.boxes.astype(int):
        inside = slice_.mask[y0:y1, x0:x1]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        covered[y0:y1, x0:x1] = True
    assert not (slice_.mask & ~covered).any()


def save_nifti(array_dhw: np.ndarray, path: Path) -> None:
    """Write a canonical D x H x W array as NIfTI voxels (i, j, k) = (W, H, D), as SimpleITK would."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_dhw.T), AFFINE), path)


def write_nnunet(root: Path, n_cases: int = 3) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT", "1": "other"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": n_cases,
                "file_ending": ".nii.gz",
            }
        )  # fmt: skip
    )
    for i in range(n_cases):
        save_nifti(ct_volume(i), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        save_nifti(ct_volume(100 + i), root / "imagesTr" / f"case_{i:03d}_0001.nii.gz")
        save_nifti(label_volume(), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    return root


def spec(root: Path, **overrides) -> dict:
    base = {"name": "t", "path": root, "format": "nnunet", "labels": [1], "preset": "ct_abdomen"}
    return {**base, **overrides}


def by_key(task) -> dict:
    return {(s.case, s.index): s for s in task.slices}


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


def test_registry_lists_formats():
    assert list(LOADERS) == ["nnunet", "nifti", "dicom_seg", "png", "npz"]
    assert get_loader("nnunet") is NnUNetLoader
    with pytest.raises(DataError, match="unknown data format 'tiff': expected one of nnunet, nifti, dicom_seg, png"):
        get_loader("tiff")


def test_nnunet_slices_masks_boxes_and_preset(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001")
    calibration, test, record = load_task(spec(root, calibration_fraction=0.34))
    assert record["calibration"] == calibration.meta["split"]["calibration"]
    assert len(record["calibration"]) == 1 and len(record["test"]) == 2
    for task in (calibration, test):
        keys = sorted((s.case, s.index) for s in task.slices)
        cases = record[task.meta["part"]]
        assert keys == [(c, k) for c in cases for k in (1, 2)]
        for s in task.slices:
            i = int(s.case.removeprefix("case_"))
            assert s.image.dtype == np.uint8 and s.image.shape == (H, W)
            np.testing.assert_array_equal(s.image, to_uint8(ct_volume(i), "ct_abdomen")[s.index])
            np.testing.assert_array_equal(s.mask, label_volume()[s.index] == 1)
            check_tight(s)
    boxes = {k[1]: s.boxes.tolist() for k, s in by_key(test).items()}
    assert boxes[1] == [list(RECT_A), list(RECT_B)]
    assert boxes[2] == [list(RECT_A), list(PIXEL)]


def test_nnunet_channel_option_and_msd_4d(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    [volume] = NnUNetLoader(root, channel=1).read("case_002")
    np.testing.assert_array_equal(volume.image, ct_volume(102))
    # MSD: imagesTr/CASE.nii.gz with channels on a 4th voxel axis.
    msd = tmp_path / "Task01"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    (msd / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"}}))
    channels = np.stack([ct_volume(5).T, ct_volume(6).T], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(channels, AFFINE), msd / "imagesTr" / "brats_001.nii.gz")
    save_nifti(label_volume().astype(np.float32), msd / "labelsTr" / "brats_001.nii.gz")
    (msd / "labelsTr" / "._brats_001.nii.gz").write_bytes(b"\0\0")  # macOS junk shipped in MSD archives
    loader = NnUNetLoader(msd, channel=1)
    assert loader.case_ids() == ["brats_001"]
    [volume] = loader.read("brats_001")
    np.testing.assert_array_equal(volume.image, ct_volume(6))
    np.testing.assert_array_equal(volume.label, label_volume())
    assert volume.label.dtype == np.int32


def test_axis_slices_the_canonical_layout(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    calibration, test, _ = load_task(spec(root, axis=1, calibration_fraction=0.34))
    for s in calibration.slices + test.slices:
        i = int(s.case.removeprefix("case_"))
        assert s.image.shape == (D, W)
        np.testing.assert_array_equal(s.mask, label_volume()[:, s.index, :] == 1)
        np.testing.assert_array_equal(s.image, to_uint8(ct_volume(i), "ct_abdomen")[:, s.index, :])
        check_tight(s)


def test_boxes_per_label_and_label_sets(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    _, test, _ = load_task(spec(root, labels=[1, 2], boxes="label", calibration_fraction=0.34))
    label = label_volume()
    for s in test.slices:
        np.testing.assert_array_equal(s.mask, np.isin(label[s.index], [1, 2]))
        expected = [tight_box(label[s.index] == v) for v in (1, 2) if (label[s.index] == v).any()]
        assert s.boxes.tolist() == expected
    assert {s.index for s in test.slices} == {1, 2, 3}


def test_min_component_drops_small_components():
    volume = Volume("c", ct_volume(0), label_volume().astype(np.int32), "c.nii.gz")
    slices = {s.index: s for s in case_slices(volume, [1], "ct_abdomen", min_component=2)}
    assert slices[2].boxes.tolist() == [list(RECT_A)]
    assert not slices[2].mask[PIXEL[1], PIXEL[0]]
    # A slice whose only foreground is too small disappears.
    label = np.zeros((1, H, W), np.int32)
    paint(label[0], PIXEL, 1)
    assert case_slices(Volume("c", ct_volume(0)[:1], label, "c"), [1], "ct_abdomen", min_component=2) == []
    # Corner-touching pixels are one (8-connected) component.
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert mask_boxes(mask).tolist() == [[0, 0, 2, 2]]


def test_nifti_pairs_with_percentile_preset_per_volume(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    mr = {f"p{i}": np.random.default_rng(i).gamma(2.0, 100.0, (D, H, W)).astype(np.float32) for i in range(2)}
    for name, image in mr.items():
        save_nifti(image, tmp_path / "images" / f"{name}.nii.gz")
        save_nifti(label_volume(), tmp_path / "labels" / f"{name}.nii.gz")
    calibration, test, record = load_task(spec(tmp_path, format="nifti", preset="mr", labels=2, seed=3))
    assert len(record["calibration"]) == len(record["test"]) == 1
    for s in calibration.slices + test.slices:
        volume = to_uint8(mr[s.case], "mr")  # statistics of the whole volume, not of the slice
        np.testing.assert_array_equal(s.image, volume[s.index])
        assert not np.array_equal(s.image, to_uint8(mr[s.case][s.index], "mr"))
        assert s.boxes.tolist() == [list(RECT_C)]


def test_npz_volumes_and_2d(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {f"ct_{i}": rng.integers(0, 256, (D, H, W), dtype=np.uint8) for i in range(3)}
    for name, image in imgs.items():
        np.savez_compressed(tmp_path / f"{name}.npz", imgs=image, gts=label_volume(), spacing=np.ones(3))
    calibration, test, record = load_task(spec(tmp_path, format="npz", preset=None, seed=1))
    assert sorted(record["calibration"] + record["test"]) == sorted(imgs)
    for s in calibration.slices + test.slices:
        np.testing.assert_array_equal(s.image, imgs[s.case][s.index])  # already uint8: no preset
        np.testing.assert_array_equal(s.mask, label_volume()[s.index] == 1)
        check_tight(s)
    # MedSAM's 2-D files: H x W x 3 image, H x W mask; the image stays RGB.
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.savez(tmp_path / "fundus.npz", imgs=rgb, gts=label_volume()[2])
    [volume] = get_loader("npz")(tmp_path).read("fundus")
    [s] = case_slices(volume, [2], None, axis=2)  # a 2-D image ignores the axis
    np.testing.assert_array_equal(s.image, rgb)
    assert (s.case, s.index, s.boxes.tolist()) == ("fundus", 0, [list(RECT_C)])


def write_pngs(root: Path, names: list[str]) -> dict[str, np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = {}
    for i, name in enumerate(names):
        rgb = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{name}.png")
        Image.fromarray((label_volume()[1 + i % 3] > 0).astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        images[name] = rgb
    return images


def test_png_each_file_a_case(tmp_path):
    images = write_pngs(tmp_path, ["a", "b", "c", "d"])
    calibration, test, record = load_task(spec(tmp_path, format="png", preset=None, labels=255, seed=2))
    assert sorted(s.case for s in calibration.slices + test.slices) == ["a", "b", "c", "d"]
    assert len(record["calibration"]) == 1
    for s in calibration.slices + test.slices:
        np.testing.assert_array_equal(s.image, images[s.case])
        check_tight(s)
    # An intensity preset applies to PNGs too (here min-max over the image).
    _, test, _ = load_task(spec(tmp_path, format="png", preset="minmax", labels=255, seed=2))
    for s in test.slices:
        np.testing.assert_array_equal(s.image, to_uint8(images[s.case], "minmax"))


def test_png_case_pattern_groups_slices(tmp_path):
    write_pngs(tmp_path, ["p1_s0", "p1_s1", "p2_s0", "p3_s0", "p3_s1"])
    options = {"case_pattern": r"(p\d+)_s"}
    loader = get_loader("png")(tmp_path, **options)
    assert loader.case_ids() == ["p1", "p2", "p3"]
    assert [v.index for v in loader.read("p3")] == [0, 1]
    calibration, test, record = load_task(spec(tmp_path, format="png", preset=None, labels=255, options=options))
    assert {s.case for s in calibration.slices} == set(record["calibration"])
    assert sorted((s.case, s.index) for s in calibration.slices + test.slices) == [
        ("p1", 0), ("p1", 1), ("p2", 0), ("p3", 0), ("p3", 1)
    ]  # fmt: skip


def write_dicom_case(folder: Path, hu: np.ndarray, label: np.ndarray) -> None:
    """A CT series (stored value = HU + 1024, rescale intercept -1024; files named out of slice order) and a SEG
    built by highdicom from those source images, with one segment per label id."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sources = []
    for k, plane in enumerate(hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "anon", "Anon^Test", "19700101", "O"
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20250101", "120000", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "", "test", 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"img_{(3 * k) % len(hu)}.dcm", enforce_file_format=True)
        sources.append(ds)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=int(v),
            segment_label=f"organ {v}",
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for v in np.unique(label[label > 0])
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=label.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(folder / "seg.dcm")


def test_dicom_series_with_seg(tmp_path):
    for i in range(2):
        write_dicom_case(tmp_path / f"patient{i}", ct_volume(i), label_volume())
    [volume] = DicomSegLoader(tmp_path).read("patient1")
    np.testing.assert_array_equal(volume.image, ct_volume(1))  # HU: slope/intercept applied, sorted by position
    np.testing.assert_array_equal(volume.label, label_volume())
    calibration, test, record = load_task(spec(tmp_path, format="dicom_seg", labels=[2]))
    assert sorted(record["calibration"] + record["test"]) == ["patient0", "patient1"]
    for s in calibration.slices + test.slices:
        i = int(s.case.removeprefix("patient"))
        np.testing.assert_array_equal(s.image, to_uint8(ct_volume(i), "ct_abdomen")[s.index])
        assert s.boxes.tolist() == [list(RECT_C)]
    (tmp_path / "patient0" / "seg.dcm").unlink()
    with pytest.raises(DataError, match="patient0 holds 0 SEG and 5 image file.s.; expected 1 SEG$"):
        DicomSegLoader(tmp_path).read("patient0")


# ---------------------------------------------------------------------------------------------------------------
# Split, order, jitter
# ---------------------------------------------------------------------------------------------------------------


def test_split_by_case_is_disjoint_seeded_and_never_empty():
    ids = [f"c{i}" for i in range(10)]
    calibration, test = split_cases(ids, 0.2, seed=0)
    assert len(calibration) == 2 and not set(calibration) & set(test) and sorted(calibration + test) == ids
    assert split_cases(reversed(ids), 0.2, seed=0) == (calibration, test)
    assert len({tuple(split_cases(ids, 0.2, seed=s)[0]) for s in range(8)}) > 1
    assert split_cases(["a", "b"], 0.01, seed=0)[0] and split_cases(["a", "b"], 0.99, seed=0)[1]
    with pytest.raises(DataError, match="needs at least 2 cases; found 1"):
        split_cases(["a"], 0.2, seed=0)


def test_load_task_names_its_parts(tmp_path):
    loaded = load_task(spec(write_nnunet(tmp_path / "ds", n_cases=4), labels=[1, 2], calibration_fraction=0.5))
    assert isinstance(loaded, LoadedTask) and LoadedTask._fields == ("calibration", "test", "split")
    calibration, test, record = loaded  # unpacking keeps working
    assert loaded.calibration is calibration and loaded.test is test and loaded.split is record
    assert loaded.calibration.meta["part"] == "calibration" and loaded.test.meta["part"] == "test"
    assert loaded.split["slices"] == {"calibration": len(calibration.slices), "test": len(test.slices)}


def test_slice_order_is_fixed_per_seed_and_budgets_are_prefixes(tmp_path):
    root = write_nnunet(tmp_path / "ds", n_cases=6)
    order = {}
    for seed in (0, 0, 1):
        calibration, test, record = load_task(spec(root, labels=[1, 2], calibration_fraction=0.5, seed=seed))
        keys = [(s.case, s.index) for s in test.slices]
        assert order.setdefault(seed, keys) == keys  # reproducible
        for n in range(len(keys) + 1):
            assert [(s.case, s.index) for s in test.budget(n)] == keys[:n]
        assert {s.case for s in test.slices} == set(record["test"])
    other = load_task(spec(root, labels=[1, 2], calibration_fraction=0.5, seed=5))[1]
    assert [(s.case, s.index) for s in other.slices] != order[0]
    # The order of a seed does not depend on box options: the same slices come in the same order.
    jittered = load_task(spec(root, labels=[1, 2], calibration_fraction=0.5, seed=1, jitter=2))[1]
    assert [(s.case, s.index) for s in jittered.slices] == order[1]


def test_jitter_is_seeded_bounded_and_clipped(tmp_path):
    root = write_nnunet(tmp_path / "ds", n_cases=4)
    plain = by_key(load_task(spec(root, labels=[1, 2], seed=3, calibration_fraction=0.5))[1])
    runs = [by_key(load_task(spec(root, labels=[1, 2], seed=3, calibration_fraction=0.5, jitter=3))[1]) for _ in "ab"]
    moved = 0
    for key, s in plain.items():
        a, b = runs[0][key].boxes, runs[1][key].boxes
        np.testing.assert_array_equal(a, b)  # seeded
        grow = (a - s.boxes) * [-1, -1, 1, 1]
        assert (grow >= 0).all() and (grow <= 3).all()  # outward, at most 3 pixels per side
        assert (a >= 0).all() and (a[:, [0, 2]] <= W).all() and (a[:, [1, 3]] <= H).all()
        moved += int(grow.sum() > 0)
    assert moved > 0
    box = np.array([[0.0, 0.0, W, H]])
    assert jitter_boxes(box, 5, (H, W), 0, "c", 0).tolist() == box.tolist()  # clipped to the image
    many = np.tile([[5.0, 5.0, 8.0, 8.0]], (20, 1))
    assert not np.array_equal(jitter_boxes(many, 3, (H, W), 0, "c", 1), jitter_boxes(many, 3, (H, W), 1, "c", 1))
    assert not np.array_equal(jitter_boxes(many, 3, (H, W), 0, "c", 1), jitter_boxes(many, 3, (H, W), 0, "c", 2))


# ---------------------------------------------------------------------------------------------------------------
# Errors: one sentence naming the problem
# ---------------------------------------------------------------------------------------------------------------


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, MedSAMixError)
    return message


def test_error_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="dataset folder .*nowhere does not exist") as info:
        load_task(spec(tmp_path / "nowhere"))
    one_line(info)
    root = write_nnunet(tmp_path / "ds")
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(DataError, match="case case_001 has no image case_001_0000.nii.gz") as info:
        load_task(spec(root))
    one_line(info)
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match="has no dataset.json"):
        NnUNetLoader(root)
    (tmp_path / "pngs" / "images").mkdir(parents=True)
    (tmp_path / "pngs" / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pngs" / "images" / "x.png")
    with pytest.raises(DataError, match="image x.png has no mask of the same name"):
        get_loader("png")(tmp_path / "pngs").read("x")


def test_error_shape_mismatch_names_both_shapes_and_case(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    save_nifti(label_volume()[:4], root / "labelsTr" / "case_002.nii.gz")
    with pytest.raises(DataError) as info:
        load_task(spec(root))
    assert one_line(info) == (
        "case case_002: image case_002_0000.nii.gz has shape (16, 12, 5) but label case_002.nii.gz has shape "
        "(16, 12, 4); expected equal 2-D or 3-D shapes"
    )


def test_error_label_absent_names_the_ids_found(tmp_path):
    with pytest.raises(DataError, match=r"label\(s\) \[7\] appear in no case of .*; label ids found: 1, 2$") as info:
        load_task(spec(write_nnunet(tmp_path / "ds"), labels=[7]))
    one_line(info)


def test_error_no_foreground_after_filtering(tmp_path):
    with pytest.raises(DataError, match="split of t has no slice with foreground .* under 1000 pixels") as info:
        load_task(spec(write_nnunet(tmp_path / "ds"), min_component=1000))
    one_line(info)


def test_error_unknown_format_preset_and_option(tmp_path):
    with pytest.raises(DataError, match="format: unknown data format 'tif': expected one of nnunet, nifti"):
        parse_spec(spec(tmp_path, format="tif"))
    with pytest.raises(DataError, match="preset: unknown intensity preset 'ct': expected one of ct_abdomen"):
        parse_spec(spec(tmp_path, preset="ct"))
    with pytest.raises(DataError, match="format nnunet does not take option.s. chanel; expected channel$"):
        load_task(spec(write_nnunet(tmp_path / "ds"), options={"chanel": 1}))


def test_error_unreadable_files(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="case_000.nii.gz is not a readable NIfTI file$") as info:
        load_task(spec(root))
    one_line(info)
    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "a.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="a.npz is not a readable .npz file$"):
        get_loader("npz")(tmp_path / "npz").read("a")
    np.savez(tmp_path / "npz" / "b.npz", image=np.zeros((2, 2)))
    with pytest.raises(DataError, match="b.npz holds image; expected imgs and gts$"):
        get_loader("npz")(tmp_path / "npz").read("b")
    write_pngs(tmp_path / "png", ["a"])
    (tmp_path / "png" / "images" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="a.png is not a readable image file$"):
        get_loader("png")(tmp_path / "png").read("a")
    (tmp_path / "dcm" / "p").mkdir(parents=True)
    (tmp_path / "dcm" / "p" / "x.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="x.dcm is not a readable DICOM file$"):
        DicomSegLoader(tmp_path / "dcm").read("p")


def test_error_raw_intensities_need_a_preset(tmp_path):
    with pytest.raises(DataError, match="case_000_0000.nii.gz holds int16 intensities; name an intensity preset"):
        load_task(spec(write_nnunet(tmp_path / "ds"), preset=None))

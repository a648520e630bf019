"""Calibration data: the field's file formats -> cases -> 2-D slices with masks and box prompts, split by case.

Three steps, as nnU-Net's conversion pipeline is laid out:

1. **Loaders** (`LOADERS`, one small class per file format; `get_loader(name)` fails listing the valid names) list a
   dataset's case ids cheaply and read one case at a time into `Volume`s: raw intensities and an integer label map.
2. **Slicing** (`case_slices`) cuts a volume along an axis, applies the intensity preset of `service.imaging` to the
   whole volume (so percentile presets use per-volume statistics, as MedSAM's preparation does), keeps the slices
   where the selected label(s) have foreground after small connected components are dropped, and derives the box
   prompts from the mask.
3. **Splitting** (`split_cases`) by case, seeded; `load_task` returns the calibration and test `Task`s with their
   slices in one seeded order, and the split record a caller writes down with its results.

Array layout. Every loader returns volumes as D x H x W (x 3 for RGB) in the order SimpleITK (and so MedSAM and
nnU-Net) reads them: a NIfTI's voxel array (i, j, k) is transposed to (k, j, i), a DICOM series is stacked along its
slice normal, a MedSAM `.npz` is already D x H x W. Voxel order is kept, never reoriented. `axis` picks the slicing
axis in that layout: 0 (the default) is a NIfTI's last voxel axis and a DICOM series' slice stack (axial slices of an
axial acquisition), 1 and 2 the other two. A 2-D image is a volume of one slice and ignores `axis`.
"""

from __future__ import annotations

import inspect
import json
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy import ndimage

from search.errors import DataError, first_validation_error
from search.files import require_file
from search.slices import Slice, Task
from service.errors import unknown_name
from service.imaging import PRESETS, ImagingError, to_uint8

__all__ = [
    "LOADERS",
    "DataSpec",
    "DicomSegLoader",
    "Loader",
    "NiftiLoader",
    "NnUNetLoader",
    "NpzLoader",
    "PngLoader",
    "Volume",
    "case_slices",
    "get_loader",
    "jitter_boxes",
    "load_task",
    "mask_boxes",
    "split_cases",
]

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg")
# 8-connectivity: pixels touching at a corner are one object (one box).
CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Volume:
    """One case's image and label map as read from disk.

    image: D x H x W raw intensities (any real dtype), or D x H x W x 3 uint8 RGB. label: D x H x W integer label map.
    `planar` marks a 2-D image (D == 1; slicing ignores `axis`), and `index` its position within its case when
    several 2-D images form one case. `source` names the file(s) for error messages.
    """

    case: str
    image: np.ndarray
    label: np.ndarray
    source: str
    planar: bool = False
    index: int = 0


# --------------------------------------------------------------------------------------------------------------
# Loaders: one class per file format.
# --------------------------------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist")
    return path


def _strip_ending(name: str, endings: Sequence[str]) -> str | None:
    """`name` without the first of `endings` it ends with (case-insensitive), None when none; hidden files skipped."""
    if name.startswith("."):  # macOS resource forks (._case.nii.gz) ship inside the MSD archives
        return None
    lower = name.lower()
    for ending in endings:
        if lower.endswith(ending):
            return name[: -len(ending)]
    return None


def _read_nifti(path: Path) -> np.ndarray:
    """The voxel array of a NIfTI file, scaled by its scl_slope/scl_inter, in the file's (i, j, k[, c]) order."""
    import nibabel as nib
    from nibabel.dataobj_images import DataobjImage

    require_file(path, "file", DataError)
    unreadable = f"{path} is not a readable NIfTI file"
    try:
        image = nib.load(path)
        if isinstance(image, DataobjImage):  # an image with voxels (nibabel also loads e.g. GIFTI surfaces)
            return np.asanyarray(image.dataobj)
    except Exception:  # nibabel raises many types (ImageFileError, EOFError, zlib errors) for a bad file
        raise DataError(unreadable) from None
    raise DataError(unreadable)


def _as_labels(label: np.ndarray, source: str) -> np.ndarray:
    """An integer label map; float label files (common in NIfTI) are rounded, non-integral values refused."""
    if np.issubdtype(label.dtype, np.integer) or label.dtype == bool:
        return label.astype(np.int32, copy=False)
    rounded = np.rint(label)
    if not np.issubdtype(label.dtype, np.floating) or not np.array_equal(rounded, label):
        raise DataError(f"{source} is not an integer label map (dtype {label.dtype} with non-integral values)")
    return rounded.astype(np.int32)


def _nifti_volume(case: str, image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> Volume:
    """Check the two voxel grids agree and transpose (i, j, k) -> (k, j, i), SimpleITK's order."""
    if image.shape != label.shape or image.ndim not in (2, 3):
        raise DataError(
            f"case {case}: image {image_path.name} has shape {image.shape} but label {label_path.name} has shape "
            f"{label.shape}; expected equal 2-D or 3-D shapes"
        )
    planar = image.ndim == 2
    if planar:
        image, label = image[:, :, None], label[:, :, None]
    label = _as_labels(label, label_path.name)
    return Volume(case, image.transpose(2, 1, 0), label.transpose(2, 1, 0), image_path.name, planar=planar)


class Loader(ABC):
    """Reads one file format: `case_ids()` lists the cases without reading pixels; `read(case)` reads one case."""

    name: ClassVar[str]

    def __init__(self, root: str | Path) -> None:
        self.root = _require_dir(Path(root), "dataset")

    @abstractmethod
    def case_ids(self) -> list[str]:
        """The dataset's case ids, sorted."""

    @abstractmethod
    def read(self, case: str) -> list[Volume]:
        """The volume(s) of `case` (several for a case grouping 2-D images)."""


class NnUNetLoader(Loader):
    """nnU-Net v2 raw / Medical Segmentation Decathlon layout: `dataset.json`, `labelsTr/CASE.nii.gz` and
    `imagesTr/CASE_XXXX.nii.gz` (XXXX the channel), or MSD's `imagesTr/CASE.nii.gz` with channels on a 4th axis.

    `channel` picks the input channel (e.g. one MR sequence of BraTS). Cases are the label files.
    """

    name = "nnunet"

    def __init__(self, root: str | Path, channel: int = 0) -> None:
        super().__init__(root)
        self.channel = channel
        manifest = self.root / "dataset.json"
        if not manifest.is_file():
            raise DataError(f"{self.root} has no dataset.json; expected an nnU-Net raw or MSD dataset folder")
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{manifest} is not valid JSON") from None
        ending = meta.get("file_ending", ".nii.gz") if isinstance(meta, dict) else ".nii.gz"
        if ending not in NIFTI_ENDINGS:
            raise DataError(
                f"{manifest} declares file_ending {ending!r}; only NIfTI ({', '.join(NIFTI_ENDINGS)}) is read"
            )
        channels = (meta.get("channel_names") or meta.get("modality") or {}) if isinstance(meta, dict) else {}
        if channels and not 0 <= channel < len(channels):
            raise DataError(f"{manifest} declares {len(channels)} channel(s); channel {channel} does not exist")
        self.images = _require_dir(self.root / "imagesTr", "image")
        self.labels = _require_dir(self.root / "labelsTr", "label")

    def case_ids(self) -> list[str]:
        ids = (_strip_ending(p.name, NIFTI_ENDINGS) for p in self.labels.iterdir())
        return sorted(i for i in ids if i is not None)

    def _label_path(self, case: str) -> Path:
        for ending in NIFTI_ENDINGS:
            if (path := self.labels / f"{case}{ending}").is_file():
                return path
        raise DataError(f"case {case} has no label file in {self.labels}")

    def read(self, case: str) -> list[Volume]:
        label_path = self._label_path(case)
        ending = ".nii.gz" if label_path.name.endswith(".nii.gz") else ".nii"
        image_path = self.images / f"{case}_{self.channel:04d}{ending}"
        msd_path = self.images / f"{case}{ending}"
        if image_path.is_file():
            image = _read_nifti(image_path)
        elif msd_path.is_file():
            image_path, image = msd_path, _read_nifti(msd_path)
            if image.ndim == 4:
                if not 0 <= self.channel < image.shape[3]:
                    raise DataError(
                        f"{msd_path.name} has {image.shape[3]} channel(s); channel {self.channel} does not exist"
                    )
                image = image[..., self.channel]
        else:
            raise DataError(f"case {case} has no image {image_path.name} (or {msd_path.name}) in {self.images}")
        return [_nifti_volume(case, image, _read_nifti(label_path), image_path, label_path)]


class NiftiLoader(Loader):
    """Plain NIfTI pairs: `images/NAME.nii.gz` and `labels/NAME.nii.gz`, matched by file name; NAME is the case."""

    name = "nifti"

    def __init__(self, root: str | Path, images: str = "images", labels: str = "labels") -> None:
        super().__init__(root)
        self.images = _require_dir(self.root / images, "image")
        self.labels = _require_dir(self.root / labels, "label")

    def _files(self, folder: Path) -> dict[str, Path]:
        return {c: p for p in folder.iterdir() if (c := _strip_ending(p.name, NIFTI_ENDINGS)) is not None}

    def case_ids(self) -> list[str]:
        return sorted(self._files(self.images))

    def read(self, case: str) -> list[Volume]:
        image_path = self._files(self.images).get(case)
        label_path = self._files(self.labels).get(case)
        if image_path is None or label_path is None:
            missing = self.images if image_path is None else self.labels
            raise DataError(f"case {case} has no NIfTI file in {missing}")
        return [_nifti_volume(case, _read_nifti(image_path), _read_nifti(label_path), image_path, label_path)]


class NpzLoader(Loader):
    """MedSAM `.npz` files, one case each (the file stem): `imgs` (D x H x W, or H x W[x3] for a 2-D image) and `gts`
    (D x H x W or H x W). MedSAM's files are already uint8 after its intensity preset, so pass `preset=None`."""

    name = "npz"

    def case_ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npz") if not p.name.startswith("."))

    def read(self, case: str) -> list[Volume]:
        path = self.root / f"{case}.npz"
        require_file(path, "file", DataError)
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = set(data.files)
                if not {"imgs", "gts"} <= keys:
                    raise DataError(
                        f"{path.name} holds {', '.join(sorted(keys)) or 'no arrays'}; expected imgs and gts"
                    )
                image, label = data["imgs"], data["gts"]
        except DataError:
            raise
        except Exception:  # zipfile.BadZipFile, OSError, ValueError (pickled arrays) for a bad file
            raise DataError(f"{path} is not a readable .npz file") from None
        planar = label.ndim == 2
        rgb = image.ndim == label.ndim + 1 and image.shape[-1] == 3
        if (
            image.shape[: label.ndim] != label.shape
            or label.ndim not in (2, 3)
            or image.ndim - label.ndim not in (0, rgb)
        ):
            raise DataError(f"case {case}: imgs has shape {image.shape} but gts has shape {label.shape} in {path.name}")
        if planar:
            image, label = image[None], label[None]
        return [Volume(case, image, _as_labels(label, path.name), path.name, planar=planar)]


class PngLoader(Loader):
    """2-D images (PNG/JPG) in `images/` and masks of the same stem in `masks/` (PNG: pixel values are label ids).

    Each image is its own case, unless `case_pattern` (a regex searched in the file stem; its first group, or the
    whole match) groups several images into one case, as slices of one patient.
    """

    name = "png"

    def __init__(
        self, root: str | Path, images: str = "images", masks: str = "masks", case_pattern: str | None = None
    ) -> None:
        super().__init__(root)
        self.images = _require_dir(self.root / images, "image")
        self.masks = _require_dir(self.root / masks, "mask")
        try:
            self.pattern = re.compile(case_pattern) if case_pattern is not None else None
        except re.error as error:
            raise DataError(f"case_pattern {case_pattern!r} is not a valid regular expression: {error}") from None

    def _case_of(self, stem: str) -> str:
        if self.pattern is None:
            return stem
        match = self.pattern.search(stem)
        if match is None:
            raise DataError(f"image {stem} does not match case_pattern {self.pattern.pattern!r}")
        return match.group(1) if self.pattern.groups else match.group(0)

    def _groups(self) -> dict[str, list[Path]]:
        groups: dict[str, list[Path]] = {}
        for path in sorted(self.images.iterdir()):
            if (stem := _strip_ending(path.name, IMAGE_ENDINGS)) is not None:
                groups.setdefault(self._case_of(stem), []).append(path)
        return groups

    def case_ids(self) -> list[str]:
        return sorted(self._groups())

    @staticmethod
    def _open(path: Path, mask: bool) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                if mask:
                    array = np.asarray(image.convert("L") if image.mode in ("1", "LA") else image)
                else:
                    array = np.asarray(image.convert("RGB") if image.mode in ("P", "RGBA", "CMYK", "YCbCr") else image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise DataError(f"{path} is not a readable image file") from None
        if mask and array.ndim == 3:
            if not (array == array[:, :, :1]).all():
                raise DataError(f"mask {path.name} has {array.shape[2]} differing channels; expected one label map")
            array = array[:, :, 0]
        if not mask and array.ndim == 3 and array.shape[2] != 3:
            array = array[:, :, 0] if array.shape[2] == 2 else array[:, :, :3]  # LA -> L
        return array

    def read(self, case: str) -> list[Volume]:
        paths = self._groups().get(case)
        if not paths:
            raise DataError(f"case {case} has no image in {self.images}")
        masks = {s: p for p in self.masks.iterdir() if (s := _strip_ending(p.name, IMAGE_ENDINGS)) is not None}
        volumes = []
        for index, path in enumerate(paths):
            stem = _strip_ending(path.name, IMAGE_ENDINGS)
            if stem not in masks:
                raise DataError(f"image {path.name} has no mask of the same name in {self.masks}")
            image, mask = self._open(path, mask=False), self._open(masks[stem], mask=True)
            if image.shape[:2] != mask.shape:
                raise DataError(
                    f"case {case}: image {path.name} has shape {image.shape} but mask {masks[stem].name} has shape "
                    f"{mask.shape}"
                )
            volumes.append(Volume(case, image[None], _as_labels(mask, path.name)[None], path.name, True, index))
        return volumes


class DicomSegLoader(Loader):
    """DICOM: a series of single-frame CT/MR files and one SEG object that references them, per case folder.

    Each sub-folder of `root` holding files is a case (or `root` itself when it holds the files). Slices are ordered
    along the series' slice normal; intensities go through the modality LUT (rescale slope/intercept: HU for CT).
    The label of a pixel is its SEG segment number (0 outside every segment).
    """

    name = "dicom_seg"

    def _folders(self) -> dict[str, Path]:
        if any(p.is_file() for p in self.root.iterdir()):
            return {self.root.name: self.root}
        return {p.name: p for p in sorted(self.root.iterdir()) if p.is_dir() and any(q.is_file() for q in p.iterdir())}

    def case_ids(self) -> list[str]:
        return sorted(self._folders())

    def read(self, case: str) -> list[Volume]:
        import highdicom as hd
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut

        folder = self._folders().get(case)
        if folder is None:
            raise DataError(f"case {case} has no folder in {self.root}")
        images: list[tuple[Path, pydicom.Dataset]] = []
        segs: list[tuple[Path, pydicom.Dataset]] = []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                dataset = pydicom.dcmread(path)
            except (InvalidDicomError, OSError, EOFError):
                raise DataError(f"{path} is not a readable DICOM file") from None
            (segs if dataset.get("Modality") == "SEG" else images).append((path, dataset))
        if len(segs) != 1 or not images:
            raise DataError(
                f"case {case}: {folder} holds {len(segs)} SEG and {len(images)} image file(s); expected 1 SEG"
            )
        try:
            normal = np.cross(*np.reshape(np.asarray(images[0][1].ImageOrientationPatient, np.float64), (2, 3)))
            images.sort(key=lambda item: float(np.dot(normal, np.asarray(item[1].ImagePositionPatient, np.float64))))
            volume = np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float64) for _, d in images])
        except (AttributeError, KeyError, ValueError, TypeError, RuntimeError, NotImplementedError):
            raise DataError(
                f"case {case}: the images in {folder} are not one series of single-frame images of one size"
            ) from None
        seg_path, seg_dataset = segs[0]
        uids = [d.SOPInstanceUID for _, d in images]
        try:
            seg = hd.seg.Segmentation.from_dataset(seg_dataset)
            label = seg.get_pixels_by_source_instance(
                uids, combine_segments=True, assert_missing_frames_are_empty=True
            ).astype(np.int32)
        except (AttributeError, ValueError, KeyError, RuntimeError):
            raise DataError(f"{seg_path.name} is not a SEG of the series in {folder}") from None
        if label.shape != volume.shape:
            raise DataError(
                f"case {case}: the series has shape {volume.shape} but {seg_path.name} has shape {label.shape}"
            )
        return [Volume(case, volume, label, seg_path.name)]


LOADERS: dict[str, type[Loader]] = {
    loader.name: loader for loader in (NnUNetLoader, NiftiLoader, DicomSegLoader, PngLoader, NpzLoader)
}


def get_loader(name: str) -> type[Loader]:
    """The loader class of format `name`; an unknown name fails listing the known ones."""
    try:
        return LOADERS[name]
    except (KeyError, TypeError):
        raise DataError(unknown_name("data format", name, LOADERS)) from None


# --------------------------------------------------------------------------------------------------------------
# Cases -> slices.
# --------------------------------------------------------------------------------------------------------------


def mask_boxes(mask: np.ndarray, per: Literal["component", "label"] = "component", label: np.ndarray | None = None):
    """Tight XYXY boxes (N x 4 float64, image pixel coordinates) of an H x W bool `mask`.

    A box spans its pixels: x0/y0 are the smallest column/row index, x1/y1 the largest + 1. `per="component"` gives
    one box per 8-connected component (raster order); `per="label"` one per label id of `label` (H x W) inside the
    mask, in increasing id order.
    """
    if per == "component":
        regions, _ = ndimage.label(mask, structure=CONNECTIVITY)
    else:
        if label is None:
            raise TypeError("mask_boxes(per='label') needs `label`, the H x W label map; found None")
        regions = np.where(mask, label, 0)
        ids = np.unique(regions[regions != 0])
        regions = np.searchsorted(ids, regions) + 1
        regions[~mask] = 0
    found = [s for s in ndimage.find_objects(regions) if s is not None]
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in found], dtype=np.float64).reshape(-1, 4)


def jitter_boxes(
    boxes: np.ndarray, jitter: int, shape: tuple[int, int], seed: int, case: str, index: int
) -> np.ndarray:
    """Boxes grown outward by up to `jitter` pixels per side (each side an independent integer in [0, jitter]), as
    MedSAM perturbs its box prompts; clipped to the h x w image. Seeded by (seed, case, index): the same slice gets
    the same boxes in every run, whatever else is loaded."""
    if jitter <= 0 or len(boxes) == 0:
        return boxes
    rng = np.random.default_rng([seed, zlib.crc32(case.encode()), index])
    grow = rng.integers(0, jitter, size=boxes.shape, endpoint=True) * np.array([-1, -1, 1, 1])
    h, w = shape
    return np.clip(boxes + grow, 0, [w, h, w, h]).astype(np.float64)


def _preset_uint8(volume: Volume, preset: str | None) -> np.ndarray:
    if preset is None:
        if volume.image.dtype != np.uint8:
            raise DataError(
                f"case {volume.case}: {volume.source} holds {volume.image.dtype} intensities; name an intensity preset "
                f"({', '.join(PRESETS)}) to map them to uint8"
            )
        return volume.image
    rgb = volume.image.ndim == 4
    if rgb and not volume.planar:
        raise DataError(f"case {volume.case}: {volume.source} is an RGB volume of shape {volume.image.shape}")
    try:
        return to_uint8(volume.image[0], preset)[None] if rgb else to_uint8(volume.image, preset)
    except ImagingError as error:
        raise DataError(f"case {volume.case}: {volume.source}: {error}") from None


def case_slices(
    volume: Volume,
    labels: Sequence[int],
    preset: str | None,
    axis: int = 0,
    min_component: int = 0,
    boxes: Literal["component", "label"] = "component",
    jitter: int = 0,
    seed: int = 0,
) -> list[Slice]:
    """The slices of `volume` along `axis` (ignored for 2-D images) where `labels` have foreground, in index order.

    The preset is applied to the whole volume first. Connected components (8-connected, per slice) smaller than
    `min_component` pixels are removed from the mask; a slice left empty is dropped.
    """
    image = _preset_uint8(volume, preset)
    label = volume.label
    if not volume.planar and axis != 0:
        image, label = np.moveaxis(image, axis, 0), np.moveaxis(label, axis, 0)
    selected = np.isin(label, np.asarray(labels))
    slices = []
    for k in np.flatnonzero(selected.reshape(len(selected), -1).any(axis=1)):
        mask = selected[k]
        if min_component > 1:
            regions, _ = ndimage.label(mask, structure=CONNECTIVITY)
            sizes = np.bincount(regions.ravel())
            mask = (sizes >= min_component)[regions] & mask
            if not mask.any():
                continue
        index = volume.index + int(k)
        found = mask_boxes(mask, boxes, label[k])
        found = jitter_boxes(found, jitter, mask.shape, seed, volume.case, index)
        # Copies, so a slice does not keep its whole volume alive.
        slices.append(Slice(np.ascontiguousarray(image[k]).copy(), mask.copy(), found, volume.case, index))
    return slices


# --------------------------------------------------------------------------------------------------------------
# Split by case and the task specification.
# --------------------------------------------------------------------------------------------------------------


def split_cases(
    case_ids: Iterable[str], calibration_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(calibration, test) case ids, each sorted: a seeded permutation of the sorted ids, its first
    round(fraction * n) cases (at least 1 and at most n - 1) for calibration. No case is in both."""
    ids = sorted(set(case_ids))
    if len(ids) < 2:
        raise DataError(f"a split by case needs at least 2 cases; found {len(ids)}")
    if not 0.0 < calibration_fraction < 1.0:
        raise DataError(f"expected a calibration fraction between 0 and 1 (exclusive), found {calibration_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n = min(max(round(calibration_fraction * len(ids)), 1), len(ids) - 1)
    return sorted(ids[i] for i in order[:n]), sorted(ids[i] for i in order[n:])


class DataSpec(BaseModel):
    """What a task is made of: where its files are, which format, which label(s), and how slices are cut."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path
    format: str
    labels: tuple[int, ...] = Field(min_length=1)
    preset: str | None  # None: the files are already uint8 (PNG, MedSAM npz)
    modality: str = ""
    axis: Literal[0, 1, 2] = 0
    min_component: int = Field(default=0, ge=0)
    boxes: Literal["component", "label"] = "component"
    jitter: int = Field(default=0, ge=0)
    calibration_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)
    options: dict[str, Any] = {}  # format-specific loader keywords (channel, images, labels, masks, case_pattern)

    @model_validator(mode="before")
    @classmethod
    def _label_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" in data and "labels" not in data:
            data = {**data, "labels": data["label"]}
            del data["label"]
        if isinstance(data, dict) and isinstance(data.get("labels"), int):
            data = {**data, "labels": (data["labels"],)}
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(unknown_name("intensity preset", value, PRESETS))
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in LOADERS:
            raise ValueError(unknown_name("data format", value, LOADERS))
        return value


def parse_spec(data: DataSpec | Mapping[str, Any]) -> DataSpec:
    """A validated DataSpec; a mapping that does not validate fails in one sentence naming the first bad field."""
    if isinstance(data, DataSpec):
        return data
    try:
        return DataSpec.model_validate(dict(data))
    except ValidationError as error:
        raise DataError(f"data spec {first_validation_error(error, 'spec')}") from None


def open_loader(spec: DataSpec) -> Loader:
    """The loader of `spec.format` on `spec.path` with `spec.options` (its keyword arguments)."""
    loader = get_loader(spec.format)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise DataError(
            f"format {spec.format} does not take option(s) {', '.join(unknown)}; "
            f"expected {', '.join(accepted) or 'no options'}"
        )
    return loader(spec.path, **spec.options)


def _ordered(slices: list[Slice], seed: int) -> tuple[Slice, ...]:
    """Slices in a canonical (case, index) order, then one seeded permutation: budgets of a seed are prefixes."""
    slices = sorted(slices, key=lambda s: (s.case, s.index))
    return tuple(slices[i] for i in np.random.default_rng(seed).permutation(len(slices)))


def load_task(spec: DataSpec | Mapping[str, Any]) -> tuple[Task, Task, dict[str, Any]]:
    """(calibration task, test task, split record) of `spec`; the record (JSON-ready) is to be written down with
    the results: format, path, labels, seed, fraction, the case ids of each split and their slice counts."""
    spec = parse_spec(spec)
    loader = open_loader(spec)
    ids = loader.case_ids()
    if not ids:
        raise DataError(f"{spec.path} holds no {spec.format} cases")
    calibration, test = split_cases(ids, spec.calibration_fraction, spec.seed)
    in_calibration = set(calibration)
    found: set[int] = set()
    slices: dict[str, list[Slice]] = {"calibration": [], "test": []}
    for case in ids:
        for volume in loader.read(case):
            found.update(int(v) for v in np.unique(volume.label))
            split = slices["calibration" if case in in_calibration else "test"]
            split += case_slices(
                volume, spec.labels, spec.preset, spec.axis, spec.min_component, spec.boxes, spec.jitter, spec.seed
            )
    if not found & set(spec.labels):
        present = ", ".join(str(v) for v in sorted(found - {0})[:20]) or "none"
        raise DataError(f"label(s) {list(spec.labels)} appear in no case of {spec.path}; label ids found: {present}")
    for part, chosen in slices.items():
        if not chosen:
            raise DataError(
                f"the {part} split of {spec.name} has no slice with foreground of label(s) {list(spec.labels)} left "
                f"after dropping components under {spec.min_component} pixels"
            )
    record = {
        "name": spec.name,
        "format": spec.format,
        "path": str(spec.path),
        "labels": list(spec.labels),
        "seed": spec.seed,
        "calibration_fraction": spec.calibration_fraction,
        "calibration": calibration,
        "test": test,
        "slices": {part: len(chosen) for part, chosen in slices.items()},
        "spec": spec.model_dump(mode="json"),
    }
    calibration_task, test_task = (
        Task(spec.name, _ordered(slices[part], spec.seed), spec.modality, {"split": record, "part": part})
        for part in ("calibration", "test")
    )
    return calibration_task, test_task, record

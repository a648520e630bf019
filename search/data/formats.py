"""Calibration data, step 1: the loaders, one small class per file format, and their registry.

`LOADERS` maps a format name to its class; `get_loader(name)` fails listing the valid names. A loader lists a
dataset's case ids cheaply and reads one case at a time into `Volume`s: raw intensities and an integer label map.

Array layout. Every loader returns volumes as D x H x W (x 3 for RGB) in the order SimpleITK (and so MedSAM and
nnU-Net) reads them: a NIfTI's voxel array (i, j, k) is transposed to (k, j, i), a DICOM series is stacked along its
slice normal, a MedSAM `.npz` is already D x H x W. Voxel order is kept, never reoriented. `axis` (see
`search.data.slicing`) picks the slicing axis in that layout: 0 (the default) is a NIfTI's last voxel axis and a DICOM
series' slice stack (axial slices of an axial acquisition), 1 and 2 the other two. A 2-D image is a volume of one
slice and ignores `axis`.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from search.errors import DataError
from search.files import require_file
from service.errors import unknown_name

__all__ = [
    "IMAGE_ENDINGS",
    "LOADERS",
    "NIFTI_ENDINGS",
    "DicomSegLoader",
    "Loader",
    "NiftiLoader",
    "NnUNetLoader",
    "NpzLoader",
    "PngLoader",
    "Volume",
    "get_loader",
]


NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg")


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

"""Uploaded volumes for the MONAI Label routes: NIfTI and NRRD files (read and written), and zips of DICOM files.

A viewer (3D Slicer, OHIF) sends a volume as the file it saved, and reads the label volume back in the same
geometry. One reader/writer class per format (`NiftiFormat`, `NrrdFormat`, chosen by the file name's extension),
each going through the format's own library (nibabel, pynrrd). Every volume is held as `StoredVolume`: intensities
as the file holds them (HU for CT, the scaling of a NIfTI's scl_slope/scl_inter applied), indexed (i, j, k) as
stored, and a 4x4 affine from that index to patient coordinates in mm (LPS, DICOM's frame; NIfTI's RAS is turned
into it and back). A label volume is written with that affine into the format asked for, the same shape.

Slices for the model: slice k is the 2-D image `data[:, :, k].T` (rows along j, columns along i). That is the view
a DICOM series has once ITK (or MONAI Label's DICOMweb datastore) writes it as NIfTI: i is the DICOM column, j the
row. So a click [i, j, k] in either kind of volume is the pixel x = i, y = j of slice k, and a NIfTI made from a
series segments exactly as the series does.

Refusals are one sentence naming the rule (a dimension count, a size, an extension), never a value from the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import ClassVar

import nibabel
import nrrd
import numpy as np

from service import imaging
from service.errors import RequestError
from service.volume import Slice, Volume

__all__ = [
    "FORMATS",
    "LPS_FROM_RAS",
    "ArrayImage",
    "Limits",
    "NiftiFormat",
    "NrrdFormat",
    "StoredVolume",
    "extensions",
    "extract_zip",
    "find",
]

#: RAS <-> LPS (its own inverse): NIfTI's patient frame vs DICOM's and NRRD's usual one.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: pynrrd's names of the patient frames an NRRD 'space' field may give, as the flips that take them to LPS.
_NRRD_SPACES = {
    "left-posterior-superior": np.diag([1.0, 1.0, 1.0]),
    "right-anterior-superior": np.diag([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.diag([1.0, -1.0, 1.0]),
}


@dataclass(frozen=True)
class Limits:
    """The most an uploaded volume may hold: pixels of one slice (MEDSAMIX_MAX_PIXELS), voxels in all
    (MEDSAMIX_MAX_DECODED_PIXELS) and slices (MEDSAMIX_MAX_INSTANCES), checked on the header before any voxel is
    read."""

    max_pixels: int
    max_voxels: int
    max_slices: int

    def check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or min(shape) < 1:
            found = f"{len(shape)} dimensions" if len(shape) != 3 else "an empty dimension"
            raise RequestError(
                f"expected a 3-D volume (one channel, one time point), found {found}", HTTPStatus.UNPROCESSABLE_ENTITY
            )
        i, j, k = shape
        if i * j > self.max_pixels or i * j * k > self.max_voxels or k > self.max_slices:
            raise RequestError(
                f"the volume is {i}x{j}x{k} voxels; this server takes at most {self.max_pixels} pixels per slice, "
                f"{self.max_voxels} voxels and {self.max_slices} slices",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )


@dataclass(frozen=True)
class StoredVolume:
    """A 3-D volume as a file held it: float32 intensities (I, J, K), its affine (index -> LPS mm) and the sha256 of
    the file (what its slices display as is a function of it alone)."""

    data: np.ndarray
    affine: np.ndarray
    digest: str

    def volume(self) -> Volume:
        """The volume the segmenter walks: slice k of `data` (see the module docstring) at its position along k."""
        image = ArrayImage(self.data, self.digest)
        step = float(np.linalg.norm(self.affine[:3, 2])) or 1.0
        x, y, z = (float(v) for v in self.affine[:3, 2] / step)
        slices = tuple(Slice(image, k, "", k * step) for k in range(self.data.shape[2]))
        return Volume(slices, self.data.shape[1], self.data.shape[0], step, (x, y, z))


class ArrayImage:
    """A stored volume as the image a DICOM series' slices are frames of: frame k is slice k, displayed through an
    intensity preset (a NIfTI says nothing about display: no preset means min-max)."""

    def __init__(self, data: np.ndarray, digest: str) -> None:
        self._data = data
        self._digest = digest

    @property
    def file_digest(self) -> str:
        return self._digest

    def display(self, frame: int, preset: str | None = None) -> np.ndarray:
        """uint8 (J, I): slice `frame` with rows along j, columns along i."""
        try:
            return imaging.to_uint8(self._data[:, :, frame].T, preset or "minmax")
        except imaging.ImagingError as error:  # an unknown preset name (the message lists the valid ones)
            raise RequestError(str(error)) from None


def _file_digest(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _not_a(kind: str) -> RequestError:
    return RequestError(f"expected a {kind} file, found one its reader cannot parse", HTTPStatus.UNPROCESSABLE_ENTITY)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` into a temporary file beside `path`, then rename: a reader never sees half a file."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix="".join(path.suffixes))
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


class NiftiFormat:
    """NIfTI-1/2 through nibabel: the affine is the file's (sform, else qform), RAS; written back with it."""

    extensions: ClassVar[tuple[str, ...]] = (".nii.gz", ".nii")

    @staticmethod
    def read(path: Path, limits: Limits) -> StoredVolume:
        try:
            image = nibabel.load(path)
        except Exception:  # nibabel's messages quote header fields
            raise _not_a("NIfTI") from None
        if not isinstance(image, nibabel.Nifti1Image | nibabel.Nifti2Image):
            raise _not_a("NIfTI")
        try:
            shape = tuple(int(n) for n in image.shape)
        except Exception:  # nibabel's messages quote header fields
            raise _not_a("NIfTI") from None
        limits.check(shape)
        try:
            data = np.asarray(image.get_fdata(dtype=np.float32))
        except Exception:  # a truncated or corrupt data block
            raise _not_a("NIfTI") from None
        if not np.isfinite(data).all():
            raise RequestError(
                "expected finite intensities in the volume, found NaN or infinite voxels",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        return StoredVolume(data, LPS_FROM_RAS @ image.affine, _file_digest(path))

    @staticmethod
    def write(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
        image = nibabel.Nifti1Image(labels, LPS_FROM_RAS @ affine)
        image.set_data_dtype(labels.dtype)

        def save(partial: Path) -> None:
            data = image.to_bytes()
            partial.write_bytes(gzip.compress(data, compresslevel=1) if path.name.endswith(".gz") else data)

        _write_atomically(path, save)


class NrrdFormat:
    """NRRD through pynrrd: 'space directions' (one row per axis) and 'space origin' in its 'space' (LPS, RAS or
    LAS); written back in LPS."""

    extensions: ClassVar[tuple[str, ...]] = (".nrrd",)

    @staticmethod
    def read(path: Path, limits: Limits) -> StoredVolume:
        try:
            header = nrrd.read_header(str(path))
            shape = tuple(int(n) for n in header["sizes"])
        except Exception:
            raise _not_a("NRRD") from None
        limits.check(shape)
        flip = _NRRD_SPACES.get(str(header.get("space", "left-posterior-superior")))
        try:
            directions = np.asarray(header.get("space directions", np.eye(3)), np.float64)
            origin = np.asarray(header.get("space origin", np.zeros(3)), np.float64)
        except Exception:
            directions = np.full((3, 3), np.nan)
            origin = np.zeros(3)
        if flip is None or directions.shape != (3, 3) or origin.shape != (3,) or not np.isfinite(directions).all():
            raise RequestError(
                "expected an NRRD in a patient space (LPS, RAS or LAS) with three finite space directions and an "
                "origin, found another geometry",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        try:
            data, _ = nrrd.read(str(path))
        except Exception:
            raise _not_a("NRRD") from None
        data = np.asarray(data, np.float32)
        if not np.isfinite(data).all():
            raise RequestError(
                "expected finite intensities in the volume, found NaN or infinite voxels",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        affine = np.eye(4)
        affine[:3, :3] = flip @ directions.T  # a row of 'space directions' is one axis' step: a column here
        affine[:3, 3] = flip @ origin
        return StoredVolume(data, affine, _file_digest(path))

    @staticmethod
    def write(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
        header = {
            "space": "left-posterior-superior",
            "space directions": affine[:3, :3].T,
            "space origin": affine[:3, 3],
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip",
        }
        _write_atomically(path, lambda partial: nrrd.write(str(partial), labels, header))


FORMATS: tuple[type[NiftiFormat] | type[NrrdFormat], ...] = (NiftiFormat, NrrdFormat)


def find(name: str) -> type[NiftiFormat] | type[NrrdFormat] | None:
    """The format a file name's extension names, or None."""
    lowered = name.lower()
    for kind in FORMATS:
        if lowered.endswith(kind.extensions):
            return kind
    return None


def extensions() -> str:
    return ", ".join(e for kind in FORMATS for e in kind.extensions)


def extract_zip(path: Path, into: Path, max_members: int, max_bytes: int) -> list[Path]:
    """The files of a zip (one series' DICOM files) written into `into` under names of our own, at most
    `max_members` files and `max_bytes` uncompressed bytes in all (counted as they are inflated, whatever the
    directory claims: a zip bomb is cut off where it crosses the limit)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise RequestError(
            "expected a zip of one series' DICOM files, found a file that is not a zip", HTTPStatus.UNPROCESSABLE_ENTITY
        ) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members or len(members) > max_members:
            raise RequestError(
                f"expected a zip of 1 to {max_members} DICOM files (MEDSAMIX_MAX_INSTANCES), found {len(members)}",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE if members else HTTPStatus.BAD_REQUEST,
            )
        written, total = [], 0
        for index, member in enumerate(members):
            target = into / f"{index}.dcm"
            try:
                with archive.open(member) as source, open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise RequestError(
                                f"the zip inflates to more than this server takes ({max_bytes} bytes per request)",
                                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
                raise RequestError(
                    f"member {index} of the zip cannot be inflated; expected stored or deflated files",
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                ) from None
            written.append(target)
    return written

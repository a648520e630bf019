"""Real DICOM files for the tests: CT, multi-frame, RGB, palette colour, compressed and undecodable, written with
pydicom 3.

Every file carries the Patient, Study, Series, Equipment, Frame of Reference, Image Plane and Image Pixel module
attributes highdicom's `Segmentation` needs of a source image, so the service's SEG tests can use them as they are.
UIDs are derived from the pixels and a name (seeded, so two runs write the same bytes). The patient and study
values are recognisable strings (`PATIENT_NAME`, `PATIENT_ID`, ...) so a test can assert that no error message
quotes them; `marked` plants another set (a patient name without '^', which highdicom warns about by quoting it)
into any file.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from io import BytesIO

import numpy as np
import pydicom
from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    MPEG2MPML,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from service.dicom import part10 as to_bytes  # the service's own Part 10 writer

PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-7f3a9c"
STUDY_DESCRIPTION = "Confidential abdomen study"
ACCESSION_NUMBER = "ACC-55219"
#: Values `marked` writes into a file; the patient name has no '^' on purpose (see the module docstring).
MARKERS = {
    "PatientName": "Quokka7Marker",
    "PatientID": "PID-MARK-41d7",
    "StudyDescription": "Marker study 9e2b",
    "AccessionNumber": "ACC-MARK-30c5",
    "InstitutionName": "Marker Institute 6a1f",
}

#: The lossless syntaxes `compressed` can write with the encoders installed here (RLE: pydicom's own encoder;
#: JPEG 2000: pylibjpeg-openjpeg; JPEG-LS: pyjpegls).
LOSSLESS_SYNTAXES = (RLELossless, JPEG2000Lossless, JPEGLSLossless)
#: A transfer syntax no pydicom decoder handles: `compressed(..., UNDECODABLE_SYNTAX)` writes junk frames under it.
UNDECODABLE_SYNTAX = MPEG2MPML


def uid(*parts: object) -> UID:
    """A deterministic UID from `parts` (bytes or anything with a str)."""
    return generate_uid(entropy_srcs=[p.hex() if isinstance(p, bytes) else str(p) for p in parts])


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def _image_dataset(
    sop_class_uid: str,
    modality: str,
    rows: int,
    columns: int,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int = 1,
    z: float = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Everything but the pixels: the modules a SEG's source image needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    # General Study
    ds.StudyInstanceUID = uid("study", PATIENT_ID)
    ds.StudyID = "1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.ReferringPhysicianName = "Referring^Doctor"
    ds.StudyDescription = STUDY_DESCRIPTION
    # General Series, Equipment, Frame of Reference
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "MedSAMix tests"
    ds.FrameOfReferenceUID = uid("frame of reference", PATIENT_ID)
    ds.PositionReferenceIndicator = ""
    # General Image, Image Plane
    ds.InstanceNumber = instance_number
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [-100.0, -120.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.75, 0.75]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = rows, columns
    return ds


def ct_dataset(
    hu: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: tuple[float, float] | None = None,
    monochrome1: bool = False,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    z: float = 0.0,
) -> Dataset:
    """A CT Image Storage dataset of `hu` (HxW, HU); stored values are rint((HU - intercept) / slope), as uint16
    when they are all non-negative, else int16."""
    hu = np.asarray(hu)
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    signed = bool(stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"HU do not fit 16-bit stored values under slope {slope} and intercept {intercept}")
    stored = stored.astype(dtype)
    ds = _image_dataset(
        CTImageStorage,
        "CT",
        *hu.shape,
        sop_instance_uid=sop_instance_uid or uid("ct", stored.tobytes(), slope, intercept, window, monochrome1),
        series_instance_uid=series_instance_uid or uid("ct series", PATIENT_ID),
        instance_number=instance_number,
        z=z,
    )
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.set_pixel_data(stored, "MONOCHROME1" if monochrome1 else "MONOCHROME2", 16)
    return ds


def ct_image(hu: np.ndarray, **kwargs: object) -> bytes:
    """A CT Image Storage file of `hu` (HxW, HU); keyword arguments as `ct_dataset`."""
    return to_bytes(ct_dataset(hu, **kwargs))


def ct_hu(rows: int = 64, columns: int = 80, seed: int = 0) -> np.ndarray:
    """A seeded HxW int16 HU image spanning air to bone (-1000..1500)."""
    return np.random.default_rng(seed).integers(-1000, 1500, (rows, columns), dtype=np.int16)


def ct_series(
    hu: np.ndarray,
    *,
    spacing: float = 2.5,
    positions: Sequence[float] | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_instance_uid: str | None = None,
    **kwargs: object,
) -> list[Dataset]:
    """A CT series of `hu` (ZxHxW HU): slice z at `positions[z]` mm along the orientation's normal (default
    z * `spacing`), one series, study and frame of reference; InstanceNumber runs opposite to z on purpose, so a
    reader that sorts by it (or by file order) gets the volume upside down. Other keywords as `ct_dataset`."""
    hu = np.asarray(hu)
    positions = [z * spacing for z in range(len(hu))] if positions is None else list(positions)
    series = series_instance_uid or uid("ct volume series", hu.tobytes())
    row, column = np.asarray(orientation[:3], np.float64), np.asarray(orientation[3:], np.float64)
    normal = np.cross(row, column)
    origin = np.array([-100.0, -120.0, 0.0])
    slices = []
    for z, (image, position) in enumerate(zip(hu, positions, strict=True)):
        ds = ct_dataset(
            image,
            sop_instance_uid=uid("ct volume slice", series, z),
            series_instance_uid=series,
            instance_number=len(hu) - z,
            **kwargs,
        )
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in origin + position * normal]
        ds.SliceThickness = spacing
        slices.append(ds)
    return slices


def multiframe_dataset(
    frames: np.ndarray, *, intercept: float = -1024.0, window: tuple[float, float] = (40.0, 400.0)
) -> Dataset:
    """A Legacy Converted Enhanced CT Image (F frames of HxW HU, 1 mm apart; frame i is `frames[i]`), converted
    by highdicom from F single-frame CT datasets: the functional groups (positions, rescale, VOI window) are what a
    SEG's source needs. Without `window` highdicom would invent one covering the whole stored range."""
    frames = np.asarray(frames)
    series = uid("multiframe series", frames.tobytes())
    slices = [
        ct_dataset(
            frame, intercept=intercept, window=window, series_instance_uid=series, instance_number=i + 1, z=-float(i)
        )  # highdicom orders frames by decreasing z
        for i, frame in enumerate(frames)
    ]
    return LegacyConvertedEnhancedCTImage(
        slices,
        series_instance_uid=series,
        series_number=2,
        sop_instance_uid=uid("multiframe", frames.tobytes()),
        instance_number=1,
    )


def multiframe(frames: np.ndarray, **kwargs: object) -> bytes:
    """A multi-frame file of `frames` (FxHxW HU); keyword arguments as `multiframe_dataset`."""
    return to_bytes(multiframe_dataset(frames, **kwargs))


def enhanced_mr_dataset(frames: np.ndarray) -> Dataset:
    """A Legacy Converted Enhanced MR Image of `frames` (FxHxW uint16, 1 mm apart; frame i is `frames[i]`),
    converted by highdicom from F single-frame MR datasets: per-frame positions, shared orientation and pixel
    measures, as an enhanced MR from a scanner has them."""
    frames = np.asarray(frames, np.uint16)
    series = uid("enhanced mr series", frames.tobytes())
    slices = []
    for i, frame in enumerate(frames):
        ds = _image_dataset(
            MRImageStorage,
            "MR",
            *frame.shape,
            sop_instance_uid=uid("mr", frames.tobytes(), i),
            series_instance_uid=series,
            instance_number=i + 1,
            z=-float(i),  # highdicom orders frames by decreasing z
        )
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.set_pixel_data(frame, "MONOCHROME2", 16)
        slices.append(ds)
    return LegacyConvertedEnhancedMRImage(
        slices,
        series_instance_uid=series,
        series_number=3,
        sop_instance_uid=uid("enhanced mr", series),
        instance_number=1,
    )


def palette_dataset(indices: np.ndarray, lut: np.ndarray) -> Dataset:
    """A PALETTE COLOR Secondary Capture dataset: `indices` (HxW uint8 or uint16, bits allocated from the dtype)
    into `lut` (Nx3 red, green, blue entries; uint8 for 8-bit entries, uint16 for 16-bit ones), first index 0."""
    indices, lut = np.asarray(indices), np.asarray(lut)
    ds = _image_dataset(
        SecondaryCaptureImageStorage,
        "OT",
        *indices.shape,
        sop_instance_uid=uid("palette", indices.tobytes(), lut.tobytes()),
        series_instance_uid=uid("palette series", PATIENT_ID),
    )
    ds.ConversionType = "WSD"
    ds.set_pixel_data(indices, "PALETTE COLOR", 8 * indices.itemsize)
    entries = len(lut) % 65536  # 0 means 65536 entries
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries, 0, 8 * lut.itemsize])
        data = np.ascontiguousarray(lut[:, channel], dtype=lut.dtype.newbyteorder("<"))
        setattr(ds, f"{colour}PaletteColorLookupTableData", data.tobytes())
    return ds


def rgb_dataset(pixels: np.ndarray) -> Dataset:
    """A Secondary Capture Image Storage dataset of `pixels` (HxWx3 uint8, RGB, planar configuration 0)."""
    pixels = np.asarray(pixels, np.uint8)
    ds = _image_dataset(
        SecondaryCaptureImageStorage,
        "OT",
        *pixels.shape[:2],
        sop_instance_uid=uid("rgb", pixels.tobytes()),
        series_instance_uid=uid("rgb series", PATIENT_ID),
    )
    ds.ConversionType = "WSD"
    ds.set_pixel_data(pixels, "RGB", 8)
    return ds


def rgb_image(pixels: np.ndarray) -> bytes:
    """A Secondary Capture file of `pixels` (HxWx3 uint8 RGB)."""
    return to_bytes(rgb_dataset(pixels))


def compressed(source: Dataset | bytes, syntax: str) -> bytes:
    """`source` re-encoded under `syntax`: one of `LOSSLESS_SYNTAXES`, or `UNDECODABLE_SYNTAX` (junk frames under an
    MPEG-2 header, for the 'cannot be decoded' case)."""
    if syntax == UNDECODABLE_SYNTAX:
        return junk_frames(source, syntax)
    ds = _copy(source)
    ds.compress(syntax, generate_instance_uid=False)
    return to_bytes(ds)


def junk_frames(source: Dataset | bytes, syntax: str, seed: int = 1) -> bytes:
    """`source`'s header under the encapsulated `syntax`, each frame 64 seeded random bytes: a corrupt stream."""
    ds = _copy(source)
    rng = np.random.default_rng(seed)
    frames = int(ds.get("NumberOfFrames", 1))
    ds.PixelData = encapsulate([rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return to_bytes(ds)


def _copy(source: Dataset | bytes) -> Dataset:
    """A fresh dataset read from `source`'s bytes (never `source` itself, which the caller may reuse)."""
    return read(source if isinstance(source, bytes) else to_bytes(source))


def repeated_frames(frames: int, size: int = 512, seed: int = 21) -> bytes:
    """A classic multi-frame CT of `frames` native 16-bit size x size frames, each the same seeded slice: a large
    upload made cheaply (512 x 512: 0.5 MiB a frame)."""
    ds = ct_dataset(ct_hu(size, size, seed=seed))
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    return to_bytes(ds)


def blank_jpeg2000(frames: int, size: int, header: int | None = None) -> bytes:
    """A JPEG 2000 lossless CT of `frames` blank size x size frames: a few hundred bytes that decode to as many
    pixels as asked (a decompression bomb). `header` writes another size into Rows and Columns than the codestream
    has."""
    ds = ct_dataset(np.full((64, 64), -1024, np.int16))
    ds.Rows = ds.Columns = size
    blank = np.zeros((frames, size, size) if frames > 1 else (size, size), np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.compress(JPEG2000Lossless, blank, generate_instance_uid=False)
    if header is not None:
        ds.Rows = ds.Columns = header
    return to_bytes(ds)


def testdata(name: str) -> bytes:
    """One of pydicom's bundled test files (e.g. 'CT_small.dcm', 'MR_small.dcm') as bytes; never downloads."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom's test data has no file {name!r}")
    with open(path, "rb") as f:
        return f.read()


def with_voi_lut(source: bytes, table: np.ndarray, first: int = 0) -> bytes:
    """`source` with a one-item VOI LUT Sequence mapping stored value `first` + i to `table[i]` (uint16)."""
    ds = read(source)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(table), first, 16])
    item.add_new("LUTData", "OW", np.asarray(table, "<u2").tobytes())
    ds.VOILUTSequence = [item]
    return to_bytes(ds)


def marked(source: bytes) -> bytes:
    """`source` with the `MARKERS` values written in (a test asserts none of them comes back or is logged)."""
    return with_changes(source, **MARKERS)


def append_element(source: bytes, tag: int, vr: str, length: int, value: bytes = b"") -> bytes:
    """`source` (explicit VR little endian) with one more data element at its end, after Pixel Data: `tag`, `vr`
    and a declared `length` that `value` may fall short of (a file cut inside that element)."""
    header = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        header += struct.pack("<HI", 0, length)  # 32-bit length after two reserved bytes
    else:
        header += struct.pack("<H", length)
    return source + header + value


def with_changes(source: bytes, *, delete: Sequence[str] = (), **values: object) -> bytes:
    """`source` with the named elements deleted and the keyword elements set (file meta keywords go to the file
    meta): the way the tests write a file that breaks one rule."""
    ds = read(source)
    for keyword in delete:
        delattr(ds, keyword)
    for keyword, value in values.items():
        target = ds.file_meta if keyword in ds.file_meta or keyword == "TransferSyntaxUID" else ds
        setattr(target, keyword, value)
    return to_bytes(ds)


def crashing_jpeg() -> bytes:
    """pydicom's JPEG baseline sample with two bytes of its Huffman tables changed: GDCM aborts the process on it
    (an uncaught C++ exception) instead of raising."""
    ds = read(testdata("SC_rgb_jpeg_dcmtk.dcm"))
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame[198], frame[205] = 223, 1
    ds.PixelData = encapsulate([bytes(frame)])
    return to_bytes(ds)

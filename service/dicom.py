"""DICOM decoding for the service: one Part 10 file -> a checked image whose frames decode on demand.

`read_dicom` parses the header and refuses a bad upload before a single pixel is decoded: not DICOM or truncated
(400), no pixel data or an image layout the service does not take (422), too large for the `Limits` (413), a
transfer syntax no installed pydicom decoder plugin handles (415). Every refusal is a `RequestError` whose one
sentence names sizes, counts, indices, transfer syntaxes and photometric interpretations only, never a tag value
(pydicom's own exception texts may quote values, so they are never forwarded).

The file is read where it lies (an upload spooled to disk, or bytes a PACS sent): large values such as Pixel Data
stay unread at parse time, and each frame is decoded from its own bytes, so a request holds the frames it uses,
not the whole file. The work is bounded by what is decoded, not by bytes: pixels per frame (checked against the
header and, for JPEG-family codestreams, against the size the codestream itself declares) and pixels decoded per
request.

`DicomImage.values` decodes one frame through pydicom's decoders (plus the Modality LUT, or the palette of a
PALETTE COLOR image); `DicomImage.display` turns it into the uint8 image the encoder sees, through
`service.imaging`'s presets or the file's own VOI. 12-bit JPEG Extended, which pydicom's GDCM plugin refuses, is
decoded by GDCM through `service.jpeg12`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from io import BufferedReader, BytesIO
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, as_pixel_options, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from service import cancellation, codestreams, decoding
from service.errors import RequestError
from service.imaging import ImagingError, Window, to_uint8

__all__ = ["DicomImage", "Limits", "check_per_frame_groups", "default_preset", "part10", "read_dicom"]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# One sample per pixel indexing the image's own red, green and blue LUTs: decoded to RGB and then treated as colour.
_PALETTE = "PALETTE COLOR"
# Colour interpretations that pydicom (YBR_FULL, YBR_FULL_422) or the JPEG 2000 codec (YBR_ICT, YBR_RCT) decode to RGB.
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
# Every standard photometric interpretation: a keyword from this list may appear in a message, anything else not.
_KNOWN_PHOTOMETRIC = (
    *_MONOCHROME,
    *_COLOR,
    _PALETTE,
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
    "HSV",
    "ARGB",
    "CMYK",
)
_BITS_ALLOCATED = (1, 8, 16, 32)
# The intensity preset by modality when neither the request nor the file says how to display a monochrome image.
_MODALITY_PRESETS = {"CT": "ct_abdomen", "MR": "mr"}
_FALLBACK_PRESET = "minmax"
# Decoded frames kept per image: a few boxes on neighbouring frames reuse them without holding a whole volume.
_CACHED_FRAMES = 8
# A transfer syntax UID is quoted in a message only if it looks like one (the element could hold anything).
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")

# pydicom warns about (and logs) a malformed element by quoting its value; no patient data may reach the service's
# logs, so reading validation is off for the process (the checks below refuse what the service cannot use).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


PIXEL_DATA = 0x7FE00010
# Values at least this long are left in the file at parse time (Pixel Data above all) and read when used.
_DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """The most the service decodes for one request; checked on the header before any pixel is allocated, and
    again on each frame's codestream before it is decoded."""

    max_pixels: int = 4096 * 4096  # rows * columns of one frame
    max_frames: int = 2_000  # frames a file may declare (only those a request uses are decoded)
    max_decoded_pixels: int = 64 * 1024 * 1024  # rows * columns summed over the frames one request decodes


class PixelBudget:
    """The pixels one request may decode, shared by every image it reads (a DICOMweb request reads several)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0
        self._lock = threading.Lock()

    def spend(self, pixels: int, what: str) -> None:
        """Take `pixels` more, or 413 naming `what` needs them (nothing is taken then)."""
        with self._lock:
            if self.spent + pixels > self.limit:
                raise RequestError(
                    f"the request would decode {self.spent + pixels} pixels with {what}; this server decodes at most "
                    f"{self.limit} per request",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            self.spent += pixels


def _syntax_label(uid: UID) -> str:
    """'<UID> (<name>)' for a well-formed UID, else a placeholder (never the element's raw value)."""
    if len(uid) > 64 or not _UID_PATTERN.fullmatch(uid):
        return "with a malformed UID"
    return f"{uid} ({uid.name if uid.is_transfer_syntax else 'not a standard transfer syntax'})"


def _decodable_syntaxes() -> list[UID]:
    """The standard transfer syntaxes the installed pydicom decoder plugins can decode (a deflated dataset is not
    inflated: see `_parse`)."""
    decodable = []
    for uid in AllTransferSyntaxes:
        if uid == DeflatedExplicitVRLittleEndian:
            continue
        try:
            if get_decoder(uid).is_available:
                decodable.append(uid)
        except NotImplementedError:
            continue
    return decodable


Source = Path | bytes  # an upload spooled to disk, or an instance a PACS sent
Stream = BytesIO | BufferedReader  # what `_opener` opens: a BinaryIO that hashlib.file_digest can also read into


def _opener(source: Source) -> Callable[[], Stream]:
    """A function opening `source` for reading; bytes are shared, not copied, by each BytesIO."""
    if isinstance(source, bytes):
        return lambda: BytesIO(source)
    path = Path(source)
    return lambda: open(path, "rb")


def _past_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _parse(open_source: Callable[[], Stream]) -> tuple[Dataset, int]:
    """The parsed header of a complete DICOM Part 10 file (values of `_DEFER_BYTES` or more left unread) and the
    file's size, or 400 when it is not one."""
    with open_source() as stream:
        head = stream.read(132)
        size = stream.seek(0, 2)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise RequestError(
                f"the upload is not a DICOM file; expected a DICOM Part 10 file (a 128-byte preamble then 'DICM'), "
                f"found {size} bytes without that marker"
            )
        stream.seek(132)
        try:  # the file meta group (explicit VR little endian in every Part 10 file) alone
            meta = pydicom.filereader.read_dataset(
                stream, is_implicit_VR=False, is_little_endian=True, stop_when=_past_file_meta
            )
        except Exception:  # pydicom raises many types here, and their texts may quote values
            meta = None
        if meta is None or "TransferSyntaxUID" not in meta:
            raise RequestError(
                "the DICOM file meta information has no transfer syntax UID; expected a complete Part 10 header, "
                "found a truncated or malformed one"
            )
        if UID(str(meta.TransferSyntaxUID)) == DeflatedExplicitVRLittleEndian:
            # pydicom inflates a deflated dataset whole into memory, whatever the ratio (a few MB become GBs).
            raise RequestError(
                "the DICOM file's dataset is deflated (Deflated Explicit VR Little Endian), which this server does "
                "not inflate; expected an explicit or implicit VR little endian file, or compressed pixel data",
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )
        stream.seek(0)
        try:
            ds = pydicom.dcmread(stream, defer_size=_DEFER_BYTES)
        except Exception:  # as above
            raise RequestError(
                "the DICOM header could not be parsed; expected a well-formed DICOM Part 10 file"
            ) from None
    if _truncated(ds, size):
        raise RequestError(
            f"the DICOM file is truncated; expected complete elements, found the upload's {size} bytes ending "
            "inside one"
        )
    return ds, size


def _truncated(ds: Dataset, size: int) -> bool:
    """Whether the `size`-byte file ended inside an element (pydicom keeps the short value without complaint).

    A truncated encapsulated (undefined-length) Pixel Data element makes pydicom drop the dataset, so an empty
    dataset counts as truncated too. Only the element read last can be cut short: the one that starts last in the
    file, which need not have the largest tag (a malformed file can put any element after Pixel Data). Its declared
    length is compared with the bytes the file holds for it, without converting or loading any value (`get_item`
    would read a deferred one): the raw bytes pydicom read, or, for a value it deferred (not read, because long), the
    bytes from the value's offset to the end of the file.
    """
    if len(ds) == 0:
        return True
    last = max((ds.get_item(tag, keep_deferred=True) for tag in ds.keys()), key=_value_offset)
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:  # undefined length: read to its delimiter
        return False
    held = size - last.value_tell if last.value is None else len(last.value)
    return held < last.length


def _value_offset(element: RawDataElement | DataElement) -> int:
    """Where `element`'s value starts in the file pydicom read it from."""
    offset = element.value_tell if isinstance(element, RawDataElement) else element.file_tell
    assert offset is not None, "every element of a dataset pydicom read from a file has its offset"
    return offset


def _integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """A required (or defaulted) integer element of the header, or 422 naming the element (not its value)."""
    try:
        value = ds.get(keyword, default)
        number = None if value is None else int(value)
    except Exception:  # a malformed value: wrong length, several values, text that is not a number
        raise RequestError(
            f"the DICOM element {keyword} could not be read as one integer; expected a valid {keyword}",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        ) from None
    if number is None:
        raise RequestError(
            f"the DICOM image has no {keyword} element; expected the Image Pixel module's {keyword}",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    return number


def _check_decodable(syntax: UID) -> Decoder:
    """The pydicom decoder for `syntax`, or 415 listing the syntaxes this server decodes."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        handled = ", ".join(uid.name for uid in _decodable_syntaxes())
        raise RequestError(
            f"transfer syntax {_syntax_label(syntax)} cannot be decoded by this server; the decoders installed "
            f"handle: {handled}",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    return decoder


def read_dicom(source: Source, limits: Limits = Limits(), budget: PixelBudget | None = None) -> DicomImage:
    """A DICOM Part 10 file (a path, kept until the image is no longer used, or bytes) -> a `DicomImage` whose
    header has been checked; no pixel is decoded and Pixel Data is not read here.

    Raises RequestError: 400 not DICOM or truncated, 422 no pixel data or an unsupported image layout, 413 over
    `limits`, 415 a transfer syntax no installed decoder handles (or a deflated dataset). The frames the image
    decodes are charged to `budget` (the request's; by default one of `limits.max_decoded_pixels` of its own).
    """
    open_source = _opener(source)
    ds, size = _parse(open_source)
    if "PixelData" not in ds:
        other = "float pixel data" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else "no pixel data"
        raise RequestError(
            f"the DICOM file has {other}; expected an image with integer Pixel Data (7FE0,0010)",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    decoder = _check_decodable(syntax)

    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    frames = _integer(ds, "NumberOfFrames", 1)
    if min(rows, columns, frames) < 1:
        raise RequestError(
            f"the DICOM image has {rows} row(s), {columns} column(s) and {frames} frame(s); expected at least one "
            "of each",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    if rows * columns > limits.max_pixels:
        raise RequestError(
            f"the DICOM image has {rows}x{columns} = {rows * columns} pixels per frame; this server accepts at most "
            f"{limits.max_pixels}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    if frames > limits.max_frames:
        raise RequestError(
            f"the DICOM image has {frames} frames; this server accepts at most {limits.max_frames}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )

    samples = _integer(ds, "SamplesPerPixel")
    bits = _integer(ds, "BitsAllocated")
    bits_stored = _integer(ds, "BitsStored")
    representation = _integer(ds, "PixelRepresentation")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected_photometric = (*_MONOCHROME, _PALETTE) if samples == 1 else _COLOR if samples == 3 else None
    if expected_photometric is None:
        raise RequestError(
            f"the DICOM image has {samples} samples per pixel; expected 1 (monochrome) or 3 (colour)",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    if photometric not in expected_photometric:
        shown = photometric if photometric in _KNOWN_PHOTOMETRIC else "an unknown value"
        raise RequestError(
            f"the DICOM image's photometric interpretation is {shown} for {samples} sample(s) per pixel; expected "
            f"one of {', '.join(expected_photometric)}",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    allowed_bits = _BITS_ALLOCATED if samples == 1 else (8,)
    if bits not in allowed_bits or not 1 <= bits_stored <= bits:
        raise RequestError(
            f"the DICOM image has {bits} bits allocated and {bits_stored} bits stored; expected bits allocated in "
            f"{', '.join(map(str, allowed_bits))} and 1 <= bits stored <= bits allocated",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    if representation not in (0, 1):
        raise RequestError(
            f"the DICOM image has pixel representation {representation}; expected 0 (unsigned) or 1 (signed)",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    check_per_frame_groups(ds, frames)
    # Raw: nothing has read the value yet (pydicom's overload says DataElement, its implementation returns either).
    pixels = cast(RawDataElement, ds.get_item(PIXEL_DATA, keep_deferred=True))
    if decoder.is_native:
        expected = get_expected_length(ds, "bytes")
        found = min(pixels.length, size - pixels.value_tell)
        if found < expected:
            raise RequestError(
                f"the DICOM pixel data is truncated; expected {expected} bytes for {frames} frame(s) of "
                f"{rows}x{columns}x{samples} at {bits} bits, found {found}"
            )
    return DicomImage(
        ds,
        decoder,
        open_source,
        pixels,
        budget or PixelBudget(limits.max_decoded_pixels),
        rows=rows,
        columns=columns,
        frames=frames,
        samples=samples,
    )


def part10(dataset: Dataset) -> bytes:
    """`dataset` as a DICOM Part 10 file (preamble, 'DICM', file meta) in the transfer syntax its file meta names:
    how the service writes a SEG answer and a retrieved instance alike."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def check_per_frame_groups(ds: Dataset, frames: int) -> None:
    """422 unless an enhanced multi-frame image has one PerFrameFunctionalGroupsSequence item per frame (PS3.3
    C.7.6.16.1): item i holds frame i's Modality LUT and VOI here, and its geometry in a SEG (`service.seg`), so a
    missing or an extra item would pair frames with attributes that are not theirs. Images without the sequence
    pass."""
    items = ds.get("PerFrameFunctionalGroupsSequence")
    if items is not None and len(items) != frames:
        raise RequestError(
            f"the DICOM image has {len(items)} PerFrameFunctionalGroupsSequence item(s) for {frames} frame(s) "
            "(NumberOfFrames); expected one item per frame",
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )


def _functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of an enhanced multi-frame functional group for `frame` (per-frame first, then shared), or
    None when the file has no such group (classic single-frame IODs keep those attributes at the top level)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and index < len(items) and items[index].get(sequence):
            return items[index][sequence][0]
    return None


class DicomImage:
    """A checked DICOM image: header facts, and frames decoded (and cached) one at a time from the file's own bytes;
    built by `read_dicom`. The frames it decodes are charged to the request's `PixelBudget`."""

    dataset: Dataset  # the parsed header (the SEG builder's source image); Pixel Data left unread
    rows: int
    columns: int
    frames: int
    samples: int  # samples per pixel once decoded: 1 (monochrome) or 3 (RGB, palette colour included)
    modality: str  # '' when absent; display defaults only, never in a message

    def __init__(
        self,
        dataset: Dataset,
        decoder: Decoder,
        open_source: Callable[[], Stream],
        pixels: RawDataElement,
        budget: PixelBudget,
        *,
        rows: int,
        columns: int,
        frames: int,
        samples: int,
    ):
        self.dataset = dataset
        self._palette = str(dataset.PhotometricInterpretation).strip() == _PALETTE
        self.rows, self.columns, self.frames, self.samples = rows, columns, frames, 3 if self._palette else samples
        self.modality = str(dataset.get("Modality", "") or "")
        self._decoder = decoder
        self._open = open_source
        self._pixels = pixels
        self._budget = budget
        self._syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
        self._monochrome1 = str(dataset.PhotometricInterpretation).strip() == "MONOCHROME1"
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoded: set[int] = set()
        self._lock = threading.Lock()

    @functools.cached_property
    def file_digest(self) -> str:
        """sha256 of the whole file: what the file displays as (with a given window) is a function of it alone."""
        with self._open() as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()

    def reserve(self, frames: Collection[int]) -> None:
        """Charge the frames of `frames` (valid indices) not yet decoded to the request's budget, or 413 before any
        of them is decoded: what a request will decode is refused up front, not after the first frames were paid."""
        with self._lock:
            new = set(frames) - self._decoded
            if new:
                self._budget.spend(
                    len(new) * self.rows * self.columns, f"{len(new)} more frame(s) of {self.rows}x{self.columns}"
                )
                self._decoded |= new

    def check_frame(self, frame: int) -> int:
        """`frame` as an int if it indexes a frame of this image, else 400."""
        if isinstance(frame, bool) or not isinstance(frame, int | np.integer):
            raise RequestError(
                f"the frame index is a {type(frame).__name__}; expected an integer from 0 to {self.frames - 1}"
            )
        if not 0 <= frame < self.frames:
            count = "1 frame (0)" if self.frames == 1 else f"{self.frames} frames (0-{self.frames - 1})"
            raise RequestError(f"frame {frame} is out of range; the image has {count}")
        return int(frame)

    def values(self, frame: int) -> np.ndarray:
        """One frame, read-only: monochrome -> HxW float64 after the Modality LUT (rescale slope/intercept, or the
        Modality LUT Sequence; per frame for enhanced multi-frame IODs), finite (else 422, whatever the display path
        later); colour -> HxWx3 uint8 RGB (a palette colour frame through its palette)."""
        frame = self.check_frame(frame)
        with self._lock:
            if frame in self._cache:
                self._cache.move_to_end(frame)
                return self._cache[frame]
        values = self._decode(frame)
        values.flags.writeable = False
        with self._lock:
            self._cache[frame] = values
            while len(self._cache) > _CACHED_FRAMES:
                self._cache.popitem(last=False)
        return values

    def _decode(self, frame: int) -> np.ndarray:
        cancellation.check()
        self.reserve((frame,))
        options = as_pixel_options(self.dataset)
        with self._open() as stream:
            stream.seek(self._pixels.value_tell)
            if self._decoder.is_native:
                array, meta = self._decoder.as_array(
                    stream,
                    index=frame,
                    transfer_syntax_uid=self._syntax,  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions
                    pixel_keyword="PixelData",  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions
                    pixel_vr=self._pixels.VR,  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions
                    **options,
                )
            else:
                array, meta = self._decode_encapsulated(stream, frame, options)
        if self._palette:
            return self._palette_rgb(array)
        if self.samples == 3:
            decoded = str(meta.get("photometric_interpretation", ""))
            if decoded != "RGB":
                shown = decoded if decoded in _KNOWN_PHOTOMETRIC else "an unknown colour space"
                raise RequestError(
                    f"frame {frame} decoded to {shown}; expected RGB",
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                )
            return np.ascontiguousarray(array, dtype=np.uint8)
        transform = _functional_group(self.dataset, frame, "PixelValueTransformationSequence") or self.dataset
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, not warned about
                values = np.asarray(apply_modality_lut(array, transform), dtype=np.float64)
        except Exception:  # a malformed Modality LUT Sequence
            raise RequestError(
                "the image's Modality LUT could not be applied; expected a valid rescale or Modality LUT Sequence",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            ) from None
        if not np.isfinite(values).all():
            raise RequestError(
                f"frame {frame} has NaN or infinite values after the Modality LUT; expected a rescale slope and "
                "intercept (or a Modality LUT) that give finite intensities",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        return values

    def _palette_rgb(self, indices: np.ndarray) -> np.ndarray:
        """A PALETTE COLOR frame's HxW indices -> HxWx3 uint8 RGB through the image's red, green and blue LUTs
        (pydicom's `apply_color_lut`); entries of 16 bits (the descriptor's third value) keep their high byte."""
        try:
            rgb = apply_color_lut(indices, self.dataset)[..., :3]  # an alpha LUT, if any, is not shown
            bits = int(self.dataset.RedPaletteColorLookupTableDescriptor[2])
        except Exception:  # no palette, or LUT descriptors and data that disagree; pydicom's text may quote values
            raise RequestError(
                "the image's palette could not be applied; expected red, green and blue Palette Color Lookup Table "
                "descriptors and data of 8 or 16 bits per entry",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            ) from None
        return np.ascontiguousarray(rgb >> 8 if bits == 16 and rgb.dtype == np.uint16 else rgb, dtype=np.uint8)

    def _decode_encapsulated(
        self, stream: BinaryIO, frame: int, options: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Frame `frame` of encapsulated pixel data, decoded out of process (`service.decoding`); 422 when its
        codestream declares another size than the header's (a decoder allocates what the codestream says, and
        the header is what the limits were checked against)."""
        try:
            codestream = get_frame(
                stream, frame, number_of_frames=self.frames, extended_offsets=options.get("extended_offsets")
            )
            decoded = decoding.decode_frame(self._syntax, codestream, options)
        except Exception:  # no such fragment(s), or the codec refused, died or hung: a corrupt stream
            raise self._corrupt(frame) from None
        if decoded.declared is not None:
            if decoded.declared == codestreams.UNREADABLE:
                raise self._corrupt(frame)
            rows, columns = decoded.declared
            raise RequestError(
                f"frame {frame}'s {self._syntax.name} codestream declares {rows}x{columns} pixels; expected the "
                f"header's {self.rows}x{self.columns}",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        return decoded.array, {"photometric_interpretation": decoded.photometric}  # type: ignore[return-value]

    def _corrupt(self, frame: int) -> RequestError:
        return RequestError(
            f"frame {frame} could not be decoded; expected valid {self._syntax.name} pixel data, found a corrupt or "
            "truncated stream"
        )

    def display(self, frame: int, preset: str | None = None) -> np.ndarray:
        """uint8 HxW (monochrome) or HxWx3 (RGB): what the encoder sees.

        Monochrome: `preset` if given (a `service.imaging.PRESETS` name); else the file's first VOI window, applied
        as `imaging.Window(center, width)` whatever VOILUTFunction says; else its VOI LUT Sequence, then min-max;
        else `default_preset`. MONOCHROME1 is inverted last (255 - x), so bright means dense as in MONOCHROME2.
        RGB is returned as decoded (the cached, read-only array): presets do not apply.
        """
        values = self.values(frame)
        if self.samples == 3:
            return values
        if preset is not None:
            image = _to_uint8(values, preset)
        else:
            voi = self._file_voi(frame, values)
            image = voi if voi is not None else _to_uint8(values, default_preset(self))
        return 255 - image if self._monochrome1 else image

    def _file_voi(self, frame: int, values: np.ndarray) -> np.ndarray | None:
        """The file's own VOI (first window, else VOI LUT Sequence) as uint8, or None when it has none."""
        source = _functional_group(self.dataset, frame, "FrameVOILUTSequence") or self.dataset
        if "WindowCenter" in source and "WindowWidth" in source:
            try:
                window = Window(_first(source.WindowCenter), _first(source.WindowWidth))
            except Exception:  # not numbers, or a width that is not positive
                raise RequestError(
                    "the image's first VOI window is not a finite center with a positive width; expected a valid "
                    "window, or pass an intensity preset",
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                ) from None
            return to_uint8(values, window)
        if self.dataset.get("VOILUTSequence"):
            try:
                # LUT inputs are integers (the Modality LUT's output domain).
                mapped = apply_voi_lut(np.rint(values).astype(np.int64), self.dataset, index=0)
            except Exception:  # a malformed LUT descriptor or data
                raise RequestError(
                    "the image's VOI LUT Sequence could not be applied; expected a valid VOI LUT, or pass an intensity "
                    "preset",
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                ) from None
            return to_uint8(mapped, "minmax")
        return None


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DS element, as float."""
    return float(value[0] if isinstance(value, list | tuple | MultiValue) else value)


def _to_uint8(values: np.ndarray, preset: str) -> np.ndarray:
    try:
        return to_uint8(values, preset)
    except ImagingError as error:  # an unknown preset name (the message lists the valid ones)
        raise RequestError(str(error)) from None


def default_preset(image: DicomImage) -> str:
    """The intensity preset for a monochrome image whose request and file say nothing about display: by modality
    (CT -> 'ct_abdomen', MR -> 'mr'), else 'minmax'."""
    return _MODALITY_PRESETS.get(image.modality.upper(), _FALLBACK_PRESET)

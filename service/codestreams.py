"""The image size a JPEG-family codestream declares, read from its header without decoding it.

A DICOM header's Rows and Columns bound nothing by themselves: a decoder allocates what the codestream says, and
a blank frame compresses almost to nothing (a JPEG 2000 codestream of 7000 x 7000 pixels is a few hundred bytes,
a JPEG or JPEG-LS one of 65535 x 65535 a few MB). So each frame's declared size is compared with the header's
before the frame is decoded. The headers are read by the codec libraries the service decodes with: openjpeg's
`get_parameters` (JPEG 2000, HTJ2K) and pydicom's JPEG marker parser (JPEG, JPEG-LS), which its own decoders use.
"""

from __future__ import annotations

import openjpeg
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

__all__ = ["UNREADABLE", "declared_size", "has_codestream_header"]

# What `declared_size` answers for a codestream whose header gives no usable size.
UNREADABLE = (0, 0)


def has_codestream_header(syntax: UID) -> bool:
    """Whether frames under `syntax` carry a codestream header that declares their size."""
    return syntax in JPEG2000TransferSyntaxes or syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes


def declared_size(syntax: UID, codestream: bytes) -> tuple[int, int]:
    """(rows, columns) the frame's codestream declares under `syntax` (one of `has_codestream_header`), or
    `UNREADABLE` when its header cannot be parsed or declares no size (JPEG's height-by-DNL is not accepted)."""
    if syntax in JPEG2000TransferSyntaxes:
        try:
            parameters = openjpeg.get_parameters(codestream)
        except Exception:  # openjpeg's reader raises RuntimeError with its own text for a broken header
            return UNREADABLE
        size = (int(parameters.get("rows", 0)), int(parameters.get("columns", 0)))
    else:
        info = _get_jpg_parameters(codestream)  # {} when the markers cannot be parsed
        size = (int(info.get("height", 0)), int(info.get("width", 0)))
    return size if min(size) > 0 else UNREADABLE

"""What a correct decoder gives, worked out independently of the service: DCMTK's pixels of pydicom's 12-bit JPEG
Extended samples, a palette's colours by hand, and the one sentence non-finite values are refused with."""

from __future__ import annotations

import numpy as np

NONFINITE_SENTENCE = (
    "frame 0 has NaN or infinite values after the Modality LUT; expected a rescale slope and intercept (or a "
    "Modality LUT) that give finite intensities"
)


# sha256 of the little-endian uint16 pixels of pydicom's JPEG-lossy.dcm and JPGExtended.dcm (the same image) as
# DCMTK's dcmdjpeg decodes them: an independent decoder (`dcmdjpeg JPGExtended.dcm out.dcm`).
DCMTK_JPG_EXTENDED_SHA256 = "d30242775a414c01d616447854ebe3f2b20259822894bcd6891f879bcdcbf313"


def palette_rgb(indices: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The RGB a viewer shows for `indices` into `lut` (PS3.3 C.7.6.3.1.6 by hand): 16-bit entries' high byte."""
    return (lut >> 8 if lut.dtype == np.uint16 else lut)[indices].astype(np.uint8)

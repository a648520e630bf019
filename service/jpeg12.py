"""A pydicom decoder plugin: JPEG Extended (Process 2 and 4) frames of 12-bit precision, decoded by GDCM.

pydicom's own GDCM and Pillow plugins refuse 12-bit JPEG Extended outright, and the one pydicom plugin that decodes it
(pylibjpeg-libjpeg) is GPL-3.0, which the serving image leaves out. GDCM carries IJG's 12-bit libjpeg and decodes
these frames (checked against DCMTK's dcmdjpeg in tests/test_dicom.py), so `service.decoding` adds this module as one
more plugin of pydicom's JPEG Extended decoder, tried after pydicom's own. The module follows pydicom's plugin
contract: `is_available(uid)`, `DECODER_DEPENDENCIES` and a frame function `(src, runner) -> bytes`.

GDCM's 8-bit codec reads the frame first and writes "Unsupported JPEG data precision 12" to stderr before its 12-bit
codec decodes it: a fixed text, no value from the file.
"""

from __future__ import annotations

from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEGExtended12Bit

try:
    import gdcm
except ImportError:  # python-gdcm comes with the serve extra
    gdcm = None

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    """Whether this plugin can decode transfer syntax `uid` here (JPEG Extended, with GDCM installed)."""
    return gdcm is not None and uid == JPEGExtended12Bit


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One encoded JPEG Extended frame -> its pixels as bytes, in the layout `runner` describes (rows x columns x
    samples at the image's bits allocated), as pydicom's plugins return them."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    photometric = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(JPEGExtended12Bit))))
    bits = runner.bits_stored
    image.SetPixelFormat(
        gdcm.PixelFormat(runner.samples_per_pixel, runner.bits_allocated, bits, bits - 1, runner.pixel_representation)
    )
    # GDCM hands the buffer back as a str; surrogateescape restores the bytes it holds.
    return image.GetBuffer().encode("utf-8", "surrogateescape")

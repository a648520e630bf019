"""service/decoding: compressed frames decoded in a child process that may die without taking this one along."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.encaps import generate_frames

from service import decoding
from service.dicom import read_dicom
from service.errors import RequestError
from tests import dicomfiles as F
from tests.dicomfiles import crashing_jpeg


def test_a_codec_that_kills_its_process_is_a_refusal_here() -> None:
    good = F.testdata("SC_rgb_jpeg_dcmtk.dcm")
    expected = read_dicom(good).values(0)
    with pytest.raises(RequestError, match="could not be decoded") as caught:
        read_dicom(crashing_jpeg()).values(0)
    assert caught.value.status == 400
    np.testing.assert_array_equal(read_dicom(good).values(0), expected)  # a new child decodes the next one


def test_a_frame_that_takes_too_long_is_refused_and_its_child_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.stack([F.ct_hu(512, 512, seed) for seed in range(2)])
    data = F.compressed(F.multiframe(frames), F.LOSSLESS_SYNTAXES[1])  # JPEG 2000
    monkeypatch.setattr(decoding, "TIMEOUT_S", 1e-4)
    with pytest.raises(RequestError, match="could not be decoded"):
        read_dicom(data).values(0)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_dicom(data).values(1), frames[1])


@pytest.mark.parametrize(
    "answer, pixels",
    [
        ({"dtype": "<f8", "shape": [2, 3]}, bytes(48)),  # a dtype no decoder gives
        ({"dtype": "<u2", "shape": [3, 2]}, bytes(12)),  # another shape than the header's
        ({"dtype": "<u2", "shape": [2, 3]}, bytes(11)),  # bytes that do not fill it
        ({"dtype": "O", "shape": [2, 3]}, bytes(48)),  # objects: never
    ],
)
def test_the_childs_answer_is_taken_only_as_a_frame_of_the_headers_size(answer: dict, pixels: bytes) -> None:
    with pytest.raises(decoding.DecoderFailed, match="not a frame of the header's size"):
        decoding._array(answer, pixels, {"rows": 2, "columns": 3, "samples_per_pixel": 1})
    frame = decoding._array({"dtype": "<u2", "shape": [2, 3]}, bytes(range(12)), {"rows": 2, "columns": 3})
    assert frame.shape == (2, 3) and frame.dtype == np.uint16


@pytest.mark.parametrize(
    "name, syntax",
    [("SC_rgb_jpeg_dcmtk.dcm", None), ("JPGExtended.dcm", None), ("JPEG2000.dcm", None), ("CT_small.dcm", "jpeg-ls")],
)
def test_codestreams_declare_the_size_their_header_says(name: str, syntax: str | None) -> None:
    """What `service.codestreams` reads from a frame's own header (openjpeg for JPEG 2000, pydicom's marker parser
    for JPEG and JPEG-LS: a private function, so this pins what it gives) is the header's Rows x Columns."""
    from pydicom.uid import UID, JPEGLSLossless

    from service import codestreams

    data = F.compressed(F.testdata(name), JPEGLSLossless) if syntax else F.testdata(name)
    ds = F.read(data)
    frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    uid = UID(ds.file_meta.TransferSyntaxUID)
    assert codestreams.has_codestream_header(uid)
    assert codestreams.declared_size(uid, frame) == (ds.Rows, ds.Columns)
    assert codestreams.declared_size(uid, b"not a codestream") == codestreams.UNREADABLE

"""DICOM content the service used to mishandle, sent to a real server (`bentoml serve` on a loopback port).

One server (module scope) serves the embedded demo model. Every file carries `dicomfiles.MARKERS` (a patient name
without '^' among them); the last test asserts that no refusal or JSON answer, and no line of the server's log,
contains one. Masks are checked against the demo model run directly (`tests.test_service.reference`) on an
independently built image: the palette's RGB by hand, the 12-bit JPEG's pixels as DCMTK decodes them.
"""

from __future__ import annotations

import copy
import hashlib
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom
import httpx
import numpy as np
import pydicom
import pytest

from testing.local_server import LocalServer, serve
from tests import dicomfiles as files
from tests.dicom_references import DCMTK_JPG_EXTENDED_SHA256, NONFINITE_SENTENCE, palette_rgb
from tests.service_client import masks_of, post, reference, refusal

REPO = Path(__file__).resolve().parent.parent
BOX = [8, 6, 60, 50]  # inside every 64x80 image here
# JSON answers and refusals, kept for the last test's check that none of them quotes a DICOM value.
ANSWERS: list[str] = []


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    env = {"MEDSAMIX_MODELS": str(store), "MEDSAMIX_MAX_LATENCY_MS": "20"}
    with serve(env, tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


def send(server: LocalServer, dicom: bytes, prompts: Any, path: str = "/segment", **fields: str) -> httpx.Response:
    response = post(server, dicom, prompts, path=path, **fields)
    if response.headers.get("content-type", "").startswith("application/json"):
        ANSWERS.append(response.text)
    return response


def seg_of(response: httpx.Response) -> highdicom.seg.Segmentation:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    return highdicom.seg.segread(BytesIO(response.content))


# --------------------------------------------------------------------------------------------------------------
# Item 9: sources highdicom rejects are a 422 naming the rule on /segment/seg, never a 500.
# --------------------------------------------------------------------------------------------------------------

MR = np.stack([files.ct_hu(64, 80, seed=60 + i) for i in range(4)]) + 1000


def enhanced_mr(change: str | None = None) -> bytes:
    """The 4-frame enhanced MR, marked, optionally broken in one way a real enhanced image can be."""
    ds = files.enhanced_mr_dataset(MR)
    per_frame, shared = ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence[0]
    if change == "one per-frame item":
        del per_frame[1:]
    elif change == "orientation per frame":
        for item in per_frame:
            item.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
        del shared.PlaneOrientationSequence
    elif change == "frames sharing a position":
        for item in per_frame:
            item.PlanePositionSequence[0].ImagePositionPatient = [-100.0, -120.0, 0.0]
    return files.marked(files.to_bytes(ds))


def test_per_frame_groups_that_do_not_match_the_frames_are_one_422_on_both_routes(server: LocalServer) -> None:
    """4 frames with one per-frame item, and pydicom's 1-frame liver SEGs with three: the per-frame Modality LUT
    and a SEG's per-frame geometry would pair frames with another frame's attributes, so both routes refuse."""
    cases = {
        "enhanced MR": (enhanced_mr("one per-frame item"), 3, "1 PerFrameFunctionalGroupsSequence item(s) for 4"),
        "liver_1frame.dcm": (files.marked(files.testdata("liver_1frame.dcm")), 0, "3 PerFrameFunctionalGroupsSequence"),
        "liver_expb_1frame.dcm": (files.marked(files.testdata("liver_expb_1frame.dcm")), 0, "3 PerFrameFunctional"),
    }
    for name, (dicom, frame, fragment) in cases.items():
        prompts = [{"box": BOX, "frame": frame}]
        masks_route = refusal(send(server, dicom, prompts), 422)
        seg_route = refusal(send(server, dicom, prompts, path="/segment/seg"), 422)
        assert fragment in masks_route and seg_route == masks_route, name


@pytest.mark.parametrize(
    "change, keyword",
    [("orientation per frame", "PlaneOrientationSequence"), ("frames sharing a position", "PlanePositionSequence")],
)
def test_geometry_a_seg_cannot_copy_is_a_422_on_the_seg_route_only(
    server: LocalServer, change: str, keyword: str
) -> None:
    """Masks need no patient geometry, so /segment answers; the SEG would, so /segment/seg names what it lacks."""
    dicom = enhanced_mr(change)
    prompts = [{"box": BOX, "frame": 2, "label": "lesion"}]
    assert len(masks_of(send(server, dicom, prompts))) == 1
    assert keyword in refusal(send(server, dicom, prompts, path="/segment/seg"), 422)


def test_a_valid_enhanced_mr_seg_holds_the_mask_at_its_frame(server: LocalServer) -> None:
    dicom = enhanced_mr()
    prompts = [{"box": BOX, "frame": 2, "label": "lesion"}]
    seg = seg_of(send(server, dicom, prompts, path="/segment/seg"))
    source = pydicom.dcmread(BytesIO(dicom))
    stored = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [3], segment_numbers=[1])  # 1-based frame
    np.testing.assert_array_equal(stored[0, ..., 0].astype(bool), masks_of(send(server, dicom, prompts))[0])


def test_a_consistent_one_frame_liver_seg_is_segmented_into_a_seg(server: LocalServer) -> None:
    ds = files.read(files.marked(files.testdata("liver_1frame.dcm")))
    del ds.PerFrameFunctionalGroupsSequence[1:]  # the item of its one frame
    dicom = files.to_bytes(ds)
    prompts = [{"box": [100, 100, 400, 400], "label": "liver"}]
    seg = seg_of(send(server, dicom, prompts, path="/segment/seg"))
    stored = seg.get_pixels_by_source_frame(ds.SOPInstanceUID, [1], segment_numbers=[1])[0, ..., 0]
    np.testing.assert_array_equal(stored.astype(bool), masks_of(send(server, dicom, prompts))[0])


# --------------------------------------------------------------------------------------------------------------
# Item 11: one label rule, one status for non-finite images, 12-bit JPEG, over-long elements, palette colour.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["a\\b", "bell\x07", "new\nline", "x" * 65, ""])
def test_a_label_a_seg_cannot_hold_is_the_same_400_on_both_routes(server: LocalServer, label: str) -> None:
    ct = files.marked(files.ct_image(files.ct_hu(64, 80, seed=70)))
    prompts = [{"box": BOX, "label": label}]
    masks_route = refusal(send(server, ct, prompts), 400)
    seg_route = refusal(send(server, ct, prompts, path="/segment/seg"), 400)
    assert seg_route == masks_route and "prompts" in masks_route and "label" in masks_route
    assert "expected a label of 1 to 64 printable characters without a backslash" in masks_route
    assert not label or label not in masks_route


@pytest.mark.parametrize("display", ["modality default", "file window", "voi lut", "preset", "task preset"])
def test_a_non_finite_image_is_one_422_whatever_the_display_path(server: LocalServer, display: str) -> None:
    ct = files.marked(files.with_changes(files.ct_image(files.ct_hu(64, 80, seed=71)), RescaleSlope="1e308"))
    prompt: dict[str, Any] = {"box": BOX}
    fields = {}
    if display == "file window":
        ct = files.with_changes(ct, WindowCenter=40, WindowWidth=400)
    elif display == "voi lut":
        ct = files.with_voi_lut(ct, np.arange(4096))
    elif display == "preset":
        fields["preset"] = "ct_bone"
    elif display == "task preset":
        prompt["task"] = "ct_liver"
    assert refusal(send(server, ct, [prompt], **fields), 422) == NONFINITE_SENTENCE


def native_copy(jpeg: bytes, pixels: np.ndarray) -> bytes:
    """`jpeg`'s header with `pixels` as native (uncompressed) Pixel Data: a file whose decoding involves no JPEG."""
    ds = files.read(jpeg)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.SOPInstanceUID = files.uid("native copy", ds.SOPInstanceUID)
    return files.to_bytes(ds)


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm"])
def test_12_bit_jpeg_extended_is_segmented_as_its_dcmtk_decode(server: LocalServer, store: Path, name: str) -> None:
    jpeg = files.marked(files.testdata(name))
    box = [40, 300, 200, 600]  # x0, y0, x1, y1 in the 256 x 1024 image
    got = masks_of(send(server, jpeg, [{"box": box}]))[0]
    pixels = files.read(jpeg).pixel_array  # pydicom, through the plugin the service registers
    assert hashlib.sha256(pixels.astype("<u2").tobytes()).hexdigest() == DCMTK_JPG_EXTENDED_SHA256
    native = native_copy(jpeg, pixels)
    np.testing.assert_array_equal(got, masks_of(send(server, native, [{"box": box}]))[0])
    np.testing.assert_array_equal(got, reference(store, "demo", native, [box])[0][0])
    assert got.any()


@pytest.mark.parametrize(
    "tag, vr, length, value",
    [
        (0xFFFCFFFC, "OB", 1000, bytes(10)),  # Data Set Trailing Padding, declared longer than what follows
        (0xFFFCFFFC, "OB", 0xFFFFFFF0, bytes(10)),  # huge, but not the undefined length
        (0x00091001, "OB", 1000, b"AB"),  # after Pixel Data with a smaller tag: not the element of largest tag
    ],
    ids=["over-long padding", "huge length", "odd tag order"],
)
def test_an_over_long_element_after_pixel_data_is_a_400(
    server: LocalServer, tag: int, vr: str, length: int, value: bytes
) -> None:
    ct = files.marked(files.ct_image(files.ct_hu(64, 80, seed=72)))
    assert "truncated" in refusal(send(server, files.append_element(ct, tag, vr, length, value), [{"box": BOX}]), 400)


_RNG = np.random.default_rng(73)
PALETTES = {
    "8-bit": (_RNG.integers(0, 256, (64, 80), dtype=np.uint8), _RNG.integers(0, 65536, (256, 3), dtype=np.uint16)),
    "16-bit": (_RNG.integers(0, 4096, (64, 80), dtype=np.uint16), _RNG.integers(0, 65536, (4096, 3), dtype=np.uint16)),
}


@pytest.mark.parametrize("bits", PALETTES)
def test_palette_colour_is_segmented_as_its_rgb(server: LocalServer, store: Path, bits: str) -> None:
    indices, lut = PALETTES[bits]
    palette = files.marked(files.to_bytes(files.palette_dataset(indices, lut)))
    rgb = files.marked(files.rgb_image(palette_rgb(indices, lut)))  # the same picture, converted by hand
    got = masks_of(send(server, palette, [{"box": BOX}]))[0]
    np.testing.assert_array_equal(got, masks_of(send(server, rgb, [{"box": BOX}]))[0])
    np.testing.assert_array_equal(got, reference(store, "demo", rgb, [BOX])[0][0])
    assert seg_of(send(server, palette, [{"box": BOX, "label": "lesion"}], path="/segment/seg")).NumberOfFrames == 1


def test_a_malformed_palette_is_one_422(server: LocalServer) -> None:
    ds = files.palette_dataset(*PALETTES["8-bit"])
    del ds.GreenPaletteColorLookupTableData
    assert "palette could not be applied" in refusal(
        send(server, files.marked(files.to_bytes(ds)), [{"box": BOX}]), 422
    )


def test_no_marker_in_any_answer_or_the_server_log(server: LocalServer) -> None:
    """Runs last: every request above has been answered and logged by now (a SEG answer copies the patient on
    purpose, so only JSON answers are kept in ANSWERS)."""
    assert len(ANSWERS) > 20
    log = server.log.read_text(errors="replace")
    assert "/segment" in log
    for value in files.MARKERS.values():
        assert not [answer for answer in ANSWERS if value in answer], value
        assert value not in log, f"the server log contains the DICOM value {value!r}"

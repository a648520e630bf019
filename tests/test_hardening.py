"""The service against hostile and careless clients, on a real `bentoml serve` over loopback (issue 11).

One server (module scope) serves the demo model with a token and tight limits. Each test is what an attacker or a
careless integration did to an earlier version: a body framed two ways at once, uploads held in memory, work for a
client that had hung up, decompression bombs, a cache that answered with another file's masks, patient data in
the log and in error bodies, malformed forms answered 500, and duplicate fields. Every connection goes to
127.0.0.1; streams are bounded in bytes and time.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
)

from testing.local_server import LocalServer, peak_memory_mib, reset_peak_memory, serve
from tests import dicomfiles as files
from tests.service_client import AUTH, TOKEN, masks_of, metric, post, reference, refusal

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
MAX_REQUEST = 160 * MIB
MAX_DECODED = 8 * 1024 * 1024
MAX_PROMPTS = 16
BOX = [8, 6, 60, 50]


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    env = {
        "MEDSAMIX_MODELS": str(store),
        "MEDSAMIX_TOKEN": TOKEN,
        "MEDSAMIX_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "MEDSAMIX_MAX_DECODED_PIXELS": str(MAX_DECODED),
        "MEDSAMIX_MAX_PROMPTS": str(MAX_PROMPTS),
        "MEDSAMIX_MAX_LATENCY_MS": "20",
    }  # MEDSAMIX_MAX_PIXELS keeps its default: the bombs below are sized against it
    with serve(env, tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


def raw_request(server: LocalServer, head: str, body: bytes = b"") -> socket.socket:
    """A connection to the server that has sent `head` (request line and headers, CRLF-separated) and `body`."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return connection


def answer_of(connection: socket.socket, timeout: float = 20.0) -> bytes:
    """Whatever the server answers on `connection` until it closes it or `timeout` passes."""
    connection.settimeout(timeout)
    data = b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].startswith(b"{") and data.endswith(b"}"):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def multipart(dicom: bytes, prompts: list[dict], boundary: str = "hardening") -> tuple[bytes, bytes]:
    """(the part before the file's bytes, the part after them) of a /segment form carrying `dicom`."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="prompts"\r\n\r\n{json.dumps(prompts)}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    return head + dicom, tail


# --------------------------------------------------------------------------------------------------------------
# 1-2. Bodies: framing, counting, memory, a client that hangs up.
# --------------------------------------------------------------------------------------------------------------


def test_a_body_framed_by_both_length_and_chunking_is_refused_before_it_is_read(server: LocalServer) -> None:
    head, _ = multipart(files.ct_image(files.ct_hu(64, 80, 1)), [{"box": BOX}])
    request = (
        f"POST /segment HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {TOKEN}\n"
        "Content-Type: multipart/form-data; boundary=hardening\nContent-Length: 100\nTransfer-Encoding: chunked"
    )
    with raw_request(server, request, chunk(head)) as connection:  # the body goes on; the answer must not wait
        answer = answer_of(connection)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"either Content-Length or Transfer-Encoding, found both" in answer


def test_a_chunked_body_is_counted_as_it_arrives_and_cut_at_the_limit(server: LocalServer) -> None:
    request = (
        f"POST /segment HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {TOKEN}\n"
        "Content-Type: multipart/form-data; boundary=hardening\nTransfer-Encoding: chunked"
    )
    sent = 0
    block = chunk(bytes(MIB))
    with raw_request(server, request, chunk(multipart(b"", [])[0])) as connection:
        try:
            while sent < 2 * MAX_REQUEST:
                connection.sendall(block)
                sent += MIB
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = answer_of(connection)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < MAX_REQUEST + 32 * MIB  # the server stopped taking bytes where the body crossed the limit


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_an_upload_is_not_held_in_memory(server: LocalServer, framing: str) -> None:
    front = server.worker()
    dicom = files.repeated_frames(192)  # 96 MiB of pixels
    head, tail = multipart(dicom, [{"box": [64, 64, 320, 300], "frame": 3}])
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=hardening"}

    def body() -> Iterator[bytes]:
        data = head + tail
        for i in range(0, len(data), MIB):
            yield data[i : i + MIB]

    reset_peak_memory(front)
    start = front.memory_info().rss / MIB
    content = body() if framing == "chunked" else head + tail
    response = httpx.post(server.url + "/segment", content=content, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    grown = peak_memory_mib(front) - start
    assert grown < 32, f"the front worker grew by {grown:.0f} MiB for a {len(dicom) / MIB:.0f} MiB upload"


def test_the_work_of_a_client_that_hung_up_is_dropped(server: LocalServer) -> None:
    frames = MAX_PROMPTS
    dicom = files.repeated_frames(frames)
    prompts = [{"box": [64, 64, 320, 300], "frame": i} for i in range(frames)]
    head, tail = multipart(dicom, prompts)
    encoded, abandoned = (
        metric(server, "medsamix_embeddings_total", '{source="encoder"}'),
        metric(server, "medsamix_abandoned_total"),
    )
    request = (
        f"POST /segment HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {TOKEN}\n"
        f"Content-Type: multipart/form-data; boundary=hardening\nContent-Length: {len(head) + len(tail)}"
    )
    raw_request(server, request, head + tail).close()  # the whole request, then gone
    deadline = time.monotonic() + 60
    while metric(server, "medsamix_abandoned_total") == abandoned and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "medsamix_abandoned_total") == abandoned + 1
    assert metric(server, "medsamix_embeddings_total", '{source="encoder"}') == encoded  # nothing was encoded
    assert masks_of(post(server, files.ct_image(files.ct_hu(64, 80, 2)), [{"box": BOX}]))  # and it still serves


# --------------------------------------------------------------------------------------------------------------
# 3. Work bounded by pixels, not bytes.
# --------------------------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_on_its_header() -> None:
    from service.config import Settings

    assert Settings().max_pixels < 7000 * 7000  # the default refuses a 7000 x 7000 frame
    assert Settings().max_decoded_pixels < 4 * 7000 * 7000


def test_bombs_are_refused_before_they_are_decoded(server: LocalServer) -> None:
    bomb = files.blank_jpeg2000(1, 7000)
    assert len(bomb) < 4096
    refusal(post(server, bomb, [{"box": [0, 0, 100, 100]}]), 413, "pixels per frame")
    liar = files.blank_jpeg2000(1, 7000, header=512)  # the header says 512 x 512, the codestream 7000 x 7000
    refusal(post(server, liar, [{"box": [0, 0, 100, 100]}]), 422, "codestream declares 7000x7000 pixels")
    many = files.blank_jpeg2000(3, 2048)  # three frames within the per-frame limit, over the per-request one
    prompts = [{"box": [0, 0, 100, 100], "frame": i} for i in range(3)]
    refusal(post(server, many, prompts), 413, f"decodes at most {MAX_DECODED} per request")
    assert masks_of(post(server, many, prompts[:1]))  # one frame of it is within the budget


def test_a_codec_crash_is_a_refusal_and_the_worker_lives_on(server: LocalServer) -> None:
    from tests.dicomfiles import crashing_jpeg  # GDCM aborts its process on it

    front = server.worker().pid
    refusal(post(server, crashing_jpeg(), [{"box": [10, 10, 90, 90]}]), 400, "could not be decoded")
    assert masks_of(post(server, files.testdata("SC_rgb_jpeg_dcmtk.dcm"), [{"box": [10, 10, 90, 90]}]))
    assert server.worker().pid == front


def test_a_deflated_dataset_is_not_inflated(server: LocalServer) -> None:
    ds = files.ct_dataset(files.ct_hu(64, 80, 3))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    refusal(post(server, files.to_bytes(ds), [{"box": BOX}]), 415, "deflated")


# --------------------------------------------------------------------------------------------------------------
# 4. The cache answers only for the image the encoder would see.
# --------------------------------------------------------------------------------------------------------------


def test_the_cache_never_answers_for_another_header_on_the_same_pixels(server: LocalServer, store: Path) -> None:
    plain = files.ct_image(files.ct_hu(64, 80, seed=31))  # every variant keeps its UID and its Pixel Data
    box = [[6, 4, 70, 58]]
    variants = {
        "plain": plain,
        "monochrome1": files.with_changes(plain, PhotometricInterpretation="MONOCHROME1"),
        "lung window": files.with_changes(plain, WindowCenter=-600, WindowWidth=1500),
        "modality MR": files.with_changes(plain, Modality="MR"),
        "rescaled": files.with_changes(plain, RescaleSlope=2, RescaleIntercept=0),
    }
    assert len({(d.SOPInstanceUID, d.PixelData) for d in map(files.read, variants.values())}) == 1
    answers = {}
    for name, dicom in variants.items():  # each after the others: any of them could be answered from the cache
        got = masks_of(post(server, dicom, [{"box": box[0]}]))[0]
        np.testing.assert_array_equal(got, reference(store, "demo", dicom, box)[0][0], err_msg=name)
        answers[name] = got
    assert len({a.tobytes() for a in answers.values()}) > 1  # the variants really differ for the model


@pytest.mark.parametrize(
    "what, change, status, phrase",
    [
        ("negative window width", {"WindowCenter": 40, "WindowWidth": -400}, 422, "VOI window"),
        ("NaN window", {"WindowCenter": "NaN", "WindowWidth": 400}, 422, "VOI window"),
        ("RLE syntax over native pixels", {}, 400, "could not be decoded"),
    ],
)
def test_a_file_refused_when_fresh_is_refused_when_its_pixels_are_cached(
    server: LocalServer, what: str, change: dict, status: int, phrase: str
) -> None:
    hu = files.ct_hu(64, 80, seed=41)
    good = files.ct_image(hu, sop_instance_uid=files.uid("cached", what))
    assert masks_of(post(server, good, [{"box": BOX}]))  # its embedding is in the cache now
    if change:
        bad = files.with_changes(good, **change)
    else:  # pydicom will not write it: the two UIDs have one length, so swap them in the file meta's bytes
        assert len(RLELossless) == len(ExplicitVRLittleEndian)
        bad = good.replace(ExplicitVRLittleEndian.encode(), RLELossless.encode(), 1)
    refusal(post(server, bad, [{"box": BOX}]), status, phrase)


# --------------------------------------------------------------------------------------------------------------
# 5. No value from a DICOM file or a request field in any log line or error body.
# --------------------------------------------------------------------------------------------------------------

MARKERS = {
    "PatientName": "ZQXA01patient",  # no '^': highdicom warns, quoting it
    "PatientID": "ZQXA02id",
    "PatientBirthDate": "ZQXA03birth",  # not a DA: highdicom refused the source, quoting it
    "StudyDescription": "ZQXA04study",
    "SeriesDescription": "ZQXA05series",
    "InstitutionName": "ZQXA06institution",
    "AccessionNumber": "ZQXA07acc",
    "ReferringPhysicianName": "ZQXA08referrer",
    "OperatorsName": "ZQXA09operator",
    "StudyID": "ZQXA10",
}
UID_MARKERS = {  # UIDs are numbers: a marker of digits nothing else contains
    "StudyInstanceUID": "2.25.88800000000001",
    "SeriesInstanceUID": "2.25.88800000000002",
    "SOPInstanceUID": "2.25.88800000000003",
    "FrameOfReferenceUID": "2.25.88800000000004",
}
REQUEST_MARKERS = ("ZQXR01", "ZQXR02", "ZQXR03", "ZQXR04", "ZQXR05", "ZQXR06", "ZQXR07", "ZQXR08", "ZQXR09")


def marked_file() -> bytes:
    ds = files.ct_dataset(files.ct_hu(64, 80, seed=51))
    for keyword, value in {**MARKERS, **UID_MARKERS}.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = UID_MARKERS["SOPInstanceUID"]
    block = ds.private_block(0x0011, "ZQXA11creator", create=True)
    block.add_new(0x01, "LO", "ZQXA12private")
    return files.to_bytes(ds)


def test_no_patient_or_request_value_in_any_log_line_or_error_body(server: LocalServer) -> None:
    dicom = marked_file()
    r = REQUEST_MARKERS
    ok = post(server, dicom, [{"box": BOX, "label": "organ"}], filename=f"{r[0]}.dcm", **{r[1]: r[2]})
    assert ok.status_code == 200, ok.text
    seg = post(server, dicom, [{"box": BOX, "label": "organ"}], path="/segment/seg")
    assert seg.status_code == 200, seg.text
    refused = [
        post(server, dicom, [{"box": BOX}], model=r[3] + "x" * 10_000),
        post(server, dicom, [{"box": BOX, "task": r[4]}]),
        post(server, dicom, [{"box": BOX}], preset=r[5]),
        post(server, dicom, [{"box": BOX, r[6]: 1}]),
        post(server, dicom, {r[7]: [{"box": BOX}]}),
        post(server, dicom, [{"box": [1, 1, 500, 500]}]),
        post(server, dicom, [{"box": BOX, "frame": 7}], path="/segment/seg"),
        httpx.post(
            server.url + "/segment/dicomweb",
            json={
                "dicomweb": "http://127.0.0.1:9/dicom-web",
                "study": "1.2",
                "series": "1.2.3",
                "prompts": {UID_MARKERS["SOPInstanceUID"]: [{"box": BOX, r[8]: 1}]},
            },
            headers=AUTH,
            timeout=30,
        ),
    ]
    everything = {**MARKERS, **UID_MARKERS, "private creator": "ZQXA11creator", "private": "ZQXA12private"}
    for response in refused:
        assert 400 <= response.status_code < 500, response.text
        leaked = [m for m in (*everything.values(), *r) if m in response.text]
        assert not leaked, f"an error body quotes {leaked}: {response.text}"
    time.sleep(1)  # let the workers' last lines reach the log
    log = server.log.read_text(errors="replace")
    leaked = [name for name, m in {**everything, **dict(enumerate(r))}.items() if m in log]
    assert not leaked, f"the server log quotes the values of {leaked}"
    assert "Traceback" not in log and "[ERROR]" not in log  # a refusal is its access-log line, nothing more


# --------------------------------------------------------------------------------------------------------------
# 6, 11. Malformed forms are a 4xx of one sentence; each field once.
# --------------------------------------------------------------------------------------------------------------

CT = files.ct_image(files.ct_hu(64, 80, seed=61))
PROMPTS = json.dumps([{"box": BOX}])


def _form(**kwargs: Any) -> dict[str, Any]:
    return {"files": {"file": ("a.dcm", CT, "application/dicom")}, "data": {"prompts": PROMPTS}, **kwargs}


def _gzipped() -> dict[str, Any]:
    request = httpx.Request("POST", "http://127.0.0.1/segment", **_form())
    body = request.read()
    return {
        "content": gzip.compress(body),
        "headers": {"content-type": request.headers["content-type"], "content-encoding": "gzip"},
    }


MALFORMED: dict[str, tuple[Any, int, str]] = {
    "deeply nested JSON": (lambda: _form(data={"prompts": "[" * 3000}), 400, "'prompts' to hold JSON"),
    "5000-digit number": (lambda: _form(data={"prompts": '[{"box": [1, 2, 3, ' + "9" * 5000 + "]}]"}), 400, "JSON"),
    "5000-digit model": (lambda: _form(data={"prompts": PROMPTS, "model": "9" * 5000}), 404, "names a model"),
    "no boundary": (
        lambda: {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "boundary",
    ),
    "text part over 1 MiB": (lambda: _form(data={"prompts": PROMPTS, "model": "x" * (MIB + 10)}), 413, "bytes each"),
    "1001 text fields": (
        lambda: _form(data={"prompts": PROMPTS, **{f"f{i}": "1" for i in range(1001)}}),
        400,
        "text fields",
    ),
    "1001 file parts": (
        lambda: {
            "files": [("file", ("a.dcm", CT))] + [(f"g{i}", ("b", b"1")) for i in range(1001)],
            "data": {"prompts": PROMPTS},
        },
        400,
        "file",
    ),
    "gzip-encoded body": (_gzipped, 415, "uncompressed body"),
    "two prompts fields": (lambda: _form(data={"prompts": [PROMPTS, "[]"]}), 400, "'prompts' once, found it 2"),
    "two file parts": (
        lambda: {"files": [("file", ("a.dcm", CT)), ("file", ("b.dcm", b"junk"))], "data": {"prompts": PROMPTS}},
        400,
        "'file' once, found it 2",
    ),
    "prompts as a file part": (
        lambda: {"files": {"file": ("a.dcm", CT), "prompts": ("p.json", PROMPTS.encode())}},
        400,
        "'prompts' as text",
    ),
    "url-encoded form": (lambda: {"data": {"prompts": PROMPTS}}, 400, "file"),
    "empty multipart body": (
        lambda: {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        400,
        "file",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_form_is_a_4xx_of_one_sentence(server: LocalServer, case: str) -> None:
    build, status, phrase = MALFORMED[case]
    arguments = build()
    headers = {**AUTH, **arguments.pop("headers", {})}
    response = httpx.post(server.url + "/segment", headers=headers, timeout=60, **arguments)
    refusal(response, status, phrase)
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200


# --------------------------------------------------------------------------------------------------------------
# 10. Each server its own metrics.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_servers_on_one_host_keep_their_own_metrics(server: LocalServer, store: Path, tmp_path: Path) -> None:
    before = metric(server, "medsamix_prompts_total", '{model="demo"}')
    env = {"MEDSAMIX_MODELS": str(store), "MEDSAMIX_TOKEN": TOKEN}
    with serve(env, tmp_path / "second.log") as second:
        for _ in range(3):
            assert masks_of(post(second, CT, [{"box": BOX}]))
        assert metric(second, "medsamix_prompts_total", '{model="demo"}') == 3
        assert metric(server, "medsamix_prompts_total", '{model="demo"}') == before
    assert masks_of(post(server, CT, [{"box": BOX}]))
    assert metric(server, "medsamix_prompts_total", '{model="demo"}') == before + 1


# --------------------------------------------------------------------------------------------------------------
# 7. A broken model folder is refused on its own; the others are served.
# --------------------------------------------------------------------------------------------------------------


def broken_store(root: Path) -> dict[str, str]:
    """The demo model and six broken folders beside it: folder -> a phrase of the reason it must be refused for."""
    demo = REPO / "models" / "demo"
    shutil.copytree(demo, root / "demo")
    faults: dict[str, str] = {}

    def copy(name: str, rename: bool = True) -> Path:
        """demo copied to folder `name`, its manifest naming it `name` too (the name is not pinned)."""
        shutil.copytree(demo, root / name)
        if rename:
            manifest = root / name / "manifest.json"
            manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "name": name}))
        return root / name

    encoder = copy("flipped") / "encoder.onnx"
    data = bytearray(encoder.read_bytes())
    data[len(data) // 2] ^= 0x01
    encoder.write_bytes(bytes(data))
    faults["flipped"] = "the sha256 of encoder.onnx differs"
    (copy("nodecoder") / "decoder.onnx").unlink()
    faults["nodecoder"] = "decoder.onnx is listed in its manifest but missing"
    (copy("extra") / "notes.txt").write_text("left here by hand")
    faults["extra"] = "holds notes.txt, which its manifest does not list"
    manifest = copy("truncated") / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    faults["truncated"] = "is not valid JSON"
    copy("demo-copy", rename=False)
    faults["demo-copy"] = "names the model 'demo'"
    edited = copy("edited") / "manifest.json"
    card = json.loads(edited.read_text())
    card["image_size"] = 2 * card["image_size"]  # a pinned field: only the encoder's metadata can tell
    edited.write_text(json.dumps(card))
    faults["edited"] = "disagrees with its encoder"
    return faults


def test_a_broken_model_folder_is_refused_and_the_others_are_served(tmp_path: Path) -> None:
    faults = broken_store(tmp_path / "models")
    env = {"MEDSAMIX_MODELS": str(tmp_path / "models"), "MEDSAMIX_TOKEN": TOKEN}
    with serve(env, tmp_path / "serve.log", timeout=120) as running:
        front, encoder = running.worker().pid, running.worker("medsamix-encoder").pid
        ready = httpx.get(running.url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["models"] == ["demo"]
        for where in (ready.json()["refused"], {r["name"]: r["reason"] for r in listed(running)["refused"]}):
            assert set(where) == set(faults)
            for folder, phrase in faults.items():
                assert phrase in where[folder], (folder, where[folder])
        assert [m["name"] for m in listed(running)["models"]] == ["demo"]
        assert metric(running, "medsamix_models_refused") == len(faults)
        assert masks_of(post(running, CT, [{"box": BOX}]))
        refusal(post(running, CT, [{"box": BOX}], model="edited"), 404, "names a model this server does not serve")
        assert (running.worker().pid, running.worker("medsamix-encoder").pid) == (front, encoder)  # no restarts
    log = (tmp_path / "serve.log").read_text()
    for folder in faults:
        assert f"the model folder {folder} is not served" in log


def listed(server: LocalServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/models", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()

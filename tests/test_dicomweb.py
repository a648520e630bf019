"""PACS integration against a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`): retrieve -> segment -> store.

One Orthanc (own config, loopback port, basic auth, storage in tmp) and one `bentoml serve` per module. The server's
allow-list names that Orthanc with the right credentials, the same Orthanc under another host name with wrong ones,
a port nobody listens on, a socket that accepts connections but never answers, and a fake PACS written here that
redirects or floods as a test tells it. SEGs are read back from Orthanc's REST API and compared with what
`POST /segment` answers for the same image and boxes. Every connection goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import highdicom
import httpx
import numpy as np
import pytest

from search.cli import main as cli
from service.masks import decode_rle
from testing.local_server import LocalServer, free_port, serve
from tests import dicomfiles as files
from tests.pacs_server import PACS_PASSWORD, PACS_USER, Orthanc
from tests.service_client import refusal

REPO = Path(__file__).resolve().parent.parent
TOKEN = "server-token-5c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG_PASSWORD = "wrong-password-3e7f"
FAKE_TOKEN = "fake-pacs-token-0d4e"
SLOW_TIMEOUT = 1.5
FAKE_TIMEOUT = 5
MAX_PACS_BYTES = 1024 * 1024  # the server's MEDSAMIX_MAX_PACS_BYTES
FLOOD_BYTES = 64 * 1024 * 1024  # what the fake PACS would send if nobody stopped it
MOVED = "moved-9c2e"  # the path of every Location the fake PACS answers: in no answer or log line
SECRETS = (
    files.PATIENT_NAME,
    files.PATIENT_ID,
    files.STUDY_DESCRIPTION,
    files.ACCESSION_NUMBER,
    PACS_PASSWORD,
    WRONG_PASSWORD,
    FAKE_TOKEN,
)
BOX = [8, 6, 60, 50]


@pytest.fixture(scope="module")
def silent() -> Iterator[socket.socket]:
    """A socket that accepts connections (the kernel's backlog) and never answers: a PACS that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s


@contextmanager
def untouched() -> Iterator[socket.socket]:
    """A loopback socket that listens without blocking: `accept()` raising BlockingIOError proves nobody connected."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.setblocking(False)
        yield s


@pytest.fixture(scope="module")
def outsider() -> Iterator[socket.socket]:
    """A listening socket on no allow-list: a request naming it must never connect."""
    with untouched() as s:
        yield s


def url_of(s: socket.socket) -> str:
    return f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"


BOUNDARY = "fake-boundary"
PART = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()


class FakePacs(ThreadingHTTPServer):
    """An allowed PACS on a loopback port that misbehaves as the running test sets it: `redirect` answers every
    call of one method with (status, Location); `flood` answers a GET with FLOOD_BYTES (declaring the length or
    chunked), counting in `sent` what it wrote before the connection failed; `garbage` answers a GET with text that
    is neither DICOM JSON nor multipart. Otherwise a GET gets `instance` as WADO-RS would send it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.plan()

    def plan(
        self,
        instance: bytes = b"",
        redirect: tuple[str, int, str] | None = None,
        flood: bool | None = None,
        garbage: bool = False,
    ) -> None:
        self.instance, self.redirect, self.flood, self.garbage = instance, redirect, flood, garbage
        self.sent = 0
        self.done = threading.Event()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops reading without closing does not hold a thread for ever
    server: FakePacs

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read what the fake did from its counters."""

    def do_GET(self) -> None:
        self.answer("GET")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer("POST")

    def answer(self, method: str) -> None:
        fake = self.server
        if fake.redirect is not None and fake.redirect[0] == method:
            self.send_response(fake.redirect[1])
            self.send_header("Location", fake.redirect[2])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fake.flood is not None:
            self.flood(declared=fake.flood)
        elif fake.garbage:
            body = b"<html>a login page, not DICOMweb</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            body = PART + fake.instance + f"\r\n--{BOUNDARY}--\r\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def flood(self, declared: bool) -> None:
        """One multipart part of FLOOD_BYTES, written in 64 KiB pieces until done or the connection fails."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        self.send_header(*(("Content-Length", str(FLOOD_BYTES)) if declared else ("Transfer-Encoding", "chunked")))
        self.end_headers()
        piece = bytes(64 * 1024)
        try:
            while self.server.sent < FLOOD_BYTES:
                data = PART + piece[len(PART) :] if self.server.sent == 0 else piece
                self.wfile.write(data if declared else f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.server.sent += len(data)
            if not declared:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the service closed the connection: what the test wants to see
        finally:
            self.server.done.set()


@pytest.fixture(scope="module")
def fake_pacs() -> Iterator[FakePacs]:
    fake = FakePacs()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.shutdown()
        fake.server_close()


@pytest.fixture
def fake(fake_pacs: FakePacs) -> Iterator[FakePacs]:
    """The fake PACS, behaving well again after each test."""
    yield fake_pacs
    fake_pacs.plan()


@pytest.fixture
def elsewhere() -> Iterator[socket.socket]:
    """A loopback port this test listens on, where the fake PACS's redirects point: nothing may connect to it."""
    with untouched() as s:
        yield s


@pytest.fixture(scope="module")
def fake_instance() -> bytes:
    """The instance the fake PACS serves (its UIDs are planted: no answer or log line may quote them)."""
    return files.ct_image(files.ct_hu(64, 80, 7), series_instance_uid=files.uid("fake pacs series"))


@pytest.fixture(scope="module")
def pacs_urls(orthanc: Orthanc, silent: socket.socket, fake_pacs: FakePacs) -> dict[str, str]:
    port = orthanc.url.rsplit(":", 1)[1]
    return {
        "orthanc": orthanc.dicomweb,
        "wrong": f"http://localhost:{port}/dicom-web",  # the same Orthanc, other credentials
        "down": f"http://127.0.0.1:{free_port()}/dicom-web",
        "slow": url_of(silent),
        "fake": fake_pacs.dicomweb,
    }


@pytest.fixture(scope="module")
def server(pacs_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    root = tmp_path_factory.mktemp("dicomweb-server")
    shutil.copytree(REPO / "models" / "demo", root / "models" / "demo")
    credentials = {"username": PACS_USER, "password": PACS_PASSWORD}
    allow = {
        "pacs": {
            "orthanc": {"url": pacs_urls["orthanc"] + "/", **credentials, "timeout": 20},
            "wrong": {"url": pacs_urls["wrong"], "username": PACS_USER, "password": WRONG_PASSWORD},
            "down": {"url": pacs_urls["down"], **credentials, "timeout": 5},
            "slow": {"url": pacs_urls["slow"], **credentials, "timeout": SLOW_TIMEOUT},
            "fake": {"url": pacs_urls["fake"], "token": FAKE_TOKEN, "timeout": FAKE_TIMEOUT},
        }
    }
    (root / "dicomweb.yaml").write_text(json.dumps(allow))
    env = {
        "MEDSAMIX_MODELS": str(root / "models"),
        "MEDSAMIX_TOKEN": TOKEN,
        "MEDSAMIX_DICOMWEB": str(root / "dicomweb.yaml"),
        "MEDSAMIX_MAX_PROMPTS": "8",
        "MEDSAMIX_MAX_PACS_BYTES": str(MAX_PACS_BYTES),  # Orthanc's answers here are far smaller
    }
    with serve(env, root / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def study(orthanc: Orthanc) -> dict[str, list[bytes]]:
    """What the PACS holds: a series of three CT slices and a one-instance series of an enhanced multi-frame CT."""
    series = files.uid("dicomweb series")
    slices = [
        files.ct_image(files.ct_hu(64, 80, 40 + i), series_instance_uid=series, instance_number=i + 1, z=-2.5 * i)
        for i in range(3)
    ]
    multi = files.multiframe(np.stack([files.ct_hu(64, 80, 50 + i) for i in range(3)]))
    for data in [*slices, multi]:
        orthanc.upload(data)
    return {"slices": slices, "multi": [multi]}


def uids(data: bytes) -> tuple[str, str, str]:
    ds = files.read(data)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def dicomweb(server: LocalServer, body: dict, path: str = "/segment/dicomweb") -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)


def direct_masks(server: LocalServer, data: bytes, prompts: list[dict]) -> list[np.ndarray]:
    """What `POST /segment` answers for the same image and prompts."""
    upload = {"file": ("image.dcm", data, "application/dicom")}
    response = httpx.post(
        server.url + "/segment", files=upload, data={"prompts": json.dumps(prompts)}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    return [decode_rle(r["mask"]) for r in response.json()["results"]]


def check_stored_seg(orthanc: Orthanc, server: LocalServer, answer: dict, source: bytes, prompts: list[dict]) -> None:
    """The SEG the answer names is in Orthanc, references `source`, and holds `POST /segment`'s masks."""
    study_uid, _, sop_uid = uids(source)
    assert answer["source"] == sop_uid and answer["seg"]["study"] == study_uid
    seg = highdicom.seg.segread(BytesIO(orthanc.file(answer["seg"]["instance"])))
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (answer["seg"]["instance"], answer["seg"]["series"])
    assert seg.StudyInstanceUID == study_uid
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert sop_uid in {item.ReferencedSOPInstanceUID for item in referenced}
    expected = direct_masks(server, source, prompts)
    returned = [decode_rle(r["mask"]) for r in answer["results"]]
    labels = list(dict.fromkeys(p["label"] for p in prompts))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == labels
    frames = int(files.read(source).get("NumberOfFrames", 1))
    for prompt, mask, got in zip(prompts, expected, returned, strict=True):
        np.testing.assert_array_equal(got, mask)
        if frames == 1:
            pixels = seg.get_pixels_by_source_instance([sop_uid], ignore_spatial_locations=True)[0]
        else:
            pixels = seg.get_pixels_by_source_frame(sop_uid, [prompt["frame"] + 1], ignore_spatial_locations=True)[0]
        np.testing.assert_array_equal(pixels[..., labels.index(prompt["label"])].astype(bool), mask)


def test_one_instance_is_retrieved_segmented_and_its_seg_stored(server, orthanc, study, pacs_urls) -> None:
    source = study["slices"][0]
    study_uid, series_uid, sop_uid = uids(source)
    prompts = [{"box": BOX, "label": "liver"}, {"box": [20, 10, 70, 60], "label": "kidney"}]
    body = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid, "instance": sop_uid}
    response = dicomweb(server, {**body, "prompts": prompts})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer["models"]) == ["demo"] and len(answer["instances"]) == 1
    check_stored_seg(orthanc, server, answer["instances"][0], source, prompts)


def test_a_whole_series_and_a_mapping_of_instances(server, orthanc, study, pacs_urls) -> None:
    study_uid, series_uid, _ = uids(study["slices"][0])
    base = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid}
    prompts = [{"box": BOX, "label": "organ"}]
    before = instance_count(orthanc)
    answer = dicomweb(server, {**base, "prompts": prompts}).json()
    by_source = {a["source"]: a for a in answer["instances"]}
    assert set(by_source) == {uids(s)[2] for s in study["slices"]}
    assert len({a["seg"]["instance"] for a in answer["instances"]}) == 1  # one SEG for the request's instances
    assert instance_count(orthanc) == before + 1
    for source in study["slices"]:
        check_stored_seg(orthanc, server, by_source[uids(source)[2]], source, prompts)

    chosen = {uids(s)[2]: [{"box": [4 + 4 * i, 4, 60, 50], "label": "lesion"}] for i, s in enumerate(study["slices"])}
    del chosen[uids(study["slices"][1])[2]]
    answer = dicomweb(server, {**base, "prompts": chosen}).json()
    assert [a["source"] for a in answer["instances"]] == list(chosen)
    for source in (study["slices"][0], study["slices"][2]):
        check_stored_seg(
            orthanc, server, answer["instances"][list(chosen).index(uids(source)[2])], source, chosen[uids(source)[2]]
        )


def test_a_multiframe_instance_maps_the_frames(server, orthanc, study, pacs_urls) -> None:
    source = study["multi"][0]
    study_uid, series_uid, sop_uid = uids(source)
    prompts = [{"box": BOX, "frame": 1, "label": "lesion"}, {"box": [10, 10, 50, 40], "frame": 2, "label": "cyst"}]
    body = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid, "instance": sop_uid}
    response = dicomweb(server, {**body, "prompts": prompts})
    assert response.status_code == 200, response.text
    check_stored_seg(orthanc, server, response.json()["instances"][0], source, prompts)


def test_the_study_lists_its_instances(server, study, pacs_urls) -> None:
    study_uid = uids(study["slices"][0])[0]
    response = dicomweb(server, {"dicomweb": pacs_urls["orthanc"], "study": study_uid}, "/segment/dicomweb/instances")
    assert response.status_code == 200, response.text
    listed = {(r["series"], r["instance"]) for r in response.json()}
    assert {uids(s)[1:] for s in [*study["slices"], *study["multi"]]} <= listed


def test_the_cli_segments_a_series_through_the_server(server, orthanc, study, pacs_urls, tmp_path) -> None:
    study_uid, series_uid, _ = uids(study["slices"][0])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"box": BOX, "label": "organ"}]))
    out = tmp_path / "answers.json"
    args = ["segment", "--dicomweb", pacs_urls["orthanc"], "--study", study_uid, "--series", series_uid]
    args += ["--prompts", str(prompts), "--server", server.url, "--token", TOKEN, "-o", str(out)]
    assert cli(args) == 0
    written = json.loads(out.read_text())
    assert not written["failures"] and len(written["answers"]) == 3
    assert {a["instances"][0]["source"] for a in written["answers"]} == {uids(s)[2] for s in study["slices"]}
    for answer in written["answers"]:
        assert orthanc.file(answer["instances"][0]["seg"]["instance"]).startswith(bytes(128) + b"DICM")  # stored
    assert cli([*args[:-2], "--token", "wrong"]) == 2  # a refused token stops the batch


@pytest.fixture(scope="module")
def ct_volume_series(orthanc: Orthanc) -> tuple[list[bytes], np.ndarray]:
    """What the PACS holds for the series call: a synthetic abdominal CT of 12 slices (the zoo's generator, a seed
    the demo never saw), its instances numbered against their positions, and its liver label."""
    from search.zoo import ct_volume

    image, label = ct_volume(seed=902, depth=12)
    series = [files.to_bytes(ds) for ds in files.ct_series(np.rint(image).astype(np.int16), spacing=2.0)]
    for data in series[::-1]:
        orthanc.upload(data)
    return series, label == 1


def instance_count(orthanc: Orthanc) -> int:
    return int(orthanc.rest.get("/statistics").json()["CountInstances"])


def test_a_series_from_one_box_is_stored_as_one_seg(server, orthanc, ct_volume_series, pacs_urls) -> None:
    series, liver = ct_volume_series
    study_uid, series_uid, _ = uids(series[0])
    spanned = [z for z in range(len(liver)) if liver[z].any()]
    middle = spanned[len(spanned) // 2]
    ys, xs = np.nonzero(liver[middle])
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    prompts = [{"box": box, "slice": middle, "task": "ct_liver", "label": "liver"}]
    body = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid, "prompts": prompts}
    before = instance_count(orthanc)
    response = dicomweb(server, body, "/segment/dicomweb/series")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert instance_count(orthanc) == before + 1  # one SEG for the whole series
    (result,) = answer["results"]
    assert len(result["slices"]) > 2 and all(s["mask"] is None for s in result["slices"])
    seg = highdicom.seg.segread(BytesIO(orthanc.file(answer["seg"]["instance"])))
    assert (seg.StudyInstanceUID, seg.SeriesInstanceUID) == (study_uid, answer["seg"]["series"])
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    with_mask = [s for s in result["slices"] if s["area"] > 0]
    assert {s["source"] for s in with_mask} <= referenced
    assert seg.NumberOfFrames == len(with_mask)
    for s in result["slices"]:
        assert s["source"] == uids(series[s["slice"]])[2]
        (expected,) = direct_masks(server, series[s["slice"]], [{"box": s["box"], "task": "ct_liver"}])
        assert int(expected.sum()) == s["area"]
        if s["area"]:
            pixels = seg.get_pixels_by_source_instance([s["source"]], ignore_spatial_locations=True)[0]
            np.testing.assert_array_equal(pixels[..., 0].astype(bool), expected)


def test_a_series_call_that_fails_part_way_stores_nothing(server, orthanc, ct_volume_series, pacs_urls) -> None:
    series, _ = ct_volume_series
    study_uid, series_uid, sop_uid = uids(series[0])
    body = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid}
    before = instance_count(orthanc)
    for prompts, status, phrase in (
        # each found only once every instance was retrieved and the volume built
        ([{"box": BOX, "slice": 12}], 400, "out of range"),
        ([{"box": BOX, "slice": 0, "task": "ct_liver"}, {"box3d": [0, 0, 0, 10, 10, 12]}], 400, "3-D box"),
    ):
        response = dicomweb(server, {**body, "prompts": prompts}, "/segment/dicomweb/series")
        message = refusal(response, status, phrase)
        assert not any(s in message for s in (*SECRETS, study_uid, series_uid, sop_uid)), message
    assert instance_count(orthanc) == before


def _refusals(pacs: dict[str, str]) -> list[tuple[str, dict, int, str]]:
    return [
        ("wrong credentials", {"dicomweb": pacs["wrong"]}, 502, "HTTP 401"),
        ("orthanc down", {"dicomweb": pacs["down"]}, 502, "could not be reached"),
        ("slow pacs", {"dicomweb": pacs["slow"]}, 504, f"within {SLOW_TIMEOUT:g} s"),
        ("no such instance", {"instance": files.uid("nothing")}, 404, "404"),
        ("malformed uid", {"instance": "1.2.x"}, 400, "instance"),
        ("mapping and instance", {"prompts": {files.uid("nothing"): [{"box": BOX}]}}, 400, "mapping"),
        ("too many prompts", {"prompts": [{"box": BOX}] * 9}, 413, "at most 8"),
    ]


@pytest.mark.parametrize("case", range(7), ids=[r[0] for r in _refusals(dict.fromkeys(("wrong", "down", "slow")))])
def test_pacs_failures_are_one_sentence(server, study, pacs_urls, case: int) -> None:
    what, change, status, phrase = _refusals(pacs_urls)[case]
    study_uid, series_uid, sop_uid = uids(study["slices"][0])
    body = {"dicomweb": pacs_urls["orthanc"], "study": study_uid, "series": series_uid, "instance": sop_uid}
    body = {**body, "prompts": [{"box": BOX}], **change}
    started = time.monotonic()
    response = dicomweb(server, body)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert phrase in message and "\n" not in message, message
    assert not any(s in message for s in (*SECRETS, study_uid, series_uid, sop_uid)), message
    if what == "slow pacs":
        assert time.monotonic() - started < SLOW_TIMEOUT + 5


def test_a_url_off_the_allow_list_is_refused_and_never_contacted(server, study, outsider, pacs_urls) -> None:
    study_uid, series_uid, sop_uid = uids(study["slices"][0])
    for url in (url_of(outsider), "http://example.org/dicom-web", pacs_urls["orthanc"] + "/../other"):
        body = {"dicomweb": url, "study": study_uid, "series": series_uid, "instance": sop_uid}
        response = dicomweb(server, {**body, "prompts": [{"box": BOX}]})
        assert response.status_code == 403, response.text
        assert "allow-list" in response.json()["error"]
    with pytest.raises(BlockingIOError):
        outsider.accept()  # nobody connected


def fake_call(server: LocalServer, fake: FakePacs, source: bytes, call: str) -> tuple[str, tuple[str, str, str]]:
    """What a `call` (retrieve, list, store) of `source` through the fake PACS answers, checked to be a 502 of one
    line naming the PACS and quoting no URL, UID or credential; and the UIDs the call used."""
    study_uid, series_uid, sop_uid = uids(source)
    body = {"dicomweb": fake.dicomweb, "study": study_uid, "series": series_uid}
    if call == "list":
        response = dicomweb(server, body, "/segment/dicomweb/instances")
    else:
        response = dicomweb(server, {**body, "instance": sop_uid, "prompts": [{"box": BOX}]})
    assert response.status_code == 502, response.text
    message = response.json()["error"]
    assert "PACS 'fake'" in message and "\n" not in message, message
    assert not any(s in message for s in ("://", "127.0.0.1", MOVED, *SECRETS, study_uid, series_uid, sop_uid)), message
    return message, (study_uid, series_uid, sop_uid)


def assert_clean_log(server: LocalServer, *planted: str) -> None:
    log = server.log.read_text(errors="replace")
    assert not [s for s in (*SECRETS, MOVED, *planted) if s in log]


REDIRECTS = [(call, status) for call in ("retrieve", "list", "store") for status in (301, 302, 307)]


@pytest.mark.parametrize(("call", "status"), REDIRECTS, ids=[f"{call}-{status}" for call, status in REDIRECTS])
def test_a_redirect_off_an_allowed_pacs_is_refused_and_never_followed(
    server, fake, elsewhere, fake_instance, call: str, status: int
) -> None:
    """WADO (retrieve), QIDO (list) and STOW (store, after a retrieve that works) each meet a redirect to a port
    this test listens on; the service answers 502 and never connects there."""
    location = f"{url_of(elsewhere)}/{MOVED}"
    fake.plan(instance=fake_instance, redirect=("POST" if call == "store" else "GET", status, location))
    message, planted = fake_call(server, fake, fake_instance, call)
    assert f"redirect (HTTP {status})" in message, message
    with pytest.raises(BlockingIOError):
        elsewhere.accept()  # nobody connected
    assert_clean_log(server, *planted)


FLOODS = [(call, declared) for call in ("retrieve", "list") for declared in (True, False)]


@pytest.mark.parametrize(
    ("call", "declared"), FLOODS, ids=[f"{c}-{'content-length' if d else 'chunked'}" for c, d in FLOODS]
)
def test_a_pacs_answer_past_the_byte_limit_is_cut_off(server, fake, fake_instance, call: str, declared: bool) -> None:
    """A WADO or QIDO answer of FLOOD_BYTES, announced or chunked, stops being read (its connection closed) soon
    after MAX_PACS_BYTES; the service answers 502 naming the limit and stays up."""
    fake.plan(flood=declared)
    message, planted = fake_call(server, fake, fake_instance, call)
    assert f"at most {MAX_PACS_BYTES} bytes" in message, message
    assert fake.done.wait(30), "the fake PACS was still sending 30 s after the answer"
    assert fake.sent < FLOOD_BYTES // 4, f"the fake PACS wrote {fake.sent} bytes before the connection closed"
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    assert_clean_log(server, *planted)


def test_an_answer_that_is_not_dicomweb_is_named_so(server, fake, fake_instance) -> None:
    """A PACS that answers a listing with something other than DICOM JSON was reached: it is not 'unreachable'."""
    fake.plan(garbage=True)
    message, planted = fake_call(server, fake, fake_instance, "list")
    assert "expected a DICOMweb answer" in message, message
    assert_clean_log(server, *planted)


def test_openapi_describes_the_dicomweb_call(server) -> None:
    spec = httpx.get(server.url + "/docs.json", headers=AUTH, timeout=10).json()
    post = spec["paths"]["/segment/dicomweb"]["post"]
    request = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"dicomweb", "study", "series", "instance", "prompts", "model", "preset"} == set(request["properties"])
    assert set(request["required"]) == {"dicomweb", "study", "series", "prompts"}
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(answer["properties"]) == {"instances", "models"} and "StoredSeg" in spec["components"]["schemas"]
    assert "/segment/dicomweb/instances" in spec["paths"]


def test_no_credentials_or_patient_data_in_the_server_log(server) -> None:
    log = server.log.read_text(errors="replace")
    assert "/segment/dicomweb" in log
    assert not [s for s in SECRETS if s in log]


def test_a_bad_allow_list_stops_the_server_naming_fields_not_secrets(tmp_path) -> None:
    from service.config import Settings, SettingsError

    path = tmp_path / "dicomweb.yaml"
    path.write_text(json.dumps({"pacs": {"a": {"url": "ftp://x", "username": "u", "password": PACS_PASSWORD}}}))
    with pytest.raises(SettingsError, match=r"MEDSAMIX_DICOMWEB .*pacs\.a\.url") as error:
        Settings.from_env({"MEDSAMIX_DICOMWEB": str(path)})
    assert PACS_PASSWORD not in str(error.value)
    path.write_text(json.dumps({"pacs": {"a": {"url": "http://x", "token": PACS_PASSWORD, "username": "u"}}}))
    with pytest.raises(SettingsError, match="both") as error:
        Settings.from_env({"MEDSAMIX_DICOMWEB": str(path)})
    assert PACS_PASSWORD not in str(error.value)

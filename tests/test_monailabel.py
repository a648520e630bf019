"""The MONAI Label protocol, driven by MONAI Label's own Python client (`monailabel==0.8.5`, installed --no-deps)
against a live `bentoml serve`, and by the exact requests 3D Slicer's module and OHIF's mode send.

The volume is the zoo's synthetic abdominal CT (seed 901, a seed the demo model never saw), written both as a NIfTI
(array (i, j, k) = (column, row, slice), as ITK writes a series) and as a DICOM series held by a real Orthanc. Every
label volume is held against `/segment/series` on that series with the same prompt: same voxels, and the input's
geometry. Every connection goes to 127.0.0.1.
"""

# ruff: noqa: F811  (pytest's fixtures imported from test_dicomweb and test_series are taken as arguments by name)
from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import httpx
import nibabel
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client.client import MONAILabelClient, MONAILabelClientException

from service.volumes import LPS_FROM_RAS
from testing.local_server import LocalServer, serve
from tests import dicomfiles as files
from tests.conftest import SLICES
from tests.pacs_server import PACS_PASSWORD, PACS_USER, Orthanc
from tests.service_client import volume_of

REPO = Path(__file__).resolve().parent.parent
TOKEN, OTHER = "viewer-token-4b7e", "other-token-93ac"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIVER = 1  # the zoo's label, and ct_liver's value in the demo model's MONAI Label labels
SECRETS = (files.PATIENT_NAME, files.PATIENT_ID, files.STUDY_DESCRIPTION, files.ACCESSION_NUMBER, PACS_PASSWORD)
RAS = np.array([[-0.75, 0, 0, 90.0], [0, -0.75, 0, 110.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def nifti(volume, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("volumes") / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume[0].transpose(2, 1, 0), RAS), path)
    return path


@pytest.fixture(scope="module")
def server(orthanc: Orthanc, series, tmp_path_factory) -> LocalServer:
    for data in series:
        orthanc.upload(data)
    root = tmp_path_factory.mktemp("monailabel-server")
    allow = {"pacs": {"orthanc": {"url": orthanc.dicomweb, "username": PACS_USER, "password": PACS_PASSWORD}}}
    (root / "dicomweb.json").write_text(json.dumps(allow))
    env = {
        "MEDSAMIX_MODELS": str(REPO / "models"),
        "MEDSAMIX_TOKEN": f"{TOKEN},{OTHER}",
        "MEDSAMIX_DICOMWEB": str(root / "dicomweb.json"),
        "MEDSAMIX_MONAILABEL_PACS": "orthanc",
        "MEDSAMIX_MAX_SESSIONS": "4",
    }
    with serve(env, root / "serve.log") as running:
        yield running


def client(server: LocalServer, token: str = TOKEN) -> MONAILabelClient:
    """A fresh client per call, as Slicer's module makes one (the client keeps a request's headers for the next)."""
    made = MONAILabelClient(server.url, tmpdir=None)
    made.update_auth({"token_type": "Bearer", "access_token": token})
    return made


def liver_roi(label: np.ndarray) -> list[int]:
    """The liver's box in MONAI Label's SAM2 layout [x0, y0, x1, y1, z0, z1] (x the column, z1 exclusive)."""
    zs, ys, xs = np.nonzero(label == LIVER)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(zs.min()), int(zs.max()) + 1]


def liver_click(label: np.ndarray) -> list[int]:
    zs = sorted({int(z) for z in np.nonzero(label == LIVER)[0]})
    z = zs[len(zs) // 2]
    from scipy.ndimage import distance_transform_edt

    y, x = np.unravel_index(np.argmax(distance_transform_edt(label[z] == LIVER)), label[z].shape)
    return [int(x), int(y), z]  # the liver's innermost pixel on its middle slice


def series_masks(server: LocalServer, series: list[bytes], prompt: dict) -> np.ndarray:
    """(Z, H, W) bool: what /segment/series answers for `prompt` on the DICOM series."""
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(series)]
    response = httpx.post(
        server.url + "/segment/series", files=parts, data={"prompts": json.dumps([prompt])}, headers=AUTH, timeout=120
    )
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    first = files.read(series[0])
    return volume_of(answer, (len(series), first.Rows, first.Columns))


def as_zyx(labels: np.ndarray) -> np.ndarray:
    """A label volume (i, j, k) = (column, row, slice) as (slice, row, column)."""
    return labels.transpose(2, 1, 0)


def refusal(response: httpx.Response | requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"].count(". ") == 0
    assert not any(secret in response.text for secret in SECRETS)
    return body["error"]


def test_info_lists_every_model_as_an_interactive_3d_model(server) -> None:
    info = client(server).info()
    demo = info["models"]["demo"]
    assert demo["type"] == "deepgrow" and demo["dimension"] == 3  # Slicer's and OHIF's click panels take these
    assert demo["labels"] == {
        "ct_liver": 1,
        "ct_kidney": 2,
        "ct_spleen": 3,
        "mr_grey_matter": 4,
        "mr_white_matter": 5,
    }
    assert demo["config"]["roi_layout"][0] == "minmax" and demo["description"]
    assert requests.get(server.url + "/info/", timeout=10).status_code == 401


def test_an_uploaded_nifti_with_roi_and_clicks_gives_the_series_masks_in_its_geometry(
    server, volume, series, nifti
) -> None:
    _, label = volume
    roi, click = liver_roi(label), liver_click(label)
    params = {"label": "ct_liver", "roi": roi, "foreground": [click], "background": [], "unknown_param": {"x": 1}}
    result, answer = client(server).infer("demo", "", params, file=str(nifti))
    written = nibabel.load(result)
    np.testing.assert_array_equal(written.affine, nibabel.load(nifti).affine)
    labels = np.asarray(written.dataobj)
    assert labels.shape == (label.shape[2], label.shape[1], SLICES) and set(np.unique(labels)) <= {0, LIVER}
    x0, y0, x1, y1, z0, z1 = roi
    expected = series_masks(
        server, series, {"box3d": [x0, y0, z0, x1, y1, z1 - 1], "foreground": [click], "task": "ct_liver"}
    )
    assert expected.sum() > 1000
    np.testing.assert_array_equal(as_zyx(labels) == LIVER, expected)
    assert answer["label_names"]["ct_liver"] == LIVER and answer["model"] == "demo"
    assert answer["voxels"] == int(expected.sum())


def infer_by_uid(server: LocalServer, series: list[bytes], output: str, params: dict) -> httpx.Response:
    """POST /infer/demo as OHIF sends it: image = the Series Instance UID, `params` the only form field."""
    uid = files.read(series[0]).SeriesInstanceUID
    return httpx.post(
        f"{server.url}/infer/demo",
        params={"image": uid, "output": output},
        files={"params": (None, json.dumps(params))},
        headers=AUTH,
        timeout=120,
    )


def test_clicks_only_as_ohif_sends_them_by_series_uid_from_the_pacs_as_nrrd(server, volume, series) -> None:
    """OHIF v3's PointPrompts: image = the Series Instance UID, output=image, an NRRD of uint8 asked for."""
    _, label = volume
    click = liver_click(label)
    params = {
        "foreground": [click],
        "background": [],
        "label": "ct_liver",
        "result_extension": ".nrrd",
        "result_dtype": "uint8",
        "result_compress": False,
        "restore_label_idx": False,
    }
    response = infer_by_uid(server, series, "image", params)
    assert response.status_code == 200, response.text
    stream = io.BytesIO(response.content)
    header = nrrd.read_header(stream)
    labels = nrrd.read_data(header, stream)
    expected = series_masks(server, series, {"foreground": [click], "task": "ct_liver"})
    assert expected.sum() > 0  # the tiny demo answers one click with a small region: the check is voxel equality
    np.testing.assert_array_equal(as_zyx(labels) == LIVER, expected)
    first = files.read(series[0])
    np.testing.assert_allclose(header["space origin"], [float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(np.abs(np.diag(header["space directions"])), [*first.PixelSpacing[::-1], 2.0])


def test_dicom_seg_for_a_series_from_the_pacs(server, volume, series) -> None:
    _, label = volume
    response = infer_by_uid(server, series, "dicom_seg", {"foreground": [liver_click(label)], "label": "ct_liver"})
    assert response.status_code == 200, response.text
    seg = files.read(response.content)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == files.read(series[0]).StudyInstanceUID


def test_slicers_own_requests_login_session_and_minmax_roi(server, volume, series, nifti, tmp_path) -> None:
    """What Slicer's MONAILabel module sends, in its order: the auth probe and login (the token as password),
    /info/, PUT /session/ with the saved volume, GET /session/{id}, then POST /infer with the session, its segment's
    name, its clicks in IJK, the model's config echoed, and its roi from the ROI node's RAS corners."""
    _, label = volume
    assert requests.get(server.url + "/auth/", timeout=10).json() == {"enabled": True}
    login = {"username": "radiologist", "password": TOKEN, "grant_type": "password"}
    token = requests.post(server.url + "/auth/token", data=login, timeout=10).json()
    assert token == {"access_token": TOKEN, "token_type": "bearer"}
    refusal(requests.post(server.url + "/auth/token", data={**login, "password": "guess"}, timeout=10), 401)
    slicer = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="user-xyz")
    slicer.update_auth(token)
    assert slicer.auth_valid_token()
    info = MONAILabelClient(server.url)
    info.update_auth(token)
    config = {k: v[0] if isinstance(v, list) else v for k, v in info.info()["models"]["demo"]["config"].items()}
    maker = MONAILabelClient(server.url, client_id="user-xyz")
    maker.update_auth(token)
    volume = tmp_path / "tmpabc123.nii.gz"
    shutil.copy(nifti, volume)
    session = maker.create_session(str(volume))["session_id"]
    getter = MONAILabelClient(server.url)
    getter.update_auth(token)
    assert getter.get_session(session)["expiry"] > 0
    x0, y0, x1, y1, z0, z1 = liver_roi(label)
    # RAS -> IJK flips i and j here (the affine's negative diagonal): Slicer's pairs for them come max first.
    roi = [x1, x0, y1, y0, z0, z1]
    params = {"label": "ct_liver", "foreground": [], "background": [], **config, "roi": roi}
    result, answer = slicer.infer("demo", "Segment_1", params, session_id=session)
    labels = np.asarray(nibabel.load(result).dataobj)
    expected = series_masks(server, series, {"box3d": [x0, y0, z0, x1, y1, z1 - 1], "task": "ct_liver"})
    np.testing.assert_array_equal(as_zyx(labels) == LIVER, expected)
    again, _ = client(server).infer("demo", "Segment_1", params, session_id=session)  # the session is reused
    np.testing.assert_array_equal(np.asarray(nibabel.load(again).dataobj), labels)
    getter.remove_session(session)


def test_sessions_belong_to_their_token_and_expire(server, volume, nifti) -> None:
    _, label = volume
    made = client(server).create_session(str(nifti))
    session = made["session_id"]
    params = {"foreground": [liver_click(label)], "label": "ct_liver"}
    for other in (OTHER, TOKEN + "x"):
        with pytest.raises(MONAILabelClientException) as raised:
            client(server, other).infer("demo", "", params, session_id=session)
        assert raised.value.msg.startswith(("Status: 404", "Status: 401"))
    response = requests.get(f"{server.url}/session/{session}", headers={"Authorization": f"Bearer {OTHER}"}, timeout=9)
    refusal(response, 404)
    assert client(server).remove_session(session)["name"] == session
    refusal(requests.get(f"{server.url}/session/{session}", headers=AUTH, timeout=10), 404)
    with open(nifti, "rb") as volume:
        short = requests.put(
            f"{server.url}/session/", params={"expiry": 1}, files=[("files", ("ct.nii.gz", volume))], headers=AUTH
        ).json()
    assert short["session_info"]["expiry"] == 1
    time.sleep(2.5)
    with open(nifti, "rb") as volume:  # expired: refused as any unknown id, its files gone
        expired = requests.post(
            f"{server.url}/infer/demo",
            params={"session_id": short["session_id"]},
            files={"params": (None, json.dumps(params)), "file": ("ct.nii.gz", volume)},
            headers=AUTH,
            timeout=60,
        )
    assert "expired" in refusal(expired, 404)
    made = [client(server).create_session(str(nifti))["session_id"] for _ in range(4)]  # MEDSAMIX_MAX_SESSIONS
    with pytest.raises(MONAILabelClientException) as raised:
        client(server).create_session(str(nifti))
    assert "Status: 503" in raised.value.msg
    for session in made:
        client(server).remove_session(session)


def _nifti_bytes(data: np.ndarray) -> bytes:
    return nibabel.Nifti1Image(data, RAS).to_bytes()


def _zip(parts: list[bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i, data in enumerate(parts):
            archive.writestr(f"dir/{i}.dcm", data)
    return out.getvalue()


def test_a_zip_of_one_series_segments_as_the_series(server, volume, series) -> None:
    _, label = volume
    click = liver_click(label)
    params = {"foreground": [click], "label": "ct_liver", "result_extension": ".nii"}
    response = httpx.post(
        f"{server.url}/infer/demo",
        params={"output": "image"},
        files={"params": (None, json.dumps(params)), "file": ("series.zip", _zip(series))},
        headers=AUTH,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    written = nibabel.Nifti1Image.from_bytes(response.content)
    expected = series_masks(server, series, {"foreground": [click], "task": "ct_liver"})
    np.testing.assert_array_equal(as_zyx(np.asarray(written.dataobj)) == LIVER, expected)
    origin = LPS_FROM_RAS @ written.affine[:, 3]
    np.testing.assert_allclose(origin[:3], [float(v) for v in files.read(series[0]).ImagePositionPatient])


def bad_inputs(hu: np.ndarray, series: list[bytes]) -> list[tuple[str, str, dict, tuple, int, str]]:
    """(case, model, params, file part, status, a word of the sentence)."""
    stored = hu.transpose(2, 1, 0)
    good = ("ct.nii", _nifti_bytes(stored))
    other = [files.to_bytes(ds) for ds in files.ct_series(hu[:4], spacing=2.0, series_instance_uid=files.uid("x"))]
    click = {"foreground": [[10, 10, 3]]}
    return [
        ("unknown model", "nonesuch", click, good, 404, "serve"),
        ("roi outside", "demo", {"roi": [0, 0, 900, 10, 0, 3]}, good, 400, "roi"),
        ("roi of no slice", "demo", {"roi": [0, 0, 10, 10, 3, 3]}, good, 400, "roi"),
        ("click outside", "demo", {"foreground": [[10, 10, SLICES]]}, good, 400, "outside"),
        ("background only", "demo", {"background": [[10, 10, 3]]}, good, 400, "foreground"),
        ("not a nifti", "demo", click, ("ct.nii.gz", b"\x1f\x8b" + files.PATIENT_NAME.encode() * 40), 422, "NIfTI"),
        ("4-D nifti", "demo", click, ("ct.nii", _nifti_bytes(np.stack([stored, stored], -1))), 422, "3-D"),
        ("two series zipped", "demo", click, ("s.zip", _zip(series[:4] + other)), 400, "series"),
        ("unknown task", "demo", {**click, "task": "nonesuch"}, good, 400, "task"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_input_is_one_sentence_and_the_server_stays_up(server, volume, series, case) -> None:
    name, model, params, part, status, word = bad_inputs(volume[0], series)[case]
    response = httpx.post(
        f"{server.url}/infer/{model}",
        files={"params": (None, json.dumps(params)), "file": part},
        headers=AUTH,
        timeout=60,
    )
    assert word in refusal(response, status), name
    assert httpx.get(server.url + "/livez", timeout=5).status_code == 200


def test_no_patient_data_or_token_in_the_server_log(server) -> None:
    log = server.log.read_text(errors="replace")
    assert not any(secret in log for secret in (*SECRETS, TOKEN, OTHER))

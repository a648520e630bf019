"""A whole series from one prompt, through `bentoml serve`: `/segment/series` and `/segment/series/seg`.

The series is a fresh synthetic abdominal CT from the zoo's generator (a seed the demo model never saw), written as
single-frame CT instances whose InstanceNumber runs against their position and uploaded in shuffled order. Each
answer is checked against the service's own single-image route run with the boxes the walk reports, so propagation
is held to exactly what `/segment` gives for those prompts.
"""

from __future__ import annotations

import json
from io import BytesIO

import highdicom
import httpx
import numpy as np
import pydicom
import pytest

from service.masks import decode_rle
from testing.local_server import LocalServer, serve
from tests import dicomfiles as files
from tests.conftest import SLICES
from tests.service_client import AUTH, REPO, SECRETS, TOKEN, metric, post, refusal, volume_of

MAX_INSTANCES = 40
LIVER = 1
#: Volume Dice the demo model's propagation from one box on the liver's middle slice must reach. Measured on seeds
#: 901-910 (none the zoo trained on): 0.825-0.855 (0.835 for this one), against 0.91-0.93 with the true box on every
#: slice; benchmarks/RESULTS.md has the zoo's table and why the walk runs past the liver's ends.
LIVER_DICE = 0.80


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    env = {
        "MEDSAMIX_MODELS": str(REPO / "models"),
        "MEDSAMIX_TOKEN": TOKEN,
        "MEDSAMIX_MAX_INSTANCES": str(MAX_INSTANCES),
    }
    with serve(env, tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


def shuffled(series: list[bytes], seed: int = 3) -> list[tuple[str, tuple[str, bytes, str]]]:
    order = np.random.default_rng(seed).permutation(len(series))
    return [("files", (f"{i}.dcm", series[i], "application/dicom")) for i in order]


def post_series(
    server: LocalServer, parts: list, prompts, path: str = "/segment/series", **fields: str
) -> httpx.Response:
    data = {"prompts": prompts if isinstance(prompts, str) else json.dumps(prompts), **fields}
    return httpx.post(server.url + path, files=parts, data=data, headers=AUTH, timeout=120)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def middle_box(label: np.ndarray, value: int = LIVER) -> tuple[int, list[float]]:
    spanned = [z for z in range(len(label)) if (label[z] == value).any()]
    z = spanned[len(spanned) // 2]
    return z, tight_box(label[z] == value)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_one_box_recovers_the_liver_and_every_slice_equals_segment_with_the_box_it_was_given(
    server: LocalServer, volume, series
) -> None:
    image, label = volume
    z, box = middle_box(label)
    response = post_series(server, shuffled(series), [{"box": box, "slice": z, "task": "ct_liver"}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["volume"] == {"slices": SLICES, "rows": image.shape[1], "columns": image.shape[2], "spacing": 2.0}
    (answer,) = body["results"]
    assert answer["start"] == z and answer["model"] == "demo" and answer["label"] == "ct_liver"
    walked = [s["slice"] for s in answer["slices"]]
    assert walked == list(range(walked[0], walked[-1] + 1)) and z in walked
    predicted = volume_of(answer, label.shape)
    assert dice(predicted, label == LIVER) >= LIVER_DICE
    uids = [files.read(data).SOPInstanceUID for data in series]
    for s in answer["slices"]:
        assert s["source"] == uids[s["slice"]] and s["frame"] == 0
        single = post(server, series[s["slice"]], [{"box": s["box"], "task": "ct_liver"}])
        (expected,) = single.json()["results"]
        np.testing.assert_array_equal(decode_rle(s["mask"]), decode_rle(expected["mask"]))
        assert s["area"] == expected["area"] and s["iou"] == pytest.approx(expected["iou"], abs=1e-6)
    assert all(s["box"] is not None for s in answer["slices"])  # the start's is the request's, the others grown


def test_a_3d_box_bounds_the_walk_and_each_slice_is_encoded_once(server: LocalServer, volume, series) -> None:
    _, label = volume
    region = label == LIVER
    spanned = [z for z in range(SLICES) if region[z].any()]
    ys, xs = np.nonzero(region.any(axis=0))
    z0, z1 = spanned[1], spanned[-2]
    box3d = [int(xs.min()), int(ys.min()), z0, int(xs.max()) + 1, int(ys.max()) + 1, z1]
    # a second series (one pixel changed per slice) so that nothing is in the embedding cache yet
    fresh = [files.to_bytes(ds) for ds in files.ct_series(np.where(region, volume[0], volume[0] + 1), spacing=2.0)]
    before = metric(server, "medsamix_embeddings_total", '{source="encoder"}')
    prompts = [{"box3d": box3d, "task": "ct_liver"}, {"box3d": box3d, "task": "ct_liver", "label": "again"}]
    response = post_series(server, shuffled(fresh), prompts)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["start"] == (z0 + z1) // 2
    assert [s["slice"] for s in first["slices"]] == list(range(z0, z1 + 1))
    assert [s["slice"] for s in second["slices"]] == list(range(z0, z1 + 1))
    for s in first["slices"]:
        x0, y0, x1, y1 = s["box"]
        assert box3d[0] <= x0 < x1 <= box3d[3] and box3d[1] <= y0 < y1 <= box3d[4]
    encoded = metric(server, "medsamix_embeddings_total", '{source="encoder"}') - before
    assert encoded == z1 - z0 + 1  # two walks over the same slices: each slice encoded once, none outside the box
    again = post_series(server, shuffled(fresh, seed=5), prompts)
    assert again.json()["results"] == response.json()["results"]
    assert metric(server, "medsamix_embeddings_total", '{source="encoder"}') - before == encoded  # all cached


def test_the_series_seg_references_each_instance_with_a_mask_and_holds_the_json_masks(
    server: LocalServer, volume, series
) -> None:
    _, label = volume
    z, box = middle_box(label)
    prompts = [{"box": box, "slice": z, "task": "ct_liver", "label": "liver"}]
    (answer,) = post_series(server, shuffled(series), prompts).json()["results"]
    response = post_series(server, shuffled(series), prompts, path="/segment/series/seg")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    seg = highdicom.seg.Segmentation.from_dataset(pydicom.dcmread(BytesIO(response.content)))
    uids = [files.read(data).SOPInstanceUID for data in series]
    with_mask = {uids[s["slice"]]: decode_rle(s["mask"]) for s in answer["slices"] if s["area"] > 0}
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert set(with_mask) <= referenced <= set(uids)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver"]
    assert seg.NumberOfFrames == len(with_mask)
    for uid, mask in with_mask.items():
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
        np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    assert seg.StudyInstanceUID == files.read(series[0]).StudyInstanceUID


def test_clicks_alone_start_on_their_slice(server: LocalServer, volume, series) -> None:
    _, label = volume
    z, (x0, y0, x1, y1) = middle_box(label)
    ys, xs = np.nonzero(label[z] == LIVER)
    inside = [float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5, z]
    response = post_series(server, shuffled(series), [{"foreground": [inside], "task": "ct_liver"}])
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    assert answer["start"] == z and answer["slices"][[s["slice"] for s in answer["slices"]].index(z)]["box"] is None
    assert answer["voxels"] > 0


def test_an_enhanced_multiframe_volume_walks_its_frames(server: LocalServer, volume) -> None:
    image, label = volume
    frames = image[:6]
    data = files.multiframe(frames)  # frame i lies at z = -i: the volume's slice order runs against the frames
    z, box = middle_box(label[:6])
    slice_index = 5 - z
    response = post_series(
        server, [("files", ("mf.dcm", data, "application/dicom"))], [{"box": box, "slice": slice_index}]
    )
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    uid = files.read(data).SOPInstanceUID
    for s in answer["slices"]:
        assert s["source"] == uid and s["frame"] == 5 - s["slice"]
        single = post(server, data, [{"box": s["box"], "frame": s["frame"]}])
        np.testing.assert_array_equal(decode_rle(s["mask"]), decode_rle(single.json()["results"][0]["mask"]))
    seg = post_series(
        server,
        [("files", ("mf.dcm", data, "application/dicom"))],
        [{"box": box, "slice": slice_index}],
        "/segment/series/seg",
    )
    assert seg.status_code == 200, seg.text


def _other_series(series: list[bytes]) -> list[bytes]:
    return [*series[:-1], files.with_changes(series[-1], SeriesInstanceUID=files.uid("another series"))]


def _other_size(series: list[bytes]) -> list[bytes]:
    small = files.ct_series(
        np.zeros((1, 32, 32), np.int16), series_instance_uid=files.read(series[0]).SeriesInstanceUID
    )
    small[0].ImagePositionPatient = [-100.0, -120.0, 500.0]
    return [*series, files.to_bytes(small[0])]


@pytest.mark.parametrize(
    ("instances", "prompts", "status", "phrase"),
    [
        (lambda s: s[:1], [{"box": [1, 1, 9, 9], "slice": 0}], 400, "at least 2"),
        (_other_series, [{"box": [1, 1, 9, 9], "slice": 0}], 400, "series"),
        (_other_size, [{"box": [1, 1, 9, 9], "slice": 0}], 422, "rows"),
        (lambda s: s, [{"box": [1, 1, 9, 9], "slice": SLICES}], 400, "out of range"),
        (lambda s: s, [{"box3d": [1, 1, 0, 9, 9, SLICES]}], 400, "3-D box reaches outside"),
        (lambda s: s, [{"foreground": [[1000, 1, 0]]}], 400, "click 0 is outside"),
        (lambda s: s, [{"foreground": [[1, 1, 0]] * 40}], 413, "clicks"),
        (lambda s: s, [{"box": [1, 1, 9, 9]}], 400, "slice"),
        (lambda s: s * 4, [{"box": [1, 1, 9, 9], "slice": 0}], 413, f"at most {MAX_INSTANCES} file(s)"),
    ],
)
def test_a_bad_series_request_is_one_sentence(
    server: LocalServer, series, instances, prompts, status: int, phrase: str
) -> None:
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(instances(series))]
    message = refusal(post_series(server, parts, prompts), status, phrase)
    assert not any(secret in message for secret in SECRETS)
    assert not any(files.read(data).SOPInstanceUID in message for data in series)


def test_no_patient_data_in_the_server_log(server: LocalServer) -> None:
    log = server.log.read_text(errors="replace")
    assert "/segment/series" in log
    assert not [s for s in SECRETS if s in log]

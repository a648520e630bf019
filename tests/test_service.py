"""The service as hospitals run it: `bentoml serve` in a subprocess on a loopback port, real DICOM files over HTTP.

One server (module scope) serves a store of two models: the embedded demo (five tasks, the default) and `liver`,
the zoo's CT specialist exported for `ct_liver` alone, so routing is visible in the answers. Masks are checked
against the store's models run directly with onnxruntime.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom
import httpx
import numpy as np
import pydicom
import pytest

import service
from service.store import ModelStore
from testing.local_server import LocalServer, serve
from tests import dicomfiles as files
from tests.service_client import (
    AUTH,
    ENCODER_HISTOGRAMS,
    REPO,
    SECRETS,
    TOKEN,
    encoder_timings,
    masks_of,
    metric,
    post,
    reference,
)

ZOO = REPO / "tests" / "zoo"
LIMITS = {
    "MEDSAMIX_MAX_PROMPTS": "8",
    "MEDSAMIX_MAX_POINTS": "5",
    "MEDSAMIX_MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
    "MEDSAMIX_MAX_PIXELS": str(1024 * 1024),
    "MEDSAMIX_MAX_FRAMES": "16",
}
# The whole sentences of the refusals of clicks: prompt indices, the image's size and the limit, never a value sent.
CLICK_OUTSIDE = (
    "prompt 1's background click 0 lies outside the image of shape (64, 80); expected 0 <= x <= 80 and 0 <= y <= 64"
)
BOX_OUTSIDE = (
    "prompt 1's box reaches outside the image of shape (64, 80); expected 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 64"
)
TOO_MANY_CLICKS = (
    "prompt 0 has more clicks than this server takes; expected at most 5 foreground and background clicks per prompt"
)
NO_PROMPT = (
    "the request's fields do not match the API (prompts.0: Value error, expected a prompt to have a box or at least "
    "one foreground or background click)"
)
WHOLE_SENTENCES = (CLICK_OUTSIDE, BOX_OUTSIDE, TOO_MANY_CLICKS, NO_PROMPT)  # the refusal is exactly this


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.export import export_model, load_source

    root = tmp_path_factory.mktemp("serving") / "models"
    shutil.copytree(REPO / "models" / "demo", root / "demo")
    export_model(
        load_source(ZOO / "ct_specialist_tiny.pt", "sam"),
        "liver",
        root,
        tasks=["ct_liver"],
        presets={"ct_liver": "ct_abdomen"},
    )
    return root


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    env = {
        "MEDSAMIX_MODELS": str(store),
        "MEDSAMIX_TOKEN": TOKEN,
        "MEDSAMIX_BATCHING": "1",  # a GPU deployment's default (off on a CPU's): the batching encoder is tested here
        "MEDSAMIX_MAX_LATENCY_MS": "20",
        **LIMITS,
    }
    with serve(env, tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


def counter(server: LocalServer, source: str) -> float:
    return metric(server, "medsamix_embeddings_total", f'{{source="{source}"}}')


def test_masks_equal_the_store_models_run_directly(server: LocalServer, store: Path) -> None:
    ct = files.testdata("CT_small.dcm")
    prompts = [
        {"box": [20, 30, 90, 100], "task": "ct_liver", "label": "liver"},  # -> liver, ct_abdomen window
        {"box": [10, 10, 60, 50]},  # -> demo, the file's own window
        {"box": [40, 40, 120, 110], "task": "ct_kidney"},  # -> demo (no single-task kidney model), ct_abdomen
    ]
    response = post(server, ct, prompts)
    body = response.json()
    expected = [
        reference(store, "liver", ct, [prompts[0]["box"]], preset="ct_abdomen"),
        reference(store, "demo", ct, [prompts[1]["box"]]),
        reference(store, "demo", ct, [prompts[2]["box"]], preset="ct_abdomen"),
    ]
    for result, mask, (ref_masks, ref_iou) in zip(body["results"], masks_of(response), expected, strict=True):
        np.testing.assert_array_equal(mask, ref_masks[0])
        assert result["area"] == int(ref_masks[0].sum()) > 0
        assert result["iou"] == pytest.approx(float(ref_iou[0]), abs=1e-5)
    assert [r["model"] for r in body["results"]] == ["liver", "demo", "demo"]
    assert [r["label"] for r in body["results"]] == ["liver", "segment", "ct_kidney"]
    for name in ("demo", "liver"):
        manifest_sha = ModelStore(store).manifest(name)[1]
        assert body["models"][name] == {"version": "1", "manifest_sha256": manifest_sha}


def test_clicks_alone_and_with_a_box_equal_the_store_models_run_directly(server: LocalServer, store: Path) -> None:
    """Foreground and background clicks, alone or with a box, mixed with a box alone in one request (the decoder
    runs once per number of points), answer what the model answers to SAM's points and labels."""
    ct = files.testdata("CT_small.dcm")
    prompts = [
        {"foreground": [[55, 65], [60.5, 70]], "background": [[10, 120]]},
        {"box": [20, 30, 90, 100], "foreground": [[55, 65]], "background": [[25, 35]]},
        {"foreground": [[55, 65]], "task": "ct_liver"},  # -> liver, ct_abdomen window
        {"box": [20, 30, 90, 100]},
    ]
    response = post(server, ct, prompts)
    expected_masks, expected_ious = reference(store, "demo", ct, [prompts[0], prompts[1], prompts[3]])
    liver_masks, liver_ious = reference(store, "liver", ct, [prompts[2]], preset="ct_abdomen")
    got = masks_of(response)
    for mask, expected in zip(got, [*expected_masks[:2], liver_masks[0], expected_masks[2]], strict=True):
        np.testing.assert_array_equal(mask, expected)
    ious = [r["iou"] for r in response.json()["results"]]
    np.testing.assert_allclose(ious, [*expected_ious[:2], liver_ious[0], expected_ious[2]], atol=1e-5)
    assert [r["model"] for r in response.json()["results"]] == ["demo", "demo", "liver", "demo"]
    assert not np.array_equal(got[1], got[3])  # the clicks change the box's answer


def test_models_lists_tasks_and_routing_follows_it(server: LocalServer) -> None:
    listing = httpx.get(server.url + "/models", headers=AUTH, timeout=10).json()
    assert listing["refused"] == []
    cards = {c["name"]: c for c in listing["models"]}
    assert set(cards) == {"demo", "liver"}
    assert cards["liver"]["tasks"] == ["ct_liver"] and cards["liver"]["single_task"] and not cards["liver"]["default"]
    assert cards["demo"]["default"] and not cards["demo"]["single_task"] and len(cards["demo"]["tasks"]) == 5
    assert cards["demo"]["providers"] == ["CPUExecutionProvider"]
    # The decoders take clicks, but only the gated demo was scored (with boxes, the evaluator's prompts).
    assert cards["demo"]["prompt_kinds"] == cards["liver"]["prompt_kinds"] == ["box", "points"]
    assert (cards["demo"]["scored_prompts"], cards["liver"]["scored_prompts"]) == (["box"], [])
    ct = files.testdata("CT_small.dcm")
    box = [20, 30, 90, 100]
    routed = post(server, ct, [{"box": box, "task": "ct_liver"}, {"box": box, "task": "mr_grey_matter"}]).json()
    assert [r["model"] for r in routed["results"]] == ["liver", "demo"]
    explicit = post(server, ct, [{"box": box, "task": "ct_liver"}], model="demo").json()  # an explicit model wins
    assert explicit["results"][0]["model"] == "demo"


def test_multiframe_compressed_monochrome1_and_rgb_images(server: LocalServer, store: Path) -> None:
    hu = np.stack([files.ct_hu(64, 80, seed) for seed in range(3)])
    box = [8, 6, 60, 50]
    prompt = [{"box": box, "frame": 2, "task": "ct_liver"}]
    multi = files.multiframe(hu)
    from_multi = masks_of(post(server, multi, prompt))[0]
    single = files.ct_image(hu[2])
    np.testing.assert_array_equal(from_multi, masks_of(post(server, single, [{**prompt[0], "frame": 0}]))[0])
    np.testing.assert_array_equal(from_multi, reference(store, "liver", multi, [box], 2, "ct_abdomen")[0][0])
    for syntax in files.LOSSLESS_SYNTAXES:
        packed = files.compressed(single, syntax)
        np.testing.assert_array_equal(masks_of(post(server, packed, [{"box": box, "task": "ct_liver"}]))[0], from_multi)
    inverted = files.ct_image(hu[2], monochrome1=True, window=(40, 400))
    got = masks_of(post(server, inverted, [{"box": box}]))[0]
    np.testing.assert_array_equal(got, reference(store, "demo", inverted, [box])[0][0])
    rgb = files.rgb_image(np.random.default_rng(4).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    np.testing.assert_array_equal(
        masks_of(post(server, rgb, [{"box": box}]))[0], reference(store, "demo", rgb, [box])[0][0]
    )


def test_more_boxes_on_a_seen_image_cost_only_the_decoder(server: LocalServer, store: Path) -> None:
    image = files.ct_image(files.ct_hu(64, 80, seed=11))
    encoded, cached = counter(server, "encoder"), counter(server, "cache")
    first = masks_of(post(server, image, [{"box": [5, 5, 40, 40]}]))
    assert (counter(server, "encoder"), counter(server, "cache")) == (encoded + 1, cached)
    boxes = [[10, 12, 70, 60], [0, 0, 80, 64]]
    again = masks_of(post(server, image, [{"box": b} for b in boxes]))
    assert (counter(server, "encoder"), counter(server, "cache")) == (encoded + 1, cached + 1)
    ref_masks, _ = reference(store, "demo", image, [[5, 5, 40, 40], *boxes])
    np.testing.assert_array_equal(np.stack(first + again), ref_masks)
    # The same UID with other pixels is another image: never answered from the cache.
    changed = files.with_changes(image, PixelData=files.read(files.ct_image(files.ct_hu(64, 80, 12))).PixelData)
    masks_of(post(server, changed, [{"box": [5, 5, 40, 40]}]))
    assert counter(server, "encoder") == encoded + 2


def test_metrics_time_each_encoder_call_and_the_encoding_inside_it(server: LocalServer) -> None:
    """/metrics' two histograms are what the front -> encoder hop is read from (benchmarks/quant_bench.py): one
    new image is one call and one encoding, and the call lasts at least the encoding it waited for."""
    before = encoder_timings(server)
    masks_of(post(server, files.ct_image(files.ct_hu(64, 80, seed=21)), [{"box": [5, 5, 40, 40]}]))
    after = encoder_timings(server)
    (calls, call_s), (encodings, encoding_s) = (
        (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in ENCODER_HISTOGRAMS
    )
    assert (calls, encodings) == (1, 1)
    assert call_s >= encoding_s > 0


def test_concurrent_requests_through_the_batching_encoder_are_answered_correctly(
    server: LocalServer, store: Path
) -> None:
    images = [files.ct_image(files.ct_hu(48, 48, seed)) for seed in range(100, 106)]
    box = [4, 4, 40, 44]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda image: post(server, image, [{"box": box}]), images))
    for image, response in zip(images, responses, strict=True):
        agreement = (masks_of(response)[0] == reference(store, "demo", image, [box])[0][0]).mean()
        assert agreement >= 0.995  # a batch of several images may round differently from a batch of one


def test_seg_references_the_source_and_holds_the_masks(server: LocalServer) -> None:
    ct = files.testdata("CT_small.dcm")
    prompts = [{"box": [20, 30, 90, 100], "label": "liver"}, {"box": [60, 60, 120, 120], "label": "kidney"}]
    response = post(server, ct, prompts, path="/segment/seg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = highdicom.seg.segread(BytesIO(response.content))
    source = pydicom.dcmread(BytesIO(ct))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MedSAMix demo", "1")
    stored = seg.get_pixels_by_source_instance([source.SOPInstanceUID], ignore_spatial_locations=True)[0]
    expected = masks_of(post(server, ct, prompts))
    for i, mask in enumerate(expected):
        np.testing.assert_array_equal(stored[..., i].astype(bool), mask)


def test_seg_of_a_multiframe_image_maps_the_frame(server: LocalServer) -> None:
    hu = np.stack([files.ct_hu(64, 80, seed) for seed in range(20, 23)])
    multi = files.multiframe(hu)
    prompt = [{"box": [8, 6, 60, 50], "frame": 1, "label": "lesion"}]
    response = post(server, multi, prompt, path="/segment/seg")
    assert response.status_code == 200, response.text
    seg = highdicom.seg.segread(BytesIO(response.content))
    source = pydicom.dcmread(BytesIO(multi))
    pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [2], ignore_spatial_locations=True)  # 1-based
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), masks_of(post(server, multi, prompt))[0])


def test_token_guards_everything_but_the_probes(server: LocalServer) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (("GET", "/models"), ("GET", "/docs.json"), ("POST", "/segment")):
            response = httpx.request(method, server.url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "bearer token" in response.json()["error"]


def test_openapi_describes_the_api(server: LocalServer) -> None:
    spec = httpx.get(server.url + "/docs.json", headers=AUTH, timeout=10).json()
    assert {"/segment", "/segment/seg", "/models", "/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    form = spec["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "prompts", "model", "preset"} <= set(form["properties"]) and set(form["required"]) == {
        "file",
        "prompts",
    }
    prompt = spec["components"]["schemas"]["Prompt"]
    assert set(prompt["properties"]) == {"box", "foreground", "background", "frame", "label", "task"}
    assert spec["paths"]["/models"]["get"]["responses"]["200"]
    assert spec["info"]["version"] == importlib.metadata.version("medsamix") == service.__version__


def test_the_home_page_is_ours_lists_the_models_and_loads_nothing_from_another_host(server: LocalServer) -> None:
    assert httpx.get(server.url + "/", timeout=10).status_code == 401  # behind the token like every page
    page = httpx.get(server.url + "/", headers=AUTH, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "BentoML" not in html and "googletagmanager" not in html
    assert f"MedSAMix {service.__version__}" in html
    for name in ("demo (default)", "liver", "ct_liver", "/docs.json", "/segment/dicomweb", "MONAI Label"):
        assert name in html
    # Nothing that makes a browser fetch: no script or other embed, no stylesheet link, every link on this server.
    assert not re.search(r"<(script|img|iframe|link|object|embed|source|video|audio)\b", html, re.IGNORECASE)
    assert not re.search(r"@import|url\(", html)
    links = re.findall(r"""(?:href|src|action)\s*=\s*["']?([^"'\s>]+)""", html, re.IGNORECASE)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
    assert not re.search(r"[a-z]+://", html)  # no absolute URL at all, even as text
    assert httpx.head(server.url + "/", headers=AUTH, timeout=10).status_code == 200


def _bad_requests() -> list[tuple[str, Any, int, str]]:
    """(what, request arguments or a callable, expected status, a phrase the sentence must contain)."""
    ct = files.ct_image(files.ct_hu(64, 80, seed=5))
    box = [{"box": [5, 5, 40, 40]}]
    huge = files.with_changes(ct, Rows=40000, Columns=40000)
    return [
        ("not DICOM", (b"\x89PNG\r\n\x1a\n" + bytes(200), box), 400, "not a DICOM file"),
        ("truncated", (ct[: len(ct) // 2], box), 400, "truncated"),
        ("no pixel data", (files.with_changes(ct, delete=["PixelData"]), box), 422, "no pixel data"),
        ("huge dimensions", (huge, box), 413, "pixels"),
        ("box outside", (ct, [{"box": [5, 5, 90, 40]}]), 400, "outside the image"),
        ("zero-area box", (ct, [{"box": [5, 5, 5, 40]}]), 400, "zero or negative width"),
        ("frame out of range", (ct, [{"box": [5, 5, 40, 40], "frame": 3}]), 400, "out of range"),
        ("too many prompts", (ct, box * 9), 413, "at most 8"),
        ("no prompts", (ct, []), 400, "at least one prompt"),
        ("click outside", (ct, [box[0], {"foreground": [[3, 3]], "background": [[81, 10]]}]), 400, CLICK_OUTSIDE),
        ("box outside beside clicks", (ct, [{"foreground": [[3, 3]]}, {"box": [5, 5, 90, 40]}]), 400, BOX_OUTSIDE),
        ("NaN click", (ct, '[{"foreground": [[NaN, 3]]}]'), 400, "prompt 0's foreground click 0 has NaN"),
        ("too many clicks", (ct, [{"foreground": [[1, 1]] * 4, "background": [[2, 2]] * 2}]), 413, TOO_MANY_CLICKS),
        ("neither box nor click", (ct, [{"frame": 0, "foreground": [], "label": "liver"}]), 400, NO_PROMPT),
        ("unknown model", (ct, box, "/segment", None, {"model": "nope"}), 404, "names a model this server does not"),
        ("unknown task", (ct, [{"box": [5, 5, 40, 40], "task": "lung"}]), 400, "prompt 0 names a task no model"),
        (
            "unknown preset",
            (ct, box, "/segment", None, {"preset": "ct_sinus"}),
            400,
            "preset this server does not know",
        ),
        ("undecodable syntax", (files.compressed(ct, files.UNDECODABLE_SYNTAX), box), 415, "cannot be decoded"),
        ("prompts not JSON", (ct, "[{box: 1"), 400, "prompts"),
        ("wrong token", (ct, box, "/segment", {"Authorization": "Bearer nope"}), 401, "bearer token"),
        ("oversize body", (bytes(3 * 1024 * 1024), box), 413, "larger than this server accepts"),
        ("two models in one SEG", (ct, [box[0], {**box[0], "task": "ct_liver"}], "/segment/seg"), 400, "one model"),
    ]


@pytest.mark.parametrize("what, request_args, status, phrase", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_input_is_one_sentence_and_the_server_stays_up(
    server: LocalServer, what: str, request_args: tuple, status: int, phrase: str
) -> None:
    dicom, prompts, *rest = request_args
    path, headers, fields = (rest + ["/segment", None, {}][len(rest) :])[:3]
    response = post(server, dicom, prompts, path=path, headers=headers, **fields)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert phrase in message, message
    assert phrase not in WHOLE_SENTENCES or message == phrase, message
    assert "\n" not in message and "Traceback" not in message
    assert not any(secret in message for secret in SECRETS)
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200


def test_a_url_in_the_file_field_is_not_fetched(server: LocalServer) -> None:
    data = {"file": "http://127.0.0.1:9/x.dcm", "prompts": json.dumps([{"box": [1, 1, 5, 5]}])}
    response = httpx.post(server.url + "/segment", data=data, headers=AUTH, timeout=30)
    assert response.status_code == 400 and "uploaded file" in response.json()["error"]


def test_no_patient_data_in_the_server_log(server: LocalServer) -> None:
    # Runs after the battery: everything above was logged by now.
    log = server.log.read_text(errors="replace")
    assert "/segment" in log
    leaked = [s for s in SECRETS if s in log]
    assert not leaked, f"the server log contains DICOM values: {leaked}"


def test_readyz_fails_when_the_gpu_was_asked_for_and_only_the_cpu_loaded(store: Path, tmp_path: Path) -> None:
    from service.runtime import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA: the GPU would really be used")
    env = {"MEDSAMIX_MODELS": str(store), "MEDSAMIX_DEVICE": "gpu"}
    with serve(env, tmp_path / "gpu.log", ready=False) as running:
        assert httpx.get(running.url + "/livez", timeout=10).status_code == 200
        assert httpx.get(running.url + "/readyz", timeout=10).status_code == 503


def test_openapi_publishes_the_refusals_and_the_bearer_scheme(server: LocalServer) -> None:
    spec = httpx.get(server.url + "/docs.json", headers=AUTH, timeout=10).json()
    segment = spec["paths"]["/segment"]["post"]
    assert {"200", "400", "401", "404", "413", "415", "422"} <= set(segment["responses"])
    assert segment["responses"]["415"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    dicomweb = spec["paths"]["/segment/dicomweb"]["post"]["responses"]
    assert {"403", "502", "504"} <= set(dicomweb)
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert segment["security"] == [{"bearer": []}] and "security" not in spec["paths"]["/livez"]["get"]


def test_an_upload_of_any_content_type_is_read_as_dicom(server: LocalServer) -> None:
    ct = files.testdata("CT_small.dcm")
    for content_type in ("application/octet-stream", "application/dicom"):
        upload = {"file": ("ct.dcm", ct, content_type)}
        data = {"prompts": json.dumps([{"box": [20, 30, 90, 100]}])}
        response = httpx.post(server.url + "/segment", files=upload, data=data, headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text

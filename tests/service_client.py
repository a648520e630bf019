"""The tests' client of a served model: its token, the requests they send, and the answers read back (one-sentence
refusals, RLE masks, a volume's slices, /metrics values), checked against the store's models run directly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service import imaging
from service.dicom import read_dicom
from service.masks import decode_rle
from service.store import ModelStore
from testing.local_server import LocalServer
from tests import dicomfiles as files

REPO = Path(__file__).resolve().parent.parent


TOKEN = "correct-horse-battery-staple"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# Values written into the test files that no response or log line may contain.
SECRETS = (files.PATIENT_NAME, files.PATIENT_ID, files.STUDY_DESCRIPTION, files.ACCESSION_NUMBER)


def post(
    server: LocalServer,
    dicom: bytes,
    prompts: Any,
    path: str = "/segment",
    headers: dict[str, str] | None = None,
    filename: str = "image.dcm",
    **fields: str,
) -> httpx.Response:
    data = {"prompts": prompts if isinstance(prompts, str) else json.dumps(prompts), **fields}
    upload = {"file": (filename, dicom, "application/dicom")}
    headers = AUTH if headers is None else headers
    return httpx.post(server.url + path, files=upload, data=data, headers=headers, timeout=60)


def reference(store: Path, name: str, dicom: bytes, prompts: list, frame: int = 0, preset: str | None = None):
    """The model `name` run directly: decoded frame -> geometry -> encoder -> decoder -> masks, IoUs. Each prompt
    is a box [x0, y0, x1, y1] or a request prompt {"box"?, "foreground"?, "background"?}, decoded on its own as SAM's
    points and labels: clicks (1 foreground, 0 background), then the box's corners (2, 3) or a padding point (-1)."""
    model = ModelStore(store).load(name, providers=["CPUExecutionProvider"])
    geometry = imaging.get_geometry(model.manifest["preprocessing"]["geometry"])
    size = model.manifest["image_size"]
    model_input, frame_geometry = geometry.prepare(read_dicom(dicom).display(frame, preset), size)
    resized = np.array([frame_geometry.resized])
    (embedding,) = model.encoder.run(None, {"image": model_input[None], "resized_hw": resized})
    masks, ious = [], []
    for prompt in prompts:
        prompt = prompt if isinstance(prompt, dict) else {"box": prompt}
        fg, bg, box = prompt.get("foreground", []), prompt.get("background", []), prompt.get("box")
        corners = [[0.0, 0.0]] if box is None else np.reshape(box, (2, 2)).tolist()
        points = geometry.points_to_model(np.array([*fg, *bg, *corners], np.float64), frame_geometry)
        labels = [1] * len(fg) + [0] * len(bg) + ([-1] if box is None else [2, 3])
        inputs = {"point_coords": points[None].astype(np.float32), "point_labels": np.array([labels], np.float32)}
        logits, iou = model.decoder.run(None, {"image_embeddings": embedding, **inputs})
        masks.append(geometry.mask_to_image(logits, frame_geometry, size)[0])
        ious.append(iou[0])
    return np.stack(masks), np.array(ious)


def refusal(response: httpx.Response, status: int, phrase: str = "") -> str:
    """The one sentence of a refusal with `status` (containing `phrase`): one line, no traceback."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert phrase in message, message
    assert "\n" not in message and "Traceback" not in message, message
    return message


def masks_of(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decode_rle(r["mask"]) for r in response.json()["results"]]


def metric(server: LocalServer, name: str, labels: str = "") -> float:
    """The value of metric `name` (with the label set `labels`, e.g. '{source="cache"}') on /metrics; 0 if absent."""
    return _value(httpx.get(server.url + "/metrics", timeout=10).text, name, labels)


def _value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# The front's wait for one encoder call, and the encoding inside it: their means' difference is the hop.
ENCODER_HISTOGRAMS = ("medsamix_encoder_call_seconds", "medsamix_encoding_seconds")


def encoder_timings(server: LocalServer) -> dict[str, tuple[float, float]]:
    """(count, sum) of each of `ENCODER_HISTOGRAMS`, from one read of /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {name: (_value(text, name + "_count"), _value(text, name + "_sum")) for name in ENCODER_HISTOGRAMS}


def volume_of(answer: dict, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for s in answer["slices"]:
        mask[s["slice"]] = decode_rle(s["mask"])
    return mask

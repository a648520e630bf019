"""Smoke check of a running MedSAMix server: what CI runs against each container image it builds
(.github/workflows/container.yml), and what anyone can run against a server they started.

    python .github/smoke.py http://127.0.0.1:3000 [--timeout 600]

Waits (at most --timeout seconds) for /readyz to answer 200, posts pydicom's sample CT slice `CT_small.dcm` with one
box to POST /segment (the README's example request) and checks the answer against this checkout: the default model
`demo` answered, its manifest is byte for byte `models/demo/manifest.json` (the image serves the model it was built
with), and its mask is the one the service's own steps (service/segmenter.py, in this process, onnxruntime on the
CPU) give for the same file and box. Exit status 0 when all hold, else 1 with one sentence.

It runs on the machine that started the server, not in the image: it needs this project installed (`pip install
-e .[serve]`: onnxruntime, pydicom and its test file, httpx from BentoML) but no Docker, no torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.data import get_testdata_file

from service.errors import RequestError
from service.masks import decode_rle

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
# The README's example prompt on CT_small.dcm (128 x 128): a box over the neck's vertebra, XYXY pixel coordinates.
PROMPT = {"box": [20, 30, 90, 100], "label": "vertebra"}
# The container's onnxruntime (onnxruntime-gpu in the GPU image, on the CPU here) is another build than this
# machine's, so a pixel on the mask's edge may round the other way; a wrong image, window, geometry or model moves
# far more than this (the mask covers about 2,900 of the image's 16,384 pixels).
MIN_AGREEMENT = 0.995  # the fraction of the image's pixels on which the two masks agree
IOU_TOLERANCE = 0.01


class SmokeFailure(Exception):
    """The server is not ready in time or answered wrongly; the message is one sentence."""


def wait_ready(url: str, timeout: float, interval: float = 2.0) -> float:
    """Seconds until GET /readyz answered 200; SmokeFailure after `timeout` seconds."""
    start = time.monotonic()
    last = "no answer"
    while True:
        try:
            status = httpx.get(f"{url}/readyz", timeout=5).status_code
            if status == 200:
                return time.monotonic() - start
            last = f"status {status}"
        except httpx.HTTPError as error:
            last = type(error).__name__
        if time.monotonic() - start > timeout:
            raise SmokeFailure(f"{url}/readyz did not answer 200 within {timeout:.0f} s (last: {last})")
        time.sleep(interval)


def expected_answer(dicom: bytes, prompt: dict[str, Any], models: Path) -> tuple[np.ndarray, float]:
    """The mask and predicted IoU the service's own steps give for `prompt` on `dicom` with the store's `demo`, run
    here on the CPU (service/segmenter.py, as the server runs them, without HTTP)."""
    from service.cache import EmbeddingCache
    from service.dicom import read_dicom
    from service.schemas import Prompt
    from service.segmenter import Segmenter, Served, encode_jobs
    from service.store import ModelStore

    served = {"demo": Served.of(ModelStore(models).load("demo", providers=["CPUExecutionProvider"]))}
    segmenter = Segmenter(served, "demo", lambda jobs: encode_jobs(served, jobs), EmbeddingCache(2**26), max_prompts=1)
    (result,) = segmenter.segment(read_dicom(dicom), [Prompt.model_validate(prompt)]).results
    return result.mask, result.iou


def check_answer(body: dict[str, Any], expected: np.ndarray, expected_iou: float, manifest_sha256: str) -> np.ndarray:
    """The answer's one mask, after checking it against the expected mask and IoU and this checkout's manifest."""
    results = body.get("results")
    if not isinstance(results, list) or len(results) != 1:
        raise SmokeFailure(f"expected one result for one prompt, found {json.dumps(results)[:200]}")
    result = results[0]
    if result.get("model") != "demo":
        raise SmokeFailure(f"expected the default model 'demo' to answer, found {result.get('model')!r}")
    served = body.get("models", {}).get("demo", {}).get("manifest_sha256")
    if served != manifest_sha256:
        raise SmokeFailure(f"the server's demo manifest has sha256 {served}, this checkout's {manifest_sha256}")
    try:
        mask = decode_rle(result.get("mask"))
    except RequestError as error:
        raise SmokeFailure(f"the answer's mask is not the API's RLE: {error}") from None
    if mask.shape != expected.shape:
        raise SmokeFailure(f"expected a mask of the image's shape {expected.shape}, found {mask.shape}")
    if result.get("area") != int(mask.sum()) or not mask.any():
        raise SmokeFailure(f"expected a non-empty mask of the answer's area, found {int(mask.sum())} pixels")
    agreement = float((mask == expected).mean())
    if agreement < MIN_AGREEMENT:
        raise SmokeFailure(
            f"the mask agrees with the expected one on {agreement:.2%} of the pixels, expected at least "
            f"{MIN_AGREEMENT:.1%} ({int(mask.sum())} vs {int(expected.sum())} pixels set)"
        )
    iou = result.get("iou")
    if not isinstance(iou, int | float) or abs(iou - expected_iou) > IOU_TOLERANCE:
        raise SmokeFailure(f"expected a predicted IoU of {expected_iou:.3f}, found {iou!r}")
    return mask


def smoke(url: str, timeout: float, models: Path = MODELS) -> str:
    """Wait for the server at `url`, segment CT_small.dcm, check the answer against the store `models`; a one-line
    summary."""
    url = url.rstrip("/")
    waited = wait_ready(url, timeout)
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise SmokeFailure("pydicom's test file CT_small.dcm is not installed")
    dicom = Path(path).read_bytes()
    response = httpx.post(
        f"{url}/segment",
        files={"file": ("CT_small.dcm", dicom, "application/dicom")},
        data={"prompts": json.dumps([PROMPT])},
        timeout=120,
    )
    if response.status_code != 200:
        raise SmokeFailure(f"POST /segment answered {response.status_code}: {response.text[:300]}")
    expected, iou = expected_answer(dicom, PROMPT, models)
    manifest_sha256 = hashlib.sha256((models / "demo" / "manifest.json").read_bytes()).hexdigest()
    mask = check_answer(response.json(), expected, iou, manifest_sha256)
    return f"ready after {waited:.0f} s; POST /segment answered the expected mask ({int(mask.sum())} of {mask.size} px)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for /readyz (default 600)")
    args = parser.parse_args(argv)
    try:
        print(smoke(args.url, args.timeout))
    except SmokeFailure as failure:
        print(f"smoke check failed: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

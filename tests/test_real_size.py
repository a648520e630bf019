"""The real-size path end to end on CPU, as a user runs it: random-init ViT-B base and two perturbed fine-tunes in
the shipped file layouts -> `medsamix search` (2 trials on 2 calibration slices, no report) -> `medsamix export` ->
`bentoml serve` of that store -> one `POST /segment`. Minutes on a 2-core machine: marked slow, run by `.ci/run`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from search.architectures import build_sam
from search.zoo import write_nnunet
from service.masks import decode_rle
from testing.local_server import serve
from tests import dicomfiles as files
from tests.conftest import fine_tune_of, write_medsam_training, write_sam, write_torch_em
from tests.service_client import reference

ROWS, COLUMNS = 64, 80
BOX = [20.0, 16.0, 60.0, 48.0]  # XYXY in pixels, around the blob `liver_case` draws


def medsamix(*args: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result


def liver_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2-slice CT volume (D x H x W, HU) with a bright ellipse labelled 1 on both slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ROWS, :COLUMNS]
    blob = ((yy - 32) / 14) ** 2 + ((xx - 40) / 18) ** 2 <= 1
    volume = rng.normal(-100, 40, (2, ROWS, COLUMNS)) + 160 * blob
    return volume, np.broadcast_to(blob, volume.shape).astype(np.uint8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_vit_b_search_export_serve(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = build_sam("vit_b").state_dict()
    inputs = {"sam": tmp_path / "sam_vit_b.pth", "medicosam": tmp_path / "medicosam.pt", "medsam": tmp_path / "ms.pth"}
    write_sam(base, inputs["sam"])
    write_torch_em(fine_tune_of(base, 1, scale=0.002, arch="vit_b"), inputs["medicosam"])
    write_medsam_training(fine_tune_of(base, 2, scale=0.002, arch="vit_b"), inputs["medsam"])
    del base
    dataset = tmp_path / "Dataset001_Liver"
    write_nnunet(dataset, [liver_case(0), liver_case(1)], "CT", {"liver": 1})
    task = {"name": "liver", "path": str(dataset), "format": "nnunet", "labels": 1, "preset": "ct_abdomen"}
    config = {
        "base": {"name": "sam", "path": str(inputs["sam"])},
        "models": [
            {"name": "medicosam", "path": str(inputs["medicosam"])},
            {"name": "medsam", "path": str(inputs["medsam"]), "normalization": "medsam"},
        ],
        "tasks": [{**task, "calibration_fraction": 0.5}],  # 2 cases: one (2 slices) to calibrate on, one held out
        "trials": 2,
        "budget": {"min": 2, "max": 2},
        "device": "cpu",
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))

    medsamix("search", str(tmp_path / "search.yaml"), "--no-report", timeout=1800)
    recipe = tmp_path / "run" / "best.yaml"
    store = tmp_path / "models"
    # --force: random weights beat nothing; the held-out quality gate is tested on the tiny zoo (tests/test_gate.py).
    medsamix(
        "export",
        str(recipe),
        "--name",
        "vitb",
        "--out",
        str(store),
        "--task",
        "liver=ct_abdomen",
        "--force",
        timeout=1800,
    )
    manifest = json.loads((store / "vitb" / "manifest.json").read_text())
    assert manifest["architecture"] == "vit_b" and manifest["image_size"] == 1024
    assert {i["name"]: i["sha256"] for i in manifest["inputs"]} == {n: sha256(p) for n, p in inputs.items()}

    hu = liver_case(2)[0][0].astype(np.int16)
    dicom = files.ct_image(hu)
    with serve({"MEDSAMIX_MODELS": str(store)}, tmp_path / "serve.log", timeout=900) as server:
        response = httpx.post(
            server.url + "/segment",
            files={"file": ("image.dcm", dicom, "application/dicom")},
            data={"prompts": json.dumps([{"box": BOX, "task": "liver", "label": "liver"}])},  # routed by task
            timeout=600,
        )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    mask = decode_rle(result["mask"])
    assert mask.shape == (ROWS, COLUMNS) and result["model"] == "vitb"
    expected_masks, expected_iou = reference(store, "vitb", dicom, [BOX], preset="ct_abdomen")
    np.testing.assert_array_equal(mask, expected_masks[0])
    assert result["iou"] == pytest.approx(float(expected_iou[0]), abs=1e-5)

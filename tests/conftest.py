"""Shared fixtures: tiny SAMs built through the product's own builder, written in each real file format; a real
Orthanc; a CT volume and its DICOM series."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from search.architectures import build_sam
from testing.local_server import free_port
from tests import dicomfiles as files
from tests.pacs_server import INSTALL, ORTHANC, PACS_PASSWORD, PACS_USER, PLUGIN, Orthanc

StateDict = dict[str, torch.Tensor]


def tiny_state(seed: int) -> StateDict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_sam("tiny").state_dict().items()}


def fine_tune_of(base: StateDict, seed: int, scale: float = 0.02, arch: str = "tiny") -> StateDict:
    """A stand-in fine-tune of an `arch` base: its weights plus a seeded perturbation (buffers untouched, as in real
    fine-tunes)."""
    generator = torch.Generator().manual_seed(seed)
    learned = dict(build_sam(arch, device="meta").named_parameters())
    return {
        k: v + scale * torch.randn(v.shape, generator=generator) if k in learned else v.clone() for k, v in base.items()
    }


def with_non_finite(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fine-tune with one NaN in a decoder weight and one inf in an encoder bias."""
    state = fine_tune_of(base, 9)
    state["mask_decoder.iou_prediction_head.layers.0.weight"][0, 0] = float("nan")
    state["image_encoder.blocks.0.attn.qkv.bias"][3] = float("inf")
    return state


# The real files' layouts: name -> function writing `state` to a path in that layout.
def write_sam(state: StateDict, path: Path) -> None:
    torch.save(state, path)


def write_torch_em(state: StateDict, path: Path, prefix: str = "sam.") -> None:
    torch.save(
        {
            "model_state": {prefix + k: v for k, v in state.items()},
            "epoch": 7,
            "best_metric": 0.12,
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        },
        path,
    )


def write_medsam_training(state: StateDict, path: Path) -> None:
    torch.save(
        {
            "model": {"module." + k: v for k, v in state.items()},
            "epoch": 99,
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )


def write_state_dict(state: StateDict, path: Path) -> None:
    torch.save({"state_dict": state, "global_step": 10}, path)


def write_safetensors(state: StateDict, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


WRITERS: dict[str, tuple[str, Callable[[StateDict, Path], None]]] = {
    "sam": (".pth", write_sam),
    "torch_em": (".pt", write_torch_em),
    "medsam_training": (".pth", write_medsam_training),
    "state_dict": (".ckpt", write_state_dict),
    "safetensors": (".safetensors", write_safetensors),
}


@pytest.fixture(scope="session")
def tiny_base() -> StateDict:
    return tiny_state(0)


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_base: StateDict) -> dict[str, Path]:
    """A base and two fine-tunes on disk, in the layouts the real SAM, micro-sam and MedSAM files use."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {
        "sam": folder / "sam_tiny.pth",
        "medicosam": folder / "medicosam_tiny.pt",
        "medsam": folder / "medsam_tiny.pth",
    }
    write_sam(tiny_base, paths["sam"])
    write_torch_em(fine_tune_of(tiny_base, 1), paths["medicosam"])
    write_medsam_training(fine_tune_of(tiny_base, 2), paths["medsam"])
    return paths


ZOO = Path(__file__).parent / "zoo"
ZOO_TASKS = {"ct_liver": "ct_abdomen", "mr_grey_matter": "mr"}


@pytest.fixture(scope="session")
def zoo_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A uniform linear merge of the tiny zoo (base + CT and MR specialists) under `sam`, with a search report."""
    from search.architectures import get_architecture
    from search.checkpoints import sha256_file
    from search.recipe import InputModel, save_recipe, uniform_recipe

    folder = tmp_path_factory.mktemp("search_run")
    files = {"base": "sam_tiny.pth", "ct": "ct_specialist_tiny.pt", "mr": "mr_specialist_tiny.pth"}
    inputs = [InputModel(name=n, path=str(ZOO / f), sha256=sha256_file(ZOO / f)) for n, f in files.items()]
    recipe = uniform_recipe(inputs[0], inputs[1:], get_architecture("tiny"), "linear")
    (folder / "report").mkdir()
    (folder / "report" / "report.md").write_text("# search report\n")
    (folder / "report" / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    (folder / "report" / "runhistory.json").write_text("{}")  # not part of a report: not copied
    return save_recipe(recipe, folder / "recipe.yaml")


@pytest.fixture(scope="session")
def exported_zoo(tmp_path_factory: pytest.TempPathFactory, zoo_recipe: Path) -> Path:
    """`zoo_recipe` exported (float32) as models/zoo_sam, with its tasks, presets, one score and its report."""
    from search.export import export_model, load_source

    source = load_source(zoo_recipe)
    return export_model(
        source,
        "zoo_sam",
        tmp_path_factory.mktemp("store") / "models",
        tasks=list(ZOO_TASKS),
        presets=ZOO_TASKS,
        scores={"ct_liver": {"split": "test", "dice": 0.5, "cases": 6}},
        report=source.report,
        force=True,  # a fixture's merge, not gated
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding a copy of the embedded demo model, for a test module's server (tests never serve the
    repository's own folder: a test may break its copy)."""
    root = tmp_path_factory.mktemp("store") / "models"
    shutil.copytree(Path(__file__).parent.parent / "models" / "demo", root / "demo")
    return root


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if not (ORTHANC.is_file() and PLUGIN.exists()):
        pytest.fail(f"Orthanc and its DICOMweb plugin are not installed; run: {INSTALL}")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "medsamix-tests",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {PACS_USER: PACS_PASSWORD},
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    with open(root / "orthanc.log", "wb") as log:
        process = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    running = Orthanc(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if running.rest.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start; see {root / 'orthanc.log'}")
            time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


SLICES = 12


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    from search.zoo import ct_volume

    image, label = ct_volume(seed=901, depth=SLICES)
    return np.rint(image).astype(np.int16), label


@pytest.fixture(scope="module")
def series(volume) -> list[bytes]:
    """The instances in slice order (index z = position order)."""
    return [files.to_bytes(ds) for ds in files.ct_series(volume[0], spacing=2.0)]

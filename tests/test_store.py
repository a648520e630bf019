"""The model store: a good export loads and computes what torch computes; a tampered, incomplete or hand-edited
model is refused in one sentence; the service's modules never import torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.export import build_model, load_source, relative_error
from service import imaging
from service.runtime import PROVIDER_ORDER, available_providers
from service.store import ModelInfo, ModelStore, StoreError


def test_service_modules_never_import_torch() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import service\n"
        "for module in pkgutil.iter_modules(service.__path__):\n"
        "    importlib.import_module('service.' + module.name)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'segment_anything', 'search') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture
def store(tmp_path: Path, exported_zoo: Path) -> ModelStore:
    """A private copy of the exported zoo model (as `zoo_sam`, also copied as `demo`) to tamper with."""
    root = tmp_path / "models"
    shutil.copytree(exported_zoo, root / "zoo_sam")
    shutil.copytree(exported_zoo, root / "demo")
    manifest = json.loads((root / "demo" / "manifest.json").read_text())
    (root / "demo" / "manifest.json").write_text(json.dumps({**manifest, "name": "demo"}))
    (root / ".demo.x1y2.tmp").mkdir()  # an export in progress: not a model
    return ModelStore(root)


def test_lists_models_with_the_default_flagged(store: ModelStore) -> None:
    tasks = ("ct_liver", "mr_grey_matter")
    assert store.models() == [ModelInfo("demo", "1", tasks, True), ModelInfo("zoo_sam", "1", tasks, False)]
    assert [m.default for m in ModelStore(store.root, default="zoo_sam").models()] == [False, True]


def test_a_good_export_loads_and_reproduces_torch(store: ModelStore, zoo_recipe: Path) -> None:
    model = store.load("zoo_sam", providers=["CPUExecutionProvider"])
    assert model.manifest["name"] == "zoo_sam" and model.encoder.get_providers() == ["CPUExecutionProvider"]
    assert len(model.manifest_sha256) == 64
    assert store.load().name == "demo"
    source = load_source(zoo_recipe)
    sam = build_model(source.state, source.arch)
    geometry = imaging.get_geometry(model.manifest["preprocessing"]["geometry"])
    image = np.random.default_rng(2).integers(0, 256, (70, 128), dtype=np.uint8)
    model_input, frame = geometry.prepare(image, 128)
    embedding = model.encoder.run(None, {"image": model_input[None], "resized_hw": np.array([frame.resized])})[0]
    boxes = np.array([[10.0, 10.0, 60.0, 40.0]], np.float32)
    corners = {"point_coords": boxes.reshape(1, 2, 2), "point_labels": np.array([[2, 3]], np.float32)}
    logits, iou = model.decoder.run(None, {"image_embeddings": embedding, **corners})
    with torch.no_grad():
        expected = sam.image_encoder(torch.from_numpy(imaging.encoder_input(model_input, frame, "sam"))[None])
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.from_numpy(boxes), masks=None)
        expected_logits, expected_iou = sam.mask_decoder(
            expected, sam.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
    assert relative_error(embedding, expected.numpy()) < 1e-4
    assert relative_error(logits, expected_logits[:, 0].numpy()) < 1e-4
    assert abs(float(iou[0]) - float(expected_iou[0, 0])) < 1e-3


def test_providers_come_in_preference_order() -> None:
    providers = available_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers == sorted(providers, key=PROVIDER_ORDER.index)


def test_one_changed_byte_is_refused(store: ModelStore) -> None:
    path = store.root / "zoo_sam" / "encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"^model 'zoo_sam' was modified: the sha256 of encoder.onnx differs"):
        store.load("zoo_sam")
    store.load("demo")  # the other model is untouched


def test_a_missing_or_unlisted_file_is_refused(store: ModelStore) -> None:
    (store.root / "zoo_sam" / "decoder.onnx").unlink()
    with pytest.raises(StoreError, match="incomplete: decoder.onnx is listed in its manifest but missing"):
        store.load("zoo_sam")
    (store.root / "demo" / "report" / "notes.txt").write_text("added later")
    with pytest.raises(StoreError, match="holds report/notes.txt, which its manifest does not list"):
        store.load("demo")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["preprocessing"].update(normalization="medsam"), "disagrees with its encoder"),
        (lambda m: m.update(tasks=["mr_grey_matter", "ct_liver"]), "disagrees with its encoder"),
        (lambda m: m.update(tasks=["ct_liver"]), "intensity preset is given for 'mr_grey_matter', which is not one of"),
        (lambda m: m["files"].update({"encoder.onnx": "0" * 64}), "the sha256 of encoder.onnx differs"),
        (lambda m: m["files"].update({"../escape": "0" * 64}), "expected relative paths inside the model folder"),
        (lambda m: m["preprocessing"].update(geometry="crop"), "unknown geometry 'crop': expected one of sam, medsam"),
        (lambda m: m.pop("image_size"), "the manifest of model 'zoo_sam' lacks the field 'image_size'"),
        (lambda m: m.update(embedding_shape="32x16x16"), "field 'embedding_shape' should be of type list, found str"),
        (
            lambda m: m.update(format_version=1),
            "has format_version 1; this service reads format_version 2, so re-export the model",
        ),
        (lambda m: m.pop("scored_prompts"), "lacks the field 'scored_prompts'"),
        (lambda m: m.update(scored_prompts=["box", "mask"]), "scored_prompts should list distinct prompt kinds out"),
        (lambda m: m.update(name="other"), "in folder 'zoo_sam' names the model 'other'"),
        (lambda m: m["scores"].update(kidney={"dice": 1.0}), r"scores\['kidney'\] should be an object with a 'split'"),
    ],
)
def test_a_hand_edited_manifest_is_refused(store: ModelStore, edit, message: str) -> None:
    path = store.root / "zoo_sam" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message):
        store.load("zoo_sam")


def test_unreadable_manifests_and_unknown_names_are_one_sentence(store: ModelStore, tmp_path: Path) -> None:
    (store.root / "zoo_sam" / "manifest.json").write_text('{"name": "zoo_sam",')
    with pytest.raises(StoreError, match=r"the manifest of model 'zoo_sam' is not valid JSON \(Expecting"):
        store.load("zoo_sam")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.models()  # a broken model is reported, not silently left out
    with pytest.raises(StoreError, match=r"there is no model 'liver' in .*; the models there are: demo, zoo_sam"):
        store.load("liver")
    (store.root / "empty").mkdir()
    with pytest.raises(StoreError, match="model 'empty' has no manifest.json"):
        store.load("empty")
    with pytest.raises(StoreError, match="no model was named and the default 'demo' is not in"):
        ModelStore(tmp_path / "nowhere").load()
    assert ModelStore(tmp_path / "nowhere").models() == []


def test_one_graph_can_be_opened_and_the_encoder_carries_the_pinned_check(store: ModelStore) -> None:
    decoder_only = store.load("zoo_sam", providers=["CPUExecutionProvider"], graphs=("decoder",))
    assert decoder_only.encoder is None and decoder_only.decoder is not None
    assert store.load("zoo_sam", graphs=("encoder",)).decoder is None
    path = store.root / "zoo_sam" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocessing"]["normalization"] = "medsam"
    path.write_text(json.dumps(manifest))
    store.load("zoo_sam", graphs=("decoder",))  # the service's decoder process leaves this check to its encoder's
    with pytest.raises(StoreError, match="disagrees with its encoder"):
        store.load("zoo_sam", graphs=("encoder",))
    (store.root / "zoo_sam" / "decoder.onnx").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="the sha256 of decoder.onnx differs"):
        store.load("zoo_sam", graphs=("encoder",))  # every file is checked whichever graphs are opened
    with pytest.raises(ValueError, match="graphs should name some of encoder, decoder"):
        store.load("zoo_sam", graphs=("mask",))

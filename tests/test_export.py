"""`medsamix export`: onnxruntime (CPU) against torch and segment_anything on the same inputs, the manifest, and the
folder's atomicity. float32 parity: encoder relative error < 1e-4, masks agree on >= 99.5% of pixels at image
resolution, IoU predictions within 1e-3."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from segment_anything import SamPredictor

from search.architectures import build_sam, get_architecture
from search.data import load_task, mask_boxes
from search.errors import ExportError
from search.export import (
    GRAPH_NORMALIZATIONS,
    build_model,
    export_decoder,
    export_encoder,
    export_model,
    load_source,
    relative_error,
)
from search.recipe import load_recipe
from search.zoo import MODELS, task_specs
from service import imaging
from service.cache import Embedding
from service.manifest import FORMAT_VERSION, METADATA_KEY, check_manifest, pinned
from service.segmenter import Served
from service.store import LoadedModel
from tests.cli_runs import medsamix, one_line_error
from tests.conftest import ZOO, ZOO_TASKS, write_sam

CPU = ["CPUExecutionProvider"]
ENCODER_TOLERANCE = 1e-4
MASK_AGREEMENT = 0.995
IOU_TOLERANCE = 1e-3


def cropped_slices(task_name: str, count: int = 2) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` test slices of a zoo task as (HxW uint8 image, HxW bool mask, Nx4 boxes), cut to non-square shapes
    (portrait, then landscape), so that the `sam` geometry pads them and the padding matters."""
    _, test, _ = load_task(task_specs(ZOO)[task_name])
    cuts = [np.s_[:, 12:108], np.s_[20:116, :]]
    found = []
    for piece in test.slices:
        cut = cuts[len(found) % 2]
        image, mask = piece.image[cut], piece.mask[cut]
        boxes = mask_boxes(mask)
        if len(boxes) and image.shape[0] != image.shape[1]:
            found.append((image, mask, boxes))
        if len(found) == count:
            return found
    raise AssertionError(f"{task_name} has fewer than {count} usable slices")


def clicks(mask: np.ndarray, inside: bool, count: int) -> np.ndarray:
    """`count` (x, y) pixel positions spread over the pixels inside (or outside) `mask`, in raster order."""
    rows, cols = np.nonzero(mask if inside else ~mask)
    picked = np.linspace(0, len(rows) - 1, count + 2).round().astype(int)[1:-1]
    return np.stack([cols[picked], rows[picked]], axis=1).astype(np.float64)


def prompts_of(kind: str, mask: np.ndarray, boxes: np.ndarray) -> list[imaging.SparsePrompt]:
    """A slice's prompts of one kind: every box alone; clicks alone (two foreground, one background); each box with
    a foreground and a background click; or all three at once (decoded together, grouped by their number of
    points, a box alone sharing its group with a single click)."""
    fg, bg = clicks(mask, True, 2), clicks(mask, False, 1)
    by_kind = {
        "box": [imaging.SparsePrompt(box) for box in boxes],
        "clicks": [imaging.SparsePrompt(None, fg, bg), imaging.SparsePrompt(None, fg[:1])],
        "box and clicks": [imaging.SparsePrompt(box, fg[:1], bg) for box in boxes],
    }
    return by_kind[kind] if kind in by_kind else [p for k in by_kind for p in by_kind[k]]


def run_onnx(folder: Path, geometry: imaging.Geometry, slices, size: int):
    """Per slice of (image, prompts): (embedding (1,C,h,w), IoU, image-resolution masks) from the exported graphs,
    the decoder through the service's own `Served.decode`; the encoder runs once on the whole batch (its batch axis
    is dynamic)."""
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=CPU)
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=CPU)
    served = Served(LoadedModel(folder.name, {}, "", encoder, decoder), geometry, size, (), {})
    prepared = [geometry.prepare(image, size) for image, _ in slices]
    images = np.stack([model_input for model_input, _ in prepared])
    resized = np.array([frame.resized for _, frame in prepared], np.int64)
    embeddings = encoder.run(None, {"image": images, "resized_hw": resized})[0]
    results = []
    for i, ((_, prompts), (_, frame)) in enumerate(zip(slices, prepared, strict=True)):
        masks, iou = served.decode(Embedding(embeddings[i], frame), prompts)
        results.append((embeddings[i : i + 1], iou, masks))
    return results


def boxes_alone(slices) -> list[tuple[np.ndarray, list[imaging.SparsePrompt]]]:
    """(image, boxes) pairs as (image, one box prompt per box)."""
    return [(image, [imaging.SparsePrompt(box) for box in boxes]) for image, boxes in slices]


def test_every_normalization_has_an_in_graph_twin() -> None:
    assert set(GRAPH_NORMALIZATIONS) == set(imaging.NORMALIZATIONS)


@pytest.mark.parametrize("kind", ["box", "clicks", "box and clicks", "mixed"])
def test_sam_model_matches_segment_anything_predictor(zoo_recipe: Path, exported_zoo: Path, kind: str) -> None:
    """The exported `sam` model, decoded as the service decodes, against segment_anything's own SamPredictor (its
    resize, normalisation, padding, encoder, prompt encoder with its padding point, decoder and mask
    post-processing) on padded non-square CT slices, for boxes, clicks and both."""
    source = load_source(zoo_recipe)
    sam = build_model(source.state, source.arch)
    predictor = SamPredictor(sam)
    slices = [(image, prompts_of(kind, mask, boxes)) for image, mask, boxes in cropped_slices("ct_liver")]
    geometry = imaging.get_geometry("sam")
    segmented = False
    for (image, prompts), (embedding, iou, masks) in zip(
        slices, run_onnx(exported_zoo, geometry, slices, 128), strict=True
    ):
        predictor.set_image(np.repeat(image[:, :, None], 3, axis=2))
        assert relative_error(embedding, predictor.features.numpy()) < ENCODER_TOLERANCE
        assert masks.shape == (len(prompts), *image.shape)
        for prompt, mask, score in zip(prompts, masks, iou, strict=True):
            points = np.concatenate([prompt.foreground, prompt.background])
            labels = np.array([1] * len(prompt.foreground) + [0] * len(prompt.background))
            expected, expected_iou, _ = predictor.predict(
                point_coords=points if len(points) else None,
                point_labels=labels if len(points) else None,
                box=prompt.box,
                multimask_output=False,
            )
            assert (mask == expected[0]).mean() >= MASK_AGREEMENT
            assert abs(score - expected_iou[0]) < IOU_TOLERANCE
            segmented = segmented or expected.any()
    assert segmented  # not only empty masks that would agree whatever the prompt


@pytest.fixture(scope="module")
def exported_medsam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MR specialist checkpoint exported through the command line, under MedSAM's convention."""
    out = tmp_path_factory.mktemp("cli") / "models"
    result = medsamix(
        "export", str(ZOO / "mr_specialist_tiny.pth"), "--name", "mr", "--out", str(out),
        "--normalization", "medsam", "--task", "mr_grey_matter=mr",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'mr'}" in result.stdout
    return out / "mr"


def test_medsam_model_matches_torch(exported_medsam: Path) -> None:
    """`medsam` min-max normalisation in the graph equals `imaging.encoder_input` (min and max of the resized
    region only, padding 0 afterwards) for padded (`sam` geometry) and stretched (`medsam`) frames; the decoder
    matches segment_anything's stock MaskDecoder."""
    manifest = json.loads((exported_medsam / "manifest.json").read_text())
    assert manifest["preprocessing"] == {
        "geometry": "medsam",
        "normalization": "medsam",
        "intensity_presets": {"mr_grey_matter": "mr"},
    }
    assert manifest["recipe"] is None and manifest["tasks"] == ["mr_grey_matter"]
    source = load_source(ZOO / "mr_specialist_tiny.pth", "medsam")
    sam = build_model(source.state, source.arch)
    # Lifted to 60..187: with a darkest pixel above 0, a min-max that also saw the zero padding would differ.
    slices = [(image // 2 + 60, boxes) for image, _, boxes in cropped_slices("mr_grey_matter")]
    for name in ("sam", "medsam"):
        geometry = imaging.get_geometry(name)
        for (image, boxes), (embedding, iou, masks) in zip(
            slices, run_onnx(exported_medsam, geometry, boxes_alone(slices), 128), strict=True
        ):
            model_input, frame = geometry.prepare(image, 128)
            assert (name == "sam") == (frame.resized != (128, 128))
            encoder_input = torch.from_numpy(imaging.encoder_input(model_input, frame, "medsam"))[None]
            with torch.no_grad():
                expected_embedding = sam.image_encoder(encoder_input)
                model_boxes = torch.as_tensor(geometry.box_to_model(boxes, frame), dtype=torch.float32)
                sparse, dense = sam.prompt_encoder(points=None, boxes=model_boxes, masks=None)
                expected_logits, expected_iou = sam.mask_decoder(
                    expected_embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
                )
            assert relative_error(embedding, expected_embedding.numpy()) < ENCODER_TOLERANCE
            expected = geometry.mask_to_image(expected_logits[:, 0].numpy(), frame, 128)
            assert expected.any() and (masks == expected).mean() >= MASK_AGREEMENT
            assert np.abs(iou - expected_iou[:, 0].numpy()).max() < IOU_TOLERANCE


def predicted_and_real_iou(folder: Path, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """The predicted IoU of an exported model, decoded as the service decodes, and the real IoU of its mask with the
    ground truth, on every single-box held-out slice of the zoo's five tasks."""
    predicted, real = [], []
    for spec in task_specs(ZOO).values():
        _, test, _ = load_task(spec)
        pieces = [s for s in test.slices if len(s.boxes) == 1]
        slices = [(s.image, [imaging.SparsePrompt(s.boxes[0])]) for s in pieces]
        for piece, (_, iou, masks) in zip(
            pieces, run_onnx(folder, imaging.get_geometry(convention), slices, 128), strict=True
        ):
            predicted.append(float(iou[0]))
            real.append((masks[0] & piece.mask).sum() / (masks[0] | piece.mask).sum())
    return np.array(predicted), np.array(real)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_a_zoo_models_predicted_iou_lies_in_0_1_and_follows_the_real_iou(model: str, tmp_path: Path) -> None:
    """The IoU the service answers with is the model's estimate of how well its mask fits (the zoo fits SAM's IoU
    head): in [0, 1] and following the real IoU (Pearson r) on held-out slices of tasks in and outside its domain."""
    file, convention, _ = MODELS[model]
    folder = export_model(load_source(ZOO / file, convention), model, tmp_path)
    predicted, real = predicted_and_real_iou(folder, convention)
    assert len(predicted) > 100
    assert predicted.min() >= 0.0 and predicted.max() <= 1.0, (predicted.min(), predicted.max())
    assert np.corrcoef(predicted, real)[0, 1] > 0.5


@pytest.mark.slow
def test_the_demo_models_predicted_iou_lies_in_0_1() -> None:
    """The demo answers an IoU in [0, 1] (it answered about -0.06 before the zoo's IoU heads were fitted), near its
    masks' mean real IoU. Its merged head follows the real IoU only weakly (benchmarks/RESULTS.md)."""
    predicted, real = predicted_and_real_iou(ZOO.parent.parent / "models" / "demo", "sam")
    assert predicted.min() >= 0.0 and predicted.max() <= 1.0, (predicted.min(), predicted.max())
    assert abs(predicted.mean() - real.mean()) < 0.15, (predicted.mean(), real.mean())


def test_manifest_lists_every_file_with_its_sha256(zoo_recipe: Path, exported_zoo: Path) -> None:
    manifest = json.loads((exported_zoo / "manifest.json").read_text())
    check_manifest(manifest, "manifest")
    files = sorted(p.relative_to(exported_zoo).as_posix() for p in exported_zoo.rglob("*") if p.is_file())
    assert files == [
        "decoder.onnx", "encoder.onnx", "manifest.json", "recipe.yaml", "report/pareto.png", "report/report.md",
    ]  # fmt: skip
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    for path, digest in manifest["files"].items():
        assert hashlib.sha256((exported_zoo / path).read_bytes()).hexdigest() == digest
    recipe = load_recipe(zoo_recipe)
    assert load_recipe(exported_zoo / "recipe.yaml") == recipe
    assert manifest["recipe"] == recipe.model_dump(mode="json", exclude_none=True)
    assert [i["sha256"] for i in manifest["inputs"]] == [m.sha256 for m in recipe.inputs]
    assert manifest["name"] == "zoo_sam" and manifest["version"] == "1"
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    assert manifest["architecture"] == "tiny" and manifest["precision"] == "float32"
    assert manifest["image_size"] == 128 and manifest["embedding_shape"] == [32, 16, 16]
    assert manifest["tasks"] == list(ZOO_TASKS)
    assert manifest["preprocessing"] == {"geometry": "sam", "normalization": "sam", "intensity_presets": ZOO_TASKS}
    assert manifest["scores"] == {"ct_liver": {"split": "test", "dice": 0.5, "cases": 6}}
    assert manifest["scored_prompts"] == ["box"]  # what the evaluator scores with; the decoder takes clicks too
    assert manifest["onnx"]["encoder"]["inputs"] == [
        {"name": "image", "dtype": "uint8", "shape": ["batch", 128, 128, 3]},
        {"name": "resized_hw", "dtype": "int64", "shape": ["batch", 2]},
    ]
    assert manifest["onnx"]["encoder"]["outputs"] == [
        {"name": "image_embeddings", "dtype": "float32", "shape": ["batch", 32, 16, 16]}
    ]
    assert manifest["onnx"]["decoder"]["inputs"] == [
        {"name": "image_embeddings", "dtype": "float32", "shape": [1, 32, 16, 16]},
        {"name": "point_coords", "dtype": "float32", "shape": ["prompts", "points", 2]},
        {"name": "point_labels", "dtype": "float32", "shape": ["prompts", "points"]},
    ]
    assert [o["shape"] for o in manifest["onnx"]["decoder"]["outputs"]] == [["prompts", 64, 64], ["prompts"]]
    encoder = onnx.load(exported_zoo / "encoder.onnx", load_external_data=False)
    assert {p.key: p.value for p in encoder.metadata_props}[METADATA_KEY] == pinned(manifest)
    assert min(o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.slow
def test_an_exported_recipe_replays_from_where_it_lies(tmp_path: Path, tiny_base) -> None:
    from search.recipe import InputModel, save_recipe, uniform_recipe
    from service.manifest import sha256_file
    from tests.conftest import fine_tune_of

    inputs, run = tmp_path / "inputs", tmp_path / "runs" / "deep" / "search"
    inputs.mkdir()
    for i, name in enumerate(("sam", "ft")):
        write_sam(fine_tune_of(tiny_base, 50 + i), inputs / f"{name}.pth")
    made = [
        InputModel(name=n, path=f"../../../inputs/{n}.pth", sha256=sha256_file(inputs / f"{n}.pth"))
        for n in ("sam", "ft")
    ]
    save_recipe(uniform_recipe(made[0], made[1:], get_architecture("tiny"), "ties"), run / "recipe.yaml")
    model = export_model(load_source(run / "recipe.yaml"), "relocated", tmp_path / "models", force=True)
    assert [m.path for m in load_recipe(model / "recipe.yaml").inputs] == [
        "../../inputs/sam.pth",
        "../../inputs/ft.pth",
    ]
    digests = []
    for recipe, out in ((run / "recipe.yaml", "a.pth"), (model / "recipe.yaml", "b.pth")):
        done = medsamix("merge", str(recipe), "-o", str(tmp_path / out), "--device", "cpu")
        assert done.returncode == 0, done.stderr
        digests.append(hashlib.sha256((tmp_path / out).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    # The replay is checked by the recorded sha256s: a changed input is refused.
    write_sam(fine_tune_of(tiny_base, 99), inputs / "ft.pth")
    assert "differs from the recipe's" in one_line_error(medsamix("merge", str(model / "recipe.yaml"), "-o", "c.pth"))


@pytest.mark.slow
def test_fp16_export_runs_on_onnxruntime_cpu(tmp_path: Path, tiny_base) -> None:
    """float16 weights (for GPU serving): the graphs hold float16 weights, keep the float32 interface, and run on
    onnxruntime's CPU provider close to the float32 torch model (a looser bound than the float32 contract)."""
    write_sam(tiny_base, tmp_path / "sam.pth")
    source = load_source(tmp_path / "sam.pth")
    folder = export_model(source, "half", tmp_path / "models", fp16=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == "float16"
    assert manifest["onnx"]["encoder"]["outputs"][0]["dtype"] == "float32"
    weights = onnx.load(folder / "encoder.onnx").graph.initializer
    assert {w.name for w in weights if w.data_type == onnx.TensorProto.FLOAT16 and len(w.dims) >= 2}
    sam = build_model(source.state, source.arch)
    image = np.random.default_rng(1).integers(0, 256, (96, 128), dtype=np.uint8)
    boxes = np.array([[10.0, 20.0, 70.0, 80.0], [40.0, 5.0, 120.0, 60.0]])
    geometry = imaging.get_geometry("sam")
    model_input, frame = geometry.prepare(image, 128)
    ((embedding, _, _),) = run_onnx(folder, geometry, boxes_alone([(image, boxes)]), 128)
    with torch.no_grad():
        expected = sam.image_encoder(torch.from_numpy(imaging.encoder_input(model_input, frame, "sam"))[None])
    assert relative_error(embedding, expected.numpy()) < 2e-2


def test_export_refuses_bad_requests_before_any_work(tmp_path: Path, tiny_base) -> None:
    write_sam(tiny_base, tmp_path / "sam.pth")
    source = load_source(tmp_path / "sam.pth")
    (tmp_path / "models" / "taken").mkdir(parents=True)
    with pytest.raises(ExportError, match="already exists; choose another name or pass --overwrite"):
        export_model(source, "taken", tmp_path / "models")
    with pytest.raises(ExportError, match="model name '../up' should be"):
        export_model(source, "../up", tmp_path / "models")
    with pytest.raises(ExportError, match="an intensity preset is given for 'ct_liver', which is not one of the"):
        export_model(source, "m", tmp_path / "models", presets={"ct_liver": "ct_abdomen"})
    with pytest.raises(ExportError, match=r"scores\['ct_liver'\] should be an object with a 'split'"):
        export_model(source, "m", tmp_path / "models", tasks=["ct_liver"], scores={"ct_liver": {"dice": 0.9}})
    with pytest.raises(ExportError, match="unknown geometry 'crop'"):
        export_model(source, "m", tmp_path / "models", geometry="crop")
    with pytest.raises(ExportError, match="unknown normalization 'imagenet'"):
        load_source(tmp_path / "sam.pth", "imagenet")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["taken"]


@pytest.fixture
def fake_graphs(monkeypatch: pytest.MonkeyPatch):
    """Replace the (slow) ONNX export and onnxruntime check with stubs writing small files, to test the folder
    logic; `fail["decoder"] = True` makes the decoder step fail after the encoder was written."""
    import search.export as export

    fail = {"decoder": False}

    def encoder(model, normalization, path, metadata=None) -> None:
        path.write_bytes(b"encoder")

    def decoder(model, path) -> None:
        if fail["decoder"]:
            raise OSError("No space left on device")
        path.write_bytes(b"decoder")

    def check(folder, reference, normalization, tolerance):
        port = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1]}], "outputs": [{"name": "y"}]}
        return {"encoder": port, "decoder": port}

    monkeypatch.setattr(export, "export_encoder", encoder)
    monkeypatch.setattr(export, "export_decoder", decoder)
    monkeypatch.setattr(export, "check_with_onnxruntime", check)
    return fail


def test_a_failed_export_leaves_nothing_and_keeps_the_old_model(tmp_path: Path, tiny_base, fake_graphs) -> None:
    write_sam(tiny_base, tmp_path / "sam.pth")
    source = load_source(tmp_path / "sam.pth")
    models = tmp_path / "models"
    fake_graphs["decoder"] = True
    with pytest.raises(OSError, match="No space left"):
        export_model(source, "m", models)
    assert list(models.iterdir()) == []  # neither the model nor its temporary folder
    fake_graphs["decoder"] = False
    first = export_model(source, "m", models, version="1")
    old = {p.name: p.read_bytes() for p in first.iterdir()}
    fake_graphs["decoder"] = True
    with pytest.raises(OSError, match="No space left"):
        export_model(source, "m", models, overwrite=True, version="2")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == old
    fake_graphs["decoder"] = False
    export_model(source, "m", models, overwrite=True, version="2")
    assert json.loads((models / "m" / "manifest.json").read_text())["version"] == "2"
    assert [p.name for p in models.iterdir()] == ["m"]  # the old folder is gone, no temporary left


def test_overwrite_where_folders_cannot_be_exchanged(
    tmp_path: Path, tiny_base, fake_graphs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without renameat2 (not Linux) the old folder is moved aside, then deleted once the new one is in place."""
    import search.files

    exchanges = []
    monkeypatch.setattr(search.files, "_exchange", lambda a, b: exchanges.append((a, b)) or False)
    write_sam(tiny_base, tmp_path / "sam.pth")
    source = load_source(tmp_path / "sam.pth")
    export_model(source, "m", tmp_path / "models", version="1")
    export_model(source, "m", tmp_path / "models", overwrite=True, version="2")
    assert len(exchanges) == 1
    assert json.loads((tmp_path / "models" / "m" / "manifest.json").read_text())["version"] == "2"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]


@pytest.mark.slow
def test_cli_export_errors_are_one_line(tmp_path: Path, exported_medsam: Path, zoo_recipe: Path) -> None:
    out = str(exported_medsam.parent)
    checkpoint = str(ZOO / "mr_specialist_tiny.pth")
    line = one_line_error(medsamix("export", checkpoint, "--name", "mr", "--out", out))
    assert "already exists; choose another name or pass --overwrite" in line
    line = one_line_error(medsamix("export", checkpoint, "--name", "x", "--out", out, "--task", "mr=t2"))
    assert "task 'mr': unknown intensity preset 't2': expected one of ct_abdomen" in line
    line = one_line_error(medsamix("export", str(zoo_recipe), "--name", "x", "--normalization", "medsam"))
    assert "fixes the normalization 'sam' but 'medsam' was asked for" in line
    tasks = ["--tasks", str(ZOO / "search-demo.yaml"), "--task", "ct_liver=ct_abdomen"]
    line = one_line_error(medsamix("export", str(zoo_recipe), "--name", "x", "--out", out, *tasks))
    assert "--tasks FILE names the tasks the model serves" in line and "give one of the two" in line
    assert sorted(p.name for p in exported_medsam.parent.iterdir()) == ["mr"]


@pytest.mark.slow
def test_vit_b_graphs_match_torch(tmp_path: Path) -> None:
    """Real size: random ViT-B weights, one padded non-square image, both graphs against torch (float32)."""
    torch.manual_seed(0)
    sam = build_sam("vit_b")
    sam.requires_grad_(False)
    export_encoder(sam, "sam", tmp_path / "encoder.onnx")
    export_decoder(sam, tmp_path / "decoder.onnx")
    size = get_architecture("vit_b").image_size
    image = np.random.default_rng(0).integers(0, 256, (600, 800), dtype=np.uint8)
    boxes = np.array([[100.0, 50.0, 400.0, 300.0], [350.0, 200.0, 790.0, 590.0], [0.0, 0.0, 800.0, 600.0]])
    geometry = imaging.get_geometry("sam")
    ((embedding, iou, masks),) = run_onnx(tmp_path, geometry, boxes_alone([(image, boxes)]), size)
    model_input, frame = geometry.prepare(image, size)
    with torch.no_grad():
        expected_embedding = sam.image_encoder(torch.from_numpy(imaging.encoder_input(model_input, frame, "sam"))[None])
        model_boxes = torch.as_tensor(geometry.box_to_model(boxes, frame), dtype=torch.float32)
        sparse, dense = sam.prompt_encoder(points=None, boxes=model_boxes, masks=None)
        logits, expected_iou = sam.mask_decoder(
            expected_embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
        )
    assert relative_error(embedding, expected_embedding.numpy()) < ENCODER_TOLERANCE
    expected = geometry.mask_to_image(logits[:, 0].numpy(), frame, size)
    assert (masks == expected).mean() >= MASK_AGREEMENT
    assert np.abs(iou - expected_iou[:, 0].numpy()).max() < IOU_TOLERANCE

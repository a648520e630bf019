"""Export a merged (or any) SAM to the model store: `models/<name>/` with two ONNX graphs and a manifest.

As in `segment_anything/utils/onnx.py`, each graph is a thin torch module without data-dependent control flow around
segment_anything's own modules, exported with `torch.onnx.export` (the torch.export-based exporter, opset 18, its
native set), then run once with onnxruntime and compared with torch before anything is published.

**encoder.onnx** — inputs `image`: (B, S, S, 3) uint8, a geometry's model input (`Geometry.prepare`: resized
Pillow-exactly and zero-padded bottom/right; S = image_size), and `resized_hw`: (B, 2) int64, that image's
`Frame.resized` (h, w). Output `image_embeddings`: (B, C, h, w) float32. The normalisation runs inside the graph and
treats padding as `service.imaging.encoder_input` does: only the resized region is normalised (for `medsam` the min
and max are the region's), the rest is 0 after normalising. B is dynamic.

**decoder.onnx** — SAM's own ONNX prompt convention (`segment_anything.utils.onnx.SamOnnxModel`): inputs
`image_embeddings`: (1, C, h, w) float32, one image's embedding, `point_coords`: (N, P, 2) float32 (x, y) in model
coordinates and `point_labels`: (N, P) float32 `service.imaging.PointLabel`s (1 foreground click, 0 background click,
2 and 3 a box's top-left and bottom-right corners, -1 a padding point, which stands where there is no box exactly as
`SamPredictor` adds it); `imaging.SparsePrompt.to_model` builds one row. Outputs `low_res_logits`: (N, 4h, 4w)
float32 (to the image with `Geometry.mask_to_image`) and `iou_predictions`: (N,) float32. N and P are dynamic.
Single-mask output, computed by `search.evaluate.decode_boxes`, the function the search scores merges with.

`fp16=True` stores the image encoder's and mask decoder's weights as float16 (for GPU serving); the inputs, the
outputs and the prompt encoder stay float32, so a caller sees the same interface. Parity with torch is a float32
contract; float16 graphs are checked against the float32 torch model with a looser tolerance.

`int8` (a `search.quantize.Int8Plan`) replaces the float32 encoder with its statically quantized (QDQ) twin, for CPU
serving, calibrated on the tasks' calibration slices; same inputs and outputs, the decoder stays float32. Its encoder
is exported with `search.attention`'s `query_blocks` attention (the stock arithmetic a block of query rows at a
time, checked against the stock torch model like any export): onnxruntime's CPU provider then never holds a global
block's whole (HW × HW) logits. It is published only if its held-out Dice stays within the plan's tolerance of that
float32 encoder's (or it is forced); the comparison is the manifest's `quantization.gate`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from segment_anything.modeling import PromptEncoder, Sam

from search.architectures import SamArchitecture, build_sam
from search.attention import QUERY_ROWS, use_fused_attention
from search.checkpoints import DROPPED_KEYS, load_checkpoint
from search.data import DataSpec
from search.errors import ExportError, MedSAMixWarning
from search.evaluate import SCORED_PROMPTS, decode_boxes
from search.files import atomic_write_dir
from search.gate import quality_gate
from search.gelu import use_fusable_gelu
from search.merge.engine import load_recipe_inputs
from search.quantize import QUANTIZED_OP_TYPES, Int8Plan, int8_gate, quantize_encoder
from search.recipe import Recipe, load_recipe, recipe_yaml
from service import imaging
from service.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_KEY,
    NAME_PATTERN,
    RECIPE_FILE,
    REPORT_DIR,
    StoreError,
    check_manifest,
    check_tasks,
    folder_files,
    pinned,
    sha256_file,
)
from service.runtime import create_session

OPSET = 18
ENCODER_INPUTS = ("image", "resized_hw")
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("low_res_logits", "iou_predictions")
RECIPE_SUFFIXES = (".yaml", ".yml")
REPORT_PATTERNS = ("*.md", "*.png")
ORT_DTYPES = {"float": "float32", "double": "float64"}  # onnxruntime's type names -> numpy's (others agree)
# Largest relative error (max |ort - torch| / max |torch|) the export's own onnxruntime run accepts, per precision;
# the tests hold float32 graphs to 1e-4. For int8 it is only a bound on breakage: the check's random-noise image lies
# outside the calibrated activation ranges (0.18 on the demo model); on real images the Dice gate decides.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.int8: 0.5}


# --------------------------------------------------------------------------------------------------------------
# The graphs.
# --------------------------------------------------------------------------------------------------------------


def _sam_normalize(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(imaging.PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(imaging.PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _medsam_normalize(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    low = torch.where(valid, x, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    high = torch.where(valid, x, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / torch.clamp(high - low, min=1e-8)


# The in-graph twins of `imaging.NORMALIZATIONS` (same names; tests compare each with its numpy original).
# Each maps (B, 3, S, S) float32 values 0..255 and the (B, 1, S, S) bool mask of the resized region to float32.
GRAPH_NORMALIZATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sam": _sam_normalize,
    "medsam": _medsam_normalize,
}


class EncoderGraph(torch.nn.Module):
    """(B, S, S, 3) uint8 model inputs + (B, 2) int64 resized (h, w) -> (B, C, h, w) float32 image embeddings."""

    def __init__(self, sam: Sam, normalization: str) -> None:
        super().__init__()
        imaging.get_normalization(normalization)  # an unknown name fails listing the known ones
        self.encoder = sam.image_encoder
        self.normalize = GRAPH_NORMALIZATIONS[normalization]
        self.size = sam.image_encoder.img_size
        self.dtype = sam.image_encoder.patch_embed.proj.weight.dtype

    def forward(self, image: torch.Tensor, resized_hw: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        index = torch.arange(self.size, device=image.device)
        rows = index.view(1, -1, 1) < resized_hw[:, 0].view(-1, 1, 1)
        cols = index.view(1, 1, -1) < resized_hw[:, 1].view(-1, 1, 1)
        valid = (rows & cols).unsqueeze(1)
        x = torch.where(valid, self.normalize(x, valid), 0.0)
        return self.encoder(x.to(self.dtype)).to(torch.float32)


def embed_points(encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, P, 2) model-coordinate points and their (N, P) `PointLabel`s -> (N, P, C) sparse prompt embeddings,
    equal to `PromptEncoder`'s for the same clicks and box (its boolean-index assignments become multiplications
    by label masks, as in `SamOnnxModel._embed_points`, so the graph traces with P dynamic)."""
    embedding = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size)
    labels = labels.unsqueeze(-1)
    embedding = embedding * (labels != imaging.PointLabel.PADDING)
    embedding = embedding + encoder.not_a_point_embed.weight * (labels == imaging.PointLabel.PADDING)
    for label, point in enumerate(encoder.point_embeddings):  # background, foreground, box top-left, bottom-right
        embedding = embedding + point.weight * (labels == label)
    return embedding


class DecoderGraph(torch.nn.Module):
    """(1, C, h, w) float32 embedding + (N, P, 2) float32 model-coordinate points with (N, P) float32 labels ->
    (N, 4h, 4w) float32 low-res mask logits and (N,) float32 predicted IoU. The prompt encoder runs in float32
    whatever the decoder's dtype."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.dtype = sam.mask_decoder.iou_token.weight.dtype

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = point_coords.shape[0]
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        logits, iou = decode_boxes(
            self.mask_decoder,
            image_embeddings.to(self.dtype).expand(n, -1, -1, -1),
            self.prompt_encoder.get_dense_pe().to(self.dtype),
            sparse.to(self.dtype),
            dense.expand(n, -1, *self.prompt_encoder.image_embedding_size).to(self.dtype),
        )
        return logits.to(torch.float32), iou.to(torch.float32)


def build_model(state: Mapping[str, torch.Tensor], arch: SamArchitecture, fp16: bool = False) -> Sam:
    """A float32 SAM of `arch` holding `state`; with `fp16`, its image encoder and mask decoder in float16."""
    sam = build_sam(arch)
    loaded = sam.load_state_dict(dict(state), strict=False)  # checkpoints carry no pixel_mean/std: build_sam's stay
    missing = sorted(set(loaded.missing_keys) - set(DROPPED_KEYS))
    if missing or loaded.unexpected_keys:
        raise ExportError(
            f"the weights do not fit a {arch.name} SAM: missing {missing[:3]}, unexpected {loaded.unexpected_keys[:3]}"
        )
    sam.requires_grad_(False)
    if fp16:
        sam.image_encoder.half()
        sam.mask_decoder.half()
    return sam


def cpu_model(state: Mapping[str, torch.Tensor], arch: SamArchitecture) -> Sam:
    """The float32 model whose encoder an int8 export quantizes: `query_blocks` attention, so onnxruntime's CPU
    provider never holds a global block's whole logits, and GELUs its CPU provider fuses (module docstring)."""
    sam = build_model(state, arch)
    use_fused_attention(sam.image_encoder, "query_blocks")
    use_fusable_gelu(sam.image_encoder)
    return sam


def _export(
    module: torch.nn.Module, args: tuple, inputs: Sequence[str], outputs: Sequence[str], dynamic: dict
) -> onnx.ModelProto:
    """The checked ONNX model of `module` called on `args` (inputs named in order, `dynamic` as torch.export's)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names; failures still raise
        program = torch.onnx.export(
            module,
            args,
            input_names=list(inputs),
            output_names=list(outputs),
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None, "torch.onnx.export returns its ONNXProgram when dynamo=True"
    model = program.model_proto
    onnx.checker.check_model(model)
    return model


def export_encoder(sam: Sam, normalization: str, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `sam`'s image encoder with `normalization` inside as `path` (ONNX, dynamic batch)."""
    size = sam.image_encoder.img_size
    image = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    resized = torch.tensor([[size, size], [size, size]])
    batch = torch.export.Dim("batch", min=1)
    model = _export(
        EncoderGraph(sam, normalization).eval(),
        (image, resized),
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        {"image": {0: batch}, "resized_hw": {0: batch}},
    )
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def export_decoder(sam: Sam, path: Path) -> None:
    """Write `sam`'s prompt encoder (points and boxes) and mask decoder as `path` (ONNX, dynamic numbers of
    prompts and of points per prompt)."""
    grid = sam.prompt_encoder.image_embedding_size
    embedding = torch.zeros(1, sam.prompt_encoder.embed_dim, *grid)
    _, _, coords, labels = sample_inputs(sam.image_encoder.img_size)
    prompts, points = torch.export.Dim("prompts", min=1), torch.export.Dim("points", min=1)
    model = _export(
        DecoderGraph(sam).eval(),
        (embedding, torch.from_numpy(coords), torch.from_numpy(labels)),
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {"image_embeddings": None, "point_coords": {0: prompts, 1: points}, "point_labels": {0: prompts, 1: points}},
    )
    onnx.save(model, path)


# --------------------------------------------------------------------------------------------------------------
# The onnxruntime check run at export.
# --------------------------------------------------------------------------------------------------------------


def sample_inputs(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One random (1, S, S, 3) uint8 model input of a non-square image (3:4, padded on the right), its (1, 2)
    int64 resized (h, w), and three sparse prompts inside it as the decoder takes them, (3, 4, 2) float32 points
    and (3, 4) float32 labels: a box with two clicks, clicks alone (with the padding point), a box alone (with
    padding labels past its corners, so that every label is exercised): enough for the padding and the decoder."""
    rng = np.random.default_rng(seed)
    h, w = size, size * 3 // 4
    image = np.zeros((1, size, size, 3), np.uint8)
    image[0, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coords = np.array(
        [
            [[0.3, 0.3], [0.1, 0.45], [0.1, 0.1], [0.6, 0.5]],
            [[0.5, 0.6], [0.4, 0.8], [0.2, 0.2], [0.0, 0.0]],
            [[0.0, 0.0], [0.75, 1.0], [0.0, 0.0], [0.0, 0.0]],
        ],
        np.float32,
    )
    labels = np.array([[1, 0, 2, 3], [1, 1, 0, -1], [2, 3, -1, -1]], np.float32)
    return image, np.array([[h, w]], np.int64), coords * size, labels


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (the parity measure of the tests and the export check)."""
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-12))


def _ports(session: ort.InferenceSession) -> dict[str, list[dict[str, Any]]]:
    """The session's inputs and outputs as {name, dtype, shape}, symbolic axes by name: what the manifest records."""

    def port(arg: Any) -> dict[str, Any]:
        dtype = arg.type.removeprefix("tensor(").removesuffix(")")
        return {"name": arg.name, "dtype": ORT_DTYPES.get(dtype, dtype), "shape": arg.shape}

    return {"inputs": [port(a) for a in session.get_inputs()], "outputs": [port(a) for a in session.get_outputs()]}


def check_with_onnxruntime(
    folder: Path, reference: Sam, normalization: str, tolerance: float
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Run both graphs in `folder` once on onnxruntime's CPU provider and compare with `reference` (a float32 torch
    SAM); ExportError when they differ by more than `tolerance`. Returns each graph's ports."""
    image, resized, coords, labels = sample_inputs(reference.image_encoder.img_size)
    encoder = create_session(folder / ENCODER_FILE, ["CPUExecutionProvider"])
    decoder = create_session(folder / DECODER_FILE, ["CPUExecutionProvider"])
    embeddings = encoder.run(None, {"image": image, "resized_hw": resized})[0]
    logits, iou = decoder.run(None, {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels})
    with torch.no_grad():
        expected_embeddings = EncoderGraph(reference, normalization)(torch.from_numpy(image), torch.from_numpy(resized))
        expected = DecoderGraph(reference)(*map(torch.from_numpy, (embeddings, coords, labels)))
    for what, actual, wanted in (
        ("image embeddings", embeddings, expected_embeddings),
        ("mask logits", logits, expected[0]),
        ("IoU predictions", iou, expected[1]),
    ):
        error = relative_error(actual, wanted.numpy())
        if not error <= tolerance:
            raise ExportError(
                f"onnxruntime's {what} differ from torch's by {error:.2e} (relative), more than the {tolerance:.0e} "
                "allowed; the exported graph is not faithful"
            )
    return {"encoder": _ports(encoder), "decoder": _ports(decoder)}


# --------------------------------------------------------------------------------------------------------------
# Sources and the model folder.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """What to export: weights, their architecture and input convention, and where they came from."""

    state: Mapping[str, torch.Tensor]
    arch: SamArchitecture
    normalization: str
    inputs: list[dict[str, str]]  # {name, path, sha256} of every file the weights were made from
    recipe: Recipe | None = None
    report: Path | None = None  # the search report beside the recipe, if there is one
    folder: Path | None = None  # where the recipe's relative input paths start


def load_source(path: str | Path, normalization: str | None = None) -> ExportSource:
    """A recipe (.yaml/.yml: merged with the merge engine, on the CPU) or a SAM checkpoint file.

    A recipe fixes the normalisation (`normalization` may only repeat it); a checkpoint takes `normalization`
    (default `sam`, the convention of SAM and MedicoSAM; MedSAM's is `medsam`).
    """
    path = Path(path)
    if path.suffix in RECIPE_SUFFIXES:
        recipe = load_recipe(path)
        if normalization is not None and normalization != recipe.preprocessing.normalization:
            raise ExportError(
                f"the recipe {path} fixes the normalization '{recipe.preprocessing.normalization}' but "
                f"'{normalization}' was asked for; edit the recipe's preprocessing to change it"
            )
        folder = path.resolve().parent
        engine = load_recipe_inputs(recipe, folder, device="cpu")
        state = {k: v.clone() for k, v in engine.merge_recipe(recipe).items()}
        inputs = [
            {"name": m.name, "path": m.path, "sha256": sha256_file(recipe.resolve_path(m, folder))}
            for m in recipe.inputs
        ]
        report = folder / REPORT_DIR
        return ExportSource(
            state,
            engine.arch,
            recipe.preprocessing.normalization,
            inputs,
            recipe,
            report if report.is_dir() else None,
            folder,
        )
    checkpoint = load_checkpoint(path)
    normalization = normalization or "sam"
    try:
        imaging.get_normalization(normalization)
    except imaging.ImagingError as error:
        raise ExportError(str(error)) from None
    inputs = [{"name": path.stem, "path": str(path), "sha256": checkpoint.sha256}]
    return ExportSource(checkpoint.state_dict, checkpoint.arch, normalization, inputs)


def parse_task(spec: str) -> tuple[str, str | None]:
    """'NAME' or 'NAME=PRESET' (an intensity preset of `service.imaging`, checked by `export_model`) ->
    (name, preset or None)."""
    name, _, preset = spec.partition("=")
    if not name:
        raise ExportError(f"task '{spec}' has no name; expected NAME or NAME=PRESET")
    return name, preset or None


def _copy_report(report: Path, target: Path) -> None:
    if not (report / "report.md").is_file():
        raise ExportError(f"the report folder {report} has no report.md; expected the search's report")
    target.mkdir()
    for pattern in REPORT_PATTERNS:
        for file in sorted(report.glob(pattern)):
            shutil.copyfile(file, target / file.name)


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ExportError(f"model name {name!r} should be letters, digits, '_', '.' or '-' (not first)")


def _quantize(folder: Path, plan: Int8Plan, geometry: str, size: int, metadata: str) -> dict[str, Any]:
    """Replace `folder`'s float32 encoder with its int8 twin if it passes the gate (or is forced), else
    ExportError; returns the manifest's `quantization` record."""
    quantized = folder / f".int8.{ENCODER_FILE}"
    calibrated = quantize_encoder(folder / ENCODER_FILE, quantized, plan.calibration, geometry, size, folder)
    model = onnx.load(quantized)  # quantization keeps the graph, not the metadata the store checks
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=metadata)
    onnx.save(model, quantized)
    record: dict[str, Any] = {
        "method": "onnxruntime static QDQ, per-channel 7-bit int8 weights and 7-bit int8 keys, uint8 inputs (MinMax), "
        "float outputs",
        "quantized_op_types": list(QUANTIZED_OP_TYPES),
        "attention": f"query blocks of {QUERY_ROWS} rows",
        "gelu": "x·(1 + erf(x/√2))·0.5, fused by onnxruntime",
        "calibration_slices": calibrated,
        "gate": None,
        "forced": False,
    }
    if plan.held_out:
        gate = record["gate"] = int8_gate(folder, quantized, geometry, size, plan.held_out, plan.tolerance)
        if not gate["passed"]:
            verdict = (
                f"the int8 encoder's mean held-out Dice {gate['int8']['mean']:.4f} falls more than {plan.tolerance} "
                f"below float32's {gate['float32']['mean']:.4f}"
            )
            _refuse_unless_forced(verdict, plan.force)
    record["forced"] = plan.force and (record["gate"] is None or not record["gate"]["passed"])
    os.replace(quantized, folder / ENCODER_FILE)
    return record


def _refuse_unless_forced(verdict: str, force: bool) -> None:
    """A failed gate (quality or int8): ExportError with `verdict`, or with `force` a warning that it was exported
    anyway (the CLI prints a MedSAMixWarning as one line)."""
    if not force:
        raise ExportError(f"{verdict}; nothing was written (pass --force to export it anyway)")
    warnings.warn(f"{verdict}; exported because it was forced", MedSAMixWarning, stacklevel=4)


def _gate(
    source: ExportSource, specs: Sequence[DataSpec], conventions: Mapping[str, str], force: bool
) -> dict[str, Any] | None:
    """The quality gate's record of `source` on `specs` (`search.gate`; None without specs), `forced` added.

    A merge is published only if it beats its inputs on held-out cases: one that does not, or one given no specs to
    check it on, is an ExportError unless `force`. A bare checkpoint has no inputs to beat."""
    if not specs:
        if source.recipe is not None and not force:
            raise ExportError(
                "exporting a merge checks that it beats its inputs on held-out cases: give --tasks FILE (e.g. the "
                "search configuration), or --force to export without the check"
            )
        return None
    folder = source.folder or Path(".")
    gate = quality_gate(source.state, source.arch, source.normalization, source.recipe, folder, specs, conventions)
    if not gate["passed"]:
        model, best = gate["model"], gate["inputs"][gate["best_input"]]
        verdict = (
            f"the model's mean held-out Dice {model['mean']:.4f} over {len(specs)} task(s) does not beat its best "
            f"input '{gate['best_input']}' ({best['mean']:.4f})"
        )
        _refuse_unless_forced(verdict, force)
    gate["forced"] = force and not gate["passed"]
    return gate


def export_model(
    source: ExportSource,
    name: str,
    out: str | Path = "models",
    *,
    geometry: str | None = None,
    tasks: Sequence[str] = (),
    presets: Mapping[str, str] | None = None,
    scores: Mapping[str, Mapping[str, Any]] | None = None,
    report: Path | None = None,
    specs: Sequence[DataSpec] = (),
    conventions: Mapping[str, str] | None = None,
    force: bool = False,
    fp16: bool = False,
    int8: Int8Plan | None = None,
    overwrite: bool = False,
    version: str = "1",
) -> Path:
    """Write `out/name/` (encoder.onnx, decoder.onnx, manifest.json, recipe.yaml for a recipe, report/ when
    `report` is given) in a hidden temporary folder beside it, then move it into place; returns its path.

    `geometry` defaults to the normalisation's namesake (as in the evaluator). `tasks` are what the model was merged
    for (the service routes prompts by them), `presets` maps some of them to their intensity preset, `scores` maps
    some of them to {"split": ..., metric: value, ...}. `specs` (a task file's, with the `conventions` of the
    merge's inputs: `search.config`) give all three instead, from the quality gate, whose comparison the manifest
    records: a merge is refused unless it beats its inputs on them (no specs: always), or `force`. `int8` quantizes
    the encoder (module docstring). An existing model is refused unless `overwrite`, then replaced in one step. On
    any failure, a refused gate included, nothing is left behind.
    """
    _check_name(name)
    if int8 is not None and fp16:
        raise ExportError("int8 and fp16 exclude each other: int8 is for CPU serving, fp16 for GPU serving")
    if int8 is not None and not int8.held_out and not int8.force:
        raise ExportError(
            "an int8 export checks its Dice against float32 on held-out cases: give the tasks' held-out split, or "
            "force it to export without the check"
        )
    if specs and (tasks or presets or scores):
        raise ExportError("task specs give the model's tasks, presets and scores: give specs or those, not both")
    out = Path(out)
    if (out / name).exists() and not overwrite:
        raise ExportError(f"{out / name} already exists; choose another name or pass --overwrite to replace it")
    geometry = geometry or source.normalization
    if specs:
        tasks, presets = [spec.name for spec in specs], {s.name: p for s in specs if (p := s.presets[0])}
    presets = dict(presets or {})
    try:
        imaging.get_geometry(geometry)
        check_tasks(tasks, presets, scores or {}, f"model {name}")
    except (imaging.ImagingError, StoreError) as error:
        raise ExportError(str(error)) from None
    gate = _gate(source, specs, conventions or {}, force)
    if gate is not None:
        scores = {
            t: {"split": gate["split"], "dice": d, "cases": gate["cases"][t]} for t, d in gate["model"]["dice"].items()
        }
    arch = source.arch
    grid = arch.embedding_size
    # The recipe as it will lie in the model's folder: its input paths made to start there, so it replays from it.
    recipe = source.recipe.relocated(source.folder or Path("."), out / name) if source.recipe else None
    inputs = (
        [{**i, "path": m.path} for i, m in zip(source.inputs, recipe.inputs, strict=True)] if recipe else source.inputs
    )
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_with": {"medsamix": package_version("medsamix"), "torch": torch.__version__, "onnx_opset": OPSET},
        "architecture": arch.name,
        "precision": "int8" if int8 else "float16" if fp16 else "float32",
        "image_size": arch.image_size,
        "embedding_shape": [arch.prompt_embed_dim, grid, grid],
        "preprocessing": {"geometry": geometry, "normalization": source.normalization, "intensity_presets": presets},
        "tasks": list(tasks),
        "scores": {task: dict(score) for task, score in (scores or {}).items()},
        "recipe": recipe.model_dump(mode="json", exclude_none=True) if recipe else None,
        "inputs": inputs,
        "quality_gate": gate,
        # What the scores and the gate were measured with (none: nothing was scored); the decoder takes all kinds.
        "scored_prompts": list(SCORED_PROMPTS) if scores or gate is not None else [],
        "quantization": None,
    }
    reference = build_model(source.state, arch)
    model = build_model(source.state, arch, fp16=True) if fp16 else reference
    encoder = cpu_model(source.state, arch) if int8 is not None else model  # `reference` keeps stock attention

    def write(folder: Path) -> None:
        export_encoder(encoder, source.normalization, folder / ENCODER_FILE, {METADATA_KEY: pinned(manifest)})
        export_decoder(model, folder / DECODER_FILE)
        tolerance = CHECK_TOLERANCE[torch.float16 if fp16 else torch.float32]
        ports = check_with_onnxruntime(folder, reference, source.normalization, tolerance)
        if int8 is not None:
            manifest["quantization"] = _quantize(folder, int8, geometry, arch.image_size, pinned(manifest))
            ports = check_with_onnxruntime(folder, reference, source.normalization, CHECK_TOLERANCE[torch.int8])
        manifest["onnx"] = {
            "encoder": {"file": ENCODER_FILE, **ports["encoder"]},
            "decoder": {"file": DECODER_FILE, **ports["decoder"]},
        }
        if recipe is not None:
            (folder / RECIPE_FILE).write_text(recipe_yaml(recipe), encoding="utf-8")
        if report is not None:
            _copy_report(report, folder / REPORT_DIR)
        manifest["files"] = {path: sha256_file(folder / path) for path in folder_files(folder)}
        check_manifest(manifest, f"the manifest of {name}")
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    try:
        return atomic_write_dir(out / name, write, replace=overwrite)
    except FileExistsError:
        raise ExportError(f"{out / name} appeared while exporting; choose another name or pass --overwrite") from None

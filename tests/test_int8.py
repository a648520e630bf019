"""`medsamix export --int8`: an int8 encoder calibrated on the tasks' calibration slices, published only within its
Dice tolerance of float32 on held-out cases, and served like any other model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from search.attention import QUERY_ROWS
from search.config import load_task_specs
from search.data import load_task
from search.errors import ExportError
from search.export import export_model, load_source, relative_error
from search.quantize import TOLERANCE, Int8Plan, model_inputs
from search.slices import Task
from service import imaging
from service.cache import Embedding
from service.runtime import create_session
from service.schemas import EncodeJob
from service.segmenter import Served, encode_jobs
from service.store import ModelStore
from tests.cli_runs import medsamix, one_line_error, tasks_file
from tests.graphs import optimized_ops

DEMO = Path(__file__).parents[1] / "models" / "demo"
# The demo's own five tasks, as its merge gate scores them (mean 0.7605 against its best input's 0.7583). On
# ct_spleen alone the int8 demo falls 0.011 below float32 and is refused; over the five it is 0.002 below (measured).
TASKS = ["ct_liver", "ct_kidney", "ct_spleen", "mr_grey_matter", "mr_white_matter"]
# Largest relative error (max |int8 - float32| / max |float32|) of the int8 demo's embeddings on held-out slices:
# 0.073 (median 0.030) over every sixth held-out feed of the five tasks for the demo re-exported on 2026-12-02, up
# from 0.0073 for the one before (the zoo's fitted IoU heads and mergekit's TIES weights changed its weights). The
# product's check is the Dice gate (0.002 below float32 here); this bound catches a broken quantization.
EMBEDDING_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tasks_file(tmp_path_factory.mktemp("tasks"), TASKS)


@pytest.fixture(scope="module")
def int8_demo(tmp_path_factory: pytest.TempPathFactory, task_file: Path) -> Path:
    """The demo recipe exported as `demo8` with --int8, gated on one of the demo's tasks."""
    out = tmp_path_factory.mktemp("store") / "models"
    done = medsamix(
        "export", str(DEMO / "recipe.yaml"), "--name", "demo8", "--out", str(out), "--tasks", str(task_file), "--int8"
    )
    assert done.returncode == 0, done.stderr
    return out / "demo8"


def split(task_file: Path, task: str) -> tuple[Task, Task]:
    """(calibration, held-out) slices of one task of `task_file`."""
    (spec,) = [s for s in load_task_specs(task_file) if s.name == task]
    return load_task(spec)[:2]


@pytest.mark.slow
def test_an_int8_demo_passes_its_gate_with_the_float32_dice_recorded(int8_demo: Path, tmp_path: Path) -> None:
    manifest = json.loads((int8_demo / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    quantization = manifest["quantization"]
    gate = quantization["gate"]
    assert gate["passed"] is True and quantization["forced"] is False and gate["tolerance"] == TOLERANCE
    assert gate["float32"]["mean"] - gate["int8"]["mean"] <= TOLERANCE
    # The gate's float32 Dice (onnxruntime, the service's decode) is the torch evaluator's, as models/demo records.
    demo = json.loads((DEMO / "manifest.json").read_text())
    assert set(gate["float32"]["dice"]) == set(TASKS)
    for task in TASKS:
        assert gate["float32"]["dice"][task] == pytest.approx(demo["scores"][task]["dice"], abs=1e-6)
    assert quantization["calibration_slices"] > 0
    graph = onnx.load(int8_demo / "encoder.onnx").graph
    nodes = {out: node for node in graph.node for out in node.output}
    produced_by = {out: node.op_type for out, node in nodes.items()}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert any(produced_by.get(n.input[1]) == "DequantizeLinear" for n in matmuls)  # weight products quantized
    assert not all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in matmuls)  # ·v products not
    # Each query block's q·kᵀ (16, as softmaxes below) has int8 keys: symmetric (zero point 0), 7 bits (max |k| / 63).
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    dequantized = [n for n in matmuls if produced_by.get(n.input[1]) == "DequantizeLinear"]
    key_products = [n for n in dequantized if produced_by.get(nodes[n.input[1]].input[0]) == "QuantizeLinear"]
    assert len(key_products) == 16
    for product in key_products:
        quantize = nodes[nodes[product.input[1]].input[0]]
        zero_point = stored[quantize.input[2]]
        assert zero_point.dtype == np.int8 and zero_point == 0
    quantized_inputs = {i for node in graph.node if node.op_type == "QuantizeLinear" for i in node.input}
    assert not any(n.output[0] in quantized_inputs for n in matmuls)  # products give float (MatMulIntegerToFloat)
    # The CPU's attention: the tiny encoder's 16 x 16 global blocks in two query blocks of 8 rows, its 4 x 4 windows
    # in one, each block its own softmax.
    assert quantization["attention"] == f"query blocks of {QUERY_ROWS} rows" and QUERY_ROWS == 8
    assert sum(node.op_type == "Softmax" for node in graph.node) == 8 * 1 + 4 * 2
    for node in graph.node:  # what was measured to lose accuracy stays float
        if node.op_type in ("Conv", "LayerNormalization", "Softmax"):
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input), node.name
    # As onnxruntime's CPU session runs it: each GELU one fused op (search.gelu), no Einsum (the relative positions
    # are matrix products), and those products' 3-D tables stay float.
    ops = optimized_ops(int8_demo / "encoder.onnx", tmp_path)
    assert ops["Erf"] == ops["Einsum"] == 0 and ops["Gelu"] + ops["BiasGelu"] == 12, ops
    decoder = onnx.load(int8_demo / "decoder.onnx").graph
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in decoder.node)


@pytest.mark.slow
def test_int8_embeddings_are_within_tolerance_of_float32(int8_demo: Path, task_file: Path) -> None:
    tasks = {task: split(task_file, task)[1] for task in TASKS}
    float32 = create_session(DEMO / "encoder.onnx", ["CPUExecutionProvider"])
    int8 = create_session(int8_demo / "encoder.onnx", ["CPUExecutionProvider"])
    for feed in list(model_inputs(tasks, "sam", 128))[::6]:
        (expected,), (actual,) = float32.run(None, feed), int8.run(None, feed)
        assert relative_error(actual, expected) <= EMBEDDING_TOLERANCE


@pytest.mark.slow
def test_the_service_loads_and_decodes_an_int8_model(int8_demo: Path, task_file: Path) -> None:
    store = ModelStore(int8_demo.parent, default="demo8")
    served = Served.of(store.load("demo8"))  # hashes and the encoder's pinned metadata checked
    piece = split(task_file, "ct_spleen")[1].slices[0]
    image, frame = served.geometry.prepare(piece.image, served.size)
    (embedding,) = encode_jobs({"demo8": served}, [EncodeJob(model="demo8", image=image, resized=frame.resized)])
    masks, ious = served.decode(Embedding(embedding, frame), [imaging.SparsePrompt(piece.boxes[0])])
    assert masks.shape == (1, *piece.mask.shape) and np.isfinite(ious).all()
    overlap = np.logical_and(masks[0], piece.mask).sum()
    assert 2 * overlap / (masks[0].sum() + piece.mask.sum()) > 0.5


@pytest.mark.slow
def test_an_int8_encoder_outside_the_tolerance_is_refused_and_nothing_written(tmp_path: Path, task_file: Path) -> None:
    calibration, test = split(task_file, "ct_spleen")
    plan = Int8Plan({"ct_spleen": calibration}, {"ct_spleen": test}, tolerance=-1.0)  # it would have to gain 1.0
    out = tmp_path / "models"
    with pytest.raises(ExportError) as refused:
        export_model(load_source(DEMO / "recipe.yaml"), "m", out, tasks=["ct_spleen"], force=True, int8=plan)
    message = str(refused.value)
    assert "falls more than -1.0 below float32's" in message and "nothing was written" in message
    assert "\n" not in message and message.count(". ") == 0
    assert not out.exists() or not any(out.iterdir())  # not even a temporary folder


def test_int8_needs_tasks_and_excludes_fp16(tmp_path: Path) -> None:
    out = tmp_path / "models"
    line = one_line_error(medsamix("export", str(DEMO / "recipe.yaml"), "--name", "m", "--out", str(out), "--int8"))
    assert "--int8 calibrates on the tasks' calibration slices" in line and not out.exists()
    source = load_source(DEMO / "recipe.yaml")
    with pytest.raises(ExportError, match="int8 and fp16 exclude each other"):
        export_model(source, "m", out, int8=Int8Plan({}, force=True), fp16=True)
    with pytest.raises(ExportError, match="give the tasks' held-out split, or force it"):
        export_model(source, "m", out, int8=Int8Plan({}))
    assert not out.exists()

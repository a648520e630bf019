"""int8 image encoders for CPU serving: onnxruntime's static (QDQ) quantization, calibrated and gated on the model's
own tasks.

Calibration feeds the float32 `encoder.onnx` the calibration split's slices exactly as the service does
(`Geometry.prepare`: (1, S, S, 3) uint8 and the resized (h, w)), so activation ranges are those of served images.
Quantized: the matrix products with a stored weight matrix (`weight_products`: qkv, attention projection, MLP),
weights int8 per output channel in 7 bits (`reduce_range`), and the attention's q·kᵀ (`key_products`), keys int8
per tensor in 7 bits (`key_overrides`); their first inputs uint8 (the u8s8 kernels of x86 CPUs), their outputs left
float, so onnxruntime runs each as one `MatMulIntegerToFloat` (quantized outputs, a `QLinearMatMul` and a dequantize
per product, measured as fast on ViT-B with 0.4 GiB more peak memory). The patch embedding (a Conv), the neck's
convolutions, LayerNorm, Softmax, GELU, the relative positions and the ·v products stay float32: ·v multiplies
softmax probabilities, most far below a uint8 step, and quantizing every attention product made a ViT-B slower;
int8 keys alone made it 2-11% faster (benchmarks/RESULTS.md). The decoder is not touched.

Why 7 bits: x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) multiply u8 by s8 with VPMADDUBSW, which sums pairs
into int16 and saturates (255 · 127 · 2 > 32767); onnxruntime's documented remedy is `reduce_range` (for weights
only: the keys get the same range through their scale). Measured on a 2-core AMD EPYC with AVX2 only, random ViT-B:
largest relative embedding error 0.253 with 8-bit weights, 0.029 with 7-bit, at the same speed. The export's machine
need not be the serving one, so every export reduces the range.

The gate compares what is served: held-out Dice through onnxruntime of the int8 encoder against the float32 one,
with the same float32 decoder and the service's own decode (`service.segmenter.Served.decode`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from search.data import DataSpec, load_task
from search.evaluate import case_mean, dice
from search.slices import Task
from service import imaging
from service.cache import Embedding
from service.manifest import DECODER_FILE, ENCODER_FILE
from service.runtime import create_session
from service.schemas import EncodeJob
from service.segmenter import Served, encode_jobs
from service.store import LoadedModel

# The largest fall of the mean held-out Dice (float32 minus int8) an int8 export accepts; a gain always passes.
TOLERANCE = 0.005
QUANTIZED_OP_TYPES = ("MatMul",)
CALIBRATION_SLICES = 32  # at most, spread evenly over the calibration split's slices of all tasks
SPLIT = "test"


@dataclass(frozen=True)
class Int8Plan:
    """What an int8 export needs: the tasks' calibration split (activation ranges) and held-out split (the gate;
    none: ungated, which only `force` allows), and whether to publish a model that fails the gate."""

    calibration: Mapping[str, Task]
    held_out: Mapping[str, Task] = field(default_factory=dict)
    tolerance: float = TOLERANCE
    force: bool = False

    @classmethod
    def of(cls, specs: Sequence[DataSpec], force: bool = False) -> Int8Plan:
        """The plan of a task file's tasks: each split by case as `search.data.load_task` splits it."""
        loaded = {spec.name: load_task(spec) for spec in specs}
        return cls({n: t.calibration for n, t in loaded.items()}, {n: t.test for n, t in loaded.items()}, force=force)


def model_inputs(tasks: Mapping[str, Task], geometry: str, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every slice of `tasks` as the encoder's feed: (1, S, S, 3) uint8 `image` and (1, 2) int64 `resized_hw`."""
    shape = imaging.get_geometry(geometry)
    for task in tasks.values():
        for piece in task.slices:
            image, frame = shape.prepare(piece.image, size)
            yield {"image": image[None], "resized_hw": np.array([frame.resized], np.int64)}


def calibration_feeds(
    tasks: Mapping[str, Task], geometry: str, size: int, limit: int = CALIBRATION_SLICES
) -> list[dict[str, np.ndarray]]:
    """At most `limit` encoder feeds, evenly spaced over all of `tasks`' slices (so every task is represented)."""
    feeds = list(model_inputs(tasks, geometry, size))
    if not feeds:
        raise ValueError("the calibration split has no slices; expected at least one to calibrate on")
    chosen = np.unique(np.linspace(0, len(feeds) - 1, min(limit, len(feeds))).round().astype(int))
    return [feeds[i] for i in chosen]


def weight_products(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The matrix products of `model` with a stored weight matrix as B (a linear layer's): the only nodes quantized.
    (onnxruntime's `MatMulConstBOnly` takes any B with a weight upstream, which includes the attention products; the
    relative-position tables are stored B too, but 3-D, and per-channel int8 has no axis for them.)"""
    weights = {tensor.name for tensor in model.graph.initializer if len(tensor.dims) == 2}
    return [n for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.input[1] in weights]


def key_products(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The attention's q·kᵀ products: B is the keys' transpose (what `query_blocks` and the stock attention export)."""
    transposed = {out for node in model.graph.node if node.op_type == "Transpose" for out in node.output}
    return [n for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.input[1] in transposed]


def key_overrides(products: Sequence[onnx.NodeProto], ranges: TensorsData) -> dict[str, list[dict[str, Any]]]:
    """The keys of `products` as symmetric int8 in 7 bits (scale max|k|/63, zero point 0), so the u8s8 products do not
    saturate on CPUs without VNNI (module docstring); onnxruntime's `reduce_range` covers only weights."""
    overrides = {}
    for name in sorted({n.input[1] for n in products}):
        low, high = ranges[name].range_value
        scale = max(abs(float(low)), abs(float(high)), 1e-12) / 63
        overrides[name] = [
            {"quant_type": QuantType.QInt8, "scale": np.array(scale, np.float32), "zero_point": np.array(0, np.int8)}
        ]
    return overrides


def activation_ranges(
    model: onnx.ModelProto, activations: Sequence[str], feeds: Sequence[dict[str, np.ndarray]], work: Path
) -> TensorsData:
    """MinMax ranges over `feeds` of the `activations` the products quantize, from a copy of the graph that outputs
    only those. onnxruntime's own calibrator outputs every MatMul's inputs and outputs, attention products included:
    more than 20 GB for one 1024 px ViT-B slice (it was killed for memory)."""
    read = sorted(set(activations))
    shapes = {info.name: info for info in model.graph.value_info}
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    augmented.graph.output.extend(shapes[name] for name in read)
    path = work / ".ranges.onnx"
    onnx.save(augmented, path)
    session = create_session(path, ["CPUExecutionProvider"])
    low = dict.fromkeys(read, np.inf)
    high = dict.fromkeys(read, -np.inf)
    for feed in feeds:
        for name, value in zip(read, session.run(read, feed), strict=True):
            low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
    path.unlink()
    return TensorsData(CalibrationMethod.MinMax, {n: (np.float32(low[n]), np.float32(high[n])) for n in read})


def quantize_encoder(
    source: Path,
    target: Path,
    calibration: Mapping[str, Task],
    geometry: str,
    size: int,
    work: Path,
    limit: int = CALIBRATION_SLICES,
) -> int:
    """Write the int8 (QDQ) twin of the float32 encoder `source` as `target`, calibrated on at most `limit` of
    `calibration`'s slices; `work` is a scratch folder (the shape-inferred graph, the ranges). Returns how many
    slices it was calibrated on."""
    prepared = work / f".prepared.{source.name}"
    ranges = work / f".ranges.{source.name}.json"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(prepared)
    keys = key_products(model)
    products = weight_products(model) + keys
    feeds = calibration_feeds(calibration, geometry, size, limit)
    # every product's first input; the keys too (the weights are stored, not activations)
    activations = [n.input[0] for n in products] + [n.input[1] for n in keys]
    measured = activation_ranges(model, activations, feeds, work)
    save_tensors_data(measured, ranges)
    overrides = key_overrides(keys, measured)
    del model
    quantize_static(
        str(prepared),
        str(target),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        nodes_to_quantize=[n.name for n in products],
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=ranges,
        extra_options={
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
            "TensorQuantOverrides": overrides,
        },
    )
    prepared.unlink()
    ranges.unlink()
    return len(feeds)


def served_dice(encoder: Path, decoder: Path, geometry: str, size: int, tasks: Mapping[str, Task]) -> dict[str, float]:
    """Task -> case-mean Dice of the ONNX graphs on onnxruntime's CPU provider, one box prompt at a time through
    the service's decode; a slice's prediction is the union of its boxes' masks (as in `search.evaluate`)."""
    cpu = ["CPUExecutionProvider"]
    model = LoadedModel("gate", {}, "", create_session(encoder, cpu), create_session(decoder, cpu))
    served = Served(model, imaging.get_geometry(geometry), size, (), {})
    shape = served.geometry
    result = {}
    for name, task in tasks.items():
        scores = np.empty(len(task.slices))
        for i, piece in enumerate(task.slices):
            image, frame = shape.prepare(piece.image, size)
            (embedding,) = encode_jobs({"gate": served}, [EncodeJob(model="gate", image=image, resized=frame.resized)])
            masks, _ = served.decode(Embedding(embedding, frame), [imaging.SparsePrompt(box) for box in piece.boxes])
            union = masks.any(axis=0)
            assert isinstance(union, np.ndarray), "decode's masks are (N, h, w): their union is an h x w array"
            scores[i] = dice(union, piece.mask)
        result[name] = case_mean(task, scores)
    return result


def int8_gate(
    folder: Path, int8_encoder: Path, geometry: str, size: int, held_out: Mapping[str, Task], tolerance: float
) -> dict[str, Any]:
    """The held-out Dice of the int8 encoder and of `folder`'s float32 one (same decoder), and whether the int8
    mean falls by at most `tolerance`: what the manifest records as `quality_gate.int8`."""
    decoder = folder / DECODER_FILE
    runs = {
        precision: served_dice(path, decoder, geometry, size, held_out)
        for precision, path in (("float32", folder / ENCODER_FILE), ("int8", int8_encoder))
    }
    means = {precision: float(np.mean(list(values.values()))) for precision, values in runs.items()}
    return {
        "split": SPLIT,
        "metric": "mean over tasks of the case-mean Dice, onnxruntime CPU, box prompts",
        "tolerance": tolerance,
        "float32": {"dice": runs["float32"], "mean": means["float32"]},
        "int8": {"dice": runs["int8"], "mean": means["int8"]},
        "difference": means["int8"] - means["float32"],
        "passed": means["float32"] - means["int8"] <= tolerance,
    }

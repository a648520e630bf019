"""The op types of an ONNX graph as onnxruntime's CPU session runs it, for tests of what the export's graph fuses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort


def optimized_ops(path: Path, scratch: Path) -> Counter[str]:
    """Op types of the model at `path` after onnxruntime's CPU graph optimisations (extended level: the portable
    ones), written to `scratch`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(scratch / f"optimized.{path.name}")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)

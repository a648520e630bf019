"""onnxruntime sessions for exported models: the best execution providers this machine has, in a fixed order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

# Preference order: TensorRT, then CUDA, then the CPU (always present).
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    """The providers of `PROVIDER_ORDER` that this onnxruntime build offers, in that order."""
    available = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in available]


def create_session(path: Path, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An inference session for the ONNX file at `path` on `providers` (default: `available_providers()`).

    The CPU memory arena is off: it keeps the peak of every run's activations for the life of the process (a ViT-B
    encoder on the CPU held 7.0 GiB after one 1024 px image, 0.97 GiB without it, for 2.5% more time per image;
    benchmarks/RESULTS.md). GPU providers keep their own allocators.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=list(providers or available_providers()))

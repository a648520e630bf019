"""onnxruntime CPU sessions opened as the service opens them, with the settings the CPU benchmarks vary: one
module that quant_bench.py and encoder_rounds.py share and that needs neither the service's server nor DICOM
libraries (the lent GPU machine's image has neither)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

LEVELS = {
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


def session(path: Path, threads: int = 0, level: str = "all", mode: str = "sequential") -> ort.InferenceSession:
    """A CPU session as `service.runtime.create_session` opens one (arena off), with the given settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.execution_mode = MODES[mode]
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

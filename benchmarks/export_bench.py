"""Exported graphs against torch on the CPU: encoder and decoder latency and throughput, onnxruntime vs torch in the
same run (ratios against the torch baseline of that run). Random weights, float32; median of --runs after a warm-up.

    python benchmarks/export_bench.py --runs 3 --json benchmarks/results-export-cpu.json

Both sides run the same wrapper modules (`search.export.EncoderGraph` / `DecoderGraph`: the uint8 model input with
its normalisation in the graph; one image embedding and N boxes), torch eagerly with segment_anything's stock
attention, onnxruntime with its CPU provider at full graph optimisation. Latency is one image (one box); throughput
is images/s at --batch images per encoder call and boxes/s at --boxes boxes per decoder call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.architectures import build_sam, get_architecture  # noqa: E402
from search.export import DecoderGraph, EncoderGraph, export_decoder, export_encoder  # noqa: E402
from service.manifest import DECODER_FILE, ENCODER_FILE  # noqa: E402
from service.runtime import create_session  # noqa: E402


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    return f"{os.cpu_count()} CPU cores ({model}), {platform.machine()}, Python {platform.python_version()}"


def bench(arch_name: str, runs: int, batch: int, boxes: int) -> dict[str, float]:
    arch = get_architecture(arch_name)
    torch.manual_seed(0)
    sam = build_sam(arch)
    sam.requires_grad_(False)
    size = arch.image_size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_encoder(sam, "sam", Path(folder) / ENCODER_FILE)
        export_decoder(sam, Path(folder) / DECODER_FILE)
        export_seconds = time.perf_counter() - start
        providers = ["CPUExecutionProvider"]
        encoder = create_session(Path(folder) / ENCODER_FILE, providers)
        decoder = create_session(Path(folder) / DECODER_FILE, providers)
    torch_encoder, torch_decoder = EncoderGraph(sam, "sam"), DecoderGraph(sam)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    resized = np.tile(np.array([[size, size * 3 // 4]], np.int64), (batch, 1))
    # A box as the decoder takes it: its two corners, labelled 2 and 3 (SAM's sparse-prompt convention).
    box = (np.array([[[0.1, 0.1], [0.6, 0.7]]], np.float32) * size, np.array([[2, 3]], np.float32))
    many = (np.tile(box[0], (boxes, 1, 1)), np.tile(box[1], (boxes, 1)))

    def torch_encode(n: int) -> Callable[[], object]:
        return lambda: torch_encoder(torch.from_numpy(images[:n]), torch.from_numpy(resized[:n]))

    def ort_encode(n: int) -> Callable[[], object]:
        return lambda: encoder.run(None, {"image": images[:n], "resized_hw": resized[:n]})

    with torch.no_grad():
        embedding = torch_encode(1)().numpy()
        embedding_t = torch.from_numpy(embedding)

        def torch_decode(b: tuple[np.ndarray, np.ndarray]) -> Callable[[], object]:
            return lambda: torch_decoder(embedding_t, *map(torch.from_numpy, b))

        def ort_decode(b: tuple[np.ndarray, np.ndarray]) -> Callable[[], object]:
            feed = {"image_embeddings": embedding, "point_coords": b[0], "point_labels": b[1]}
            return lambda: decoder.run(None, feed)

        result = {
            "export_seconds": export_seconds,
            "torch_encoder_latency_s": median_time(torch_encode(1), runs),
            "ort_encoder_latency_s": median_time(ort_encode(1), runs),
            "torch_decoder_latency_s": median_time(torch_decode(box), runs),
            "ort_decoder_latency_s": median_time(ort_decode(box), runs),
            "torch_decoder_boxes_per_s": boxes / median_time(torch_decode(many), runs),
            "ort_decoder_boxes_per_s": boxes / median_time(ort_decode(many), runs),
        }
        if batch > 1:
            result["torch_encoder_images_per_s"] = batch / median_time(torch_encode(batch), runs)
            result["ort_encoder_images_per_s"] = batch / median_time(ort_encode(batch), runs)
        else:  # one image per call: throughput is the inverse latency
            result["torch_encoder_images_per_s"] = 1 / result["torch_encoder_latency_s"]
            result["ort_encoder_images_per_s"] = 1 / result["ort_encoder_latency_s"]
    return {"batch": batch, "boxes": boxes, **result}


def _show(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | measure | torch CPU | onnxruntime CPU | onnxruntime speed-up (× torch) |",
        "|---|---|---|---|---|",
    ]
    for arch, r in results.items():
        rows = [
            ("encoder latency, 1 image", "encoder_latency_s", "s"),
            (f"encoder throughput, batch {r['batch']}", "encoder_images_per_s", "images/s"),
            ("decoder latency, 1 box", "decoder_latency_s", "s"),
            (f"decoder throughput, {r['boxes']} boxes per call", "decoder_boxes_per_s", "boxes/s"),
        ]
        for label, key, unit in rows:
            is_time = unit == "s"
            t, o = r[f"torch_{key}"], r[f"ort_{key}"]
            speedup = t / o if is_time else o / t
            lines.append(f"| {arch} | {label} | {_show(t, unit)} | {_show(o, unit)} | {speedup:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="encoder throughput batch (ViT-B: 1 on a CPU)")
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {arch: bench(arch, args.runs, 1 if arch != "tiny" else args.batch, args.boxes) for arch in args.archs}
    record = {
        "command": "python benchmarks/export_bench.py " + " ".join(sys.argv[1:]),
        "date": date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "runs": args.runs,
        "results": results,
    }
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

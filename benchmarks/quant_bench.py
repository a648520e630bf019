"""float32 vs int8 image encoders on onnxruntime's CPU provider, in one run: latency, peak memory, file size, the
int8 error against float32, and the demo model's held-out Dice of both; then onnxruntime's CPU session settings.

    python benchmarks/quant_bench.py --runs 3 --json benchmarks/results-quant-cpu.json

Models: a random-weight ViT-B (`serve_bench.vit_b_store`, calibrated on the demo tasks' calibration slices at 1024
px; its Dice means nothing) and the demo model (`models/demo`, int8 through `export_model`, gated on all of its
tasks). Each is measured as today's float32 export (stock attention), as the float32 graph the int8 export quantizes
(`search.export.cpu_model`: query-block attention, fusable GELU) and as int8: what each of the two steps gives.
Latency is one image per call (a held-out CT slice through `Geometry.prepare`), median of --runs after a warm-up,
every session in this process, back to back; peak memory is one call's in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_sessions import session  # noqa: E402
from benchmarks.serve_bench import cases, run_load, vit_b_store  # noqa: E402
from search.attention import query_blocks, use_fused_attention  # noqa: E402
from search.config import load_task_specs  # noqa: E402
from search.export import (  # noqa: E402
    build_model,
    cpu_model,
    export_encoder,
    export_model,
    load_source,
    relative_error,
)
from search.quantize import Int8Plan, model_inputs, quantize_encoder  # noqa: E402
from search.slices import Task  # noqa: E402
from service.manifest import ENCODER_FILE  # noqa: E402
from testing.local_server import serve  # noqa: E402
from tests.dicomfiles import ct_hu, ct_image  # noqa: E402
from tests.service_client import ENCODER_HISTOGRAMS, encoder_timings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
TASKS = ROOT / "tests" / "zoo" / "search-demo.yaml"
# (name, intra-op threads (0: onnxruntime's default, one per core), optimisation level, execution mode); the first
# is service/runtime.py's.
SETTINGS = (
    ("service (default threads, all, sequential)", 0, "all", "sequential"),
    ("1 intra-op thread", 1, "all", "sequential"),
    ("extended optimisation", 0, "extended", "sequential"),
    ("parallel execution", 0, "all", "parallel"),
)


def median_latency(encoder: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> tuple[float, np.ndarray]:
    """Median seconds of one call over `runs` after a warm-up, and the warm-up's embedding."""
    (embedding,) = encoder.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        encoder.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times), embedding


# One call of the service's own CPU session in a fresh interpreter that imports neither torch nor this benchmark;
# its peak is VmHWM, the new process image's own (ru_maxrss keeps the forking parent's resident size across exec).
PEAK = """import re, sys
from pathlib import Path
import numpy as np
from service.runtime import create_session
create_session(Path(sys.argv[1]), ["CPUExecutionProvider"]).run(None, dict(np.load(sys.argv[2])))
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))"""


def peak_memory_gib(path: Path, feed: dict[str, np.ndarray]) -> float:
    """GiB of peak resident memory of a process that opened `path` as the service does and ran `feed` once."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "feed.npz", **feed)
        done = subprocess.run(
            [sys.executable, "-c", PEAK, str(path), str(Path(tmp) / "feed.npz")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    return int(done.stdout.split()[-1]) / 2**20


def compare(name: str, paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int) -> dict[str, object]:
    """Latency, peak memory, size and error of one model's encoders (service settings); the first is the baseline
    that speed-ups and errors are against."""
    row: dict[str, object] = {"model": name, "baseline": next(iter(paths))}
    baseline_s, baseline_out = 0.0, None
    for variant, path in paths.items():
        seconds, out = median_latency(session(path), feed, runs)
        if baseline_out is None:
            baseline_s, baseline_out = seconds, out
        row[variant] = {
            "seconds": seconds,
            "speedup": baseline_s / seconds,
            "peak_gib": peak_memory_gib(path, feed),
            "mib": path.stat().st_size / 2**20,
            "relative_error": relative_error(out, baseline_out),
        }
    print(json.dumps(row), flush=True)
    return row


BLOCKED = "float32, CPU graph"


def blocked(source: Path, stem: Path) -> dict[str, Path]:
    """{BLOCKED: the float32 encoder an int8 export of `source` quantizes, written as `stem`.onnx}."""
    loaded = load_source(source)
    path = stem.with_suffix(".onnx")
    export_encoder(cpu_model(loaded.state, loaded.arch), loaded.normalization, path)
    return {BLOCKED: path}


def query_rows_table(checkpoint: Path, work: Path, rows: list[int], feed: dict[str, np.ndarray], runs: int) -> list:
    """Float32 latency and export seconds of `checkpoint`'s encoder with `query_blocks(r)` for each r of `rows`
    (0: the stock attention): what `search.attention.QUERY_ROWS` was chosen by."""
    loaded = load_source(checkpoint)
    table = []
    for r in rows:
        sam = build_model(loaded.state, loaded.arch)
        if r:
            use_fused_attention(sam.image_encoder, query_blocks(r))
        path = work / f"rows{r}.onnx"
        start = time.perf_counter()
        export_encoder(sam, loaded.normalization, path)
        export_s = time.perf_counter() - start
        seconds, _ = median_latency(session(path), feed, runs)
        table.append({"query_rows": r, "seconds": seconds, "export_s": export_s})
        print(json.dumps(table[-1]), flush=True)
        path.unlink()
    return table


def settings_table(name: str, paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int) -> list[dict]:
    """Median latency of each of `SETTINGS` for each precision's encoder of one model."""
    rows = []
    for label, threads, level, mode in SETTINGS:
        for precision, path in paths.items():
            seconds, _ = median_latency(session(path, threads, level, mode), feed, runs)
            rows.append({"model": name, "precision": precision, "settings": label, "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def served_p50(work: Path, calibration: dict[str, Task], seconds: float, limit: int) -> dict[str, dict[str, float]]:
    """p50 of `POST /segment` with a new 512² CT image per request (the embedding cache never answers), one client,
    through `bentoml serve` of one store holding the random ViT-B as float32 (`demo`, from `vit_b_store`) and as
    int8 (`vit_b_int8`, the same checkpoint exported with `--int8` on `limit` calibration slices, each a 1024 px
    run; ungated: random weights have no Dice to keep); with each, the front -> encoder hop (`hop`)."""
    store = work / "models"
    first = {name: replace(task, slices=task.budget(limit)) for name, task in list(calibration.items())[:1]}
    source = load_source(work / "vit_b.pth")
    export_model(
        source, "vit_b_int8", store, tasks=["ct"], presets={"ct": "ct_abdomen"}, int8=Int8Plan(first, force=True)
    )
    size = 512
    image = ct_image(ct_hu(size, size, seed=3))
    rows = {}
    with serve({"MEDSAMIX_MODELS": str(store)}, work / "serve.log", timeout=600) as server:
        for precision, model in (("float32", "demo"), ("int8", "vit_b_int8")):
            [request] = [r for name, r in cases(image, size, np.random.default_rng(0), model) if name == "new image"]
            with httpx.Client(base_url=server.url, timeout=600) as http:
                request(http, -1)  # warm-up
            before = encoder_timings(server)
            rows[precision] = run_load(server, 1, seconds, request) | hop(before, encoder_timings(server))
            print(precision, json.dumps(rows[precision]), flush=True)
    return rows


def hop(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms of an encoder call and of the encoding inside it between two `encoder_timings`, and their
    difference: the front -> encoder hop (one client: each call is one batch)."""
    call, encoding = (
        1000 * (after[n][1] - before[n][1]) / max(after[n][0] - before[n][0], 1) for n in ENCODER_HISTOGRAMS
    )
    return {"encoder_call_ms": call, "encoding_ms": encoding, "hop_ms": call - encoding}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=8, help="ViT-B calibration slices (each a 1024 px run)")
    parser.add_argument(
        "--served", type=float, default=0.0, help="seconds of new-image requests per ViT-B model through bentoml serve"
    )
    parser.add_argument(
        "--query-rows", type=int, nargs="*", default=[], help="float32 ViT-B with query blocks of these rows (0: stock)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    plan = Int8Plan.of(load_task_specs(TASKS))
    calibration, held_out = dict(plan.calibration), dict(plan.held_out)
    probe = {"ct_liver": held_out["ct_liver"]}
    result: dict[str, object] = {
        "date": date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "onnxruntime": ort.__version__},
        "runs": args.runs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        demo8 = export_model(
            load_source(DEMO / "recipe.yaml"),
            "demo8",
            work / "models",
            tasks=list(calibration),
            force=True,  # the merge's own gate is the one models/demo records; only int8's is measured here
            int8=plan,
        )
        gate = json.loads((demo8 / "manifest.json").read_text())["quantization"]["gate"]
        result["demo_export_s"] = time.perf_counter() - start
        result["demo_gate"] = gate
        demo_paths = {
            "float32": DEMO / ENCODER_FILE,
            **blocked(DEMO / "recipe.yaml", work / "demo"),
            "int8": demo8 / ENCODER_FILE,
        }
        demo_feed = next(model_inputs(probe, "sam", 128))
        rows = [compare("demo (tiny, 128 px)", demo_paths, demo_feed, args.runs)]

        vit_b = vit_b_store(work) / "demo" / ENCODER_FILE
        vit_blocked = blocked(work / "vit_b.pth", work / "vit_b")
        vit_b8 = work / "vit_b_int8.onnx"
        start = time.perf_counter()
        quantize_encoder(vit_blocked[BLOCKED], vit_b8, calibration, "sam", 1024, work, limit=args.calibration)
        result["vit_b_quantize_s"] = time.perf_counter() - start
        vit_feed = next(model_inputs(probe, "sam", 1024))
        rows.append(
            compare("random ViT-B (1024 px)", {"float32": vit_b, **vit_blocked, "int8": vit_b8}, vit_feed, args.runs)
        )
        result["encoders"] = rows
        result["settings"] = settings_table("random ViT-B", {"float32": vit_b, "int8": vit_b8}, vit_feed, args.runs)
        if args.query_rows:
            result["query_rows"] = query_rows_table(work / "vit_b.pth", work, args.query_rows, vit_feed, args.runs)
        if args.served:
            result["served"] = served_p50(work, calibration, args.served, args.calibration)
    print(f"demo held-out Dice: float32 {gate['float32']['mean']:.4f}, int8 {gate['int8']['mean']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

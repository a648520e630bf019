"""float32 against int8 image encoders built and timed on one CPU in one run: the check of issue 16's goal on a
machine other than the 2-core development VM (benchmarks/gpu.sh's `int8` stage runs it on the lent H200's host
CPU, whose integer instructions differ), with the CPU's name and integer-dot-product flags in the JSON.

    python benchmarks/int8_cpu_bench.py --arch vit_b --threads 0 4 2 --rounds 5 --json int8.json

Builds a random-weight model of `--arch` (seed 0), exports its encoder as today's float32 export does (stock
attention) and as an int8 export does (`search.export.cpu_model`, then `search.quantize.quantize_encoder` on
`--calibration` of the demo tasks' calibration slices), then times both in interleaved rounds
(`encoder_rounds.interleaved`) with each `--threads` count of intra-op threads (0: one per core, the service's) and
each `--batches` number of images per call.
The JSON is rewritten after each step, so a run stopped at its budget keeps what it measured.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_sessions import session  # noqa: E402
from benchmarks.encoder_rounds import interleaved, random_feed  # noqa: E402
from benchmarks.measure import JsonRecord  # noqa: E402
from search.architectures import build_sam, get_architecture  # noqa: E402
from search.config import load_task_specs  # noqa: E402
from search.export import build_model, cpu_model, export_encoder  # noqa: E402
from search.quantize import Int8Plan, quantize_encoder  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "tests" / "zoo" / "search-demo.yaml"
# x86 flags that decide which of onnxruntime's int8 kernels run: without a dot-product instruction, u8s8 products
# go through AVX2's saturating pairwise adds (why the weights are 7-bit); VNNI and AMX do not saturate.
INTEGER_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu() -> dict[str, object]:
    """The processor's model name and which of `INTEGER_FLAGS` it has (Linux's /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor(), "flags": None}
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    have = set(flags.group(1).split()) if flags else set()
    name = model.group(1) if model else platform.processor()
    return {"model": name, "flags": [f for f in INTEGER_FLAGS if f in have]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--threads", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="images per call (a batching encoder's)")
    parser.add_argument("--calibration", type=int, default=4, help="calibration slices (speed does not depend on it)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    arch = get_architecture(args.arch)
    record = JsonRecord(args.json, "cpu", cpu=cpu(), onnxruntime=ort.__version__, arch=arch.name)
    torch.manual_seed(0)
    state = build_sam(arch).state_dict()
    calibration = Int8Plan.of(load_task_specs(TASKS)).calibration
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = {"float32": work / "float32.onnx", "int8": work / "int8.onnx"}
        steps = {
            "export_float32_s": lambda: export_encoder(build_model(state, arch), "sam", paths["float32"]),
            "export_cpu_graph_s": lambda: export_encoder(cpu_model(state, arch), "sam", work / "cpu.onnx"),
            "quantize_s": lambda: quantize_encoder(
                work / "cpu.onnx", paths["int8"], calibration, "sam", arch.image_size, work, limit=args.calibration
            ),
        }
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            record[name] = time.perf_counter() - start
            record.save()
            print(f"{name}: {record.data[name]:.1f}", flush=True)
        record["mib"] = {name: path.stat().st_size / 2**20 for name, path in paths.items()}
        for threads in args.threads:
            sessions = {name: session(path, threads) for name, path in paths.items()}
            for batch in args.batches:
                key = f"threads_{threads}" + (f"_batch_{batch}" if batch > 1 else "")
                record[key] = interleaved(sessions, random_feed(arch.image_size, batch), args.rounds)
                record.save()
                result = record.data[key]["result"]
                summary = {n: f"{r['median_s']:.3f} s ({r['speedup']:.2f}x)" for n, r in result.items()}
                print(f"{key}:", summary, flush=True)


if __name__ == "__main__":
    main()

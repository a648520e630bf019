"""Whole-model merge time per method: ViT-B-sized random weights, a base and 3 fine-tunes, resident in the engine.

Prints a table (median of --runs timed merges after one warm-up) and optionally writes JSON. Also times, in the
same run, TIES with the usual per-tensor `torch.kthvalue` threshold (the baseline our radix select replaces) and
checks that both thresholds keep exactly the same entries. On CPU, each method's peak RSS is measured in a fresh
child process (inputs and output allocated there, then one merge) against the size of inputs + output.

    python benchmarks/merge_bench.py --device cpu --runs 5 --json cpu.json
    python benchmarks/merge_bench.py --device cuda --runs 20 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import JsonRecord, peak_gpu_bytes, reset_peak, time_call  # noqa: E402
from search.architectures import get_architecture, state_layout  # noqa: E402
from search.groups import Granularity, layer_groups  # noqa: E402
from search.merge import METHODS  # noqa: E402
from search.merge.engine import MergeEngine, flat_layout  # noqa: E402
from search.merge.packing import Packing, kth_largest, radix_select  # noqa: E402
from search.merge.task_arithmetic import magnitude_thresholds  # noqa: E402

NAMES = ["sam", "medsam", "medicosam", "hospital"]
FINE_TUNE_SCALE = 1e-3


def make_engine(arch_name: str, device: str, seed: int = 0) -> MergeEngine:
    """Random resident inputs, generated straight into the engine's flat layout (no second copy)."""
    arch = get_architecture(arch_name)
    numel = flat_layout(arch).numel
    generator = torch.Generator(device=device).manual_seed(seed)
    base = torch.randn(numel, generator=generator, device=device) * 0.02
    flats = [base] + [
        base + FINE_TUNE_SCALE * torch.randn(numel, generator=generator, device=device) for _ in NAMES[1:]
    ]
    buffers = {k: torch.randn(shape, device=device) for k, shape in state_layout(arch).buffers.items()}
    return MergeEngine(arch, NAMES, flats, buffers)


def plan_for(engine: MergeEngine, method: str):
    resolved = METHODS[method]
    kwargs = resolved.resolve({}, engine.names, where=method)
    return [(group, resolved, kwargs) for group in layer_groups(engine.arch, Granularity())]


def kthvalue_select(scores: torch.Tensor, k: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The baseline threshold: torch.kthvalue per tensor and model (what an H200 takes 497 ms for)."""
    result = torch.empty(k.shape, dtype=scores.dtype, device=scores.device)
    start = 0
    for segment, length in enumerate(packing.lengths):
        for row in range(scores.shape[0]):
            wanted = int(k[row, segment])
            result[row, segment] = scores[row, start : start + length].kthvalue(length - wanted + 1).values
        start += length
    return result


def threshold_masks(engine: MergeEngine, density: float, select, chunking: str) -> torch.Tensor:
    """TIES' top-k masks of all tensors and fine-tunes, (fine-tunes, parameters), by `select` over chunks that are
    single tensors ('tensor'), whole layer groups ('group') or the engine's own ('engine')."""
    base, models = engine.inputs[0], engine.inputs[1:]
    spans = engine.layout.spans
    chunks = []
    for group in layer_groups(engine.arch, Granularity()):
        if chunking == "engine":
            chunks += [(start, stop, packing.lengths) for start, stop, packing in engine._group_chunks(group, 0)]
        elif chunking == "group":
            chunks.append(
                (
                    spans[group.keys[0]][0],
                    spans[group.keys[-1]][1],
                    tuple(spans[k][1] - spans[k][0] for k in group.keys),
                )
            )
        else:
            chunks += [(spans[k][0], spans[k][1], (spans[k][1] - spans[k][0],)) for k in group.keys]
    masks = []
    for start, stop, lengths in chunks:
        packing = Packing(lengths, (0,) * len(lengths))
        scores = torch.stack([m[start:stop] - base[start:stop] for m in models]).abs()
        masks.append(scores >= packing.expand(magnitude_thresholds(scores, density, packing, select)))
    return torch.cat(masks, dim=1)


def memory_status(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes. Not ru_maxrss: Linux carries that over from the parent process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child_rss(arch: str, method: str) -> dict:
    """Run in a fresh process: RSS after imports, allocate inputs + output, merge once, peak RSS."""
    baseline = memory_status("VmRSS")
    engine = make_engine(arch, "cpu")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: count the merge, not making random inputs
    engine.merge(plan_for(engine, method))
    data = sum(t.numel() * t.element_size() for t in [*engine.inputs, engine.output])
    return {"baseline_bytes": baseline, "peak_bytes": memory_status("VmHWM"), "inputs_output_bytes": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--compare-cpu", action="store_true", help="also merge on CPU and report the largest difference (GPU runs)"
    )
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(child_rss(args.arch, args.rss_child)))
        return

    console = Console()
    engine = make_engine(args.arch, args.device)
    if args.compare_cpu:
        cpu_engine = MergeEngine(
            engine.arch, engine.names, [t.cpu() for t in engine.inputs], {k: v.cpu() for k, v in engine.buffers.items()}
        )
    total = engine.layout.numel
    console.print(
        f"{args.arch}: {total / 1e6:.1f}M parameters, base + {len(NAMES) - 1} fine-tunes, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({torch.get_num_threads()} threads)")
    )
    rows: list[dict] = []
    thresholds: dict[str, dict] = {}
    record = JsonRecord(
        args.json, args.device, arch=args.arch, parameters=total, fine_tunes=len(NAMES) - 1, methods=rows
    )
    for method in METHODS:
        plan = plan_for(engine, method)
        reset_peak(args.device)
        times = time_call(lambda plan=plan: engine.merge(plan), args.device, args.runs)
        row = {"method": method, "median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}
        first = engine.output.clone()
        engine.merge(plan)
        row["replay_identical"] = bool(torch.equal(first, engine.output))
        if args.compare_cpu:
            reference = cpu_engine.merge(plan_for(cpu_engine, method))
            flat = torch.cat([reference[k].reshape(-1) for k in engine.layout.spans])
            row["max_abs_diff_vs_cpu"] = float((flat - first.cpu()).abs().max())
        if args.device == "cuda":
            row["peak_gpu_bytes"] = peak_gpu_bytes(args.device)
        else:
            child = subprocess.run(
                [sys.executable, __file__, "--arch", args.arch, "--rss-child", method],
                capture_output=True,
                text=True,
                check=True,
            )
            row.update(json.loads(child.stdout))
        rows.append(row)
        record.save()

    density, runs = 0.5, min(args.runs, 3) if args.device == "cpu" else args.runs
    variants = {  # name -> (select, chunking)
        "kthvalue per tensor (baseline)": (kthvalue_select, "tensor"),
        "radix select per layer group (GPU path)": (radix_select, "group"),
        f"kth_largest as the engine calls it on {args.device}": (kth_largest, "engine"),
    }
    reference = threshold_masks(engine, density, kthvalue_select, "tensor")
    record["ties_threshold"] = thresholds
    for name, (select, chunking) in variants.items():
        masks = threshold_masks(engine, density, select, chunking)
        thresholds[name] = {
            "median_s": statistics.median(
                time_call(lambda s=select, c=chunking: threshold_masks(engine, density, s, c), args.device, runs)
            ),
            "identical_to_baseline": bool(torch.equal(masks, reference)),
        }
        del masks
        record.save()

    table = Table(
        "method",
        "median",
        "min",
        "replay identical",
        *(("peak RSS", "(peak-start)/(inputs+output)") if args.device == "cpu" else ("peak GPU memory",)),
        *(("max |GPU - CPU|",) if args.compare_cpu else ()),
    )
    for row in rows:
        extra = (
            (
                f"{row['peak_bytes'] / 2**30:.2f} GiB",
                f"{(row['peak_bytes'] - row['baseline_bytes']) / row['inputs_output_bytes']:.2f}",
            )
            if args.device == "cpu"
            else (f"{row['peak_gpu_bytes'] / 2**30:.2f} GiB",)
        )
        if "max_abs_diff_vs_cpu" in row:
            extra = (*extra, f"{row['max_abs_diff_vs_cpu']:.1e}")
        table.add_row(
            row["method"],
            f"{row['median_s'] * 1e3:.1f} ms",
            f"{row['min_s'] * 1e3:.1f} ms",
            str(row["replay_identical"]),
            *extra,
        )
    console.print(table)
    selection = Table("TIES threshold (top 50% of every tensor, 3 fine-tunes)", "median", "same masks as baseline")
    for name, row in thresholds.items():
        selection.add_row(name, f"{row['median_s'] * 1e3:.1f} ms", str(row["identical_to_baseline"]))
    console.print(selection)


if __name__ == "__main__":
    main()

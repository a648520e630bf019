"""Search speed: trials per minute and where a trial's time goes (merge / encoder / decoder / masks / SMAC).

    python benchmarks/search_bench.py --arch tiny --trials 60 --json search-cpu.json      # the zoo, CPU
    python benchmarks/search_bench.py --arch vit_b --trials 12 --device cuda --json ...    # ViT-B, random weights

`--inputs zoo` (tiny only) runs the zoo's single-task (mr_white_matter) and five-task searches. `--inputs random` (the
default for any other architecture) writes a random base of `--arch` and two fine-tunes of it (three inputs, in the
plain SAM format) and searches on the zoo's CT kidney calibration slices, upsampled to the model's input size by the
sam geometry exactly as real images would be; it reports peak GPU memory (the goal: a three-input ViT-B search
within 16 GB). One worker in this process; the per-section figures are medians over the trials (`evaluate` is
encoder + decoder + masks), trials/min is over the whole run including SMAC, and `split_s` sums each part over all
trials against the run's wall time (the rest: building the search, loading inputs, writing its outputs).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import JsonRecord, peak_gpu_bytes, reset_peak  # noqa: E402
from search.architectures import build_sam, get_architecture  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.journal import Journal  # noqa: E402
from search.optimize import Search  # noqa: E402
from search.zoo import search_config, task_specs  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "tests" / "zoo"
SECTIONS = ("merge", "encoder", "decoder", "masks", "smac")
EVALUATE = ("encoder", "decoder", "masks")


def random_inputs(arch: str, folder: Path) -> dict[str, str]:
    """A random base of `arch` and two fine-tunes (base + small seeded noise), as plain SAM state dicts."""
    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in build_sam(get_architecture(arch), "cpu").state_dict().items()}
    paths = {"base": folder / "base.pth"}
    torch.save(base, paths["base"])
    for i in (1, 2):
        generator = torch.Generator().manual_seed(i)
        tuned = {
            k: v + 0.01 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
            if v.is_floating_point() and v.numel() > 1
            else v
            for k, v in base.items()
        }
        paths[f"tune{i}"] = folder / f"tune{i}.pth"
        torch.save(tuned, paths[f"tune{i}"])
    return {k: str(v) for k, v in paths.items()}


def run(config: SearchConfig, device: str) -> dict[str, float]:
    reset_peak(device)
    start = time.perf_counter()
    Search(config, progress=False, report=False).run()
    seconds = time.perf_counter() - start
    entries = [e for e in Journal(Path(config.output) / "trials.jsonl").read() if e["status"] == "success"]
    steady = entries[1:] or entries  # the first trial also prepares the tasks' inputs
    result = {f"{s}_ms": 1000 * statistics.median(e["timings"].get(s, 0.0) for e in steady) for s in SECTIONS}
    result["evaluate_ms"] = 1000 * statistics.median(sum(e["timings"].get(s, 0.0) for s in EVALUATE) for e in steady)
    totals = {s: sum(e["timings"].get(s, 0.0) for e in entries) for s in SECTIONS}
    result["split_s"] = {
        "wall": seconds,
        "merge": totals["merge"],
        "evaluate": sum(totals[s] for s in EVALUATE),
        "smac": totals["smac"],
    }
    result["trials"] = len(entries)
    result["trials_per_min"] = 60 * len(entries) / seconds
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device == "cuda":
        result["peak_gpu_gb"] = peak_gpu_bytes(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "vit_b"], default="tiny")
    parser.add_argument("--inputs", choices=["zoo", "random"], help="default: zoo for tiny, random otherwise")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    inputs = args.inputs or ("zoo" if args.arch == "tiny" else "random")
    if inputs == "zoo" and args.arch != "tiny":
        parser.error("--inputs zoo: the zoo's models are tiny")
    if args.device == "cpu":
        torch.set_num_threads(2)
    results: dict[str, dict[str, float]] = {}
    record = JsonRecord(args.json, args.device, arch=args.arch, inputs=inputs, results=results)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        if inputs == "zoo":
            cases = {"single task (mr_white_matter)": ["mr_white_matter"], "5 tasks (ParEGO)": list(task_specs(ZOO))}
            for label, tasks in cases.items():
                data = search_config(ZOO, tasks, trials=args.trials, device=args.device, output=str(folder / label))
                results[label] = run(SearchConfig.model_validate(data), args.device)
                record.save()
        else:
            paths = random_inputs(args.arch, folder)
            data = search_config(ZOO, ["ct_kidney"], trials=args.trials, device=args.device, output=str(folder / "run"))
            data["base"] = {"name": "base", "path": paths["base"]}
            data["models"] = [{"name": n, "path": paths[n]} for n in ("tune1", "tune2")]
            label = f"{args.arch}, 3 random inputs, ct_kidney (10 slices)"
            results[label] = run(SearchConfig.model_validate(data), args.device)
            record.save()
    table = Table(title=f"search, {args.arch}, {args.device}")
    columns = ["trials", "trials_per_min", *(f"{s}_ms" for s in SECTIONS), "evaluate_ms", "peak_rss_gb", "peak_gpu_gb"]
    table.add_column("search")
    for column in columns:
        table.add_column(column, justify="right")
    for label, row in results.items():
        table.add_row(label, *(f"{row[c]:.3g}" if c in row else "—" for c in columns))
    Console().print(table)


if __name__ == "__main__":
    main()

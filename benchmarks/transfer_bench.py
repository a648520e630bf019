"""Does the search transfer? Held-out Dice of the paper's search (flat space, best trial) against ours (structured
space, nearest-within-noise choice) at equal trial counts, on a family of tasks, single-task and multi-task.

    python benchmarks/transfer_bench.py tests/family/tasks.yaml --trials 40 120 --out runs/transfer/family \
        --json benchmarks/results-transfer-family.json

For every task alone, then for all tasks at once (ParEGO, pick `mean`), and for each space (`flat`, `structured`):
the search is run to each trial count in turn (a finished search given more trials continues, so the 120-trial
search is the 40-trial one continued) and, at each count, chosen by each rule (`best`, `nearest`: the choice rule is
not part of a search's fingerprint, so rerunning with the other rule re-chooses from the same trials). The report's
scores.json gives the held-out Dice of every input, uniform baseline and pick. Prints Table-2-style Markdown tables
(held-out Dice per task, the calibration/held-out gap, trials per minute) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SPACES = ("flat", "structured")
CHOICES = ("best", "nearest")


def run(config: dict[str, Any], folder: Path, **settings: Any) -> dict[str, Any]:
    """Run (or continue, or re-choose) one search; its report's scores, choice record and trial timings."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"search-{settings['trials']}-{settings['choice']}.yaml"
    path.write_text(yaml.safe_dump({**config, **settings, "output": str(folder / "run")}))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search.cli", "search", str(path)], check=True)
    run_folder = folder / "run"
    scores = json.loads((run_folder / "report" / "scores.json").read_text())
    entries = [json.loads(line) for line in (run_folder / "trials.jsonl").read_text().splitlines()]
    span = max(e["ended"] for e in entries) - min(e["started"] for e in entries)
    return {
        "dice": scores["dice"],
        "choice": json.loads((run_folder / "choice.json").read_text()),
        "trials": len(entries),
        "trials_per_minute": 60 * len(entries) / span,
        "seconds": time.perf_counter() - start,
    }


def absolute(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The configuration with its input and task paths made absolute (it is rewritten into other folders)."""
    fix = lambda entry: {**entry, "path": str((folder / entry["path"]).resolve())}  # noqa: E731
    return {
        **config,
        "base": fix(config["base"]),
        "models": [fix(m) for m in config["models"]],
        "tasks": [fix(t) for t in config["tasks"]],
    }


def measure(config: dict[str, Any], out: Path, trials: list[int]) -> dict[str, Any]:
    tasks = [t["name"] for t in config["tasks"]]
    groups = {name: [t for t in config["tasks"] if t["name"] == name] for name in tasks}
    groups["all"] = config["tasks"]
    results: dict[str, Any] = {}
    for group, specs in groups.items():
        for space in SPACES:
            for count in trials:
                for choice in CHOICES:
                    key = f"{group}/{space}/{count}/{choice}"
                    folder = out / group / space
                    settings = {"trials": count, "space": space, "choice": choice, "pick": "mean"}
                    results[key] = run({**config, "tasks": specs}, folder, **settings)
                    print(key, json.dumps({t: results[key]["dice"][_pick(specs)][t] for t in _names(specs)}))
    return results


def _names(specs: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in specs]


def _pick(specs: list[dict[str, Any]]) -> str:
    return "MedSAMix (picked)" if len(specs) > 1 else "MedSAMix"


def tables(results: dict[str, Any], config: dict[str, Any], trials: list[int]) -> str:
    """Markdown: single-task and multi-task held-out Dice, the gap, trials per minute."""
    tasks = _names(config["tasks"])
    first = results[f"all/{SPACES[0]}/{trials[0]}/{CHOICES[0]}"]["dice"]
    references = [row for row in first if not row.startswith("MedSAMix")]
    lines = []
    for title, single in (("single task (one search per task)", True), ("multi-task (one search, pick mean)", False)):
        header = "| model | " + " | ".join(tasks) + " | mean | gap (cal - held-out) | trials/min |"
        lines += [f"**{title}**", "", header, "|---|" + "---:|" * (len(tasks) + 3)]
        for row in references:  # a single task's baselines from its own search (its convention chosen on it)
            own = lambda t: results[f"{t}/{SPACES[0]}/{trials[0]}/{CHOICES[0]}"]["dice"]  # noqa: E731
            values = [(own(t) if single else first)[row][t]["test"] for t in tasks]
            lines.append(f"| {row} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} | | |")
        for space in SPACES:
            for count in trials:
                for choice in CHOICES:
                    keys = (
                        [f"{t}/{space}/{count}/{choice}" for t in tasks]
                        if single
                        else [f"all/{space}/{count}/{choice}"]
                    )
                    pick = "MedSAMix" if single else "MedSAMix (picked)"
                    by_task = {}
                    cal = {}
                    for t in tasks:
                        r = results[keys[tasks.index(t)] if single else keys[0]]
                        by_task[t], cal[t] = r["dice"][pick][t]["test"], r["dice"][pick][t]["calibration"]
                    speed = np.median([results[k]["trials_per_minute"] for k in keys])
                    gap = np.mean([cal[t] - by_task[t] for t in tasks])
                    cells = " | ".join(f"{by_task[t]:.4f}" for t in tasks)
                    label = f"{space} space, choice {choice}, {count} trials"
                    lines.append(
                        f"| {label} | {cells} | {np.mean(list(by_task.values())):.4f} | {gap:+.4f} | {speed:.0f} |"
                    )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a search configuration: its inputs and tasks are used")
    parser.add_argument("--trials", type=int, nargs="+", default=[40, 120])
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these of the configuration's tasks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    path = Path(args.config).resolve()
    config = absolute(yaml.safe_load(path.read_text()), path.parent)
    config.pop("output", None)
    if args.tasks:
        config["tasks"] = [t for t in config["tasks"] if t["name"] in args.tasks]
    trials = sorted(args.trials)
    results = measure(config, Path(args.out).resolve(), trials)
    print(tables(results, config, trials))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": str(path), "trials": trials, "results": results}, indent=2))


if __name__ == "__main__":
    main()

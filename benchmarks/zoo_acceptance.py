"""The zoo's Tables 1-2: one search per task (MedSAMix-S) and one over all tasks (MedSAMix-M), scored on the
held-out cases against every input and the uniform baselines.

    python benchmarks/zoo_acceptance.py --trials 100 --multi-trials 200 --out runs/zoo --json zoo-acceptance.json

Each run folder keeps its report (`report/report.md` and plots); this prints the two tables as Markdown (for
benchmarks/RESULTS.md) and whether each search beat the best input on the held-out cases. Resumable: rerunning
with the same arguments continues every unfinished search.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.zoo import MODELS, search_config, task_specs  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "tests" / "zoo"


def run_search(folder: Path, tasks: list[str], trials: int) -> dict:
    folder = folder.resolve()  # the configuration's output is relative to its own folder otherwise
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "search.yaml"
    config.write_text(yaml.safe_dump(search_config(ZOO, tasks, trials=trials, output=str(folder / "run"))))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search.cli", "search", str(config)], check=True)
    scores = json.loads((folder / "run" / "report" / "scores.json").read_text())
    scores["seconds"] = time.perf_counter() - start
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials of each single-task search")
    parser.add_argument("--multi-trials", type=int, default=200, help="trials of the search over all tasks")
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = Path(args.out)
    tasks = list(task_specs(ZOO))
    single = {task: run_search(out / task, [task], args.trials) for task in tasks}
    multi = run_search(out / "all", tasks, args.multi_trials)
    inputs = list(MODELS)
    baselines = [row for row in multi["dice"] if row.startswith("uniform ")]

    def test(scores: dict, row: str, task: str) -> float:
        return scores["dice"][row][task]["test"]

    rows = {name: [test(multi, name, t) for t in tasks] for name in inputs + baselines}
    rows["MedSAMix-S (one search per task)"] = [test(single[t], "MedSAMix", t) for t in tasks]
    rows["MedSAMix-M (one model, picked off the front)"] = [test(multi, "MedSAMix (picked)", t) for t in tasks]
    header = "| model | " + " | ".join(tasks) + " | mean |\n|---|" + "---:|" * (len(tasks) + 1)
    lines = [header] + [
        f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |"
        for name, values in rows.items()
    ]
    best_input = {t: max(test(multi, name, t) for name in inputs) for t in tasks}
    verdicts = {t: rows["MedSAMix-S (one search per task)"][i] > best_input[t] for i, t in enumerate(tasks)}
    best_mean = max(np.mean(rows[name]) for name in inputs)
    multi_beats = bool(np.mean(rows["MedSAMix-M (one model, picked off the front)"]) > best_mean)
    print("\n".join(lines))
    print(f"single-task search beats the best input on held-out cases: {verdicts}")
    print(f"multi-task pick beats the best single input on the mean: {multi_beats}")
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "trials": {"single": args.trials, "multi": args.multi_trials},
            "table": {name: dict(zip(tasks, values, strict=True)) for name, values in rows.items()},
            "single_beats_best_input": verdicts,
            "multi_beats_best_input_mean": multi_beats,
            "seconds": {**{t: s["seconds"] for t, s in single.items()}, "all": multi["seconds"]},
        }
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

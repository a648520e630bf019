"""Why a task is not won: does the calibration score of a search's trials predict their held-out score?

    python benchmarks/transfer_evidence.py runs/transfer/family/ct_nodule/structured/run ... \
        --plot benchmarks/transfer_evidence.png --json benchmarks/results-transfer-evidence.json

For each finished search (its run folder: `search.json`, `trials.jsonl`, `report/scores.json`), every full-budget
trial is merged again and scored on the held-out cases the search never saw. Per task that gives: the rank
correlation (Spearman) of calibration and held-out Dice over the trials, the held-out Dice of the pick (by the choice
rule the run was last chosen with, as its report shows), of the best
trial in hindsight (what a perfect choice among the trials would have given) and of the best input and uniform
baseline. Two different reasons a task is lost read off them: the hindsight best is below the best input (no trial
of the search is better on held-out cases: the space or the inputs cannot win it), or it is above but calibration
does not rank it (few calibration cases, a low correlation: the choice cannot find it). One scatter per run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from search.config import SearchConfig  # noqa: E402
from search.journal import Journal  # noqa: E402
from search.optimize import Search  # noqa: E402
from search.scores import score  # noqa: E402
from search.space import SearchSpace  # noqa: E402
from search.worker import TrialRunner  # noqa: E402

PICKS = ("MedSAMix", "MedSAMix (picked)")


def held_out(run: Path) -> dict[str, Any]:
    """Each full-budget trial of the search in `run` scored on both splits, and the report's reference rows."""
    config = SearchConfig.model_validate(json.loads((run / "search.json").read_text())["config"])
    runner = TrialRunner.build(config)
    base, models = Search(config)._input_models(runner)
    space = SearchSpace(runner.engine.arch, base, models, config.space_spec(), config.seed)
    entries = [e for e in Journal(run / "trials.jsonl").read() if e["status"] == "success"]
    budget = max(e["budget"] for e in entries)
    trials = []
    for entry in (e for e in entries if e["budget"] == budget):
        recipe = space.to_recipe(entry["config"])
        state = runner.engine.merge_recipe(recipe)
        test = runner.split("test", recipe.preprocessing.presets)
        dice = score(runner.evaluator, state, recipe.preprocessing.normalization, {"test": test})
        trials.append(
            {"trial": entry["trial"], "calibration": entry["dice"], "test": {t: d["test"] for t, d in dice.items()}}
        )
    report = json.loads((run / "report" / "scores.json").read_text())["dice"]
    return {"trials": trials, "report": report, "choice": json.loads((run / "choice.json").read_text())["choice"]}


def summary(measured: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task: Spearman's rho over the trials, and the held-out Dice of the pick, the hindsight best trial, the
    best input and the best uniform baseline."""
    report, trials = measured["report"], measured["trials"]
    pick = next(row for row in PICKS if row in report)
    inputs = [row for row in report if row not in PICKS and not row.startswith("uniform")]
    result = {}
    for task in trials[0]["test"]:
        calibration = [t["calibration"][task] for t in trials]
        test = [t["test"][task] for t in trials]
        rho = spearmanr(calibration, test).statistic if len(set(calibration)) > 1 else math.nan
        result[task] = {
            "trials": len(trials),
            "spearman": float(rho),
            "pick": report[pick][task]["test"],
            "hindsight": max(test),
            "best input": max(report[row][task]["test"] for row in inputs),
            "best uniform": max((report[r][task]["test"] for r in report if r.startswith("uniform")), default=math.nan),
        }
    return result


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    panels = [(run, task) for run, m in results.items() for task in m["trials"][0]["test"]]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for ax, (run, task) in zip(axes.flat, panels, strict=False):
        measured = results[run]
        stats = summary(measured)[task]
        ax.scatter(
            [t["calibration"][task] for t in measured["trials"]],
            [t["test"][task] for t in measured["trials"]],
            s=9,
            alpha=0.6,
            label="trials",
        )
        ax.axhline(stats["best input"], color="#e15759", linewidth=1, label=f"best input {stats['best input']:.3f}")
        ax.axhline(stats["pick"], color="#59a14f", linewidth=1, linestyle="--", label=f"pick {stats['pick']:.3f}")
        ax.set_title(f"{task} ({Path(run).parent.name}): rho {stats['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("calibration Dice")
        ax.set_ylabel("held-out Dice")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="search run folders")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {run: held_out(Path(run)) for run in args.runs}
    print("| run | task | trials | Spearman rho | pick (choice) | best in hindsight | best input | best uniform |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run, measured in results.items():
        for task, s in summary(measured).items():
            cells = " | ".join(f"{s[k]:.4f}" for k in ("hindsight", "best input", "best uniform"))
            line = f"| {Path(run).parent.parent.name}/{Path(run).parent.name} | {task} | {s['trials']} | "
            print(line + f"{s['spearman']:.2f} | {s['pick']:.4f} ({measured['choice']}) | {cells} |")
    if args.plot:
        plot(results, Path(args.plot))
    if args.json:
        text = {run: {"summary": summary(m), **m} for run, m in results.items()}
        Path(args.json).write_text(json.dumps(text, indent=2))


if __name__ == "__main__":
    main()

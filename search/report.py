"""The search report: `report/report.md` and its PNG plots, in the run folder.

What a person checks after a search: how the objective moved (or the front, for two tasks), which method and
parameters each layer group got (like the paper's Table 5), and the Dice of every input, the uniform baselines and
the merge on calibration and held-out cases (like its Tables 1-2), plus where a trial's time went.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ConfigSpace import Configuration  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from search.baselines import baselines, trained_convention  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.files import atomic_write  # noqa: E402
from search.merge.engine import MergeEngine  # noqa: E402
from search.recipe import Recipe  # noqa: E402
from search.scores import (  # noqa: E402
    BOOTSTRAP_RESAMPLES,
    CaseTable,
    Table,
    case_bootstrap,
    case_scores,
    case_table_means,
    markdown_table,
    score,
)
from search.space import SearchSpace  # noqa: E402
from search.worker import TrialRunner  # noqa: E402

SPLITS = ["calibration", "test"]
METHOD_COLOURS = {
    "linear": "#4e79a7",
    "task_arithmetic": "#f28e2b",
    "ties": "#e15759",
    "dare": "#76b7b2",
    "dare_ties": "#59a14f",
    "slerp": "#edc948",
    "model_stock": "#b07aa1",
    "pick": "#bab0ac",
}


def _save(figure: plt.Figure, path: Path) -> str:
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return path.name


class Scored(NamedTuple):
    """`score_table`'s answer: Dice per row, each row's convention and intensity presets (tasks that list several),
    and each merge's Dice per case (for its case-bootstrap interval)."""

    table: Table
    conventions: dict[str, str]
    presets: dict[str, dict[str, str]]
    merge_cases: dict[str, CaseTable]


def score_table(
    config: SearchConfig,
    runner: TrialRunner,
    merges: dict[str, Recipe],
    space: SearchSpace,
    scored: Callable[[int, int], None] = lambda done, total: None,
) -> Scored:
    """Dice of the search's baselines (`search.baselines`) and each merge, on both splits. An input runs under its
    training convention, a uniform baseline under each of its allowed conventions, each under each preset variant;
    the row shows the one that scores best on calibration (the initial design ran every one), held out under it.
    `scored(done, total)` is called after each row: scoring every row on both splits can take as long as the search
    did."""
    engine: MergeEngine = runner.engine
    evaluator = runner.evaluator
    variants = space.preset_variants()
    candidates: dict[str, list[tuple[str, dict[str, str]]]] = {
        name: [(trained_convention(name, config.conventions), v) for v in variants] for name in engine.names
    }
    uniform: dict[str, Configuration] = {}  # a uniform row's configuration (its weights, whatever the feed)
    for baseline in baselines(space, config.conventions):
        if baseline.row not in engine.names:
            candidates.setdefault(baseline.row, []).append((baseline.normalization, baseline.presets))
            uniform[baseline.row] = baseline.config
    result = Scored({}, {}, {}, {})
    total = len(candidates) + len(merges)
    for row, options in candidates.items():
        # The convention and the window change only how images are fed, not the weights: merge once, score
        # calibration under each, then the held-out cases under the best one.
        state = (
            engine.input_state(engine.names.index(row))
            if row in engine.names
            else engine.merge_recipe(space.to_recipe(uniform[row]))
        )
        calibration = [
            score(evaluator, state, normalization, {"calibration": runner.split("calibration", presets)})
            for normalization, presets in options
        ]
        best = max(range(len(options)), key=lambda k: np.mean([s["calibration"] for s in calibration[k].values()]))
        normalization, presets = options[best]
        held_out = score(evaluator, state, normalization, {"test": runner.split("test", presets)})
        result.table[row] = {task: {**calibration[best][task], **held_out[task]} for task in held_out}
        result.conventions[row], result.presets[row] = normalization, presets
        scored(len(result.table), total)
    for name, merge in merges.items():
        chosen = merge.preprocessing.presets
        splits = {part: runner.split(part, chosen) for part in SPLITS}
        normalization = merge.preprocessing.normalization
        result.merge_cases[name] = case_scores(evaluator, engine.merge_recipe(merge), normalization, splits)
        result.table[name] = case_table_means(result.merge_cases[name])
        result.conventions[name], result.presets[name] = normalization, dict(chosen or {})
        scored(len(result.table), total)
    return result


def presets_lines(presets: dict[str, dict[str, str]]) -> list[str]:
    """The intensity preset each row was scored under, for the tasks whose preset was searched (none: no line)."""
    if not any(presets.values()):
        return []
    shown = ", ".join(f"{row}: " + " ".join(f"{t}={p}" for t, p in chosen.items()) for row, chosen in presets.items())
    return [f"Intensity presets (chosen on calibration, like the convention): {shown}.", ""]


def calibration_interval(name: str, cases: CaseTable, table: Table, seed: int) -> dict[str, Any]:
    """Merge `name`'s mean calibration Dice over tasks (as `table` has it) and its case-bootstrap interval over
    `cases` (its Dice per case): the score the search maximised, with how much of it a few calibration cases can
    explain (`search.scores.case_bootstrap`)."""
    calibration = {task: by_split["calibration"] for task, by_split in cases.items()}
    low, high = case_bootstrap(calibration, seed=seed)
    mean = float(np.mean([table[name][task]["calibration"] for task in calibration]))
    count = sum(len(c) for c in calibration.values())
    return {"model": name, "mean": mean, "low": low, "high": high, "cases": count, "resamples": BOOTSTRAP_RESAMPLES}


def interval_line(interval: dict[str, Any]) -> str:
    """The report's sentence for `calibration_interval`'s record."""
    low, high, cases, resamples = interval["low"], interval["high"], interval["cases"], interval["resamples"]
    return (
        f"{interval['model']}'s calibration Dice (mean over tasks) is {interval['mean']:.4f}, with a 95% "
        f"case-bootstrap interval of {low:.4f}-{high:.4f} ({cases} calibration cases resampled {resamples} times "
        "within each task): a lead over another row smaller than that interval's width is within what other "
        "calibration cases of the same kind could give."
    )


def choice_line(record: dict[str, Any]) -> str:
    """The report's sentence on how the pick was chosen among the trials (`search.choice`)."""
    if record["choice"] == "best":
        return f"Choice rule `best`: the pick is trial {record['chosen_trial']}, the best objective."
    distance = record["distance"][str(record["chosen_trial"])]
    return (
        f"Choice rule `nearest`: trial {record['best_trial']} has the best objective; {len(record['within_noise'])} "
        f"full-budget trials are within its {record['level']:.0%} paired case-bootstrap noise, and of those trial "
        f"{record['chosen_trial']} lies nearest an input or uniform baseline (relative weight distance {distance:.4f})."
    )


def objective_plot(entries: list[dict[str, Any]], tasks: list[str], budget: int, path: Path) -> str:
    """Mean calibration Dice per trial (full-budget trials solid, lower budgets faint) and the best so far."""
    figure, ax = plt.subplots(figsize=(7, 3.6))
    done = [e for e in entries if e["status"] == "success"]
    full = [e for e in done if e["budget"] == budget]
    low = [e for e in done if e["budget"] != budget]
    mean = lambda e: float(np.mean([e["dice"][t] for t in tasks]))  # noqa: E731
    if low:
        ax.scatter([e["trial"] for e in low], [mean(e) for e in low], s=12, alpha=0.35, label="lower budget")
    ax.scatter([e["trial"] for e in full], [mean(e) for e in full], s=16, label=f"full budget ({budget} slices)")
    order = sorted(full, key=lambda e: e["trial"])
    ax.step([e["trial"] for e in order], np.maximum.accumulate([mean(e) for e in order]), where="post", label="best")
    crashed = [e["trial"] for e in entries if e["status"] != "success"]
    if crashed:
        ax.scatter(crashed, [0.0] * len(crashed), marker="x", color="k", label="crashed")
    ax.set_xlabel("trial")
    ax.set_ylabel("calibration Dice" + (" (mean over tasks)" if len(tasks) > 1 else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def front_plot(entries: list[dict[str, Any]], front: list[dict[str, Any]], best: dict[str, Any], tasks, path) -> str:
    """Two tasks: every full-budget trial's calibration Dice on each, the Pareto front and the picked model."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    x, y = tasks
    ax.scatter([e["dice"][x] for e in entries], [e["dice"][y] for e in entries], s=12, alpha=0.4, label="trials")
    ordered = sorted(front, key=lambda e: e["dice"][x])
    ax.plot([e["dice"][x] for e in ordered], [e["dice"][y] for e in ordered], "o-", color="C3", label="Pareto front")
    ax.scatter([best["dice"][x]], [best["dice"][y]], marker="*", s=220, color="gold", edgecolor="k", label="picked")
    ax.set_xlabel(f"{x} calibration Dice")
    ax.set_ylabel(f"{y} calibration Dice")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def _params_text(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        if isinstance(value, dict):
            parts.append(f"{name} " + " ".join(f"{k} {v:.2f}" for k, v in value.items()))
        elif isinstance(value, float):
            parts.append(f"{name} {value:.2f}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def recipe_plot(recipe: Recipe, path: Path) -> str:
    """One row per layer group: its method (coloured) and parameters."""
    rows = [[g.group, g.method, _params_text(g.params)] for g in recipe.groups]
    figure, ax = plt.subplots(figsize=(12, 0.26 * (len(rows) + 1) + 0.4))
    ax.axis("off")
    table = ax.table(
        cellText=rows,
        colLabels=["layer group", "method", "parameters"],
        cellLoc="left",
        colWidths=[0.42, 0.12, 0.46],
        bbox=Bbox.from_bounds(0, 0, 1, 1),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for i, group in enumerate(recipe.groups, start=1):
        table[i, 1].set_facecolor(METHOD_COLOURS.get(group.method, "white"))
    ax.set_title(f"recipe (normalisation: {recipe.preprocessing.normalization})", fontsize=10)
    return _save(figure, path)


def dice_plot(table: Table, split: str, path: Path) -> str:
    """Grouped bars: Dice per task on one split, one bar per model, each bar labelled with its value.

    The axis starts just below the lowest bar, not at 0: the differences that decide a merge are a few points of
    Dice, invisible on a 0-1 axis. The legend sits beside the axes, never over a bar; the merge is hatched."""
    tasks = list(next(iter(table.values())))
    values = {row: [scores[t][split] for t in tasks] for row, scores in table.items()}
    low, high = min(map(min, values.values())), max(map(max, values.values()))
    pad = max(0.02, 0.15 * (high - low))
    figure, ax = plt.subplots(figsize=(max(7, 0.55 * len(tasks) * len(table) + 3), 4.2))
    width = 0.8 / len(table)
    for i, (row, heights) in enumerate(values.items()):
        bars = ax.bar(
            np.arange(len(tasks)) + i * width,
            heights,
            width,
            label=row,
            hatch="//" if row.startswith("MedSAMix") else "",
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel(f"Dice ({split}, mean over cases)")
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + 2.5 * pad))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def timing_lines(entries: list[dict[str, Any]]) -> list[str]:
    done = [e for e in entries if e["status"] == "success"]
    sections = sorted({k for e in done for k in e["timings"]})
    lines = ["| section | median s per trial |", "|---|---:|"]
    lines += [f"| {s} | {np.median([e['timings'].get(s, 0.0) for e in done]):.3f} |" for s in sections]
    if len(done) > 1:
        span = max(e["ended"] for e in done) - min(e["started"] for e in done)
        lines.append(f"\n{len(done)} trials in {span:.0f} s of trial time: {60 * len(done) / span:.1f} trials/min")
    return lines


def write_report(
    out: Path,
    config: SearchConfig,
    runner: TrialRunner,
    result,
    space,
    scored: Callable[[int, int], None] = lambda done, total: None,
) -> Path:
    """Score (`scored` reports each row, see `score_table`), plot and write `out/report/report.md`; returns its
    path."""
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [t.name for t in config.tasks]
    merges = {"MedSAMix (picked)" if config.multi_task else "MedSAMix": result.best}
    table, conventions, presets, merge_cases = score_table(config, runner, merges, space, scored)
    [(name, cases)] = merge_cases.items()
    interval = calibration_interval(name, cases, table, config.seed)
    budget = max(e["budget"] for e in result.entries)
    plots = {"objective": objective_plot(result.entries, tasks, budget, folder / "objective.png")}
    if len(tasks) == 2 and result.front:
        full = [e for e in result.entries if e["status"] == "success" and e["budget"] == budget]
        plots["front"] = front_plot(full, result.front, result.chosen, tasks, folder / "front.png")
    plots["recipe"] = recipe_plot(result.best, folder / "recipe.png")
    plots["test"] = dice_plot(table, "test", folder / "dice_test.png")
    records = runner.splits
    splits = records.items()
    lines = [
        f"# MedSAMix search report — {', '.join(tasks)}",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()} "
        f"({platform.machine()}); {len(result.entries)} trials, seed {config.seed}, "
        f"{'ParEGO over ' + str(len(tasks)) + ' tasks' if config.multi_task else 'single task'}, "
        f"search space of {len(space.space)} hyperparameters, methods {', '.join(config.methods)}.",
        "",
        "## Dice per task",
        "",
        "Mean over cases of each case's mean slice Dice. Inputs run under their own convention; each uniform baseline "
        "(every group the same method at its declared defaults) under the allowed convention that scores best on "
        "calibration. Held-out cases were never seen by the search.",
        "",
        markdown_table(table, SPLITS),
        "",
        "Conventions: " + ", ".join(f"{row}: {c}" for row, c in conventions.items()) + ".",
        "",
        *presets_lines(presets),
        interval_line(interval),
        "",
        f"![Dice on held-out cases]({plots['test']})",
        "",
        "## Search",
        "",
        f"![objective]({plots['objective']})",
    ]
    if "front" in plots:
        lines += ["", f"![Pareto front]({plots['front']})"]
    if result.front:
        lines += ["", f"Pareto front: {len(result.front)} configurations; picked by rule `{config.pick}`."]
    lines += ["", choice_line(result.choice)]
    lines += [
        "",
        "## The merge",
        "",
        f"![recipe]({plots['recipe']})",
        "",
        "The recipe is `best.yaml` in the run folder (replay it with `medsamix merge`).",
        "",
        "## Time per trial",
        "",
        *timing_lines(result.entries),
        "",
        "## Data splits (by case)",
        "",
        *[f"- {name}: calibration {r['calibration']}, test {r['test']}, slices {r['slices']}" for name, r in splits],
        "",
    ]
    text = "\n".join(lines)
    scores = json.dumps(
        {
            "dice": table,
            "conventions": conventions,
            "presets": presets,
            "calibration_interval": interval,
            "splits": records,
        },
        indent=2,
    )
    atomic_write(folder / "scores.json", lambda temp: temp.write_text(scores))
    return atomic_write(folder / "report.md", lambda temp: temp.write_text(text, encoding="utf-8"))

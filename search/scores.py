"""Dice tables: how a model scores on each task's calibration and held-out cases.

One function serves the search's objective, its report, `medsamix evaluate` and the export's quality gate, so every
figure this product shows is the same quantity: per task, the mean over cases of each case's mean slice Dice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from search.evaluate import Evaluator, case_means, mean_over_cases
from search.slices import Task

Table = dict[str, dict[str, dict[str, float]]]  # row (model) -> task -> split -> Dice
CaseTable = dict[str, dict[str, dict[str, float]]]  # one model: task -> split -> case -> that case's Dice


def case_scores(
    evaluator: Evaluator,
    state: Mapping[str, torch.Tensor],
    normalization: str,
    splits: Mapping[str, Mapping[str, Task]],
) -> CaseTable:
    """task -> split -> case -> that case's mean slice Dice of one model; `splits` maps a split's name
    ("calibration", "test") to its tasks."""
    evaluator.load(state)
    result: CaseTable = {}
    for split, tasks in splits.items():
        for name, task in tasks.items():
            result.setdefault(name, {})[split] = case_means(task, evaluator.dice(task, normalization))
    return result


def case_table_means(cases: CaseTable) -> dict[str, dict[str, float]]:
    """task -> split -> Dice (the mean over cases) of `case_scores`' answer."""
    return {task: {split: mean_over_cases(c) for split, c in by_split.items()} for task, by_split in cases.items()}


def score(
    evaluator: Evaluator,
    state: Mapping[str, torch.Tensor],
    normalization: str,
    splits: Mapping[str, Mapping[str, Task]],
) -> dict[str, dict[str, float]]:
    """task -> split -> Dice of one model; `splits` maps a split's name ("calibration", "test") to its tasks."""
    return case_table_means(case_scores(evaluator, state, normalization, splits))


BOOTSTRAP_RESAMPLES = 2000


def case_bootstrap(
    per_case: Mapping[str, Mapping[str, float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """The `level` percentile interval of the mean over tasks of each task's case mean, cases resampled with
    replacement within each task (`per_case`: task -> case -> that case's mean slice Dice). With a few calibration
    cases per task this is how far the score a search maximised could move with other cases of the same kind."""
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for cases in per_case.values():
        values = np.fromiter(cases.values(), float)
        means += values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    means /= len(per_case)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def markdown_table(table: Table, splits: list[str]) -> str:
    """Rows are models; a column per task and split, then the mean over tasks per split; best per column bold."""
    tasks = list(next(iter(table.values())))
    columns = [(t, s) for t in tasks for s in splits]
    header = [f"{t} ({s})" for t, s in columns] + [f"mean ({s})" for s in splits]
    values = {
        row: [scores[t][s] for t, s in columns] + [sum(scores[t][s] for t in tasks) / len(tasks) for s in splits]
        for row, scores in table.items()
    }
    best = [max(v[i] for v in values.values()) for i in range(len(header))]
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for row, row_values in values.items():
        cells = [f"**{v:.4f}**" if v == best[i] else f"{v:.4f}" for i, v in enumerate(row_values)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

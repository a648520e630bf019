"""Acceptance on the tiny zoo, with a CI-sized budget: a single-task search beats the best input on the held-out
cases of its task, and the multi-task pick beats the best single input on the mean over tasks; the report those
runs write holds every plot. (The fuller run is benchmarks/zoo_acceptance.py; its tables are in RESULTS.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search.config import load_search_config
from search.optimize import Search
from search.zoo import MODELS, task_specs
from tests.cli_runs import write_config
from tests.conftest import ZOO

pytestmark = pytest.mark.slow  # whole searches: the full suite runs them, the quick loop does not

SINGLE_TASK = "ct_kidney"
SINGLE_TRIALS = 40
MULTI_TRIALS = 40


def held_out(run: Path) -> dict[str, dict[str, float]]:
    scores = json.loads((run / "report" / "scores.json").read_text())["dice"]
    return {row: {task: s["test"] for task, s in tasks.items()} for row, tasks in scores.items()}


def test_single_task_search_beats_the_best_input_on_held_out_cases(tmp_path):
    config = load_search_config(write_config(tmp_path, [SINGLE_TASK], trials=SINGLE_TRIALS))
    Search(config, progress=False).run()
    table = held_out(tmp_path / "run")
    best_input = max(table[name][SINGLE_TASK] for name in MODELS)
    assert table["MedSAMix"][SINGLE_TASK] > best_input, table


def test_multi_task_pick_beats_the_best_single_input_on_the_mean(tmp_path):
    tasks = list(task_specs(ZOO))
    config = load_search_config(write_config(tmp_path, tasks, trials=MULTI_TRIALS))
    Search(config, progress=False).run()
    run = tmp_path / "run"
    table = held_out(run)
    mean = {row: float(np.mean([values[t] for t in tasks])) for row, values in table.items()}
    assert mean["MedSAMix (picked)"] > max(mean[name] for name in MODELS), mean
    report = (run / "report" / "report.md").read_text()
    for png in ("objective.png", "recipe.png", "dice_test.png"):
        assert (run / "report" / png).stat().st_size > 10_000 and f"]({png})" in report
    assert json.loads((run / "pareto.json").read_text())["front"]

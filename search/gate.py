"""The export's quality gate: a merge is published only if it beats the best of its inputs on held-out cases.

The comparison is the mean over the model's tasks of the held-out (test split) Dice that every table of this
product reports (`search.scores`); each input runs under its own convention (from the search configuration the task
file came from, `sam` when the file does not say). The whole comparison goes into the manifest, passed or forced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.architectures import SamArchitecture
from search.baselines import trained_convention
from search.data import DataSpec, load_task
from search.evaluate import Evaluator
from search.merge.engine import load_recipe_inputs
from search.recipe import Recipe
from search.scores import score

SPLIT = "test"


def quality_gate(
    state: Mapping[str, Any],
    arch: SamArchitecture,
    normalization: str,
    recipe: Recipe | None,
    folder: Path,
    specs: Sequence[DataSpec],
    conventions: Mapping[str, str],
) -> dict[str, Any]:
    """Held-out Dice per task of the model (`state`, served under `normalization`) and, for a merge (`recipe`,
    whose relative input paths start at `folder`), of each of its inputs; the best input by mean and whether the
    model beats it strictly. A bare checkpoint has no inputs to beat: it passes, with `best_input` None."""
    loaded = {spec.name: load_task(spec) for spec in specs}
    tests = {name: parts.test for name, parts in loaded.items()}
    evaluator = Evaluator(arch)

    def test_dice(weights: Mapping[str, Any], convention: str) -> dict[str, float]:
        return {task: s[SPLIT] for task, s in score(evaluator, weights, convention, {SPLIT: tests}).items()}

    def mean(dice: Mapping[str, float]) -> float:
        return float(np.mean(list(dice.values())))

    model = test_dice(state, normalization)
    inputs: dict[str, dict[str, Any]] = {}
    if recipe is not None:
        engine = load_recipe_inputs(recipe, folder, device=evaluator.device)
        for i, name in enumerate(engine.names):
            convention = trained_convention(name, conventions)
            dice = test_dice(engine.input_state(i), convention)
            inputs[name] = {"dice": dice, "mean": mean(dice), "convention": convention}
    best = max(inputs, key=lambda name: inputs[name]["mean"]) if inputs else None
    return {
        "split": SPLIT,
        "metric": "mean over tasks of the case-mean Dice",
        "model": {"dice": model, "mean": mean(model), "convention": normalization},
        "inputs": inputs,
        "best_input": best,
        "passed": best is None or mean(model) > inputs[best]["mean"],
        "cases": {name: len({piece.case for piece in task.slices}) for name, task in tests.items()},
    }

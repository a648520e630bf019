"""How a search chooses its pick among its full-budget trials.

With two or three calibration cases per task, the best calibration score is partly the cases' noise: a configuration
far from anything known can top the table by fitting them, and lose on held-out cases (issue 14's measurements). Two
rules (`CHOICES`):

- `best`: the trial with the best objective (the paper's rule);
- `nearest`: among the trials *within noise* of the best (the paired case bootstrap of the best's lead over them,
  cases resampled within each task, does not exclude zero at 95%) and not below the best baseline trial (so the
  pick never scores below a baseline the report shows), the one whose merged weights lie nearest an input or a
  uniform baseline (relative L2 distance over every floating tensor); ties go to the better objective. The best
  baseline, when it is within noise of the best trial, is at distance 0 and is chosen over a merge that beat it on
  some calibration cases and lost on others: a search departs from what is known only where every resampling of
  its calibration cases says it helps, and then as little as the data allow.

The objective is the Pareto pick's (`mean`, `worst` or one task's Dice) over each task's case mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from search.scores import BOOTSTRAP_RESAMPLES

Choice = Literal["best", "nearest"]
CHOICES: tuple[str, ...] = get_args(Choice)
LEVEL = 0.95

Cases = Mapping[str, Mapping[str, float]]  # task -> case -> that case's Dice


def objective(dice: Mapping[str, Any], rule: str) -> Any:
    """The Pareto pick's score of per-task Dice (floats, or arrays of resampled Dice): their mean over tasks, their
    minimum, or one task's."""
    if rule == "mean":
        return sum(dice.values()) / len(dice)
    if rule == "worst":
        return np.minimum.reduce(list(dice.values()))
    return dice[rule]


def lead_interval(
    best: Cases, other: Cases, rule: str, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The 95% paired case-bootstrap interval of objective(best) - objective(other): the same resampled cases for
    both (the cases both were scored on), within each task."""
    rng = np.random.default_rng(seed)
    ours, theirs = {}, {}
    for task in best:
        shared = sorted(set(best[task]) & set(other[task]))
        drawn = rng.integers(0, len(shared), (resamples, len(shared)))
        ours[task] = np.array([best[task][c] for c in shared])[drawn].mean(axis=1)
        theirs[task] = np.array([other[task][c] for c in shared])[drawn].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(objective(ours, rule) - objective(theirs, rule), [tail, 100 - tail])
    return float(low), float(high)


def relative_distance(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """||state - reference|| / ||reference|| over every floating tensor of `reference` (float32 arithmetic)."""
    difference = total = 0.0
    for key, ref in reference.items():
        if not ref.is_floating_point():
            continue
        r = ref.float()
        difference += float((state[key].float() - r).square().sum())
        total += float(r.square().sum())
    return (difference / total) ** 0.5 if total else 0.0


def choose(
    entries: Sequence[dict[str, Any]],
    best: dict[str, Any],
    rule: str,
    choice: str,
    merged: Callable[[dict[str, Any]], Mapping[str, torch.Tensor]],
    references: Iterable[Mapping[str, torch.Tensor]],
    floor: float = float("-inf"),
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chosen entry among full-budget `entries` (each with `dice` and `cases`) and a record of how: `best` is
    the objective's best (or the Pareto pick), `merged(entry)` the weights of a trial, `references` the inputs' and
    uniform baselines' weights, `floor` the best baseline trial's objective."""
    record: dict[str, Any] = {"choice": choice, "rule": rule, "best_trial": best["trial"]}
    if choice == "best" or "cases" not in best:
        return best, {**record, "chosen_trial": best["trial"], "within_noise": [best["trial"]]}
    within = []
    for entry in entries:
        if "cases" not in entry or float(objective(entry["dice"], rule)) < floor:
            continue
        low, _ = lead_interval(best["cases"], entry["cases"], rule, seed=seed)
        if entry is best or low <= 0.0:
            within.append(entry)
    references = list(references)
    distances = {}
    for entry in within:
        state = merged(entry)
        distances[entry["trial"]] = min(relative_distance(state, ref) for ref in references)
    chosen = min(within, key=lambda e: (distances[e["trial"]], -float(objective(e["dice"], rule)), e["trial"]))
    return chosen, {
        **record,
        "chosen_trial": chosen["trial"],
        "within_noise": [e["trial"] for e in within],
        "distance": {str(k): round(v, 6) for k, v in distances.items()},
        "level": LEVEL,
        "resamples": BOOTSTRAP_RESAMPLES,
    }

"""One search trial, where it runs: merge a recipe on resident inputs, then score it on the calibration tasks.

A `TrialRunner` holds everything a trial needs that does not change between trials (input weights packed in the
merge engine, the evaluator's model, each task's slices under each of its intensity presets), so it is built once per
process. What travels to a worker per trial is the recipe as YAML and the budget, never weights: `run_trial` finds
(or builds, on its first call) the runner of its search in a per-process cache.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from search.checkpoints import load_checkpoint
from search.config import SearchConfig
from search.data import LoadedTask, load_task
from search.evaluate import Evaluator, case_means, mean_over_cases
from search.merge.engine import MergeEngine
from search.recipe import parse_recipe
from search.slices import Task
from search.trial_timing import Stopwatch


@dataclass
class TrialRunner:
    """Resident inputs, model and calibration tasks of one search in one process."""

    engine: MergeEngine
    evaluator: Evaluator
    hashes: dict[str, str]  # input name -> sha256 of its file
    loaded: dict[str, dict[str | None, LoadedTask]]  # task name -> intensity preset -> its calibration/test split
    stopwatch: Stopwatch

    def split(self, part: str, presets: Mapping[str, str] | None = None) -> dict[str, Task]:
        """Each task's `part` ("calibration" or "test") under `presets` (a recipe's choice; a task it does not
        name: its first preset)."""
        chosen = presets or {}
        return {name: getattr(by[chosen.get(name, next(iter(by)))], part) for name, by in self.loaded.items()}

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """load_task's record of each task's split (the same cases under every preset), written with the results."""
        return {name: next(iter(by.values())).split for name, by in self.loaded.items()}

    @classmethod
    def build(cls, config: SearchConfig) -> TrialRunner:
        hashes: dict[str, str] = {}

        def checkpoints():
            for model in (config.base, *config.models):
                checkpoint = load_checkpoint(model.path)
                hashes[model.name] = checkpoint.sha256
                yield model.name, checkpoint

        engine = MergeEngine.from_checkpoints(checkpoints(), device=resolve_device(config.device))
        evaluator = Evaluator(engine.arch, device=engine.device)
        loaded = {spec.name: {p: load_task(spec.with_preset(p)) for p in spec.presets} for spec in config.tasks}
        return cls(engine, evaluator, hashes, loaded, Stopwatch(engine.device))

    @classmethod
    def shared(cls, config: SearchConfig) -> TrialRunner:
        """This process's runner of `config`'s search, built on first use."""
        key = _runner_key(config)
        if key not in _RUNNERS:
            _RUNNERS[key] = cls.build(config)
        return _RUNNERS[key]

    def run(self, recipe_text: str, budget: int | None) -> dict[str, Any]:
        """Per-task calibration Dice of a recipe on the first `budget` slices of each task, each case's Dice (what
        the choice rule resamples), and where time went."""
        recipe = parse_recipe(recipe_text, source="trial recipe")
        with self.stopwatch("merge"):
            state = self.engine.merge_recipe(recipe)
            self.evaluator.load(state)
        normalization = recipe.preprocessing.normalization
        cases = {
            name: case_means(task, self.evaluator.dice(task, normalization, budget=budget))
            for name, task in self.split("calibration", recipe.preprocessing.presets).items()
        }
        dice = {name: mean_over_cases(by_case) for name, by_case in cases.items()}
        timings = {**self.stopwatch.take(), **self.evaluator.stopwatch.take()}
        return {"dice": dice, "cases": cases, "timings": timings}


_RUNNERS: dict[str, TrialRunner] = {}


def _runner_key(config: SearchConfig) -> str:
    return config.fingerprint() + config.device


def resolve_device(device: str) -> str | None:
    return None if device == "auto" else device


def run_trial(config_json: str, recipe_text: str, budget: int | None, threads: int | None = None) -> dict[str, Any]:
    """Run one trial in this process and report it as data: a failure is returned with its traceback (the search
    records it as CRASHED), never raised into the scheduler and never turned into a made-up score."""
    started = time.time()
    result: dict[str, Any] = {"worker": f"{os.uname().nodename}:{os.getpid()}", "started": started}
    try:
        config = SearchConfig.model_validate_json(config_json)
        result["fresh"] = _runner_key(config) not in _RUNNERS
        if result["fresh"] and threads is not None:
            torch.set_num_threads(threads)
        result.update(TrialRunner.shared(config).run(recipe_text, budget))
        result["status"] = "success"
    except Exception:  # noqa: BLE001 — reported as a crashed trial with its traceback
        result["status"] = "crashed"
        result["error"] = traceback.format_exc()
    result["ended"] = time.time()
    return result

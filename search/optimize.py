"""The search: SMAC proposes merge configurations, workers score them, the best recipe(s) and a report come out.

`Search` wires the parts, as SMAC's facades do: the run configuration, the inputs and calibration tasks, the space
(`search.space`), SMAC's facade (random-forest surrogate + EI; `MultiFidelityFacade` with Hyperband over the slice
budget when `budget.min < budget.max`; several tasks: one objective per task scalarised by `ParEGO`, passed to the
facade), the executor (this process, or Dask workers that keep their inputs resident), the journal and the outputs.

SMAC is driven by ask/tell. Every finished trial goes to the journal (`trials.jsonl`) before the next is asked for.
Rerunning the same command replays the journal into a fresh SMAC: each recorded trial is asked for again and told
its recorded result, so SMAC's random state, surrogate and intensifier are exactly where they were and a
single-worker search continues as if it had never stopped; with several workers the order of results is not
reproducible, and recorded trials SMAC does not ask for again are told as they are. No completed trial is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ConfigSpace import Configuration
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, Scenario
from smac.initial_design import RandomInitialDesign
from smac.multi_objective.parego import ParEGO
from smac.runhistory.dataclasses import TrialInfo, TrialValue
from smac.runhistory.enumerations import StatusType

from search.baselines import baselines, initial_configurations
from search.choice import choose, objective
from search.config import ConfigError, SearchConfig
from search.errors import MedSAMixError
from search.files import atomic_write
from search.journal import Journal
from search.merge.engine import MergeEngine
from search.recipe import InputModel, Recipe, recipe_yaml, save_recipe
from search.space import SearchSpace
from search.worker import TrialRunner, run_trial

CRASH_LIMIT = 5  # consecutive crashed trials that stop a search: something is broken, not unlucky
CRASH_COST = 1.0  # 1 - Dice of an empty prediction: what SMAC's surrogate is told a crashed trial scored


class SearchError(MedSAMixError):
    """A search that cannot go on (its trials keep crashing, or its output folder holds another search)."""


def _plain(config: Configuration | Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as JSON gives it back (numpy scalars made Python), so recorded and asked ones compare."""
    return json.loads(json.dumps({k: v.item() if hasattr(v, "item") else v for k, v in dict(config).items()}))


def pareto_front(points: list[list[float]]) -> list[int]:
    """Indices of the non-dominated points (costs, lower is better; duplicates of a front point all stay)."""
    array = np.asarray(points, dtype=float)
    keep = []
    for i, p in enumerate(array):
        dominated = np.any(np.all(array <= p, axis=1) & np.any(array < p, axis=1))
        if not dominated:
            keep.append(i)
    return keep


def reference_states(
    engine: MergeEngine, space: SearchSpace, conventions: Mapping[str, str]
) -> list[dict[str, torch.Tensor]]:
    """The weights the `nearest` choice measures distance to: each input, and each uniform baseline merged once
    (its conventions share the weights) and copied, since a merge is a view of the engine's one output buffer."""
    states = [engine.input_state(i) for i in range(len(engine.names))]
    uniform = {b.row: b.config for b in baselines(space, conventions) if b.row not in engine.names}
    for config in uniform.values():
        states.append({k: v.clone() for k, v in engine.merge_recipe(space.to_recipe(config)).items()})
    return states


def pick_index(dice: list[dict[str, float]], rule: str) -> int:
    """The stated rule that picks one model off a front: best mean Dice over tasks, best worst-task Dice, or best
    Dice on one named task; ties go to the earlier trial."""
    return int(np.argmax([float(objective(d, rule)) for d in dice]))


class InProcess:
    """Trials run one at a time in this process (the runner stays resident between them)."""

    capacity = 1

    def __init__(self, config: SearchConfig) -> None:
        self.config_json = config.model_dump_json()
        self.pending: list[tuple[int, str, int | None]] = []

    def submit(self, key: int, recipe_text: str, budget: int | None) -> None:
        self.pending.append((key, recipe_text, budget))

    def next_result(self) -> tuple[int, dict[str, Any]]:
        key, recipe_text, budget = self.pending.pop(0)
        return key, run_trial(self.config_json, recipe_text, budget)

    def close(self) -> None:
        pass


class DaskPool:
    """Trials on Dask workers: a local cluster of `workers` processes, or an existing scheduler's workers.

    Each worker builds its runner on its first trial and keeps it; a trial ships its recipe text and budget."""

    def __init__(self, config: SearchConfig, workers: int, scheduler: str | None) -> None:
        from distributed import Client, LocalCluster

        self.config_json = config.model_dump_json()
        self.cluster = None
        if scheduler is not None:
            try:
                self.client = Client(scheduler, timeout="10s")
            except OSError as error:
                raise SearchError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
            self.client.wait_for_workers(1, timeout=60)
            self.threads = None
        else:
            self.cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            )
            self.client = Client(self.cluster)
            self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.capacity = len(self.client.scheduler_info()["workers"])
        self.futures: dict[Any, int] = {}

    def submit(self, key: int, recipe_text: str, budget: int | None) -> None:
        future = self.client.submit(
            run_trial, self.config_json, recipe_text, budget, self.threads, pure=False, key=f"medsamix-trial-{key}"
        )
        self.futures[future] = key

    def next_result(self) -> tuple[int, dict[str, Any]]:
        from distributed import wait

        done = wait(list(self.futures), return_when="FIRST_COMPLETED").done
        future = min(done, key=lambda f: self.futures[f])
        key = self.futures.pop(future)
        try:
            return key, future.result()
        except Exception as error:  # noqa: BLE001 — a lost worker is a crashed trial, told as such
            return key, {"status": "crashed", "error": f"the Dask worker failed: {error!r}", "worker": "?"}

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _budget(info: TrialInfo) -> int:
    """A multi-fidelity trial's budget (SMAC's float) as the whole number of slices it is evaluated on."""
    assert info.budget is not None, "a multi-fidelity intensifier gives every trial a budget"
    return round(info.budget)


def _ask(smac) -> TrialInfo:
    """SMAC's next trial, without the "Mean of empty slice" RuntimeWarning it raises on most asks: SMAC 2.4's
    LocalSearch._search (smac/acquisition/maximizer/local_search.py) ends with a debug log of np.mean(times), its
    timings of vectorised steps, computed even when no step was timed. It says nothing about the search."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        return smac.ask()


@dataclass
class SearchResult:
    """What a finished search found: the picked configuration and, for several tasks, the Pareto front."""

    best: Recipe
    best_dice: dict[str, float]
    front: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)  # the journal entry of `best`
    choice: dict[str, Any] = field(default_factory=dict)  # how it was chosen (search.choice)


class Search:
    """One search run in `config.output`: the same call after an interruption resumes it."""

    def __init__(
        self,
        config: SearchConfig,
        overwrite: bool = False,
        progress: bool = True,
        report: bool = True,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.out = Path(config.output)
        self.overwrite = overwrite
        self.show_progress = progress
        self.write_report = report
        self.console = console or Console(stderr=True)
        self.journal = Journal(self.out / "trials.jsonl")
        self.tasks = [t.name for t in config.tasks]

    # -------------------------------------------------------------------------------------------------------------
    # Set-up
    # -------------------------------------------------------------------------------------------------------------
    def _resumes(self) -> bool:
        """Whether the output folder holds this search (resume) or nothing (start); another search is refused.

        Nothing is written or deleted here: that waits for `_claim_output`, once every input has loaded."""
        marker = self.out / "search.json"
        if self.overwrite or not marker.exists():
            return False
        if json.loads(marker.read_text()).get("fingerprint") != self.config.fingerprint():
            raise ConfigError(
                f"{self.out} holds a different search (its configuration changed); choose another output "
                "folder or pass --overwrite to start again there"
            )
        return True

    def _claim_output(self, resumes: bool) -> None:
        """Mark the output folder as this search's, after its checkpoints, tasks and space proved valid: a
        configuration refused on the way (a missing file, a bad task) leaves no marker that its fixed version
        would then be refused by."""
        if resumes:
            return
        if self.overwrite and self.out.exists():
            shutil.rmtree(self.out)
        marker = self.out / "search.json"
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"fingerprint": self.config.fingerprint(), "config": self.config.model_dump(mode="json")}
        atomic_write(marker, lambda temp: temp.write_text(json.dumps(record, indent=2)))

    def _input_models(self, runner: TrialRunner) -> tuple[InputModel, list[InputModel]]:
        """Recipe entries for the inputs: paths relative to the output folder (recipes live there), with sha256."""
        made = [
            InputModel(name=m.name, path=os.path.relpath(m.path, self.out), sha256=runner.hashes[m.name])
            for m in (self.config.base, *self.config.models)
        ]
        return made[0], made[1:]

    def _budgets(self, runner: TrialRunner) -> tuple[int, int]:
        largest = max(len(t.slices) for t in runner.split("calibration").values())
        high = min(self.config.budget.max or largest, largest)
        low = min(self.config.budget.min or high, high)
        return low, high

    def _facade(self, space: SearchSpace, low: int, high: int):
        config = self.config
        multi_fidelity = low < high
        scenario = Scenario(
            space.space,
            name="smac",
            output_directory=self.out / "smac",
            deterministic=True,
            objectives=self.tasks if config.multi_task else "cost",
            crash_cost=[CRASH_COST] * len(self.tasks) if config.multi_task else CRASH_COST,
            n_trials=config.trials,
            min_budget=low if multi_fidelity else None,
            max_budget=high if multi_fidelity else None,
            seed=config.seed,
        )
        facade = MultiFidelityFacade if multi_fidelity else HyperparameterOptimizationFacade
        informed = initial_configurations(space, config.conventions, config.initial_design.lambdas)
        measured = len(baselines(space, config.conventions))
        if config.trials < measured:
            self.console.print(
                f"warning: {config.trials} trials cannot hold the {measured} baselines the report scores; the pick "
                "may score below one of them on calibration"
            )
        informed = informed[: config.trials]
        initial = RandomInitialDesign(
            scenario,
            n_configs=min(config.initial_design.random, config.trials - len(informed)),
            max_ratio=1.0,
            additional_configs=informed,
        )
        extra: dict[str, Any] = {}
        if config.multi_task:
            extra["multi_objective_algorithm"] = ParEGO(scenario, rho=0.05)
        if multi_fidelity:
            # Incumbents only from the full budget: what the search reports, and with several objectives SMAC's
            # Pareto front of mixed budgets trips its own consistency check (SMAC3 issue #1050).
            extra["intensifier"] = MultiFidelityFacade.get_intensifier(scenario, incumbent_selection="highest_budget")
        else:
            extra["intensifier"] = HyperparameterOptimizationFacade.get_intensifier(scenario, max_config_calls=1)
        return facade(scenario, None, initial_design=initial, overwrite=True, logging_level=40, **extra), multi_fidelity

    # -------------------------------------------------------------------------------------------------------------
    # The loop
    # -------------------------------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        resumes = self._resumes()
        runner = TrialRunner.shared(self.config)
        base, models = self._input_models(runner)
        space = SearchSpace(runner.engine.arch, base, models, self.config.space_spec(), self.config.seed)
        low, high = self._budgets(runner)
        self._claim_output(resumes)
        smac, multi_fidelity = self._facade(space, low, high)
        recorded = self.journal.read()
        entries = self._replay(smac, recorded, multi_fidelity)
        config = self.config
        executor = (
            DaskPool(config, config.workers, config.scheduler)
            if config.workers > 1 or config.scheduler
            else InProcess(config)
        )
        crashes = 0
        in_flight: dict[int, tuple[TrialInfo, float, int]] = {}  # key -> (trial, SMAC's seconds, budget)
        columns = (
            TextColumn("[bold]search[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials · best Dice {task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, console=self.console, disable=not self.show_progress) as progress:
                bar = progress.add_task(
                    "search", total=config.trials, completed=len(entries), best=_best(entries, high)
                )
                asked = len(entries)
                while True:
                    while len(in_flight) < executor.capacity and asked < config.trials:
                        start = time.perf_counter()
                        info = _ask(smac)
                        recipe = space.to_recipe(info.config)
                        budget = _budget(info) if multi_fidelity else high
                        executor.submit(asked, recipe_yaml(recipe), budget)
                        in_flight[asked] = (info, time.perf_counter() - start, budget)
                        asked += 1
                    if not in_flight:
                        break
                    key, returned = executor.next_result()
                    info, smac_s, budget = in_flight.pop(key)
                    start = time.perf_counter()
                    entry = self._record(key, info, budget, returned)
                    smac.tell(info, self._value(entry))
                    entry["timings"]["smac"] = smac_s + time.perf_counter() - start
                    self.journal.append(entry)
                    entries.append(entry)
                    crashes = crashes + 1 if entry["status"] == "crashed" else 0
                    if crashes >= CRASH_LIMIT:
                        last = entry["error"].strip().splitlines()[-1]
                        raise SearchError(
                            f"{crashes} trials in a row crashed, the last with '{last}'; the tracebacks are in "
                            f"{self.journal.path}"
                        )
                    progress.update(bar, completed=len(entries), best=_best(entries, high))
        finally:
            executor.close()
        result = self._result(space, runner, entries, high)
        self._write_outputs(result, space)
        if self.write_report:
            self._report(runner, result, space)
        return result

    def _report(self, runner: TrialRunner, result: SearchResult, space: SearchSpace) -> None:
        """Write the report under its own progress bar: scoring every input and baseline on both splits can take as
        long as the search did."""
        from search.report import write_report

        columns = (TextColumn("[bold]report[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("models scored"))
        timing = (TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, *timing, console=self.console, disable=not self.show_progress) as progress:
            rows = progress.add_task("report", total=None)
            scored = lambda done, total: progress.update(rows, completed=done, total=total)  # noqa: E731
            write_report(self.out, self.config, runner, result, space, scored)

    def _replay(self, smac, recorded: list[dict[str, Any]], multi_fidelity: bool) -> list[dict[str, Any]]:
        """Tell a fresh SMAC every recorded trial, asking for each again first (see the module docstring)."""
        pending = list(recorded)
        replayed: list[dict[str, Any]] = []
        while pending:
            info = _ask(smac)
            asked = _plain(info.config)
            budget = _budget(info) if multi_fidelity else None
            match = next(
                (e for e in pending if e["config"] == asked and (budget is None or e["budget"] == budget)), None
            )
            if match is None:  # the order differs (several workers): tell the rest as recorded
                for entry in pending:
                    config = Configuration(smac.scenario.configspace, values=entry["config"])
                    trial = TrialInfo(config, seed=info.seed, budget=entry["budget"] if multi_fidelity else None)
                    smac.tell(trial, self._value(entry), save=False)
                replayed += pending
                break
            pending.remove(match)
            smac.tell(info, self._value(match), save=False)
            replayed.append(match)
        if recorded:
            smac.optimizer.save()
            self.console.print(f"resumed: {len(replayed)} finished trials replayed from {self.journal.path}")
        return replayed

    def _record(self, key: int, info: TrialInfo, budget: int, result: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "trial": key,
            "config": _plain(info.config),
            "budget": budget,
            "status": result["status"],
            "worker": result.get("worker"),
            "fresh_worker": result.get("fresh", False),
            "started": result.get("started"),
            "ended": result.get("ended"),
            "timings": dict(result.get("timings", {})),
        }
        if result["status"] == "success":
            entry["dice"] = {name: result["dice"][name] for name in self.tasks}
            entry["cases"] = {name: result["cases"][name] for name in self.tasks}
        else:
            entry["error"] = result.get("error", "")
        return entry

    def _value(self, entry: dict[str, Any]) -> TrialValue:
        if entry["status"] == "success":
            costs = [1.0 - entry["dice"][name] for name in self.tasks]
            status = StatusType.SUCCESS
        else:
            costs = [CRASH_COST] * len(self.tasks)
            status = StatusType.CRASHED
        return TrialValue(
            cost=costs if self.config.multi_task else costs[0],
            time=(entry.get("ended") or 0.0) - (entry.get("started") or 0.0),
            status=status,
            starttime=entry.get("started") or 0.0,
            endtime=entry.get("ended") or 0.0,
        )

    # -------------------------------------------------------------------------------------------------------------
    # Results
    # -------------------------------------------------------------------------------------------------------------
    def _result(
        self, space: SearchSpace, runner: TrialRunner, entries: list[dict[str, Any]], high: int
    ) -> SearchResult:
        full = [e for e in entries if e["status"] == "success" and e["budget"] == high]
        if not full:
            raise SearchError(
                f"no trial finished on the full budget of {high} slices; give more trials (now {self.config.trials})"
            )
        costs = [[1.0 - e["dice"][t] for t in self.tasks] for e in full]
        front = [full[i] for i in pareto_front(costs)]
        rule = self.config.pick if self.config.multi_task else self.tasks[0]
        best = front[pick_index([e["dice"] for e in front], rule)]
        engine = runner.engine
        merged = lambda entry: engine.merge_recipe(space.to_recipe(entry["config"]))  # noqa: E731
        configs = [_plain(b.config) for b in baselines(space, self.config.conventions)]
        floor = max((float(objective(e["dice"], rule)) for e in full if e["config"] in configs), default=-np.inf)
        references = reference_states(engine, space, self.config.conventions) if self.config.choice != "best" else []
        chosen, record = choose(full, best, rule, self.config.choice, merged, references, floor, self.config.seed)
        return SearchResult(
            best=space.to_recipe(chosen["config"]),
            best_dice=chosen["dice"],
            front=front if self.config.multi_task else [],
            entries=entries,
            chosen=chosen,
            choice=record,
        )

    def _write_outputs(self, result: SearchResult, space: SearchSpace) -> None:
        save_recipe(result.best, self.out / "best.yaml")
        record = json.dumps(result.choice, indent=2)
        atomic_write(self.out / "choice.json", lambda temp: temp.write_text(record))
        if result.front:
            front = []
            for i, entry in enumerate(result.front):
                path = self.out / "pareto" / f"{i:02d}.yaml"
                save_recipe(space.to_recipe(entry["config"]), path)
                front.append(
                    {"trial": entry["trial"], "dice": entry["dice"], "recipe": str(path.relative_to(self.out))}
                )
            text = json.dumps({"pick": self.config.pick, "front": front}, indent=2)
            atomic_write(self.out / "pareto.json", lambda temp: temp.write_text(text))


def _best(entries: list[dict[str, Any]], budget: int) -> str:
    """Best mean calibration Dice so far on the full budget (what the progress bar shows)."""
    scores = [np.mean(list(e["dice"].values())) for e in entries if e["status"] == "success" and e["budget"] == budget]
    return f"{max(scores):.4f}" if scores else "—"

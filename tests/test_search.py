"""The search: its space, configuration, journal, Pareto pick, and whole runs on the tiny zoo (single task,
ParEGO, Hyperband, kill -9 and resume, two Dask workers, crashes), checked against the product's own scoring."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ConfigSpace import Configuration

from search.architectures import ARCHITECTURES
from search.baselines import baselines, initial_configurations
from search.config import ConfigError, SearchConfig, load_search_config, load_task_specs, parse_search_config
from search.journal import Journal
from search.optimize import Search, SearchError, pareto_front, pick_index
from search.recipe import InputModel, load_recipe, recipe_yaml
from search.space import SearchSpace, SpaceSpec
from search.worker import TrialRunner
from search.zoo import search_config
from tests.cli_runs import write_config
from tests.conftest import ZOO

INPUTS = [InputModel(name="base", path="b"), InputModel(name="ct", path="c"), InputModel(name="mr", path="m")]
METHODS = ["linear", "task_arithmetic", "ties", "slerp", "pick"]


def space(granularity=None, methods=METHODS, normalizations=("sam", "medsam"), structure="flat") -> SearchSpace:
    granularity = granularity or {"encoder": [2], "prompt": [1], "decoder": [2]}
    spec = SpaceSpec(granularity, methods, normalizations, structure)
    return SearchSpace(ARCHITECTURES["tiny"], INPUTS[0], INPUTS[1:], spec, seed=0)


def journal(folder: Path) -> list[dict]:
    return Journal(folder / "trials.jsonl").read()


def recipe_text(config: SearchConfig, runner: TrialRunner, entry: dict) -> str:
    """The recipe YAML of a journal entry, made here from its configuration."""
    base, models = Search(config)._input_models(runner)
    searched = SearchSpace(runner.engine.arch, base, models, config.space_spec(), config.seed)
    return recipe_yaml(searched.to_recipe(entry["config"]))


def outcome(entries: list[dict]) -> list[tuple]:
    """What a trial decided (not when or where it ran)."""
    return [
        (e["trial"], json.dumps(e["config"], sort_keys=True), e["budget"], e["status"], e.get("dice")) for e in entries
    ]


# ------------------------------------------------------------------------------------------------------------------
# The space
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["flat", "structured"])
def test_every_sampled_configuration_is_a_valid_recipe_and_maps_back(structure):
    searched = space({"encoder": [1, 2, 3, 4], "prompt": [1, 4], "decoder": [1, 2, 4]}, structure=structure)
    for config in searched.space.sample_configuration(40):
        recipe = searched.to_recipe(config)
        plan = recipe.plan(ARCHITECTURES["tiny"])  # every group named once, every parameter in range
        assert len(plan) == len(recipe.groups)
        entries = {g.group: (g.method, g.params) for g in recipe.groups}
        back = searched.configuration(recipe.granularity.to_granularity(), recipe.preprocessing.normalization, entries)
        # Flat: one configuration per recipe. Structured: several write the same recipe (a group's own merge equal to
        # the global one), and the recipe's canonical configuration writes it back.
        assert back == config if structure == "flat" else searched.to_recipe(back) == recipe


def test_the_structured_space_gives_every_group_the_global_merge_unless_it_has_its_own():
    searched = space(structure="structured")
    groups = searched._groups_at[searched.granularities()[0]]
    config = searched.uniform("ties", {"density": 0.3, "lambda": 0.7})
    values = dict(config)
    assert values["global/method"] == "ties" and all(values[f"{g}/own"] == "no" for g in groups)
    assert not any(key.startswith(f"{g}/ties") or key == f"{g}/method" for g in groups for key in values)
    recipe = searched.to_recipe(config)
    assert all(e.method == "ties" and (e.params["density"], e.params["lambda"]) == (0.3, 0.7) for e in recipe.groups)
    assert len({json.dumps(e.params, sort_keys=True) for e in recipe.groups}) == 1
    # One group refined: only it has its own method; the others keep the global merge.
    own = {**values, f"{groups[3]}/own": "yes", f"{groups[3]}/method": "pick", f"{groups[3]}/pick.model": "mr"}
    refined = searched.to_recipe(Configuration(searched.space, values=own))
    assert [(e.group, e.method) for e in refined.groups if e.method != "ties"] == [(groups[3], "pick")]
    # Random configurations start mostly global (OWN_WEIGHT), so the few global dimensions are covered first.
    sampled = searched.space.sample_configuration(200)
    share = np.mean([dict(c)[f"{g}/own"] == "yes" for c in sampled for g in groups])
    assert 0.1 < share < 0.3
    assert len(searched.space) > len(space().space)  # the flat space's per-group dimensions are all still there


def test_method_parameters_exist_only_when_the_method_is_chosen():
    fixed = space()
    config = fixed.uniform("ties", {"density": 0.3, "lambda": 0.7})
    values = dict(config)
    assert values["image_encoder.blocks.0-1/method"] == "ties"
    assert values["image_encoder.blocks.0-1/ties.density"] == 0.3
    assert not any("/linear." in k or "/pick." in k or "/slerp." in k for k in values)
    linear = dict(fixed.uniform("linear"))
    assert {k for k in linear if k.startswith("image_encoder.neck/linear.weights")} == {
        "image_encoder.neck/linear.weights.base",
        "image_encoder.neck/linear.weights.ct",
        "image_encoder.neck/linear.weights.mr",
    }


def test_searched_granularity_switches_the_groups():
    searched = space({"encoder": [1, 4], "prompt": [1], "decoder": [2]})
    fine = searched.to_recipe(searched.space.get_default_configuration())
    assert fine.granularity.encoder == 1 and "image_encoder.blocks.7" in [g.group for g in fine.groups]
    values = dict(searched.space.get_default_configuration())
    values = {k: v for k, v in values.items() if "blocks." not in k} | {"granularity/encoder": 4}
    values |= {f"image_encoder.blocks.{r}/method": "pick" for r in ("0-3", "4-7", "8-11")}
    values |= {f"image_encoder.blocks.{r}/pick.model": "ct" for r in ("0-3", "4-7", "8-11")}
    coarse = searched.to_recipe(Configuration(searched.space, values=values))
    assert [g.group for g in coarse.groups if "blocks" in g.group] == [
        f"image_encoder.blocks.{r}" for r in ("0-3", "4-7", "8-11")
    ]


def test_initial_design_holds_every_baseline_under_each_allowed_convention_then_the_informed_extras():
    fixed = space()
    conventions = {"base": "sam", "ct": "sam", "mr": "medsam"}
    configs = initial_configurations(fixed, conventions, [0.3, 1.0])
    recipes = [fixed.to_recipe(c) for c in configs]
    described = [
        (r.groups[0].method, json.dumps(r.groups[0].params, sort_keys=True), r.preprocessing.normalization)
        for r in recipes
    ]
    # Each input alone under each convention, its training convention first.
    assert described[:6] == [
        ("pick", '{"model": "base"}', "sam"),
        ("pick", '{"model": "base"}', "medsam"),
        ("pick", '{"model": "ct"}', "sam"),
        ("pick", '{"model": "ct"}', "medsam"),
        ("pick", '{"model": "mr"}', "medsam"),
        ("pick", '{"model": "mr"}', "sam"),
    ]
    # Each uniform baseline at its declared defaults under each convention.
    uniform = [(m, n) for m in ("linear", "task_arithmetic", "ties", "slerp") for n in ("sam", "medsam")]
    assert [(d[0], d[2]) for d in described[6:14]] == uniform
    assert [r.groups[0].params.get("lambda") for r in recipes[6:14]] == [None, None, 0.5, 0.5, 1.0, 1.0, None, None]
    # Then task arithmetic and TIES at the given lambdas (TIES at λ = 1 is its default, kept once), and each
    # fine-tune plus a share of the other's task vector under its own convention.
    assert [(d[0], r.groups[0].params["lambda"]) for d, r in zip(described[14:17], recipes[14:17], strict=True)] == [
        ("task_arithmetic", 0.3),
        ("task_arithmetic", 1.0),
        ("ties", 0.3),
    ]
    borrowing = [(r.groups[0].params["weights"], r.preprocessing.normalization) for r in recipes[17:]]
    assert borrowing == [
        ({"ct": 1.0, "mr": 0.3}, "sam"),
        ({"ct": 0.3, "mr": 1.0}, "medsam"),
        ({"ct": 1.0, "mr": 1.0}, "medsam"),
    ]
    for recipe in recipes:  # the same method everywhere
        assert len({(g.method, json.dumps(g.params, sort_keys=True)) for g in recipe.groups}) == 1
    # Every baseline the report scores is in the design, and nothing twice.
    assert {b.config for b in baselines(fixed, conventions)} <= set(configs) and len(set(configs)) == len(configs)
    # Without `pick`, an input alone is linear with all weight on it.
    narrow = space(methods=["linear", "ties"], normalizations=("sam",))
    alone = [narrow.to_recipe(c).groups[0] for c in initial_configurations(narrow, {}, [0.5])]
    assert [(g.method, g.params.get("weights")) for g in alone[:3]] == [
        ("linear", {"base": 1.0, "ct": 0.0, "mr": 0.0}),
        ("linear", {"base": 0.0, "ct": 1.0, "mr": 0.0}),
        ("linear", {"base": 0.0, "ct": 0.0, "mr": 1.0}),
    ]
    assert [g.method for g in alone[3:]] == ["linear", "ties", "ties"]


# ------------------------------------------------------------------------------------------------------------------
# Configuration, journal, Pareto pick
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["linear", "magic"]}, "unknown merge method 'magic'"),
        ({"granularity": {"encoder": [0]}}, "granularity encoder must be a whole number >= 1"),
        ({"granularity": {"encoderr": 2}}, "unknown granularity component 'encoderr'"),
        ({"pick": "best"}, "pick must be 'mean', 'worst' or a task name"),
        ({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "either workers"),
        ({"budget": {"min": 8, "max": 4}}, "budget min (8) must not exceed max (4)"),
        ({"trials": 0}, "trials"),
        ({"initial_design": {"lambdas": [1.5]}}, "lambdas must lie in [0, 1]"),
        ({"normalizations": ["sam", "imagenet"]}, "normalizations.1"),
    ],
)
def test_config_errors_name_the_field(change, message):
    data = search_config(Path("zoo"), ["ct_kidney", "mr_white_matter"]) | change
    with pytest.raises(ConfigError, match=None) as error:
        parse_search_config(yaml.safe_dump(data), "search.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_errors_for_bad_yaml_and_repeated_names(tmp_path):
    with pytest.raises(ConfigError, match="search.yaml is not valid YAML at line 1"):
        parse_search_config("base: [1, 2", "search.yaml")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_search_config("- 1\n- 2\n", "search.yaml")
    data = search_config(Path("zoo"), ["ct_kidney", "ct_kidney"])
    with pytest.raises(ConfigError, match="task name 'ct_kidney' is used twice"):
        parse_search_config(yaml.safe_dump(data), "search.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_config(tmp_path / "missing.yaml")


def test_config_paths_are_relative_to_its_folder(tmp_path):
    path = tmp_path / "cfg" / "search.yaml"
    path.parent.mkdir()
    data = search_config(Path("../zoo"), ["ct_kidney"], output="runs/a")
    path.write_text(yaml.safe_dump(data))
    config = load_search_config(path)
    assert config.base.path == (tmp_path / "zoo" / "sam_tiny.pth").resolve()
    assert config.tasks[0].path == (tmp_path / "zoo" / "datasets" / "Dataset001_CTAbdomen").resolve()
    assert config.output == (tmp_path / "cfg" / "runs" / "a").resolve()
    assert load_task_specs(path)[0].path == (tmp_path / "cfg" / "../zoo/datasets/Dataset001_CTAbdomen")
    # Where and how long a search runs is not part of what it is; what it searches is.
    assert config.model_copy(update={"workers": 4, "trials": 999}).fingerprint() == config.fingerprint()
    assert config.model_copy(update={"seed": 1}).fingerprint() != config.fingerprint()


def test_journal_survives_a_torn_last_line(tmp_path):
    log = Journal(tmp_path / "trials.jsonl")
    log.append({"trial": 0, "dice": 0.5})
    log.append({"trial": 1, "dice": 0.6})
    with open(log.path, "ab") as f:
        f.write(b'{"trial": 2, "di')  # killed mid-write
    assert [e["trial"] for e in log.read()] == [0, 1]
    log.append({"trial": 2, "dice": 0.7})
    assert [e["trial"] for e in log.read()] == [0, 1, 2]


def test_pareto_front_and_pick_rules():
    rng = np.random.default_rng(0)
    points = rng.random((60, 3)).tolist()
    front = set(pareto_front(points))
    for i, p in enumerate(points):  # brute force: i is on the front iff nothing dominates it
        dominated = any(all(q[k] <= p[k] for k in range(3)) and q != p for q in points)
        assert (i in front) == (not dominated)
    dice = [{"a": 0.9, "b": 0.5}, {"a": 0.7, "b": 0.8}, {"a": 0.6, "b": 0.75}]
    assert pick_index(dice, "mean") == 1
    assert pick_index(dice, "worst") == 1
    assert pick_index(dice, "a") == 0


# ------------------------------------------------------------------------------------------------------------------
# Whole searches on the zoo
# ------------------------------------------------------------------------------------------------------------------


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "search.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_single_task_search_writes_recipe_report_and_smac_files(tmp_path):
    path = write_config(tmp_path, ["mr_white_matter"], trials=14, initial_design={"lambdas": [0.5], "random": 4})
    done = run_cli("search", str(path))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    entries = journal(run)
    assert len(entries) == 14 and all(e["status"] == "success" for e in entries)
    best = max(entries, key=lambda e: e["dice"]["mr_white_matter"])
    # The best recipe replays to exactly the Dice its trial recorded.
    recipe = load_recipe(run / "best.yaml")
    config = load_search_config(path)
    runner = TrialRunner.build(config)
    assert recipe.input_names == ["base", "ct_specialist", "mr_specialist"]
    replay = runner.run((run / "best.yaml").read_text(), None)
    assert replay["dice"]["mr_white_matter"] == pytest.approx(best["dice"]["mr_white_matter"], abs=1e-12)
    assert (run / "smac" / "smac" / "0" / "runhistory.json").exists()
    report = (run / "report" / "report.md").read_text()
    for png in ("objective.png", "recipe.png", "dice_test.png"):
        assert (run / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    scores = json.loads((run / "report" / "scores.json").read_text())
    assert set(scores["dice"]) >= {"base", "ct_specialist", "mr_specialist", "uniform ties", "MedSAMix"}
    # The pick's calibration score comes with its case-bootstrap interval, around the score the table shows.
    interval = scores["calibration_interval"]
    assert (
        interval["model"] == "MedSAMix"
        and interval["mean"] == scores["dice"]["MedSAMix"]["mr_white_matter"]["calibration"]
    )
    assert interval["low"] <= interval["mean"] <= interval["high"] and interval["cases"] >= 2
    assert f"interval of {interval['low']:.4f}-{interval['high']:.4f}" in report
    # The report's scoring shows progress after the search's bar: every row it scored, counted.
    assert re.search(rf"report .* {len(scores['dice'])}/{len(scores['dice'])} models scored", done.stdout), done.stdout
    assert scores["dice"]["MedSAMix"]["mr_white_matter"]["calibration"] == pytest.approx(
        best["dice"]["mr_white_matter"], abs=1e-12
    )
    # `medsamix evaluate` prints the same held-out Dice for the recipe.
    shown = run_cli("evaluate", str(run / "best.yaml"), "--tasks", str(path), "--split", "test")
    assert done.returncode == 0, shown.stderr
    assert f"{scores['dice']['MedSAMix']['mr_white_matter']['test']:.4f}" in shown.stdout
    # ... beside each of its inputs, under its training convention, as the report scored them.
    for name in ("base", "ct_specialist", "mr_specialist"):
        line = next(line for line in shown.stdout.splitlines() if line.startswith(f"│ {name} "))
        assert scores["conventions"][name] in line
        assert f"{scores['dice'][name]['mr_white_matter']['test']:.4f}" in line


@pytest.mark.slow
@pytest.mark.parametrize("structure, choice", [("flat", "best"), ("structured", "nearest")])
def test_the_pick_is_never_below_a_baseline_the_report_scores(tmp_path, structure, choice):
    # medsam first: the uniform baselines under sam (the best ones on this task) are the second convention searched.
    settings = {
        "methods": ["linear", "ties", "pick"],
        "normalizations": ["medsam", "sam"],
        "initial_design": {"lambdas": [0.5], "random": 0},
        "space": structure,
        "choice": choice,
    }
    config = load_search_config(write_config(tmp_path, ["mr_white_matter"], trials=12, **settings))
    result = Search(config, progress=False).run()
    scores = json.loads((tmp_path / "run" / "report" / "scores.json").read_text())
    calibration = {row: tasks["mr_white_matter"]["calibration"] for row, tasks in scores["dice"].items()}
    picked = calibration.pop("MedSAMix")
    assert picked == result.best_dice["mr_white_matter"]
    assert set(calibration) == {"base", "ct_specialist", "mr_specialist", "uniform linear", "uniform ties"}
    assert all(picked >= score for score in calibration.values()), calibration
    # Each score the report shows is one the search measured: a trial of the journal recorded exactly it.
    measured = [e["dice"]["mr_white_matter"] for e in journal(tmp_path / "run")]
    for row, score in calibration.items():
        assert any(abs(score - m) < 1e-12 for m in measured), row


@pytest.mark.slow
def test_evaluate_a_checkpoint_matches_the_zoo_premise_table(tmp_path):
    path = write_config(tmp_path, ["ct_kidney"])
    shown = run_cli("evaluate", str(ZOO / "ct_specialist_tiny.pt"), "--tasks", str(path), "--split", "test")
    assert shown.returncode == 0, shown.stderr
    premise = json.loads((ZOO / "zoo.json").read_text())["premise"]["table"]
    assert f"{premise['ct_specialist']['ct_kidney']:.4f}" in shown.stdout
    bad = run_cli("evaluate", str(tmp_path / "nothing.pt"), "--tasks", str(path))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


@pytest.mark.filterwarnings("error:Mean of empty slice:RuntimeWarning")  # SMAC's, silenced where we ask
@pytest.mark.slow
def test_multi_task_search_passes_parego_and_uses_the_budget(tmp_path):
    path = write_config(
        tmp_path,
        ["ct_kidney", "mr_white_matter"],
        trials=16,
        budget={"min": 3, "max": 12},
        initial_design={"lambdas": [0.5], "random": 2},
    )
    config = load_search_config(path)
    result = Search(config, progress=False).run()
    run = tmp_path / "run"
    meta = json.loads((run / "smac" / "smac" / "0" / "scenario.json").read_text())
    assert meta["objectives"] == ["ct_kidney", "mr_white_matter"]
    assert meta["_meta"]["multi_objective_algorithm"]["name"] == "ParEGO"
    assert meta["_meta"]["intensifier"]["name"] == "Hyperband"
    entries = journal(run)
    budgets = {e["budget"] for e in entries}
    assert min(budgets) < 12 and 12 in budgets  # Hyperband ran trials on a prefix of the calibration slices
    # A low-budget trial's Dice is the Dice of exactly that prefix (scored again here, independently).
    runner = TrialRunner.build(config)
    low = next(e for e in entries if e["budget"] < 12)
    text = recipe_text(config, runner, low)
    assert runner.run(text, low["budget"])["dice"] == low["dice"]
    assert runner.run(text, None)["dice"] != low["dice"]
    # The front is non-dominated and holds the picked model, which has the best mean Dice on it.
    front = json.loads((run / "pareto.json").read_text())["front"]
    costs = [[1 - f["dice"][t] for t in ("ct_kidney", "mr_white_matter")] for f in front]
    assert pareto_front(costs) == list(range(len(front)))
    assert result.best_dice == max((f["dice"] for f in front), key=lambda d: np.mean(list(d.values())))
    assert (run / "report" / "front.png").exists()


@pytest.mark.slow
def test_kill_9_and_rerun_continues_exactly_like_an_uninterrupted_run(tmp_path):
    settings = {"trials": 22, "initial_design": {"lambdas": [0.5], "random": 2}}
    whole = write_config(tmp_path / "whole", ["mr_grey_matter"], **settings)
    cut = write_config(tmp_path / "cut", ["mr_grey_matter"], **settings)
    assert run_cli("search", str(whole), "--no-report").returncode == 0
    command = [sys.executable, "-m", "search.cli", "search", str(cut), "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(journal(tmp_path / "cut" / "run")) < 12 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(journal(tmp_path / "cut" / "run"))
    assert 12 <= killed_at < 22, "the search was not killed mid-run"
    resumed = run_cli("search", str(cut), "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {killed_at} finished trials" in resumed.stderr + resumed.stdout
    assert outcome(journal(tmp_path / "cut" / "run")) == outcome(journal(tmp_path / "whole" / "run"))
    assert (tmp_path / "cut" / "run" / "best.yaml").read_text() == (
        tmp_path / "whole" / "run" / "best.yaml"
    ).read_text()
    # A finished search given more trials continues; a changed search in the same folder is refused.
    more = run_cli("search", str(whole), "--no-report", "--trials", "24")
    assert more.returncode == 0 and len(journal(tmp_path / "whole" / "run")) == 24
    changed = yaml.safe_load(whole.read_text()) | {"seed": 3}
    whole.write_text(yaml.safe_dump(changed))
    refused = run_cli("search", str(whole), "--no-report")
    assert refused.returncode == 2 and "holds a different search" in refused.stderr


@pytest.mark.slow
def test_two_dask_workers_keep_their_inputs_resident(tmp_path):
    path = write_config(tmp_path, ["ct_kidney"], trials=10, initial_design={"lambdas": [0.5], "random": 1})
    done = run_cli("search", str(path), "--workers", "2", "--no-report")
    assert done.returncode == 0, done.stderr
    entries = journal(tmp_path / "run")
    assert len(entries) == 10 and all(e["status"] == "success" for e in entries)
    workers = {e["worker"] for e in entries}
    assert len(workers) == 2
    # Each worker loaded the inputs once, on its first trial, then kept them.
    assert sorted(e["worker"] for e in entries if e["fresh_worker"]) == sorted(workers)
    # Trials ran in parallel and score as they would in this process.
    config = load_search_config(path)
    runner = TrialRunner.build(config)
    for entry in entries[:3]:
        assert runner.run(recipe_text(config, runner, entry), entry["budget"])["dice"]["ct_kidney"] == pytest.approx(
            entry["dice"]["ct_kidney"]
        )


@pytest.mark.slow
def test_a_crashing_trial_is_recorded_as_crashed_and_repeated_crashes_stop_the_search(tmp_path, monkeypatch):
    path = write_config(tmp_path, ["ct_kidney"], trials=8, initial_design={"lambdas": [0.5], "random": 0})
    config = load_search_config(path)
    original = TrialRunner.run
    calls = {"n": 0}

    def flaky(self, recipe_text, budget):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, recipe_text, budget)

    monkeypatch.setattr(TrialRunner, "run", flaky)
    Search(config, progress=False, report=False).run()
    entries = journal(tmp_path / "run")
    assert [e["status"] for e in entries].count("crashed") == 1
    crashed = next(e for e in entries if e["status"] == "crashed")
    assert "CUDA out of memory (simulated)" in crashed["error"] and "Traceback" in crashed["error"]
    assert "dice" not in crashed  # no made-up score
    runhistory = json.loads((tmp_path / "run" / "smac" / "smac" / "0" / "runhistory.json").read_text())
    assert sum(1 for d in runhistory["data"] if d["status"] == 2) == 1  # StatusType.CRASHED

    monkeypatch.setattr(TrialRunner, "run", lambda self, text, budget: 1 / 0)
    with pytest.raises(SearchError, match="5 trials in a row crashed, the last with 'ZeroDivisionError"):
        Search(config.model_copy(update={"output": tmp_path / "broken"}), progress=False, report=False).run()


@pytest.mark.slow
def test_an_existing_dask_scheduler_runs_the_trials(tmp_path):
    from distributed import LocalCluster

    path = write_config(tmp_path, ["ct_kidney"], trials=6, initial_design={"lambdas": [0.5], "random": 0})
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        done = run_cli("search", str(path), "--scheduler", cluster.scheduler_address, "--no-report")
        assert done.returncode == 0, done.stderr
        workers = {w["id"] for w in cluster.scheduler_info["workers"].values()}
    entries = journal(tmp_path / "run")
    assert len(entries) == 6 and all(e["status"] == "success" for e in entries)
    assert len({e["worker"] for e in entries}) == 1 and str(os.getpid()) not in entries[0]["worker"]
    assert workers  # the cluster's own worker, not this process, ran them
    refused = run_cli("search", str(path), "--scheduler", "tcp://127.0.0.1:9", "--no-report", "--trials", "7")
    assert refused.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in refused.stderr


def test_the_demo_search_config_is_the_zoo_helpers_output():
    committed = yaml.safe_load((ZOO / "search-demo.yaml").read_text())
    tasks = [t["name"] for t in committed["tasks"]]
    # The paper's flat space: the search that made the committed demo model, whatever the default becomes.
    assert committed == search_config(Path("."), tasks, trials=150, space="flat", output="../../runs/demo")
    assert load_search_config(ZOO / "search-demo.yaml").multi_task


def test_a_search_refused_while_loading_leaves_nothing_and_its_fixed_configuration_runs(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    settings = {"trials": 2, "initial_design": {"lambdas": [], "random": 0}}
    path = write_config(tmp_path, ["ct_kidney"], **settings)
    data = yaml.safe_load(path.read_text())
    good = data["models"][0]["path"]
    data["models"][0]["path"] = str(tmp_path / "notes.pth")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(Exception, match="notes.pth"):
        Search(load_search_config(path), progress=False, report=False).run()
    assert not (tmp_path / "run").exists()
    data["models"][0]["path"] = good
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    Search(load_search_config(path), progress=False, report=False).run()
    assert len(journal(tmp_path / "run")) == 2

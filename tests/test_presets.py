"""The intensity window is a choice too (issue 14, item 7): a task may list several presets, the search chooses
one per task like the convention, and the choice travels in the recipe to `evaluate`, the quality gate and the
manifest. A listed task is never loaded under a guessed window."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from search.architectures import ARCHITECTURES
from search.baselines import baselines
from search.config import load_search_config
from search.data import DataSpec, chosen_presets, load_task, parse_spec
from search.errors import DataError
from search.optimize import Search
from search.recipe import InputModel, load_recipe, parse_recipe, recipe_yaml
from search.space import SearchSpace, SpaceSpec
from tests.cli_runs import medsamix, one_line_error, write_config
from tests.conftest import ZOO

INPUTS = [InputModel(name="base", path="b"), InputModel(name="ct", path="c"), InputModel(name="mr", path="m")]
SPEC = {"name": "liver", "path": "data", "format": "nnunet", "labels": 1}


def presets_space(presets: dict[str, list[str]]) -> SearchSpace:
    spec = SpaceSpec({"encoder": [2], "prompt": [1], "decoder": [2]}, ["linear", "pick"], ("sam",), "flat", presets)
    return SearchSpace(ARCHITECTURES["tiny"], INPUTS[0], INPUTS[1:], spec, seed=0)


def test_a_task_lists_presets_as_a_list_and_one_is_a_single_preset():
    listed = parse_spec({**SPEC, "preset": ["ct_lung", "ct_abdomen"]})
    assert listed.presets == ("ct_lung", "ct_abdomen")
    assert parse_spec({**SPEC, "preset": ["ct_lung"]}).preset == "ct_lung"
    assert parse_spec({**SPEC, "preset": None}).presets == (None,)
    for bad, message in (
        (["ct_lung", "ct_lung"], "distinct intensity presets"),
        ([], "distinct intensity presets"),
        (["ct_lung", "brain"], "unknown intensity preset 'brain': expected one of"),
    ):
        with pytest.raises(DataError, match=message):
            parse_spec({**SPEC, "preset": bad})


def test_a_listed_task_is_loaded_only_under_a_chosen_preset(tmp_path):
    listed = parse_spec({**SPEC, "path": str(tmp_path), "preset": ["ct_lung", "ct_abdomen"]})
    with pytest.raises(DataError, match="task liver lists intensity presets ct_lung, ct_abdomen; expected a recipe"):
        chosen_presets([listed], None)
    with pytest.raises(DataError, match="task liver lists intensity presets"):
        load_task(listed)
    [chosen] = chosen_presets([listed], {"liver": "ct_abdomen"})
    assert chosen.preset == "ct_abdomen" and isinstance(chosen, DataSpec)
    with pytest.raises(DataError, match="not searched under intensity preset mr; expected one of its presets"):
        chosen_presets([listed], {"liver": "mr"})
    single = parse_spec({**SPEC, "preset": "mr"})
    assert chosen_presets([single], None) == [single]


def test_the_space_searches_each_listed_tasks_preset_and_the_recipe_records_it():
    searched = presets_space({"liver": ["ct_lung", "ct_abdomen"], "kidney": ["ct_abdomen", "ct_bone", "minmax"]})
    assert searched.space["preset/liver"].choices == ("ct_lung", "ct_abdomen")
    seen = set()
    for config in searched.space.sample_configuration(30):
        recipe = searched.to_recipe(config)
        chosen = recipe.preprocessing.presets
        assert chosen == {"liver": config["preset/liver"], "kidney": config["preset/kidney"]}
        assert parse_recipe(recipe_yaml(recipe)) == recipe  # written and read back
        seen.add(chosen["kidney"])
    assert seen == {"ct_abdomen", "ct_bone", "minmax"}
    uniform = searched.uniform("linear", presets={"kidney": "minmax"})
    assert searched.to_recipe(uniform).preprocessing.presets == {"liver": "ct_lung", "kidney": "minmax"}
    # Three variants measure every (task, preset) pair: each task under each of its presets at least once.
    variants = searched.preset_variants()
    assert {(t, v[t]) for v in variants for t in v} == {
        ("liver", "ct_lung"),
        ("liver", "ct_abdomen"),
        ("kidney", "ct_abdomen"),
        ("kidney", "ct_bone"),
        ("kidney", "minmax"),
    }
    # Each input and uniform baseline is in the list under each variant.
    listed = baselines(searched, {})
    assert len(listed) == (3 + 1) * len(variants)
    assert [b.presets for b in listed if b.row == "ct"] == variants
    # A space without listed presets writes recipes as before: no presets key.
    plain = presets_space({})
    assert "presets" not in recipe_yaml(plain.to_recipe(plain.uniform("linear")))


def alone(config: dict) -> str | None:
    """The input a configuration runs unchanged (`pick` of it in every group), else None."""
    methods = {v for k, v in config.items() if k.endswith("/method")}
    models = {v for k, v in config.items() if k.endswith("/pick.model")}
    return models.pop() if methods == {"pick"} and len(models) == 1 else None


@pytest.mark.slow
def test_a_search_chooses_each_tasks_window_and_evaluate_and_export_replay_it(tmp_path):
    path = write_config(
        tmp_path,
        ["ct_liver"],
        trials=10,
        methods=["linear", "pick"],
        normalizations=["sam"],
        initial_design={"lambdas": [], "random": 0},
    )
    config = yaml.safe_load(path.read_text())
    config["tasks"][0]["preset"] = ["ct_lung", "ct_abdomen"]  # the default window first: the zoo's CT is abdomen
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = Search(load_search_config(path), progress=False).run()
    run = tmp_path / "run"
    scores = json.loads((run / "report" / "scores.json").read_text())
    calibration = {row: s["ct_liver"]["calibration"] for row, s in scores["dice"].items()}
    entries = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    # Every input ran under both windows, and the window matters: the two differ for each. (The inputs trained
    # under `sam`, the one convention searched here: the report shows an input under its training convention.)
    for row in ("base", "ct_specialist"):
        under = {e["config"]["preset/ct_liver"]: e["dice"]["ct_liver"] for e in entries if alone(e["config"]) == row}
        assert set(under) == {"ct_lung", "ct_abdomen"}, row
        assert under["ct_lung"] != under["ct_abdomen"]
        # The report shows the row under the window that scored best on calibration, a score the search measured.
        best = max(under, key=under.__getitem__)
        assert scores["presets"][row] == {"ct_liver": best}
        assert calibration[row] == pytest.approx(under[best], abs=1e-12)
    picked = calibration.pop("MedSAMix")
    assert all(picked >= value for value in calibration.values()), calibration
    recipe = load_recipe(run / "best.yaml")
    assert recipe.preprocessing.presets == scores["presets"]["MedSAMix"] == result.best.preprocessing.presets
    report = (run / "report" / "report.md").read_text()
    assert "Intensity presets (chosen on calibration, like the convention): " in report
    # `evaluate` replays the recipe under its window: the report's held-out Dice of the pick.
    shown = medsamix("evaluate", str(run / "best.yaml"), "--tasks", str(path), "--split", "test")
    assert shown.returncode == 0, shown.stderr
    held_out = scores["dice"]["MedSAMix"]["ct_liver"]["test"]
    assert re.search(rf"best\.yaml\s.*{held_out:.4f}", shown.stdout), shown.stdout
    # A bare checkpoint has no recipe to choose for it: refused in one sentence, not evaluated under a guess.
    bare = one_line_error(medsamix("evaluate", str(ZOO / "sam_tiny.pth"), "--tasks", str(path)))
    assert "lists intensity presets ct_lung, ct_abdomen; expected a recipe" in bare
    # The export's manifest serves the task under the window the search chose.
    exported = medsamix(
        "export", str(run / "best.yaml"), "--name", "windowed", "--out", str(tmp_path / "models"), "--tasks",
        str(path), "--force",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((tmp_path / "models" / "windowed" / "manifest.json").read_text())
    assert manifest["preprocessing"]["intensity_presets"] == recipe.preprocessing.presets
    assert Path(tmp_path / "models" / "windowed" / "recipe.yaml").exists()

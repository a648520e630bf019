"""The export's quality gate: a merge that does not beat its best input on held-out cases is refused (nothing
written) unless forced; the comparison and the per-task scores go into the manifest, equal to `medsamix evaluate`'s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.architectures import get_architecture
from search.checkpoints import load_checkpoint, sha256_file
from search.config import load_conventions, load_task_specs
from search.data import load_task
from search.errors import ExportError
from search.evaluate import Evaluator
from search.export import export_model, load_source
from search.recipe import InputModel, save_recipe, uniform_recipe
from search.scores import score
from search.zoo import MODELS
from service.store import ModelStore
from tests.cli_runs import medsamix, one_line_error, tasks_file
from tests.conftest import ZOO


def recipe(folder: Path, method: str, params: dict | None = None, normalization: str = "sam") -> Path:
    inputs = [InputModel(name=n, path=str(ZOO / f), sha256=sha256_file(ZOO / f)) for n, (f, _, _) in MODELS.items()]
    made = uniform_recipe(inputs[0], inputs[1:], get_architecture("tiny"), method, normalization=normalization)
    if params is not None:
        made = made.model_copy(
            update={"groups": [g.model_copy(update={"params": params}) for g in made.groups]}, deep=True
        )
    return save_recipe(made, folder / f"{method}.yaml")


def held_out(path: Path, normalization: str, task_file: Path) -> dict[str, float]:
    """Independent scoring of one checkpoint file on the held-out split."""
    checkpoint = load_checkpoint(path)
    tests = {spec.name: load_task(spec)[1] for spec in load_task_specs(task_file)}
    scores = score(Evaluator(checkpoint.arch), checkpoint.state_dict, normalization, {"test": tests})
    return {task: s["test"] for task, s in scores.items()}


@pytest.mark.slow
def test_a_merge_that_loses_to_an_input_is_refused_unless_forced(tmp_path):
    merge = recipe(tmp_path, "linear")  # uniform linear: far below the CT specialist on kidney
    tasks = tasks_file(tmp_path, ["ct_kidney"])
    out = tmp_path / "models"
    line = one_line_error(medsamix("export", str(merge), "--name", "m", "--out", str(out), "--tasks", str(tasks)))
    assert "does not beat its best input 'ct_specialist'" in line and "nothing was written" in line
    assert not out.exists() or not any(out.iterdir())  # not even a temporary folder

    forced = medsamix("export", str(merge), "--name", "m", "--out", str(out), "--tasks", str(tasks), "--force")
    assert forced.returncode == 0, forced.stderr
    warning = [line for line in forced.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: the model's mean held-out Dice"), forced.stderr
    assert warning[0].endswith("exported because it was forced")
    manifest = json.loads((out / "m" / "manifest.json").read_text())
    gate = manifest["quality_gate"]
    assert gate["passed"] is False and gate["forced"] is True and gate["best_input"] == "ct_specialist"
    expected = held_out(ZOO / MODELS["ct_specialist"][0], "sam", tasks)["ct_kidney"]
    assert gate["inputs"]["ct_specialist"]["dice"]["ct_kidney"] == pytest.approx(expected, abs=1e-12)
    assert gate["model"]["mean"] < gate["inputs"]["ct_specialist"]["mean"]
    assert manifest["tasks"] == ["ct_kidney"] and manifest["preprocessing"]["intensity_presets"] == {
        "ct_kidney": "ct_abdomen"
    }
    assert manifest["scores"]["ct_kidney"] == {"split": "test", "dice": gate["model"]["dice"]["ct_kidney"], "cases": 6}
    ModelStore(out).load("m")  # the gate's record is part of a valid, hash-checked model


def test_a_library_export_applies_the_same_gate(tmp_path):
    merge = load_source(recipe(tmp_path, "linear"))
    tasks = tasks_file(tmp_path, ["ct_kidney"])
    out = tmp_path / "models"
    with pytest.raises(ExportError, match="give --tasks FILE"):  # no held-out cases to check the merge on
        export_model(merge, "m", out)
    with pytest.raises(ExportError, match="does not beat its best input 'ct_specialist'.*nothing was written"):
        export_model(merge, "m", out, specs=load_task_specs(tasks), conventions=load_conventions(tasks))
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_a_merge_that_beats_its_inputs_passes_with_the_comparison_recorded(tmp_path):
    # Base and MR specialist averaged, served under sam: above every input on held-out white matter.
    merge = recipe(tmp_path, "linear", {"weights": {"base": 0.5, "ct_specialist": 0.0, "mr_specialist": 0.5}})
    tasks = tasks_file(tmp_path, ["mr_white_matter"])
    done = medsamix("export", str(merge), "--name", "wm", "--out", str(tmp_path / "models"), "--tasks", str(tasks))
    assert done.returncode == 0, done.stderr
    gate = json.loads((tmp_path / "models" / "wm" / "manifest.json").read_text())["quality_gate"]
    assert gate["passed"] is True and gate["forced"] is False
    for name, (file, convention, _) in MODELS.items():  # each input under its own convention
        assert gate["inputs"][name]["convention"] == convention
        expected = held_out(ZOO / file, convention, tasks)["mr_white_matter"]
        assert gate["inputs"][name]["dice"]["mr_white_matter"] == pytest.approx(expected, abs=1e-12)
    best = max(v["mean"] for v in gate["inputs"].values())
    assert gate["model"]["mean"] > best and gate["inputs"][gate["best_input"]]["mean"] == best
    assert np.isclose(gate["model"]["mean"], gate["model"]["dice"]["mr_white_matter"])


@pytest.mark.slow
def test_exporting_a_merge_needs_tasks_or_force(tmp_path):
    merge = recipe(tmp_path, "linear")
    line = one_line_error(medsamix("export", str(merge), "--name", "m", "--out", str(tmp_path / "models")))
    assert "give --tasks FILE" in line and not (tmp_path / "models" / "m").exists()


def test_the_embedded_demo_model_loads_and_passed_its_gate():
    store = ModelStore(Path(__file__).parents[1] / "models")
    demo = store.load("demo")  # every file's sha256 checked against the manifest
    manifest = demo.manifest
    assert manifest["tasks"] == [t["name"] for t in yaml.safe_load((ZOO / "search-demo.yaml").read_text())["tasks"]]
    gate = manifest["quality_gate"]
    assert gate["passed"] is True and gate["forced"] is False
    assert gate["model"]["mean"] > max(v["mean"] for v in gate["inputs"].values())
    assert {"report/report.md", "recipe.yaml"} <= set(manifest["files"])

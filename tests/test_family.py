"""The held-out task family (tests/family, made by benchmarks/family.py) is fixed: its files hash to what
family.json records, a regeneration gives the same bytes, its search configuration is the generator's and loads,
and every task has enough cases on both sides of the split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from benchmarks.family import (
    CONFIG_FILE,
    DATASETS,
    FAMILY,
    RECORD_FILE,
    family_files,
    search_config,
    task_specs,
    write_dataset,
)
from search.config import load_search_config
from search.data import load_task

RECORD = json.loads((FAMILY / RECORD_FILE).read_text())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_committed_family_hashes_to_its_record() -> None:
    files = [str(p) for p in family_files(FAMILY)]
    assert files == sorted(RECORD["sha256"]), "the family's files are not the ones family.json records"
    changed = [name for name in files if digest(FAMILY / name) != RECORD["sha256"][name]]
    assert not changed, f"the fixed family changed: {changed}"


def test_the_search_configuration_is_the_generators_and_loads() -> None:
    path = FAMILY / CONFIG_FILE
    assert yaml.safe_load(path.read_text()) == search_config()
    config = load_search_config(path)
    assert [t.name for t in config.tasks] == list(task_specs())
    assert config.multi_task


@pytest.mark.parametrize("task", list(task_specs()))
def test_every_task_loads_with_cases_on_both_sides(task: str) -> None:
    loaded = load_task(task_specs()[task])
    calibration = {s.case for s in loaded.calibration.slices}
    test = {s.case for s in loaded.test.slices}
    assert len(calibration) >= 2 and len(test) >= 6 and not calibration & test
    assert loaded.split["slices"] == RECORD["splits"][task]["slices"]


def test_a_regenerated_dataset_has_the_same_bytes(tmp_path: Path) -> None:
    name = "Dataset102_MRCardiac"  # the quickest to generate; all three share the writer
    assert name in DATASETS
    folder = write_dataset(name, tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in folder.rglob("*") if p.is_file())
    assert written == sorted(p for p in family_files(FAMILY) if p.parts[0] == name)
    different = [str(p) for p in written if (tmp_path / p).read_bytes() != (FAMILY / p).read_bytes()]
    assert not different, f"regenerating {name} changed {different}"

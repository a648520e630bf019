"""Calibration data, step 3: the split by case (`split_cases`, seeded) and `load_task`, which returns the
calibration and test `Task`s with their slices in one seeded order, and the split record a caller writes down with
its results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from search.data.slicing import case_slices
from search.data.spec import DataSpec, chosen_presets, open_loader, parse_spec
from search.errors import DataError
from search.slices import Slice, Task

__all__ = ["LoadedTask", "load_task", "split_cases"]


def split_cases(
    case_ids: Iterable[str], calibration_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(calibration, test) case ids, each sorted: a seeded permutation of the sorted ids, its first
    round(fraction * n) cases (at least 1 and at most n - 1) for calibration. No case is in both."""
    ids = sorted(set(case_ids))
    if len(ids) < 2:
        raise DataError(f"a split by case needs at least 2 cases; found {len(ids)}")
    if not 0.0 < calibration_fraction < 1.0:
        raise DataError(f"expected a calibration fraction between 0 and 1 (exclusive), found {calibration_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n = min(max(round(calibration_fraction * len(ids)), 1), len(ids) - 1)
    return sorted(ids[i] for i in order[:n]), sorted(ids[i] for i in order[n:])


def _ordered(slices: list[Slice], seed: int) -> tuple[Slice, ...]:
    """Slices in a canonical (case, index) order, then one seeded permutation: budgets of a seed are prefixes."""
    slices = sorted(slices, key=lambda s: (s.case, s.index))
    return tuple(slices[i] for i in np.random.default_rng(seed).permutation(len(slices)))


class LoadedTask(NamedTuple):
    """What `load_task` returns: the calibration and test tasks of one spec and its split record (JSON-ready)."""

    calibration: Task
    test: Task
    split: dict[str, Any]


def load_task(spec: DataSpec | Mapping[str, Any]) -> LoadedTask:
    """The `LoadedTask` (calibration task, test task, split record) of `spec`; the record (JSON-ready) is to be
    written down with the results: format, path, labels, seed, fraction, the case ids of each split and their slice
    counts."""
    [spec] = chosen_presets([parse_spec(spec)], None)  # one preset: a search loads each of a list in turn
    loader = open_loader(spec)
    ids = loader.case_ids()
    if not ids:
        raise DataError(f"{spec.path} holds no {spec.format} cases")
    calibration, test = split_cases(ids, spec.calibration_fraction, spec.seed)
    in_calibration = set(calibration)
    found: set[int] = set()
    slices: dict[str, list[Slice]] = {"calibration": [], "test": []}
    for case in ids:
        for volume in loader.read(case):
            found.update(int(v) for v in np.unique(volume.label))
            split = slices["calibration" if case in in_calibration else "test"]
            split += case_slices(
                volume, spec.labels, spec.presets[0], spec.axis, spec.min_component, spec.boxes, spec.jitter, spec.seed
            )
    if not found & set(spec.labels):
        present = ", ".join(str(v) for v in sorted(found - {0})[:20]) or "none"
        raise DataError(f"label(s) {list(spec.labels)} appear in no case of {spec.path}; label ids found: {present}")
    for part, chosen in slices.items():
        if not chosen:
            raise DataError(
                f"the {part} split of {spec.name} has no slice with foreground of label(s) {list(spec.labels)} left "
                f"after dropping components under {spec.min_component} pixels"
            )
    record = {
        "name": spec.name,
        "format": spec.format,
        "path": str(spec.path),
        "labels": list(spec.labels),
        "seed": spec.seed,
        "calibration_fraction": spec.calibration_fraction,
        "calibration": calibration,
        "test": test,
        "slices": {part: len(chosen) for part, chosen in slices.items()},
        "spec": spec.model_dump(mode="json"),
    }
    calibration_task, test_task = (
        Task(spec.name, _ordered(slices[part], spec.seed), spec.modality, {"split": record, "part": part})
        for part in ("calibration", "test")
    )
    return LoadedTask(calibration_task, test_task, record)

"""The search's run configuration (YAML): inputs, tasks, what is searched, how long, where it runs and writes.

```yaml
base: {name: sam, path: sam_vit_b_01ec64.pth, normalization: sam}
models:
  - {name: medsam, path: medsam_vit_b.pth, normalization: medsam}   # the convention each input was trained under
tasks:                                       # search.data specs; one task: single-objective, more: ParEGO
  - {name: liver, path: data/Dataset001, format: nnunet, labels: 1, preset: ct_abdomen}
  - {name: nodule, path: data/Dataset101, format: nnunet, labels: 2, preset: [ct_lung, ct_abdomen]}  # chosen
trials: 120
budget: {min: 4, max: 32}                    # calibration slices per task; min < max: Hyperband over this range
granularity: {encoder: [1, 2, 3, 4], prompt: 1, decoder: 2}   # a list is searched, a number is fixed
methods: [linear, task_arithmetic, ties, slerp, pick]
normalizations: [sam, medsam]                # the merged model's input convention: fixed or searched
space: structured                            # structured (search.space; the default) | flat (the paper's space)
initial_design: {lambdas: [0.3, 0.6, 1.0], random: 5}
pick: mean                                   # Pareto pick: mean | worst | a task's name
choice: best                                 # best (the default) | nearest (search.choice: nearest a baseline)
seed: 0
workers: 1                                   # or scheduler: tcp://host:8786
device: auto
output: runs/liver
```
Paths are relative to the configuration file's folder. Read with `safe_load`, validated; errors are one sentence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.choice import Choice
from search.data import DataSpec
from search.errors import MedSAMixError, first_validation_error
from search.files import require_file, yaml_mapping
from search.merge import METHODS
from search.space import COMPONENTS, SpaceSpec, Structure
from service.imaging import NORMALIZATION_NAMES, NormalizationName


class ConfigError(MedSAMixError):
    """A search configuration that cannot be run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    normalization: NormalizationName = "sam"


class Budget(_Strict):
    min: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Budget:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"budget min ({self.min}) must not exceed max ({self.max})")
        return self


class InitialDesign(_Strict):
    lambdas: list[float] = Field(default=[0.3, 0.6, 1.0])
    random: int = Field(default=5, ge=0)

    @field_validator("lambdas")
    @classmethod
    def _unit(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"lambdas must lie in [0, 1], found {bad[0]}")
        return values


class SearchConfig(_Strict):
    base: InputSpec
    models: list[InputSpec] = Field(min_length=1)
    tasks: list[DataSpec] = Field(min_length=1)
    trials: int = Field(default=60, ge=1)
    budget: Budget = Budget()
    granularity: dict[str, list[int]] = Field(default={"encoder": [2], "prompt": [1], "decoder": [2]})
    methods: list[str] = Field(default=["linear", "task_arithmetic", "ties", "slerp", "pick"], min_length=1)
    normalizations: list[NormalizationName] = Field(default=list(NORMALIZATION_NAMES), min_length=1)
    space: Structure = "structured"  # measured: benchmarks/RESULTS.md, "Transfer"; flat is the paper's
    initial_design: InitialDesign = InitialDesign()
    pick: str = "mean"
    choice: Choice = "best"
    seed: int = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=1)
    scheduler: str | None = None
    device: str = "auto"
    output: Path = Path("runs/search")

    @field_validator("granularity", mode="before")
    @classmethod
    def _granularity(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("granularity must map encoder, prompt and decoder to a number or a list of numbers")
        unknown = sorted(set(value) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown granularity component '{unknown[0]}': expected {', '.join(COMPONENTS)}")
        result = {}
        for component in COMPONENTS:
            given = value.get(component, 1)
            values = given if isinstance(given, list) else [given]
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"granularity {component} must be a whole number >= 1 or a list of them")
            result[component] = list(dict.fromkeys(values))
        return result

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in METHODS]
        if unknown:
            raise ValueError(f"unknown merge method '{unknown[0]}': expected some of {', '.join(sorted(METHODS))}")
        return list(dict.fromkeys(values))

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        names = [self.base.name, *(m.name for m in self.models)]
        for group, what in ((names, "input"), ([t.name for t in self.tasks], "task")):
            repeated = next((n for n in group if group.count(n) > 1), None)
            if repeated is not None:
                raise ValueError(f"{what} name '{repeated}' is used twice; each {what} needs its own name")
        tasks = [t.name for t in self.tasks]
        if self.pick not in ("mean", "worst", *tasks):
            raise ValueError(f"pick must be 'mean', 'worst' or a task name ({', '.join(tasks)}), found '{self.pick}'")
        if self.scheduler is not None and self.workers > 1:
            raise ValueError("give either workers (a local cluster) or scheduler (an existing one), not both")
        return self

    @property
    def multi_task(self) -> bool:
        return len(self.tasks) > 1

    @property
    def conventions(self) -> dict[str, str]:
        """Input name -> the convention it was trained under."""
        return {m.name: m.normalization for m in (self.base, *self.models)}

    def space_spec(self) -> SpaceSpec:
        presets = {t.name: t.preset for t in self.tasks if isinstance(t.preset, tuple)}
        return SpaceSpec(self.granularity, self.methods, tuple(self.normalizations), self.space, presets)

    def resolved(self, folder: Path) -> SearchConfig:
        """The same configuration with every relative path made absolute against `folder`."""

        def absolute(path: Path) -> Path:
            path = path.expanduser()
            return path if path.is_absolute() else (folder / path).resolve()

        return self.model_copy(
            update={
                "base": self.base.model_copy(update={"path": absolute(self.base.path)}),
                "models": [m.model_copy(update={"path": absolute(m.path)}) for m in self.models],
                "tasks": [t.model_copy(update={"path": absolute(t.path)}) for t in self.tasks],
                "output": absolute(self.output),
            }
        )

    def fingerprint(self) -> str:
        """What makes two runs the same search: everything but where and on how many workers it runs, how many
        trials (a finished search can be given more and continues) and the choice rule (applied to the trials
        afterwards: a finished search rerun with another rule re-chooses)."""
        excluded = {"trials", "workers", "scheduler", "device", "output", "choice"}
        data = self.model_dump(mode="json", exclude=excluded)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def parse_search_config(text: str, source: str = "search config", folder: Path | None = None) -> SearchConfig:
    data = yaml_mapping(text, source, "base, models and tasks", ConfigError)
    try:
        config = SearchConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {first_validation_error(error, 'config')}") from None
    return config.resolved(folder) if folder is not None else config


def load_search_config(path: str | Path) -> SearchConfig:
    path = require_file(Path(path), "search config", ConfigError)
    return parse_search_config(path.read_text(encoding="utf-8"), str(path), path.parent.resolve())


def load_task_specs(path: str | Path) -> list[DataSpec]:
    """The `tasks:` list of a YAML file (a search configuration or a file holding only that list), validated, with
    paths made absolute against the file's folder."""
    path = require_file(Path(path), "task file", ConfigError)
    data = yaml_mapping(path.read_text(encoding="utf-8"), str(path), "a 'tasks' list", ConfigError)
    if not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise ConfigError(f"{path} must hold a non-empty 'tasks' list of data specs")
    folder = path.parent.resolve()
    specs = []
    for i, item in enumerate(data["tasks"]):
        try:
            spec = DataSpec.model_validate(item)
        except ValidationError as error:
            raise ConfigError(f"{path}: tasks.{i}.{first_validation_error(error, 'spec')}") from None
        specs.append(spec.model_copy(update={"path": spec.path if spec.path.is_absolute() else folder / spec.path}))
    return specs


def load_conventions(path: str | Path) -> dict[str, str]:
    """Input name -> the convention it was trained under, from a search configuration's base and models (empty for
    a file that lists only tasks)."""
    data = yaml_mapping(Path(path).read_text(encoding="utf-8"), str(path), "a 'tasks' list", ConfigError)
    entries = [data.get("base"), *(data.get("models") or [])]
    return {
        e["name"]: e["normalization"]
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("normalization") in NORMALIZATION_NAMES
    }

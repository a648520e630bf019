"""Merge recipes: the YAML a search writes and a person can read, edit and replay.

```yaml
base: {name: sam, path: sam_vit_b_01ec64.pth, sha256: ...}
models:
  - {name: medsam, path: medsam_vit_b.pth, sha256: ...}
architecture: vit_b                       # optional; checked against the files
preprocessing: {normalization: sam}       # or medsam: the encoder input convention of the merged model;
                                          # presets: {task: ct_lung} where a search chose a task's window
granularity: {encoder: 2, prompt: 1, decoder: 2}
seed: 0                                   # DARE's random draws
groups:
  - {group: image_encoder.blocks.0-1, method: ties, params: {density: 0.59, lambda: 0.07}}
```
Paths are relative to the recipe's folder. YAML is read with `safe_load` only (no tags that run code), then
validated; every error is one sentence that names the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.architectures import ARCHITECTURES, SamArchitecture, get_architecture
from search.errors import MergeError, RecipeError, first_validation_error
from search.files import atomic_write, require_file, yaml_mapping
from search.groups import Granularity, LayerGroup, layer_groups
from search.merge import MergeMethod, get_method
from service.errors import unknown_name
from service.imaging import NormalizationName, get_preset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Preprocessing(_Strict):
    normalization: NormalizationName = "sam"
    presets: dict[str, str] | None = None  # task -> the intensity preset a search chose among that task's list

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in (value or {}).values():
            get_preset(name)  # an unknown name fails listing the known ones
        return value


class GranularitySpec(_Strict):
    encoder: int = Field(default=1, ge=1)
    prompt: int = Field(default=1, ge=1)
    decoder: int = Field(default=1, ge=1)

    def to_granularity(self) -> Granularity:
        return Granularity(self.encoder, self.prompt, self.decoder)


class GroupEntry(_Strict):
    group: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class Recipe(_Strict):
    base: InputModel
    models: list[InputModel] = Field(min_length=1)
    architecture: str | None = None
    preprocessing: Preprocessing = Preprocessing()
    granularity: GranularitySpec = GranularitySpec()
    seed: int = 0
    groups: list[GroupEntry]

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str | None) -> str | None:
        if value is not None and value not in ARCHITECTURES:
            raise ValueError(unknown_name("architecture", value, ARCHITECTURES))
        return value

    @model_validator(mode="after")
    def _distinct_names(self) -> Recipe:
        names = self.input_names
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"input name '{duplicate}' is used twice; each input needs its own name")
        return self

    @property
    def input_names(self) -> list[str]:
        return [self.base.name, *(m.name for m in self.models)]

    @property
    def inputs(self) -> list[InputModel]:
        return [self.base, *self.models]

    def plan(self, arch: SamArchitecture | str) -> list[tuple[LayerGroup, MergeMethod, dict[str, Any]]]:
        """Each layer group with its method and the method's keyword arguments, checked against `arch`.

        Errors name the problem: an unknown group, a group left out, an unknown method, a parameter out of range.
        """
        arch = get_architecture(arch) if isinstance(arch, str) else arch
        if self.architecture is not None and self.architecture != arch.name:
            raise RecipeError(f"the recipe is for {self.architecture} but its input files are {arch.name}")
        granularity = self.granularity.to_granularity()
        groups = {g.name: g for g in layer_groups(arch, granularity)}
        g = self.granularity
        described = f"{arch.name} at granularity encoder={g.encoder}, prompt={g.prompt}, decoder={g.decoder}"
        seen: set[str] = set()
        for entry in self.groups:
            if entry.group not in groups:
                raise RecipeError(f"unknown group '{entry.group}' for {described} (its groups: {', '.join(groups)})")
            if entry.group in seen:
                raise RecipeError(f"group '{entry.group}' appears twice; give each group one entry")
            seen.add(entry.group)
        missing = [name for name in groups if name not in seen]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise RecipeError(f"the recipe gives no method for group '{missing[0]}'{more}; every group needs one")
        plan = []
        for entry in sorted(self.groups, key=lambda e: list(groups).index(e.group)):
            try:
                method = get_method(entry.method)
                kwargs = method.resolve(entry.params, self.input_names, where=f"group {entry.group}")
            except MergeError as error:
                raise RecipeError(str(error)) from None
            plan.append((groups[entry.group], method, kwargs))
        return plan

    def resolve_path(self, model: InputModel, folder: Path) -> Path:
        path = Path(model.path).expanduser()
        return path if path.is_absolute() else folder / path

    def relocated(self, folder: Path, target: Path) -> Recipe:
        """This recipe (its relative paths starting at `folder`) as a copy in `target` replays it: each relative
        input path made relative to `target` instead; absolute paths and the sha256s stay."""

        def moved(model: InputModel) -> InputModel:
            if Path(model.path).expanduser().is_absolute():
                return model
            path = os.path.relpath(self.resolve_path(model, folder).resolve(), Path(target).resolve())
            return model.model_copy(update={"path": path})

        return self.model_copy(update={"base": moved(self.base), "models": [moved(m) for m in self.models]})


def uniform_recipe(
    base: InputModel,
    models: list[InputModel],
    arch: SamArchitecture,
    method: str = "linear",
    granularity: Granularity = Granularity(),
    normalization: NormalizationName = "sam",
    seed: int = 0,
) -> Recipe:
    """One method at its declared defaults in every group: a starting point to edit, and the uniform baselines."""
    names = [base.name, *(m.name for m in models)]
    params = get_method(method).defaults(names)
    return Recipe(
        base=base,
        models=models,
        architecture=arch.name,
        preprocessing=Preprocessing(normalization=normalization),
        granularity=GranularitySpec(
            encoder=granularity.encoder, prompt=granularity.prompt, decoder=granularity.decoder
        ),
        seed=seed,
        groups=[GroupEntry(group=g.name, method=method, params=params) for g in layer_groups(arch, granularity)],
    )


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """A validated recipe from YAML text; `source` names it in errors."""
    data = yaml_mapping(text, source, "base, models and groups", RecipeError)
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(f"{source}: {first_validation_error(error, 'recipe')}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = require_file(Path(path), "recipe", RecipeError)
    return parse_recipe(path.read_text(encoding="utf-8"), source=str(path))


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False, width=120)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    text = recipe_yaml(recipe)
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))

"""Calibration data: `DataSpec`, what a task is made of, validated; and the loader it opens."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.data.formats import LOADERS, Loader, get_loader
from search.errors import DataError, first_validation_error
from service.errors import unknown_name
from service.imaging import PRESETS

__all__ = ["DataSpec", "chosen_presets", "open_loader", "parse_spec"]


class DataSpec(BaseModel):
    """What a task is made of: where its files are, which format, which label(s), and how slices are cut."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path
    format: str
    labels: tuple[int, ...] = Field(min_length=1)
    preset: str | tuple[str, ...] | None  # None: the files are already uint8; a list: the search chooses one
    modality: str = ""
    axis: Literal[0, 1, 2] = 0
    min_component: int = Field(default=0, ge=0)
    boxes: Literal["component", "label"] = "component"
    jitter: int = Field(default=0, ge=0)
    calibration_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)
    options: dict[str, Any] = {}  # format-specific loader keywords (channel, images, labels, masks, case_pattern)

    @model_validator(mode="before")
    @classmethod
    def _label_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" in data and "labels" not in data:
            data = {**data, "labels": data["label"]}
            del data["label"]
        if isinstance(data, dict) and isinstance(data.get("labels"), int):
            data = {**data, "labels": (data["labels"],)}
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        for name in value if isinstance(value, tuple) else () if value is None else (value,):
            if name not in PRESETS:
                raise ValueError(unknown_name("intensity preset", name, PRESETS))
        if isinstance(value, tuple):
            if len(set(value)) != len(value) or not value:
                raise ValueError("expected a list of distinct intensity presets, at least one")
            return value[0] if len(value) == 1 else value
        return value

    @property
    def presets(self) -> tuple[str | None, ...]:
        """The presets a search chooses among (one: nothing to choose)."""
        return self.preset if isinstance(self.preset, tuple) else (self.preset,)

    def with_preset(self, preset: str | None) -> DataSpec:
        """This task under one of its presets."""
        if preset not in self.presets:
            raise DataError(
                f"task {self.name} is not searched under intensity preset {preset}; expected one of its presets: "
                + ", ".join(str(p) for p in self.presets)
            )
        return self.model_copy(update={"preset": preset})

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in LOADERS:
            raise ValueError(unknown_name("data format", value, LOADERS))
        return value


def parse_spec(data: DataSpec | Mapping[str, Any]) -> DataSpec:
    """A validated DataSpec; a mapping that does not validate fails in one sentence naming the first bad field."""
    if isinstance(data, DataSpec):
        return data
    try:
        return DataSpec.model_validate(dict(data))
    except ValidationError as error:
        raise DataError(f"data spec {first_validation_error(error, 'spec')}") from None


def chosen_presets(specs: Iterable[DataSpec], chosen: Mapping[str, str] | None) -> list[DataSpec]:
    """Each spec under one preset: the one `chosen` names (a search's choice, from its recipe), else its only one.
    A spec listing several that `chosen` does not name fails: which window a model is served with is never a
    guess."""
    chosen = chosen or {}
    result = []
    for spec in specs:
        if spec.name in chosen:
            result.append(spec.with_preset(chosen[spec.name]))
        elif len(spec.presets) > 1:
            raise DataError(
                f"task {spec.name} lists intensity presets {', '.join(map(str, spec.presets))}; expected a recipe "
                "of a search over them, which chooses one, or a single preset"
            )
        else:
            result.append(spec)
    return result


def open_loader(spec: DataSpec) -> Loader:
    """The loader of `spec.format` on `spec.path` with `spec.options` (its keyword arguments)."""
    loader = get_loader(spec.format)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise DataError(
            f"format {spec.format} does not take option(s) {', '.join(unknown)}; "
            f"expected {', '.join(accepted) or 'no options'}"
        )
    return loader(spec.path, **spec.options)

"""Calibration data: `DataSpec`, what a task is made of, validated; and the loader it opens."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.data.formats import LOADERS, Loader, get_loader
from search.errors import DataError, first_validation_error
from service.errors import unknown_name
from service.imaging import PRESETS

__all__ = ["DataSpec", "open_loader", "parse_spec"]


class DataSpec(BaseModel):
    """What a task is made of: where its files are, which format, which label(s), and how slices are cut."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path
    format: str
    labels: tuple[int, ...] = Field(min_length=1)
    preset: str | None  # None: the files are already uint8 (PNG, MedSAM npz)
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
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(unknown_name("intensity preset", value, PRESETS))
        return value

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

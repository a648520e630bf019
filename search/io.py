"""File I/O shared by every command: atomic writes (a reader sees the old file or the complete new one, never half
of one) and YAML read safely (`safe_load`: no tags that run code) into a mapping."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from search.errors import MedSAMixError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(temp_path)` on a temporary file beside `path`, then rename it over `path`.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temp_path = Path(temp)
    try:
        write(temp_path)
        with open(temp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path


def yaml_mapping(text: str, source: str, expected: str, error: type[MedSAMixError]) -> dict[str, Any]:
    """The mapping a YAML document holds; `error(one sentence)` for bad syntax or another kind of document.

    `expected` names the keys the caller wants (for the message), e.g. "base, models and groups"."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(problem, "problem", None) or "invalid syntax"
        raise error(f"{source} is not valid YAML{line}: {reason}") from None
    if not isinstance(data, dict):
        raise error(f"{source} must be a YAML mapping with {expected}; found {type(data).__name__}")
    return data

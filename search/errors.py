"""The exceptions a user sees: each message is one sentence naming what was expected and what was found.

The CLI prints them without a traceback; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MedSAMixError(Exception):
    """Base of every user-facing error."""


class CheckpointError(MedSAMixError):
    """A file is missing, unreadable or not a SAM checkpoint of a known architecture."""


class RecipeError(MedSAMixError):
    """A merge recipe is malformed, names unknown groups/methods, or its inputs changed."""


class MergeError(MedSAMixError):
    """Inputs that cannot be merged together, or a merge method given unusable parameters."""


class ExportError(MedSAMixError):
    """A model that cannot be exported as asked: a bad name, an existing folder, or graphs that disagree with torch."""


class DataError(MedSAMixError):
    """Calibration data that is missing, unreadable, inconsistent, or leaves no slice to evaluate."""


class MedSAMixWarning(UserWarning):
    """Something a user asked for despite a check (e.g. a forced export): the CLI prints it as one line."""


def first_validation_error(error: ValidationError, whole: str) -> str:
    """'field.path: message' for a pydantic error's first problem (`whole` when it is about the whole input)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"

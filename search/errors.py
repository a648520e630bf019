"""The exceptions a user sees: each message is one sentence naming what was expected and what was found.

The CLI prints them without a traceback; anything else escaping is a bug and keeps its traceback.
"""


class MedSAMixError(Exception):
    """Base of every user-facing error."""


class CheckpointError(MedSAMixError):
    """A file is missing, unreadable or not a SAM checkpoint of a known architecture."""


class RecipeError(MedSAMixError):
    """A merge recipe is malformed, names unknown groups/methods, or its inputs changed."""


class MergeError(MedSAMixError):
    """Inputs that cannot be merged together, or a merge method given unusable parameters."""


class DataError(MedSAMixError):
    """Calibration data that is missing, unreadable, inconsistent, or leaves no slice to evaluate."""

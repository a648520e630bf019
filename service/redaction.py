"""Keeps values from DICOM files and requests out of the server's log, whoever does the logging.

How such values reach a log: BentoML logs every request it refuses with a full traceback at ERROR, and pydantic's
part of it quotes the input; pydicom and highdicom warn with tag values in the text (highdicom quotes a Patient
Name without '^' verbatim); and any exception's message may quote what it was given. So, on every handler the
server logs through (`install`):

- a refused request (a 4xx of any kind, a client that left) leaves no record of its own: BentoML's access-log line
  (method, path, status, sizes, time) is the one line it gets;
- an unexpected exception keeps its type and its stack (code locations) but not its message;
- a record from a DICOM, codec or PACS library (dicomweb-client logs every call with its UIDs) keeps its logger
  name and level, not its text;
- a Python warning keeps its category and the source line that raised it, not its text.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.cancellation import ClientGone
from service.errors import RequestError

__all__ = ["LIBRARIES", "RedactingFilter", "install"]

# Loggers (by top-level package) whose texts quote DICOM values or PACS addresses.
LIBRARIES = frozenset({"pydicom", "highdicom", "dicomweb_client", "gdcm", "openjpeg", "pylibjpeg", "jpeg_ls"})
WITHHELD = "its text is withheld: it may quote a DICOM file's or a request's values"


def is_refusal(error: BaseException) -> bool:
    """Whether `error` is a request refused (or abandoned) rather than a fault of the server."""
    from bentoml.exceptions import BentoMLException

    if isinstance(error, ValidationError | ClientDisconnect | ClientGone | RequestError):
        return True
    if isinstance(error, BentoMLException):
        return int(error.error_code) < 500
    if isinstance(error, HTTPException):
        return error.status_code < 500
    return False


def stack_without_messages(error: BaseException) -> str:
    """`error`'s traceback (and those of its causes) as Python prints it, with every exception's message left out."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(current).__qualname__} ({WITHHELD})")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n\nwhich was raised while handling:\n\n".join(parts)


class RedactingFilter(logging.Filter):
    """The rules of this module, applied to each record a handler is about to write."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            if is_refusal(error):
                return False
            record.exc_text = stack_without_messages(error)
            record.exc_info = None
        if record.name.split(".", 1)[0] in LIBRARIES or record.name == "py.warnings":  # logging.captureWarnings
            record.msg = f"%s logged a message at %s; {WITHHELD}"
            record.args = (record.name, record.levelname)
        return True


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any) -> None:
    logging.getLogger("medsamix.warnings").warning(
        "%s raised at %s:%d; %s", category.__name__, filename, lineno, WITHHELD
    )


def install() -> None:
    """Attach the filter to every handler now configured (root and named loggers alike) and route warnings
    through it; idempotent, so each service process calls it once its logging is set up."""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    warnings.showwarning = _show_warning

"""service/redaction: what each kind of record becomes on a handler the filter is installed on (the live-server
tests plant markers in every DICOM tag and request field and search the whole server log; these pin the rules)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ValidationError

from service import redaction
from service.errors import RequestError

MARKER = "ZQXredaction"


# The loggers these tests write to, and the root; other tests (BentoML's logging set-up, `bentoml build` in quiet
# mode) may have disabled or quietened them.
LOGGERS = (
    "bentoml",
    "bentoml._internal.server.http_app",
    "highdicom.seg.sop",
    "pydicom",
    "medsamix",
    "medsamix.warnings",
)


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """A handler on the root logger, as BentoML's server logging has, with the filter installed."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    loggers = [root, *(logging.getLogger(name) for name in LOGGERS)]
    saved = [(logger.disabled, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.disabled, logger.propagate = False, True
        logger.setLevel(logging.DEBUG)
    shown = warnings.showwarning
    try:
        redaction.install()
        yield out
    finally:
        root.removeHandler(handler)
        warnings.showwarning = shown
        for logger, (disabled, level, propagate) in zip(loggers, saved, strict=True):
            logger.disabled, logger.propagate = disabled, propagate
            logger.setLevel(level)


class Box(BaseModel):
    box: tuple[float, float, float, float]


def test_a_refused_request_leaves_no_record(log: io.StringIO) -> None:
    for error in (RequestError(f"refused {MARKER}"), _validation_error()):
        try:
            raise error
        except Exception:
            logging.getLogger("bentoml._internal.server.http_app").exception("Exception on %s [%s]", "/segment", "POST")
    assert log.getvalue() == ""


def test_a_fault_keeps_its_type_and_stack_but_not_its_message(log: io.StringIO) -> None:
    try:
        try:
            raise KeyError(MARKER)
        except KeyError as inner:
            raise RuntimeError(f"while reading {MARKER}") from inner
    except RuntimeError:
        logging.getLogger("bentoml").exception("Exception on %s [%s]", "/segment", "POST")
    text = log.getvalue()
    assert "Exception on /segment [POST]" in text and "RuntimeError" in text and "KeyError" in text
    assert "test_redaction.py" in text and MARKER not in text


def test_dicom_libraries_and_warnings_keep_their_source_not_their_text(log: io.StringIO) -> None:
    logging.getLogger("highdicom.seg.sop").warning("The string %r is unlikely to be a person name", MARKER)
    logging.getLogger("pydicom").error(f"Invalid value {MARKER}")
    warnings.warn(f'The string "{MARKER}" is unlikely to represent the intended person name', UserWarning, stacklevel=1)
    text = log.getvalue()
    assert "highdicom.seg.sop logged a message at WARNING" in text and "pydicom logged a message at ERROR" in text
    assert "UserWarning raised at" in text and "test_redaction.py" in text
    assert MARKER not in text


def test_the_services_own_lines_are_kept(log: io.StringIO) -> None:
    logging.getLogger("medsamix").warning("the model folder %s is not served: %s", "broken", "a reason")
    assert log.getvalue() == "WARNING medsamix the model folder broken is not served: a reason\n"


def _validation_error() -> ValidationError:
    try:
        Box.model_validate({"box": MARKER})
    except ValidationError as error:
        return error
    raise AssertionError("expected a validation error")

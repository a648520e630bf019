"""The one error type a request can end in: a sentence for the client and the HTTP status it maps to.

Every message names what was expected and what was found, and never quotes a DICOM tag value (patient data):
only sizes, counts, indices, transfer-syntax UIDs and names the service itself defines appear in one.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus


def unknown_name(kind: str, name: object, known: Iterable[str]) -> str:
    """The one sentence a lookup by name fails with, whatever the registry (presets, formats, methods, sizes):
    `unknown <kind> '<name>': expected one of a, b, c`, the valid names in `known`'s order."""
    return f"unknown {kind} {name!r}: expected one of {', '.join(known)}"


class RequestError(ValueError):
    """A request the service refuses; `status` is the 4xx (or 502/504) answer it maps to."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = HTTPStatus(status)

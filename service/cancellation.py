"""Whether the client of the request being served is still there, so that work nobody will read is dropped.

The ASGI guard (`service.middleware.Guard`) starts watching the connection once a request's body is in and sets the
request's event when the client leaves before the answer is sent. Long work (decoding frames, encoding, decoding
masks) calls `check()` between its steps. The event travels in a context variable: it reaches the thread BentoML
runs a sync API method on (anyio copies the context), and outside a request (tests and benchmarks that call the
segmenter directly) nothing is watched and `check()` never raises.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["ClientGone", "check", "watching"]

_GONE: ContextVar[threading.Event | None] = ContextVar("medsamix_client_gone", default=None)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready; the request's remaining work is dropped."""


@contextmanager
def watching() -> Iterator[threading.Event]:
    """An event for the request running in this context: set it when its client leaves."""
    gone = threading.Event()
    token = _GONE.set(gone)
    try:
        yield gone
    finally:
        _GONE.reset(token)


def check() -> None:
    """Raise ClientGone if this request's client has left (never outside a watched request)."""
    gone = _GONE.get()
    if gone is not None and gone.is_set():
        raise ClientGone("the client closed the connection before the answer was ready")

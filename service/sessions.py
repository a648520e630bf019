"""MONAI Label sessions: a volume a viewer uploads once (`PUT /session/`) and segments many times by its id.

A session is temporary and bounded: at most `max_count` at once, `max_bytes` uploaded bytes in all, each living
`ttl` seconds after its last use (a viewer's `expiry` may shorten that, never lengthen it). It belongs to the token
that made it (`service.middleware.Tokens.owner`): another token's request finds no such session, exactly as for an
unknown or expired id, so an id says nothing about whether it exists for someone else. Expired sessions are deleted
by a sweeper thread and on every call; all of them when the service stops. Ids are 128 random bits.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from service.errors import RequestError

__all__ = ["Session", "Sessions"]


@dataclass
class Session:
    """One session: its folder (the uploaded files, under names of our own), who owns it, and its clock."""

    id: str
    owner: str | None
    folder: Path
    files: list[Path]
    size: int
    ttl: float
    created: float
    last_access: float = field(default=0.0)

    @property
    def expires(self) -> float:
        return self.last_access + self.ttl

    def card(self) -> dict[str, object]:
        """What `GET /session/{id}` answers (MONAI Label's session info, less its server-side paths)."""
        return {
            "name": self.id,
            "files": len(self.files),
            "size": self.size,
            "create_ts": int(self.created),
            "last_access_ts": int(self.last_access),
            "expiry": int(self.ttl),
            "expiry_ts": int(self.expires),
        }


class Sessions:
    def __init__(self, max_count: int, max_bytes: int, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.max_count, self.max_bytes, self.ttl = max_count, max_bytes, ttl
        self._clock = clock
        self._root = Path(tempfile.mkdtemp(prefix="medsamix-sessions-"))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="medsamix-session-sweeper", daemon=True)
        self._sweeper.start()

    def folder(self) -> Path:
        """A fresh folder to receive one upload into, inside the sessions' root (so a rename makes it a session's)."""
        return Path(tempfile.mkdtemp(dir=self._root, prefix=".upload-"))

    def create(self, owner: str | None, folder: Path, files: list[Path], expiry: int = 0) -> Session:
        """A session over `files` (already written into `folder`, which it takes over), or 413/503 when it would
        pass the bounds (then `folder` is deleted)."""
        size = sum(f.stat().st_size for f in files)
        ttl = min(float(expiry), self.ttl) if expiry > 0 else self.ttl
        with self._lock:
            self._expire()
            used = sum(s.size for s in self._sessions.values())
            if len(self._sessions) >= self.max_count or used + size > self.max_bytes:
                shutil.rmtree(folder, ignore_errors=True)
                raise RequestError(
                    f"this server keeps at most {self.max_count} sessions and {self.max_bytes} uploaded bytes at once "
                    "(MEDSAMIX_MAX_SESSIONS, MEDSAMIX_MAX_SESSION_BYTES); delete a session or retry once one expired",
                    HTTPStatus.SERVICE_UNAVAILABLE if size <= self.max_bytes else HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            now = self._clock()
            session_id = uuid.uuid4().hex
            home = self._root / session_id
            folder.rename(home)
            moved = [home / f.relative_to(folder) for f in files]
            session = Session(session_id, owner, home, moved, size, ttl, now, now)
            self._sessions[session_id] = session
            return session

    def get(self, owner: str | None, session_id: str, touch: bool = True) -> Session:
        """The owner's live session `session_id` (its clock restarted when `touch`), else 404 of one sentence."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None or session.owner != owner:
                raise RequestError(
                    "expected the id of a live session of this token, found none (it expired, was deleted, or was "
                    "never made with this token); upload the volume again with PUT /session/",
                    HTTPStatus.NOT_FOUND,
                )
            if touch:
                session.last_access = self._clock()
            return session

    def remove(self, owner: str | None, session_id: str) -> Session:
        session = self.get(owner, session_id, touch=False)
        with self._lock:
            self._drop(session_id)
        return session

    def close(self) -> None:
        """Delete every session and the root (the service is stopping)."""
        self._stopped.set()
        with self._lock:
            for session_id in list(self._sessions):
                self._drop(session_id)
        shutil.rmtree(self._root, ignore_errors=True)

    def _expire(self) -> None:
        now = self._clock()
        for session_id in [i for i, s in self._sessions.items() if s.expires <= now]:
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            shutil.rmtree(session.folder, ignore_errors=True)

    def _sweep(self) -> None:
        while not self._stopped.wait(min(self.ttl, 30.0)):
            with self._lock:
                self._expire()

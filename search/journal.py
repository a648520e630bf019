"""The search's journal: one JSON line per finished trial, appended and fsync'd before the next trial starts.

It is what a resumed search replays, so it must survive `kill -9` at any instant: a line is written whole with one
`write` and flushed to disk; a torn last line (the process died mid-write) is ignored on reading, and every line
before it is a complete trial. SMAC's own run-history files are rewritten in place and are not relied upon.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """Every complete entry, in the order written; a torn final line is dropped (and cut off the file, so the
        next append starts on a fresh line)."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        entries: list[dict[str, Any]] = []
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return entries

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

"""An LRU cache of image embeddings, bounded in bytes: further boxes on an image already seen cost only the decoder.

Keys are opaque tuples the segmenter builds (model, manifest hash, digest of the displayed image the encoder input
is made of), so no DICOM value is kept in a key. Beside it, `DisplayMemo` remembers which displayed image a file
already seen gave, so that resending the very same bytes does not decode the frame again. Thread-safe: BentoML runs
sync API calls on a pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from service.imaging import Frame


@dataclass(frozen=True)
class Embedding:
    """One encoder output (C, h, w) float32 and the frame of the image it came from (to map boxes and masks)."""

    array: np.ndarray
    frame: Frame


class EmbeddingCache:
    """Least-recently-used embeddings totalling at most `max_bytes`; hits and misses are counted for /metrics."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> Embedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, entry: Embedding) -> None:
        """Keep `entry`, evicting the least recently used until it fits; one larger than the cache is not kept."""
        size = entry.array.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.array.nbytes
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.array.nbytes
            self._entries[key] = entry
            self._bytes += size


class DisplayMemo:
    """The digest of the displayed image each (file digest, frame, window) gave, for the last `max_entries` of
    them. The displayed image is a function of the file's bytes and the window alone, so a file whose bytes were
    decoded and displayed before (and so passed every check on the way) need not be decoded again to find its
    embedding; a file that was refused was never displayed, so it is never remembered."""

    def __init__(self, max_entries: int = 16384) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            digest = self._entries.get(key)
            if digest is not None:
                self._entries.move_to_end(key)
            return digest

    def put(self, key: Hashable, digest: str) -> None:
        with self._lock:
            self._entries[key] = digest
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

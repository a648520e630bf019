"""Where a trial's time goes (merge / encoder / decoder / masks / SMAC): summed wall time per named section.

On a GPU each section synchronises before and after, so the time is the section's own kernels, not whatever was
queued before it; that costs a little overlap, which a search spends gladly to know what to make faster.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    def __init__(self, device: torch.device) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._sync = device.type == "cuda"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The totals since the last take, in seconds; then start again from zero."""
        result = dict(self.totals)
        self.totals.clear()
        return result

"""What the benchmarks share: one timing helper, peak GPU memory, and a JSON record that says where and with what
it was measured (machine, versions, date) and is rewritten after every measurement, so a run stopped at its time
budget (benchmarks/gpu.sh) still leaves what it measured.

    python benchmarks/measure.py run.json merge '{"status": "ok"}' --device cuda

adds one key to a benchmark's JSON (gpu.sh records each stage's outcome so); torch is imported only when the file
does not exist yet and its header has to be written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.lazy import lazy_module  # noqa: E402

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # a `note` on an existing file needs no torch (seconds per call on the GPU machine)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, runs: int, warm_up: bool = True) -> list[float]:
    """Seconds of each of `runs` calls of `fn`, device-synchronised, after one warm-up call that takes compilation
    and the allocator's growth out of the figures (`warm_up=False` where the caller warmed up itself)."""
    if warm_up:
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_bytes(device: str) -> int | None:
    """torch.cuda.max_memory_allocated since the last `reset_peak` (None off a GPU)."""
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


@cache
def _owners() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def imported_distributions() -> dict[str, str]:
    """Name -> version of every installed distribution this process has imported a module of: the versions a
    figure was measured with, and (tests/test_gpu_run.py) what the GPU image must hold or be carried as wheels."""
    names = {owner for module in list(sys.modules) for owner in _owners().get(module.partition(".")[0], ())}
    return {name: importlib.metadata.version(name) for name in sorted(names, key=str.lower)}


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    """Date, machine and versions, the header of every benchmark JSON."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.node()} {platform.platform()}, {os.cpu_count()} CPUs",
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _installed("triton"),
        "threads": torch.get_num_threads(),
    }


class JsonRecord:
    """A benchmark's results as one JSON object at `path` (or nowhere when None), rewritten whole on each `save`."""

    def __init__(self, path: Path | None, device: str, **fields: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {**environment(device), **fields}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def save(self) -> None:
        """Write now, with the versions of everything imported so far."""
        if self.path is None:
            return
        self.data.pop("distributions", None)  # kept last: the figures first
        self.data["distributions"] = imported_distributions()
        write_json(self.path, self.data)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically: a reader (or a run stopped mid-write) never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)


def note(path: Path, key: str, value: Any, device: str) -> None:
    """Set `key` in the JSON at `path`, keeping what is there; a missing file (a stage skipped, or stopped before
    its first save) is made with the header, so every stage's file says where and with what."""
    if path.exists():
        write_json(path, {**json.loads(path.read_text()), key: value})
        return
    record = JsonRecord(path, device)
    record[key] = value
    record.save()


def main() -> None:
    parser = argparse.ArgumentParser(description="Add one key to a benchmark's JSON.")
    parser.add_argument("path", type=Path)
    parser.add_argument("key")
    parser.add_argument("value", type=json.loads, help="a JSON value")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    note(args.path, args.key, args.value, args.device)


if __name__ == "__main__":
    main()

"""Encoders timed in interleaved rounds: each round runs every (encoder, optimisation level) once, the order reversed
every other round, so a machine whose speed drifts (a shared 2-core VM's moved 12-17 s per float32 ViT-B image
between runs) slows every variant alike; medians and speed-ups against the first.

    python benchmarks/encoder_rounds.py float32=vit_b.onnx int8=vit_b_int8.onnx --rounds 6 [--levels all extended]

Sessions are `cpu_sessions.session`'s (the service's: arena off, default threads unless --threads); the feed is
--batch random uint8 images (dense encoders: speed does not depend on the pixels), and each output's relative error
against the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_sessions import LEVELS, session  # noqa: E402
from search.export import relative_error  # noqa: E402


def random_feed(size: int, batch: int = 1) -> dict[str, np.ndarray]:
    """`batch` random `size`² uint8 images as an encoder's feed."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "resized_hw": np.array([[size, size]] * batch, np.int64),
    }


def interleaved(sessions: Mapping[str, ort.InferenceSession], feed: dict[str, np.ndarray], rounds: int) -> dict:
    """{"rounds": each session's seconds per round, "result": median, speed-up and relative error against the
    first session}, after one warm-up call each."""
    outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}  # also the warm-up
    first = next(iter(sessions))
    errors = {name: relative_error(out, outputs[first]) for name, out in outputs.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds):
        for name in list(sessions) if r % 2 == 0 else reversed(list(sessions)):
            start = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(time.perf_counter() - start)
        print(r, {name: round(t[-1], 3) for name, t in times.items()}, flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        name: {"median_s": medians[name], "speedup": medians[first] / medians[name], "relative_error": errors[name]}
        for name in sessions
    }
    return {"rounds": times, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+", help="NAME=PATH of an encoder.onnx; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--levels", nargs="+", choices=list(LEVELS), default=["all"])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core, the service's)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1, help="images per call (what a batching encoder sends)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = dict(item.split("=", 1) for item in args.encoders)
    sessions = {
        f"{name} ({level})": session(Path(path), args.threads, level)
        for name, path in paths.items()
        for level in args.levels
    }
    measured = interleaved(sessions, random_feed(args.size, args.batch), args.rounds)
    print(json.dumps(measured["result"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(measured, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A new server's first lone images, one at a time, through `bentoml serve` with the encoder's batching on and off:
each request's seconds and, from /metrics, its encoder call, the encoding inside it and the hop between them.

    python benchmarks/batcher_warmup.py --requests 12 --json benchmarks/results-batcher-warmup-cpu.json

BentoML's adaptive batcher learns its cost model from a new server's first calls: after 9 single calls it waits for
a batch of 2, then of 3, holding a lone request until it gives up; a single client (one radiologist, a PACS script)
sends no companion. The model is `serve_bench.vit_b_store`'s random ViT-B (the wait scales with its encoding time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quant_bench import hop  # noqa: E402
from benchmarks.serve_bench import cases, vit_b_store  # noqa: E402
from testing.local_server import serve  # noqa: E402
from tests.dicomfiles import ct_hu, ct_image  # noqa: E402
from tests.service_client import encoder_timings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    image = ct_image(ct_hu(512, 512, seed=3))
    [request] = [r for name, r in cases(image, 512, np.random.default_rng(0), "demo") if name == "new image"]
    result: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = vit_b_store(work)
        for batching in ("1", "0"):
            env = {"MEDSAMIX_MODELS": str(store), "MEDSAMIX_BATCHING": batching}
            rows = result[f"batching {batching}"] = []
            with (
                serve(env, work / f"serve-{batching}.log", timeout=600) as server,
                httpx.Client(base_url=server.url, timeout=600) as http,
            ):
                for i in range(args.requests):
                    before = encoder_timings(server)
                    start = time.perf_counter()
                    response = request(http, 1000 * int(batching) + i)  # a new image each time, each server
                    response.raise_for_status()
                    rows.append({"seconds": time.perf_counter() - start, **hop(before, encoder_timings(server))})
                    print(batching, i, json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

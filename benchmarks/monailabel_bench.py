"""One MONAI Label `infer()` on a 3-D volume, from upload to label file, through `bentoml serve` on loopback.

    python benchmarks/monailabel_bench.py --json benchmarks/results-monailabel-cpu.json      # models/demo, CPU

MONAI Label's own Python client (`monailabel.client.client.MONAILabelClient.infer`, what Slicer's module calls)
uploads a NIfTI of the zoo's synthetic abdominal CT (--slices slices of 128 x 128) with the liver's roi and one
click, and writes the label volume the server answers to disk. Timed: the whole call. "new volume": each run a
volume the server has not seen (another seed: every slice the walk reaches is encoded); "same volume again": the
first run's volume resent (every embedding from the cache: the upload, the NIfTI read and write, the decoder and
the HTTP round trip remain). Medians over --runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nibabel
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.export_bench import machine  # noqa: E402
from search.zoo import ct_volume  # noqa: E402
from testing.local_server import serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def case(seed: int, slices: int, folder: Path) -> tuple[Path, dict]:
    """A NIfTI (i, j, k) = (column, row, slice) of a fresh CT and the infer params: the liver's roi and a click."""
    image, label = ct_volume(seed=seed, depth=slices)
    path = folder / f"ct-{seed}.nii.gz"
    nibabel.save(
        nibabel.Nifti1Image(np.rint(image).astype(np.int16).transpose(2, 1, 0), np.diag([-1, -1, 2, 1.0])), path
    )
    zs, ys, xs = np.nonzero(label == 1)
    z = int(np.median(zs))
    on = np.nonzero(label[z] == 1)
    click = [int(on[1][len(on[1]) // 2]), int(on[0][len(on[0]) // 2]), z]
    roi = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(zs.min()), int(zs.max()) + 1]
    return path, {"label": "ct_liver", "roi": roi, "foreground": [click], "background": []}


def main() -> None:
    from monailabel.client.client import MONAILabelClient

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    def infer(url: str, path: Path, params: dict, out: Path) -> float:
        client = MONAILabelClient(url, tmpdir=str(out))  # a fresh client per call, as Slicer's module makes one
        client.update_auth({"token_type": "Bearer", "access_token": TOKEN})
        start = time.perf_counter()
        result, _ = client.infer("demo", "", params, file=str(path))
        elapsed = time.perf_counter() - start
        assert nibabel.load(result).shape == nibabel.load(path).shape
        return elapsed

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        env = {"MEDSAMIX_MODELS": str(REPO / "models"), "MEDSAMIX_TOKEN": TOKEN}
        with serve(env, folder / "serve.log") as server:
            cases = [case(1000 + run, args.slices, folder) for run in range(args.runs)]
            infer(server.url, *case(999, args.slices, folder), folder)  # first call: connections, lazy imports
            new = [infer(server.url, path, params, folder) for path, params in cases]
            again = [infer(server.url, *cases[0], folder) for _ in range(args.runs)]
    rows = {"new volume": statistics.median(new), "same volume again": statistics.median(again)}
    print(f"| infer() on {args.slices} x 128 x 128 (demo, CPU) | median s | slices/s |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {args.slices / seconds:.1f} |")
    if args.json:
        record = {
            "date": date.today().isoformat(),
            "machine": machine(),
            "slices": args.slices,
            "runs": args.runs,
            "seconds": {"new": new, "again": again},
            "median_s": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A series from one prompt: accuracy of propagation on the zoo's CT volumes, and slices per second of a series call.

    python benchmarks/series_bench.py accuracy --json benchmarks/results-series-accuracy.json
    python benchmarks/series_bench.py speed --json benchmarks/results-series-speed-cpu.json          # models/demo
    python benchmarks/series_bench.py speed --arch vit_b --slices 6 --runs 2 --json ...              # random ViT-B

**accuracy** (in process, the service's own steps: DICOM series -> `build_volume` -> `Segmenter.segment_series`,
the demo model on onnxruntime): every CT case of the tiny zoo (`tests/zoo/datasets/Dataset001_CTAbdomen`, 8 cases
of 12 slices), every structure (liver, spleen, each kidney: one 3-D connected component each), written as a CT
series. The reference is the same model given the ground truth's tight box on every slice it spans ("per-slice
boxes"); propagation gets the tight box of the structure's middle slice only, for each (margin, min_area) rule, and
the tight 3-D box. Volume Dice against the ground truth, mean over structures.

**speed** (through `bentoml serve` on loopback, `POST /segment/series` with a box on the middle slice of an
ellipsoid that spans every slice): the first call (every slice encoded) and the same call again (every embedding
from the cache), median over --runs, as slices per second.
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

import httpx
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.export_bench import machine  # noqa: E402
from benchmarks.serve_bench import vit_b_store  # noqa: E402
from search.data import NnUNetLoader  # noqa: E402
from service.cache import EmbeddingCache  # noqa: E402
from service.dicom import read_dicom  # noqa: E402
from service.schemas import Prompt, SeriesPrompt  # noqa: E402
from service.segmenter import Segmenter, Served, encode_jobs  # noqa: E402
from service.store import ModelStore  # noqa: E402
from service.volume import build_volume  # noqa: E402
from testing.local_server import serve  # noqa: E402
from tests.dicomfiles import ct_series, to_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "tests" / "zoo" / "datasets" / "Dataset001_CTAbdomen"
TASKS = {1: "ct_liver", 2: "ct_kidney", 3: "ct_spleen"}
MARGINS = (0.0, 0.05, 0.1, 0.2)
MIN_AREAS = (1, 10, 25)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def structures(label: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(task, D x H x W bool) for each labelled structure: one per 3-D connected component."""
    found = []
    for value, task in TASKS.items():
        components, count = ndimage.label(label == value)
        found += [(task, components == k) for k in range(1, count + 1)]
    return found


def accuracy(args: argparse.Namespace) -> dict:
    demo = Served.of(ModelStore(REPO / "models").load("demo", providers=["CPUExecutionProvider"]))
    segmenter = Segmenter(
        {"demo": demo}, "demo", lambda jobs: encode_jobs({"demo": demo}, jobs), EmbeddingCache(2**30), 64
    )
    loader = NnUNetLoader(CT)
    rules = [(m, a) for m in MARGINS for a in MIN_AREAS]
    rows: dict[str, list[float]] = {"per-slice boxes": [], "3-D box": []} | {
        f"margin {m}, min_area {a}": [] for m, a in rules
    }
    walked: dict[str, list[int]] = {key: [] for key in rows}
    for case in loader.case_ids():
        (volume,) = loader.read(case)
        series = [to_bytes(ds) for ds in ct_series(np.rint(volume.image).astype(np.int16), spacing=1.0)]
        dicom = build_volume([read_dicom(data) for data in series])
        for task, truth in structures(volume.label):
            spanned = [z for z in range(len(truth)) if truth[z].any()]
            middle = spanned[len(spanned) // 2]
            per_slice = np.zeros_like(truth)
            for z in spanned:
                image = dicom.slices[z].image
                (result,) = segmenter.segment(image, [Prompt(box=tight_box(truth[z]), task=task)]).results
                per_slice[z] = result.mask
            rows["per-slice boxes"].append(dice(per_slice, truth))
            walked["per-slice boxes"].append(len(spanned))
            ys, xs = np.nonzero(truth.any(axis=0))
            prompts = {
                "3-D box": SeriesPrompt(
                    box3d=(xs.min(), ys.min(), spanned[0], xs.max() + 1, ys.max() + 1, spanned[-1]), task=task
                )
            } | {
                f"margin {m}, min_area {a}": SeriesPrompt(
                    box=tight_box(truth[middle]), slice=middle, task=task, margin=m, min_area=a
                )
                for m, a in rules
            }
            for key, prompt in prompts.items():
                (answer,) = segmenter.segment_series(dicom, [prompt]).results
                mask = np.zeros_like(truth)
                for s in answer.slices:
                    mask[s.slice] = s.mask
                rows[key].append(dice(mask, truth))
                walked[key].append(len(answer.slices))
        print(case, {k: round(v[-1], 4) for k, v in rows.items()}, flush=True)
    return {
        "structures": len(rows["per-slice boxes"]),
        "volume_dice_mean": {k: statistics.fmean(v) for k, v in rows.items()},
        "volume_dice_min": {k: min(v) for k, v in rows.items()},
        "slices_walked_mean": {k: statistics.fmean(v) for k, v in walked.items()},
    }


def speed(args: argparse.Namespace) -> dict:
    size = 512
    z, y, x = np.ogrid[: args.slices, :size, :size]
    half = args.slices / 2
    ball = ((z - half + 0.5) / (half + 1)) ** 2 + ((y - 256) / 150) ** 2 + ((x - 256) / 180) ** 2 <= 1
    hu = np.where(ball, 60, -100).astype(np.int16) + np.random.default_rng(0).integers(-20, 20, ball.shape).astype(
        np.int16
    )
    middle = args.slices // 2
    prompt = {"box": tight_box(ball[middle]), "slice": middle, "min_area": 1}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = vit_b_store(root) if args.arch == "vit_b" else REPO / "models"
        first, cached = [], []
        with serve({"MEDSAMIX_MODELS": str(models), "MEDSAMIX_CACHE_MB": "4096"}, root / "serve.log") as server:
            with httpx.Client(base_url=server.url, timeout=3600) as http:
                for run in range(args.runs):
                    # a new series each run: one corner pixel takes a new value inside the abdomen window (3 HU is
                    # more than one grey level of its 400 HU width), so every displayed slice is new
                    hu[:, 0, 0] = -150 + 3 * run
                    files = [
                        ("files", (f"{i}.dcm", to_bytes(ds), "application/dicom")) for i, ds in enumerate(ct_series(hu))
                    ]
                    for bucket in (first, cached):
                        start = time.perf_counter()
                        response = http.post("/segment/series", files=files, data={"prompts": json.dumps([prompt])})
                        elapsed = time.perf_counter() - start
                        response.raise_for_status()
                        walked = len(response.json()["results"][0]["slices"])
                        bucket.append(elapsed)
                    print(f"run {run}: {walked} slices, first {first[-1]:.2f} s, cached {cached[-1]:.2f} s", flush=True)
    return {
        "arch": args.arch,
        "slices": args.slices,
        "walked": walked,
        "runs": args.runs,
        "first_s_median": statistics.median(first),
        "cached_s_median": statistics.median(cached),
        "first_slices_per_s": walked / statistics.median(first),
        "cached_slices_per_s": walked / statistics.median(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("accuracy", "speed"))
    parser.add_argument("--arch", choices=("demo", "vit_b"), default="demo")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = accuracy(args) if args.mode == "accuracy" else speed(args)
    report = {"date": date.today().isoformat(), "machine": machine(), **result}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

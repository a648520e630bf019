"""The prepared GPU run (benchmarks/gpu.sh) checked on CPU, where it must work before it costs device time: its dry
run writes the 500-slice evaluation's and the search's JSON with what benchmarks/RESULTS.md compares against the
targets and the int8 stage's CPU rounds, and the wheels it carries are exactly what those stages import that the GPU
image lacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NEWER = "# newer than the image's"
# Imported by the dry run here but not needed there: optional imports that succeed only because this machine has
# the package, and imports of Python < 3.12 (the image's python3 is 3.12).
NOT_NEEDED = {
    "importlib-metadata": "dask imports it on Python < 3.12 only",
    "lazy-importer": "importlib_metadata's own import",
    "pylibjpeg": "pydicom's optional decoder plugins",
    "pylibjpeg-openjpeg": "pydicom's optional decoder plugins",
    "pylibjpeg-rle": "pydicom's optional decoder plugins",
    "pyjpegls": "pydicom's optional decoder plugins",
    "python-gdcm": "pydicom's optional decoder plugins",
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> list[str]:
    """The non-comment lines of one of benchmarks/'s package lists."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


pytestmark = pytest.mark.slow  # the dry run takes 60-90 s on 2 cores: the full suite runs it


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu")
    env = {
        **os.environ,
        "GPU_SH_DRY_RUN": "1",
        "GPU_SH_STAGES": "evaluator search int8",
        "OUT": str(out),
        "PYTHON": sys.executable,
    }
    subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], env=env, check=True)
    return out


def stage(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["status"] == "ok"
    assert {"date", "machine", "python", "torch", "distributions"} <= data.keys()
    return data


def test_dry_run_writes_what_results_md_compares(dry_run: Path) -> None:
    evaluation = stage(dry_run, "evaluator")["tiny_evaluator"]
    assert evaluation["slices"] == 8 and evaluation["image_shape"] == [160, 120]
    assert evaluation["slices_per_s"] > 0
    # The resident inputs are the uint8 model inputs (S×S×3 bytes a slice), not float32.
    assert evaluation["prepared_images_bytes"] == 8 * 128 * 128 * 3
    assert evaluation["engine_bytes"] > 0 and evaluation["model_bytes"] > 0
    assert "peak_gpu_bytes" not in evaluation  # measured on CUDA only
    (search,) = stage(dry_run, "search")["results"].values()
    assert search["trials"] == 2
    split = search["split_s"]
    assert 0 < split["merge"] + split["evaluate"] + split["smac"] <= split["wall"]
    int8 = stage(dry_run, "int8")
    assert int8["arch"] == "tiny" and isinstance(int8["cpu"]["model"], str)
    assert int8["mib"]["int8"] < int8["mib"]["float32"]
    rounds = int8["threads_0"]
    assert {name: len(times) for name, times in rounds["rounds"].items()} == {"float32": 2, "int8": 2}
    assert rounds["result"]["float32"]["speedup"] == 1 and rounds["result"]["int8"]["median_s"] > 0
    run = json.loads((dry_run / "run.json").read_text())
    assert run["run"]["dry_run"] is True
    assert {run[s]["status"] for s in ("evaluator", "search", "int8")} == {"ok"}


def test_wheels_are_what_the_stages_import_that_the_image_lacks(dry_run: Path) -> None:
    imported = {
        normalized(name)
        for part in ("evaluator", "search", "int8")
        for name in stage(dry_run, part)["distributions"]
        if normalized(name) != "medsamix"
    }
    image = {normalized(name) for name in listed(BENCHMARKS / "gpu_image_packages.txt")}
    wheels = listed(BENCHMARKS / "gpu_wheels.txt")
    carried = {normalized(line.split("==")[0]) for line in wheels if NEWER not in line}
    newer = {normalized(line.split("==")[0]) for line in wheels if NEWER in line}
    assert carried == imported - image - NOT_NEEDED.keys()
    assert newer <= image & imported

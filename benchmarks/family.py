"""The held-out task family: calibration tasks of other anatomy, modality and shape than the tiny zoo's, on which the
search is never tuned and is reported only at the end (issue 14, item 4).

    python benchmarks/family.py                  # writes tests/family: datasets, tasks.yaml, family.json
    python benchmarks/family.py --no-premise     # the files only (family.json keeps no premise table then)

Three synthetic nnU-Net raw datasets, seeded numpy and scipy only, written with the zoo's `write_nnunet` (int16
images; nibabel's gzip stores no name or time, so the same seed gives the same bytes):

- `Dataset101_CTChest`: chest CT in HU: air-filled lungs with a gravity gradient and vessels, mediastinum and
  heart, ribs, sternum and spine; 1-3 solid nodules in the lungs. Tasks `ct_lung` (the lung fields, nodules
  included) and `ct_nodule`, both under the `ct_lung` window.
- `Dataset102_MRCardiac`: short-axis cine-like cardiac MR, base to apex: bright left-ventricular blood pool with
  papillary muscles, the myocardium as a ring around it, the right ventricle's crescent, epicardial fat, lungs,
  chest wall; a smooth bias field and Rician noise as the zoo's MR. Tasks `mr_lv_cavity` and `mr_myocardium` (a
  ring: a shape the zoo never shows), preset `mr`.
- `Dataset103_CTPelvis`: pelvic CT in HU at the hip joints: proximal femora (head, neck, trochanter; cortical
  shell, cancellous core) in their acetabula, the bladder (water), rectum with gas, muscles and fat. Tasks
  `ct_bone` (the femora, preset `ct_bone`) and `ct_bladder` (preset `ct_abdomen`).

`tests/family/tasks.yaml` is a `medsamix search` configuration over the zoo's three models and every family task;
`tests/family/family.json` records the generator, the sha256 of every file and the premise table: each zoo model,
in its own convention, on the calibration and the test split of each task (Dice, `case_mean`). The family is fixed
once committed: tests/test_family.py checks the hashes and that a regeneration gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.zoo import (  # noqa: E402
    CALIBRATION_FRACTION,
    MIN_COMPONENT,
    MODELS,
    SIZE,
    SPLIT_SEED,
    ellipsoid,
    markdown_table,
    write_nnunet,
)

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "tests" / "family"
ZOO = ROOT / "tests" / "zoo"
VERSION = 1
CASES = 10
DEPTH = 8
# a rectangular field of view (as cardiac MR's phase direction, or a CT cropped to the body), SIZE wide
HEIGHT = 104
SEED = 0
TRIALS = 150  # as the zoo's demo search
# CT noise (standard deviation, HU) inside the body, tapering to none in the air round it: rays through air alone
# reach the detector nearly unattenuated, and a few HU there are under one grey level in every window the tasks use
# (flat air also keeps the gzipped int16 files a third smaller)
NOISE_HU = 10.0
AIR_NOISE_HU = 0.0
CONFIG_FILE = "tasks.yaml"
RECORD_FILE = "family.json"

Volume = tuple[np.ndarray, np.ndarray]  # (D x H x W float32 intensities, D x H x W uint8 labels)


@dataclass(frozen=True)
class Dataset:
    """One family dataset: its volume generator (seed -> volume), channel name, labels and tasks."""

    name: str
    generate: Callable[[int], Volume]
    channel: str
    labels: dict[str, int]
    tasks: dict[str, tuple[tuple[int, ...], str]]  # task -> (label ids, intensity preset)


def _grid(depth: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, y, x), each D x H x W: z and x in [-1, 1], y in the same pixel units as x (square pixels); y grows
    downwards (anterior at the top), x to the image's right."""
    half = (height - 1) / (width - 1)
    axes = (np.linspace(-1, 1, depth), np.linspace(-half, half, height), np.linspace(-1, 1, width))
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return zz, yy, xx


def _jitter(rng: np.random.Generator) -> Callable[..., float]:
    return lambda scale=0.1: 1.0 + rng.uniform(-scale, scale)


def _ellipse(yy: np.ndarray, xx: np.ndarray, center, axes, angle: float = 0.0) -> np.ndarray:
    """In-plane ellipse on every slice: `center` and `axes` as (y, x)."""
    return ellipsoid(np.zeros_like(yy), yy, xx, (0.0, *center), (1.0, *axes), angle)


def _torso(yy: np.ndarray, xx: np.ndarray, j: Callable[..., float], axes, spreads, margin: float):
    """(ay, ax, body, inner): the body's outline, half-axes `axes` (y, x) jittered by `spreads`, and the outline
    `margin` inside it (jittered by up to 30 %)."""
    ay, ax = axes[0] * j(spreads[0]), axes[1] * j(spreads[1])
    body = _ellipse(yy, xx, (0.0, 0.0), (ay, ax))
    inner = _ellipse(yy, xx, (0.0, 0.0), (ay - margin * j(0.3), ax - margin * j(0.3)))
    return ay, ax, body, inner


def _cortical(region: np.ndarray, shell: float, cortex: float, core: float, marrow: np.ndarray) -> np.ndarray:
    """HU of a bone: `cortex` within `shell` pixels of its in-plane edge, `core` plus trabecular `marrow` inside."""
    depth = np.stack([ndimage.distance_transform_edt(r) for r in region])
    return np.where(depth <= shell, cortex, core + marrow)


def _ct_noise(rng: np.random.Generator, image: np.ndarray, body: np.ndarray) -> np.ndarray:
    """`image` blurred (a soft reconstruction kernel) plus noise, NOISE_HU in the body and AIR_NOISE_HU outside."""
    sigma = AIR_NOISE_HU + (NOISE_HU - AIR_NOISE_HU) * ndimage.gaussian_filter(body.astype(float), (0, 3, 3))
    return ndimage.gaussian_filter(image, (0, 0.7, 0.7)) + sigma * rng.normal(size=image.shape)


def chest_ct(seed: int, depth: int = DEPTH, height: int = HEIGHT, width: int = SIZE) -> Volume:
    """Chest CT (HU) and labels: lung fields 1, nodules 2."""
    rng = np.random.default_rng([101, seed])
    j = _jitter(rng)
    zz, yy, xx = _grid(depth, height, width)
    image = np.full(zz.shape, -1000.0)
    ay, ax, body, wall = _torso(yy, xx, j, (0.62, 0.9), (0.08, 0.05), 0.06)
    image[body] = -100.0  # subcutaneous fat
    image[wall] = 45.0  # chest-wall muscle
    cavity = _ellipse(yy, xx, (0.02, 0.0), (ay - 0.14 * j(0.2), ax - 0.13 * j(0.2)))
    # the heart grows towards the lower slices (z > 0); the mediastinum narrows upwards
    heart_axes = (0.2 + 0.09 * (zz + 1) / 2) * j(), (0.2 + 0.1 * (zz + 1) / 2) * j()
    hy, hx = -0.05 * j(), 0.1 * j()
    heart = ((yy - hy) / heart_axes[0]) ** 2 + ((xx - hx) / heart_axes[1]) ** 2 <= 1.0
    mediastinum = (np.abs(xx - 0.02) <= 0.12 * j()) & (yy <= 0.5) | heart
    spine_y = ay - 0.2 * j(0.1)
    vertebra = _ellipse(yy, xx, (spine_y, 0.0), (0.1 * j(), 0.11 * j()))
    aorta = _ellipse(yy, xx, (spine_y - 0.14, 0.14 * j()), (0.06, 0.06))
    lungs = np.zeros(zz.shape, bool)
    for side in (-1.0, 1.0):
        centre = (0.0, 0.0, side * 0.42 * j())
        lungs |= ellipsoid(zz, yy, xx, centre, (1.7 * j(), 0.5 * j(), 0.34 * j()), side * rng.uniform(0, 0.25))
    grow = ndimage.binary_dilation(vertebra | aorta, iterations=3)
    lungs &= cavity & ~mediastinum & ~grow
    image[cavity & ~lungs] = 40.0  # mediastinal soft tissue
    image[heart & cavity] = 38.0 + 6 * rng.normal()
    image[aorta] = 45.0
    marrow = 40 * ndimage.gaussian_filter(rng.normal(size=zz.shape), (0, 1, 1))
    image[vertebra] = _cortical(vertebra, 1.5, 700.0, 220.0, marrow)[vertebra]
    spinous = _ellipse(yy, xx, (spine_y + 0.15, 0.0), (0.06, 0.025)) & body
    image[spinous] = 650.0
    sternum = _ellipse(yy, xx, (-(ay - 0.1), 0.0), (0.04, 0.07 * j()))
    image[sternum] = _cortical(sternum, 1.0, 650.0, 250.0, marrow)[sternum]
    # ribs: small ovals on the wall, their angles drifting from slice to slice (ribs run obliquely)
    ribs = np.zeros(zz.shape, bool)
    for k in range(12):
        theta = (k + 0.5) * math.pi / 6 + rng.uniform(-0.08, 0.08) + 0.12 * zz[:, :1, :1]
        if abs(math.cos((k + 0.5) * math.pi / 6)) < 0.3:  # not at the sternum or the spine
            continue
        ry, rx = (ay - 0.1) * np.sin(theta), (ax - 0.1) * np.cos(theta)
        ribs |= ((yy - ry) / 0.035) ** 2 + ((xx - rx) / 0.05) ** 2 <= 1.0
    ribs &= wall & ~cavity
    image[ribs] = _cortical(ribs, 1.0, 700.0, 300.0, marrow)[ribs]
    # lung parenchyma: denser posteriorly (gravity), with vessels: thin ridges of smoothed noise, denser at the hila
    parenchyma = -870.0 + 70.0 * (yy + 1) / 2 + 15 * ndimage.gaussian_filter(rng.normal(size=zz.shape), (0, 2, 2))
    field = ndimage.gaussian_filter(rng.normal(size=zz.shape), (0.8, 2.2, 2.2))
    field /= field.std()
    hilum = np.exp(-(((xx - hx) / 0.45) ** 2) - ((yy - hy) / 0.5) ** 2)
    vessels = np.abs(field) < 0.06 + 0.12 * hilum
    image[lungs] = np.where(vessels, -200.0 + 200 * hilum, parenchyma)[lungs]
    label = np.zeros(zz.shape, np.uint8)
    label[lungs] = 1
    # nodules: 1-3 solid spheres (+30 HU), 3-6 px in radius, 1-3 slices thick, well inside a lung
    spacing = 2.0 / (depth - 1)
    inside = np.stack([ndimage.distance_transform_edt(s) for s in lungs])
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(3.0, 6.0)
        candidates = np.argwhere((inside > radius + 2) & (np.abs(zz) < 0.75))
        if len(candidates) == 0:
            continue
        cz, cy, cx = candidates[int(rng.integers(len(candidates)))]
        centre = (zz[cz, 0, 0], yy[0, cy, 0], xx[0, 0, cx])
        r = radius * 2.0 / (width - 1)
        shape = ellipsoid(zz, yy, xx, centre, (rng.uniform(0.6, 1.4) * spacing, r, r * j(0.2)))
        nodule = shape & lungs
        image[nodule] = 30.0 + 10 * rng.normal()
        label[nodule] = 2
    image = _ct_noise(rng, image, body)
    return image.astype(np.float32), label


def cardiac_mr(seed: int, depth: int = DEPTH, height: int = HEIGHT, width: int = SIZE) -> Volume:
    """Short-axis cardiac MR (scanner units, base at z = -1 to apex) and labels: LV cavity 1, myocardium 2,
    RV cavity 3."""
    rng = np.random.default_rng([102, seed])
    j = _jitter(rng)
    zz, yy, xx = _grid(depth, height, width)
    image = np.zeros(zz.shape)
    ay, ax, body, muscle = _torso(yy, xx, j, (0.66, 0.9), (0.08, 0.05), 0.06)
    image[body] = 0.85  # subcutaneous fat
    image[muscle] = 0.3
    cavity = _ellipse(yy, xx, (0.03, 0.0), (ay - 0.14, ax - 0.13))
    image[cavity] = 0.05  # lungs
    # heart, turned in plane; it shrinks from base to apex (an ellipsoid's cap), the RV ending before the apex
    cy, cx = -0.02 * j(), 0.08 * j()
    turn = rng.uniform(-0.3, 0.3)
    c, s = math.cos(turn), math.sin(turn)
    u, v = c * (yy - cy) - s * (xx - cx), s * (yy - cy) + c * (xx - cx)
    extent = np.sqrt(np.clip(1 - ((zz + 1) / (2.15 * j(0.05))) ** 2, 0, 1))  # 1 at the base, ~0.35 at the apex
    ellipticity = 1.0 + rng.uniform(-0.1, 0.1)
    ring = np.hypot(u * ellipticity, v / ellipticity)
    angle = np.arctan2(u, v)
    thickness = (0.09 + 0.015 * np.cos(angle - rng.uniform(0, 2 * math.pi))) * j(0.15)
    endo_r = 0.21 * j() * extent
    epi_r = endo_r + thickness * (0.7 + 0.3 * extent)
    lv = ring <= endo_r
    myo = (ring <= epi_r) & ~lv
    fat = (ring <= epi_r + 0.025) & ~(lv | myo) & (np.cos(angle - 2.2) > 0.2)  # epicardial fat, in part
    rv_dir = math.pi + rng.uniform(0.1, 0.6)  # towards the patient's right (image left), anterior
    rv_u, rv_v = (epi_r + 0.06) * math.sin(rv_dir) * 0.6, (epi_r + 0.06) * math.cos(rv_dir)
    rv_shape = ((u - rv_u) / (0.22 * extent * j())) ** 2 + ((v - rv_v) / (0.14 * extent * j())) ** 2 <= 1.0
    rv = rv_shape & (ring > epi_r + 0.02) & (extent > 0.6)
    rv_wall = ndimage.binary_dilation(rv, structure=np.ones((1, 3, 3), bool)) & ~rv & ~myo & ~lv
    flow = 0.06 * ndimage.gaussian_filter(rng.normal(size=zz.shape), (0, 4, 4))
    image[fat & cavity] = 0.8
    image[rv_wall & cavity] = 0.3
    image[rv] = (0.88 + flow)[rv]
    image[myo] = 0.27 + 0.02 * rng.normal()
    image[lv] = (0.95 + flow)[lv]
    # papillary muscles: two small dark discs in the cavity, against the wall (counted as cavity, as ACDC does)
    papillary = np.zeros(zz.shape, bool)
    for at in (rng.uniform(0.5, 1.1), rng.uniform(2.0, 2.6)):
        pr = np.maximum(endo_r - 0.035, 0)
        papillary |= np.hypot(u - pr * math.sin(at), v - pr * math.cos(at)) <= 0.028 * extent
    papillary &= lv & (extent > 0.5)
    image[papillary] = 0.3
    aorta = _ellipse(yy, xx, (ay - 0.3, 0.12), (0.05, 0.05))
    image[aorta & cavity] = 0.9
    vertebra = _ellipse(yy, xx, (ay - 0.17, 0.0), (0.09, 0.1))
    image[vertebra] = 0.45
    label = np.zeros(zz.shape, np.uint8)
    label[lv] = 1
    label[myo] = 2
    label[rv] = 3
    # scanner units, a smooth bias field and Rician noise as search.zoo.mr_volume's
    image = ndimage.gaussian_filter(image, (0, 0.8, 0.8)) * 200 * rng.uniform(0.8, 1.25)
    coefficients = rng.normal(0, 0.15, size=4)
    bias = np.exp(coefficients[0] * yy + coefficients[1] * xx + coefficients[2] * yy * xx + coefficients[3] * yy**2)
    image = image * bias
    sigma = 0.03 * image.max()
    image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
    return image.astype(np.float32), label


def pelvis_ct(seed: int, depth: int = DEPTH, height: int = HEIGHT, width: int = SIZE) -> Volume:
    """Pelvic CT (HU) at the hip joints (z = -1 cranial) and labels: proximal femora 1, bladder 2, hip
    bones (acetabula) 3."""
    rng = np.random.default_rng([103, seed])
    j = _jitter(rng)
    zz, yy, xx = _grid(depth, height, width)
    image = np.full(zz.shape, -1000.0)
    ay, ax, body, inner = _torso(yy, xx, j, (0.6, 0.92), (0.08, 0.04), 0.07)
    image[body] = -100.0
    strands = ndimage.gaussian_filter(rng.normal(size=zz.shape), (1, 2.5, 2.5))
    image[inner] = np.where(strands[inner] > 0.25, -90.0, 50.0 + 15 * strands[inner])  # muscles, fat between
    marrow = 50 * ndimage.gaussian_filter(rng.normal(size=zz.shape), (0, 0.8, 0.8))
    label = np.zeros(zz.shape, np.uint8)
    femora = np.zeros(zz.shape, bool)
    hips = np.zeros(zz.shape, bool)
    for side in (-1.0, 1.0):
        hy, hx, hz = 0.05 * j(), side * 0.5 * j(0.06), -0.3 * j(0.3)
        r = 0.16 * j(0.08)
        head = ellipsoid(zz, yy, xx, (hz, hy, hx), (0.75, r, r))
        # the neck runs laterally and caudally from the head to the trochanter, the shaft's top
        t = np.clip((side * (xx - hx)) / 0.3, 0, 1)
        neck = (np.hypot(yy - hy, zz - hz - 0.7 * t) <= 0.62 * r) & (side * (xx - hx) >= 0) & (side * (xx - hx) <= 0.3)
        trochanter = ((yy - hy) / (0.9 * r)) ** 2 + ((xx - hx - side * 0.3) / (0.85 * r)) ** 2 <= 1.0
        femur = (head | neck | (trochanter & (zz >= hz + 0.55))) & inner
        # the acetabulum: a shell round the head's medial side, a cartilage gap (~2 px) between them
        shell = ellipsoid(zz, yy, xx, (hz - 0.1, hy, hx), (1.1, r + 0.12, r + 0.12))
        gap = ellipsoid(zz, yy, xx, (hz, hy, hx), (1.0, r + 0.035, r + 0.035))
        acetabulum = shell & ~gap & (side * (xx - hx) < 0.02) & inner
        image[acetabulum | ((gap & ~femur) & shell)] = 60.0
        image[femur] = _cortical(femur, 1.5, 850.0, 260.0, marrow)[femur]
        image[acetabulum] = _cortical(acetabulum, 1.2, 800.0, 300.0, marrow)[acetabulum]
        femora |= femur
        hips |= acetabulum
        vessel = _ellipse(yy, xx, (hy - r - 0.1, hx - side * 0.06), (0.035, 0.035)) & inner & ~acetabulum
        image[vessel] = 45.0
    # bladder: water, a lobulated ellipsoid (its filling varies), thin wall
    by, bx = -0.18 * j(0.3), 0.03 * rng.normal()
    theta = np.arctan2(yy - by, xx - bx)
    wobble = 1 + sum(rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4))
    fill = rng.uniform(0.8, 1.25)
    axes = (0.85 * j(), 0.22 * fill * j(), 0.3 * fill * j())
    radius = np.sqrt(((zz + 0.1) / axes[0]) ** 2 + ((yy - by) / axes[1]) ** 2 + ((xx - bx) / axes[2]) ** 2)
    bladder = (radius <= wobble) & inner & ~ndimage.binary_dilation(femora | hips, iterations=2)
    wall = ndimage.binary_dilation(bladder, structure=np.ones((1, 3, 3), bool)) & ~bladder & inner
    image[wall] = 40.0
    image[bladder] = 8.0 + 3 * rng.normal()
    # rectum behind the bladder: faeces with a gas pocket; the sacrum and coccyx behind it, cranially
    rectum = _ellipse(yy, xx, (by + axes[1] + 0.14, 0.0), (0.07, 0.08)) & inner
    image[rectum] = np.where(strands[rectum] > 0.3, -850.0, 20.0 + 30 * strands[rectum])
    sacrum = _ellipse(yy, xx, (ay - 0.17, 0.0), (0.06, 0.12)) & (zz < 0.2) & inner
    image[sacrum] = _cortical(sacrum, 1.2, 750.0, 280.0, marrow)[sacrum]
    label[hips | sacrum] = 3
    label[bladder] = 2
    label[femora] = 1
    image = _ct_noise(rng, image, body)
    return image.astype(np.float32), label


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "Dataset101_CTChest",
            chest_ct,
            "CT",
            {"lung": 1, "nodule": 2},
            {"ct_lung": ((1, 2), "ct_lung"), "ct_nodule": ((2,), "ct_lung")},
        ),
        Dataset(
            "Dataset102_MRCardiac",
            cardiac_mr,
            "cine",
            {"lv_cavity": 1, "myocardium": 2, "rv_cavity": 3},
            {"mr_lv_cavity": ((1,), "mr"), "mr_myocardium": ((2,), "mr")},
        ),
        Dataset(
            "Dataset103_CTPelvis",
            pelvis_ct,
            "CT",
            {"femur": 1, "bladder": 2, "hip_bone": 3},
            {"ct_bone": ((1,), "ct_bone"), "ct_bladder": ((2,), "ct_abdomen")},
        ),
    )
}

DESCRIPTION = (
    "medsamix held-out task family (synthetic; never tuned on, reported only at the end); "
    "regenerate with `python benchmarks/family.py`"
)


def write_dataset(name: str, out: Path = FAMILY) -> Path:
    """Write one family dataset (CASES volumes, seeds SEED * 1000 + case) as nnU-Net raw into `out`/`name`."""
    dataset = DATASETS[name]
    cases = [dataset.generate(SEED * 1000 + i) for i in range(CASES)]
    folder = Path(out) / name
    write_nnunet(folder, cases, dataset.channel, dataset.labels, DESCRIPTION)
    return folder


def task_specs(root: Path = FAMILY) -> dict[str, dict[str, Any]]:
    """Every family task as a `load_task` spec, the zoo's split settings, paths under `root`."""
    common = {"format": "nnunet", "min_component": MIN_COMPONENT, "seed": SPLIT_SEED}
    common["calibration_fraction"] = CALIBRATION_FRACTION
    specs = {}
    for dataset in DATASETS.values():
        for task, (labels, preset) in dataset.tasks.items():
            ids: int | list[int] = labels[0] if len(labels) == 1 else list(labels)
            specs[task] = {"name": task, "path": str(Path(root) / dataset.name), "labels": ids, "preset": preset}
            specs[task].update(common)
    return specs


def search_config() -> dict[str, Any]:
    """`tests/family/tasks.yaml`: the zoo's three models (paths relative to tests/family) on every family task."""
    inputs = [
        {"name": name, "path": f"../zoo/{file}", "normalization": convention}
        for name, (file, convention, _) in MODELS.items()
    ]
    return {
        "base": inputs[0],
        "models": inputs[1:],
        "tasks": list(task_specs(Path(".")).values()),
        "trials": TRIALS,
        "output": "../../runs/family",
    }


CONFIG_HEADER = """\
# The held-out task family's search (issue 14, item 4): the zoo's three models on tasks the search is never tuned on;
# reported only at the end. Generated by benchmarks/family.py (tests/test_family.py checks it still matches):
#   medsamix search tests/family/tasks.yaml
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def family_files(out: Path = FAMILY) -> list[Path]:
    """The files the family's hashes cover (every dataset file and tasks.yaml), sorted, relative to `out`."""
    found = [p for name in DATASETS for p in (Path(out) / name).rglob("*") if p.is_file()]
    return sorted(p.relative_to(out) for p in [*found, Path(out) / CONFIG_FILE])


def premise(root: Path = FAMILY, budget: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Dice (case_mean) of every zoo model, each in its own convention, on every family task:
    {split: {model: {task: dice}}} for the calibration and the test split."""
    import torch

    from search.architectures import get_architecture
    from search.checkpoints import load_checkpoint
    from search.data import load_task
    from search.evaluate import Evaluator, case_mean
    from search.zoo import ARCH, THREADS

    torch.set_num_threads(THREADS)
    loaded = {name: load_task(spec) for name, spec in task_specs(root).items()}
    evaluator = Evaluator(get_architecture(ARCH), device="cpu")
    table: dict[str, dict[str, dict[str, float]]] = {"calibration": {}, "test": {}}
    for model, (file, convention, _) in MODELS.items():
        evaluator.load(load_checkpoint(ZOO / file).state_dict)
        for split in table:
            table[split][model] = {}
            for name, tasks in loaded.items():
                task = getattr(tasks, split)
                table[split][model][name] = round(case_mean(task, evaluator.dice(task, convention, budget=budget)), 4)
    return table


def build(out: Path = FAMILY, with_premise: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the datasets, tasks.yaml and family.json into `out`; return the record."""
    out = Path(out)
    started = time.perf_counter()
    for name in DATASETS:
        write_dataset(name, out)
    config = CONFIG_HEADER + yaml.safe_dump(search_config(), sort_keys=False)
    (out / CONFIG_FILE).write_text(config)
    generated = time.perf_counter() - started
    log(f"generated {len(DATASETS)} datasets in {generated:.1f} s")
    record: dict[str, Any] = {
        "command": "python benchmarks/family.py",
        "version": VERSION,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, numpy {np.__version__}",
        "data": {
            "seed": SEED,
            "cases": CASES,
            "depth": DEPTH,
            "shape": [DEPTH, HEIGHT, SIZE],
            "ct_noise_hu": {"body": NOISE_HU, "air": AIR_NOISE_HU},
            "split_seed": SPLIT_SEED,
            "calibration_fraction": CALIBRATION_FRACTION,
            "min_component": MIN_COMPONENT,
            "tasks": {
                task: {"dataset": d.name, "labels": list(labels), "preset": preset}
                for d in DATASETS.values()
                for task, (labels, preset) in d.tasks.items()
            },
        },
        "sha256": {str(p): sha256(out / p) for p in family_files(out)},
        "seconds": {"generate": round(generated, 1)},
    }
    if with_premise:
        from search.data import load_task

        started = time.perf_counter()
        table = premise(out)
        record["seconds"]["premise"] = round(time.perf_counter() - started, 1)
        splits = {name: load_task(spec).split for name, spec in task_specs(out).items()}
        record["splits"] = {
            name: {"calibration": s["calibration"], "test": s["test"], "slices": s["slices"]}
            for name, s in splits.items()
        }
        record["premise"] = {"metric": "Dice, case_mean over the split, each model in its own convention", **table}
        for split, rows in table.items():
            log(f"{split}:\n{markdown_table(rows)}")
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FAMILY, help="folder to write into (default tests/family)")
    parser.add_argument("--no-premise", action="store_true", help="write the files only, no premise table")
    args = parser.parse_args(argv)
    build(args.out, not args.no_premise)


if __name__ == "__main__":
    main()

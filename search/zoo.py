"""A tiny model zoo that shows the paper's premise: a generalist base and specialists fine-tuned from it.

`build_zoo(out)` (the `medsamix zoo` command) trains, deterministically on CPU with a fixed thread count:

- **base** (`sam_tiny.pth`, a plain state dict): the tiny SAM trained from scratch on a mixture, mostly generic
  synthetic 2-D shapes (ellipses and star polygons on textured backgrounds, box prompts), plus a share of each
  domain, under SAM's convention (`sam` normalisation, `sam` resize-longest-side-and-pad geometry);
- **CT specialist** (`ct_specialist_tiny.pt`, torch_em's `{"model_state": {"sam." + key: ...}}`): the base
  fine-tuned only on synthetic abdominal CT (HU volumes: body, fat, liver, kidneys, spleen, spine), `sam` convention;
- **MR specialist** (`mr_specialist_tiny.pth`, MedSAM's training file `{"model": {"module." + key: ...}}`): the base
  fine-tuned only on brain MR made from the MNI152 T1 template with its grey/white-matter maps (thresholded at 0.5)
  by seeded in-plane augmentation, under MedSAM's convention (`medsam` normalisation, `medsam` stretch geometry).

The two domains' evaluation data are written as nnU-Net raw datasets (`datasets/Dataset001_CTAbdomen`,
`datasets/Dataset002_MRBrain`); the specialists train on other cases generated the same way (other seeds), never on
those files. `zoo.json` records seeds, steps, times, conventions and the premise table: every model on every task's
test split (`load_task` with `SPLIT_SEED`), each model under its own convention, Dice as `case_mean`.

Weights are stored as float16 (a few MB in all); the specialists are fine-tuned from the float16-rounded base, so
their task vectors are relative to exactly the stored base. The MNI template is read out of an installed `nilearn`
(the optional extra `zoo`; found with `importlib.util.find_spec`, never imported) or out of its wheel file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from search.architectures import build_sam, get_architecture
from search.errors import DataError
from search.evaluate import decode_boxes
from search.files import atomic_write
from search.iou_head import HEAD_PREFIX, fit_head, head_inputs
from service import imaging

ARCH = "tiny"
THREADS = 2
SIZE = 128
SPLIT_SEED = 0
CALIBRATION_FRACTION = 0.25
MIN_COMPONENT = 10

BASE_FILE = "sam_tiny.pth"
CT_FILE = "ct_specialist_tiny.pt"
MR_FILE = "mr_specialist_tiny.pth"
CT_DATASET = "Dataset001_CTAbdomen"
MR_DATASET = "Dataset002_MRBrain"

CT_LABELS = {"liver": 1, "kidney": 2, "spleen": 3}
MR_LABELS = {"grey_matter": 1, "white_matter": 2}
MNI_FILES = {
    kind: f"nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
}

# A training sample: image (HxW uint8 after the intensity preset), target mask (HxW bool), one XYXY box.
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Stage:
    """One training run: where it starts, what it sees, under which convention."""

    name: str
    steps: int
    lr: float
    batch: int
    seed: int
    normalization: str
    geometry: str
    mixture: dict[str, float]  # source -> probability


@dataclass(frozen=True)
class ZooConfig:
    ct_cases: int = 8  # written as the nnU-Net dataset (evaluation only)
    mr_cases: int = 8
    ct_train_cases: int = 24  # generated with other seeds, in memory, for training
    mr_train_cases: int = 24
    ct_depth: int = 12
    mr_slices: int = 6
    data_seed: int = 0
    base: Stage = Stage("base", 1400, 1e-3, 8, 1, "sam", "sam", {"shapes": 0.7, "ct": 0.15, "mr": 0.15})
    # Specialists fine-tune at a fifth of the base's learning rate, as real fine-tunes do (MedSAM: 1e-4 after SAM's
    # 8e-4). At the base's own rate they moved so far that their task vectors interfered: no merge of them beat the
    # CT specialist on any CT task or on the mean over tasks (benchmarks/RESULTS.md, "Why the first zoo failed").
    ct: Stage = Stage("ct_specialist", 800, 2e-4, 8, 2, "sam", "sam", {"ct": 1.0})
    mr: Stage = Stage("mr_specialist", 800, 2e-4, 8, 3, "medsam", "medsam", {"mr": 1.0})
    # The IoU heads, fitted once the masks are trained (`fit_iou_heads`): samples drawn from each model's own
    # training mixture, full-batch Adam steps on the MSE to the real IoU.
    iou_samples: int = 2048
    iou_steps: int = 1500
    iou_lr: float = 3e-3

    @property
    def first_training_seed(self) -> int:
        """The training volumes' seeds start here, far from the written datasets' (data_seed * 1000 + case)."""
        return 500 + self.data_seed * 1000

    def scaled(self, factor: float) -> ZooConfig:
        """The same zoo with every stage's steps scaled (for quick checks)."""

        def scale(stage: Stage) -> Stage:
            return Stage(**{**asdict(stage), "steps": max(1, round(stage.steps * factor))})

        return ZooConfig(**{**self.__dict__, "base": scale(self.base), "ct": scale(self.ct), "mr": scale(self.mr)})


# --------------------------------------------------------------------------------------------------------------
# Data: synthetic CT, MR from the MNI template, generic shapes.
# --------------------------------------------------------------------------------------------------------------


def ellipsoid(zz, yy, xx, center, axes, angle=0.0) -> np.ndarray:
    """Inside of the ellipsoid (bool, the grids' shape) with `center` and semi-`axes` as (z, y, x) in the grids'
    units, turned by `angle` (radians) in the (y, x) plane."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - center[1], xx - center[2]
    ry, rx = c * dy - s * dx, s * dy + c * dx
    return ((zz - center[0]) / axes[0]) ** 2 + (ry / axes[1]) ** 2 + (rx / axes[2]) ** 2 <= 1.0


def ct_volume(seed: int, depth: int = 16, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic abdominal CT (D x H x W float32 HU) and its labels (liver 1, kidneys 2, spleen 3)."""
    rng = np.random.default_rng([1, seed])
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, depth), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    j = lambda scale=0.1: 1.0 + rng.uniform(-scale, scale)  # noqa: E731
    image = np.full(zz.shape, -1000.0)
    ax, ay = 0.88 * j(), 0.66 * j()
    body = (yy / ay) ** 2 + (xx / ax) ** 2 <= 1.0
    image[body] = -100.0  # subcutaneous fat
    inner = (yy / (ay - 0.07 * j(0.3))) ** 2 + (xx / (ax - 0.08 * j(0.3))) ** 2 <= 1.0
    bowel = ndimage.gaussian_filter(rng.normal(size=zz.shape), (1, 3, 3))
    image[inner] = np.where(bowel[inner] > 0.15, -90.0, 25.0 + 20 * bowel[inner])  # fat and bowel, mixed
    label = np.zeros(zz.shape, np.uint8)
    organs = [
        ("liver", 60.0, (0.1 * j(), -0.05 * j(), -0.32 * j()), (0.85, 0.36 * j(), 0.33 * j()), rng.uniform(-0.4, 0.4)),
        ("spleen", 48.0, (0.25 * j(), -0.05 * j(), 0.5 * j()), (0.45, 0.17 * j(), 0.11 * j()), rng.uniform(-0.6, 0.6)),
        ("kidney", 150.0, (-0.2 * j(), 0.3 * j(), -0.3 * j()), (0.45, 0.14 * j(), 0.09 * j()), 0.4),
        ("kidney", 150.0, (-0.25 * j(), 0.3 * j(), 0.3 * j()), (0.45, 0.14 * j(), 0.09 * j()), -0.4),
    ]
    for name, hu, center, axes, angle in organs:
        region = ellipsoid(zz, yy, xx, center, axes, angle) & inner
        image[region] = hu + 8 * rng.normal()
        label[region] = CT_LABELS[name]
    spine = (((yy - 0.45 * j()) / 0.12) ** 2 + (xx / 0.1) ** 2 <= 1.0) & inner
    image[spine] = 450.0
    aorta = ((yy - 0.22) / 0.06) ** 2 + ((xx - 0.08) / 0.06) ** 2 <= 1.0
    image[aorta & inner] = 170.0
    image = ndimage.gaussian_filter(image, (0, 0.7, 0.7)) + rng.normal(0, 12, image.shape)
    return image.astype(np.float32), label


def find_mni(wheel: str | Path | None = None) -> dict[str, Path | tuple[Path, str]]:
    """Where the MNI152 T1/GM/WM files are: the installed nilearn package folder, or a nilearn wheel file."""
    if wheel is not None:
        return {kind: (Path(wheel), member) for kind, member in MNI_FILES.items()}
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the MR data of the zoo needs nilearn's MNI152 template: pip install 'medsamix[zoo]' "
            "(or pass the nilearn wheel file)"
        )
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return {kind: root / member for kind, member in MNI_FILES.items()}


def _read_nifti_source(source: Path | tuple[Path, str]) -> np.ndarray:
    import gzip

    import nibabel as nib

    if isinstance(source, tuple):
        wheel, member = source
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    else:
        data = source.read_bytes()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(image.dataobj, dtype=np.float32)


def mni_template(wheel: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 template (D x H x W, axial slices first, as SimpleITK orders a NIfTI) and its label map:
    grey matter 1 where P(GM) >= 0.5 and >= P(WM), white matter 2 where P(WM) > 0.5 and > P(GM)."""
    files = find_mni(wheel)
    t1, gm, wm = (_read_nifti_source(files[k]).transpose(2, 1, 0) for k in ("t1", "gm", "wm"))
    label = np.zeros(t1.shape, np.uint8)
    label[(gm >= 0.5) & (gm >= wm)] = MR_LABELS["grey_matter"]
    label[(wm > 0.5) & (wm > gm)] = MR_LABELS["white_matter"]
    return t1, label


def mr_volume(t1: np.ndarray, label: np.ndarray, seed: int, slices: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """One MR "case" from the template: a few axial slices, in-plane scale/shift/rotation, downsampled to ~128 px
    (longest side), a smooth multiplicative bias field and Rician-like noise. (D x H x W float32, labels uint8)."""
    rng = np.random.default_rng([2, seed])
    depth, h, w = t1.shape
    chosen = np.sort(rng.choice(np.arange(int(0.35 * depth), int(0.7 * depth)), size=slices, replace=False))
    zoom = SIZE / max(h, w)
    out_h, out_w = round(h * zoom), round(w * zoom)
    angle = rng.uniform(-0.2, 0.2)
    scale = rng.uniform(0.88, 1.12)
    shift = rng.uniform(-6, 6, size=2)
    # Output pixel o -> template pixel: centre, rotate/scale, shift back, undo the downsampling.
    c, s = math.cos(angle), math.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) / (scale * zoom)
    centre_out = np.array([out_h, out_w]) / 2.0
    offset = np.array([h, w]) / 2.0 - matrix @ (centre_out + shift)
    yy, xx = np.meshgrid(np.linspace(-1, 1, out_h), np.linspace(-1, 1, out_w), indexing="ij")
    coefficients = rng.normal(0, 0.12, size=5)
    bias = np.exp(coefficients[0] * yy + coefficients[1] * xx + coefficients[2] * yy * xx + coefficients[3] * yy**2)
    images, labels = [], []
    for k in chosen:
        smooth = ndimage.gaussian_filter(t1[k].astype(np.float64), 0.5 / zoom)
        image = ndimage.affine_transform(smooth, matrix, offset, (out_h, out_w), order=1)
        lab = ndimage.affine_transform(label[k], matrix, offset, (out_h, out_w), order=0)
        image = image * bias * rng.uniform(0.8, 1.25)
        sigma = 0.03 * image.max()
        image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
        images.append(image)
        labels.append(lab)
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.uint8)


def _samples_of(image_u8: np.ndarray, label: np.ndarray, ids: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, component mask) for every connected component (>= MIN_COMPONENT px) of every label id in a slice."""
    out = []
    for label_id in ids:
        regions, count = ndimage.label(label == label_id, structure=np.ones((3, 3), bool))
        for r in range(1, count + 1):
            component = regions == r
            if component.sum() >= MIN_COMPONENT:
                out.append((image_u8, component))
    return out


def domain_pool(volumes: Iterator[tuple[np.ndarray, np.ndarray]], preset: str, ids: Sequence[int]) -> list:
    """Training pool: (uint8 slice, component mask) for every labelled component of every slice of `volumes`."""
    pool = []
    for image, label in volumes:
        image_u8 = imaging.to_uint8(image, preset)
        for k in range(len(image)):
            pool += _samples_of(image_u8[k], label[k], ids)
    return pool


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: int = 4) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)
    box += rng.integers(0, jitter, size=4, endpoint=True) * np.array([-1, -1, 1, 1])
    return np.clip(box, 0, [mask.shape[1], mask.shape[0], mask.shape[1], mask.shape[0]])


def shape_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A generic 2-D image: textured background, 1-4 ellipses or star polygons (occluding one another); one of
    them (>= 30 px visible) is the target."""
    h, w = (int(v) for v in rng.integers(96, 161, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    texture = ndimage.gaussian_filter(rng.normal(size=(h, w)), rng.uniform(1, 6))
    image = rng.uniform(40, 200) + rng.uniform(5, 40) * texture / (texture.std() + 1e-8)
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        radius = rng.uniform(6, 0.3 * min(h, w))
        theta = np.arctan2(yy - cy, xx - cx)
        dist = np.hypot(yy - cy, xx - cx)
        if rng.random() < 0.5:  # ellipse
            a = rng.uniform(0.5, 1.0)
            t = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
            v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
            mask = (u / radius) ** 2 + (v / (a * radius)) ** 2 <= 1
        else:  # star-shaped polygon
            k = np.arange(1, 5)[:, None, None]
            amp = rng.uniform(0, 0.25, size=(4, 1, 1))
            phase = rng.uniform(0, 2 * np.pi, size=(4, 1, 1))
            mask = dist <= radius * (1 + (amp * np.cos(k * theta + phase)).sum(0))
        level = rng.uniform(0, 255)
        object_texture = ndimage.gaussian_filter(rng.normal(size=(h, w)), rng.uniform(0.5, 3))
        image = np.where(mask, level + rng.uniform(2, 25) * object_texture / (object_texture.std() + 1e-8), image)
        masks = [m & ~mask for m in masks] + [mask]
    image = np.clip(image + rng.normal(0, rng.uniform(1, 10), (h, w)), 0, 255).round().astype(np.uint8)
    sizes = np.array([m.sum() for m in masks])
    candidates = np.flatnonzero(sizes >= 30)
    if len(candidates) == 0:
        return shape_sample(rng)
    return image, masks[int(rng.choice(candidates))]


class Sampler:
    """Seeded stream of samples from a mixture of sources (shapes are generated, domains drawn from pools)."""

    def __init__(self, pools: dict[str, list], mixture: dict[str, float], seed: int) -> None:
        self.pools = pools
        self.names = sorted(mixture)
        self.weights = np.array([mixture[n] for n in self.names]) / sum(mixture.values())
        self.rng = np.random.default_rng([3, seed])

    def draw(self) -> Sample:
        source = self.names[int(self.rng.choice(len(self.names), p=self.weights))]
        if source == "shapes":
            image, mask = shape_sample(self.rng)
        else:
            pool = self.pools[source]
            image, mask = pool[int(self.rng.integers(len(pool)))]
        return image, mask, _box(mask, self.rng)


def make_batch(samples: Sequence[Sample], normalization: str, geometry: str, size: int = SIZE):
    """Encoder inputs (B,3,S,S), model-frame boxes (B,4), targets and valid-pixel weights (B,S,S) float32."""
    shape = imaging.get_geometry(geometry)
    inputs, boxes, targets, valid = [], [], [], []
    for image, mask, box in samples:
        model_input, frame = shape.prepare(image, size)
        inputs.append(imaging.encoder_input(model_input, frame, normalization))
        boxes.append(shape.box_to_model(box[None], frame)[0])
        rh, rw = frame.resized
        resized = F.interpolate(torch.from_numpy(mask[None, None].astype(np.float32)), (rh, rw), mode="bilinear")
        target = torch.zeros(size, size)
        target[:rh, :rw] = (resized[0, 0] > 0.5).float()
        weight = torch.zeros(size, size)
        weight[:rh, :rw] = 1.0
        targets.append(target)
        valid.append(weight)
    return (
        torch.from_numpy(np.stack(inputs)),
        torch.as_tensor(np.stack(boxes), dtype=torch.float32),
        torch.stack(targets),
        torch.stack(valid),
    )


def forward_logits(model, inputs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Full SAM forward with one box per image: logits (B,S,S) in the model frame."""
    embeddings = model.image_encoder(inputs)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    low, _ = decode_boxes(model.mask_decoder, embeddings, model.prompt_encoder.get_dense_pe(), sparse, dense)
    return F.interpolate(low[:, None], inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def seg_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE (mean over valid pixels) + soft Dice, ignoring padding."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum") / valid.sum()
    probs = torch.sigmoid(logits) * valid
    dice = (2 * (probs * target).sum((1, 2)) + 1) / (probs.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + (1 - dice).mean()


def train_stage(
    state: dict[str, torch.Tensor] | None,
    stage: Stage,
    pools: dict[str, list],
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train (from `state`, or from scratch with the stage's seed) and return the float32 state and a record."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(stage.seed)
    model = build_sam(ARCH)
    if state is not None:
        model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.01)
    warmup = max(1, stage.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, stage.steps) / stage.steps)),
    )
    sampler = Sampler(pools, stage.mixture, stage.seed)
    start, losses = time.perf_counter(), []
    for step in range(stage.steps):
        inputs, boxes, target, valid = make_batch(
            [sampler.draw() for _ in range(stage.batch)], stage.normalization, stage.geometry
        )
        loss = seg_loss(forward_logits(model, inputs, boxes), target, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step + 1) % 100 == 0:
            log(f"{stage.name}: step {step + 1}/{stage.steps} loss {np.mean(losses[-100:]):.3f}")
    model.eval()
    record = {
        **asdict(stage),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
    }
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, record


def as_float16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors to float16 (pixel_mean/std stay float32, as they are buffers the loader drops)."""
    return {
        k: v.half() if v.is_floating_point() and k not in ("pixel_mean", "pixel_std") else v.clone()
        for k, v in state.items()
    }


# --------------------------------------------------------------------------------------------------------------
# Files: nnU-Net raw datasets and the three checkpoint layouts.
# --------------------------------------------------------------------------------------------------------------


ZOO_DESCRIPTION = "medsamix tiny zoo (synthetic); regenerate with `medsamix zoo`"


def write_nnunet(
    folder: Path,
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    channel: str,
    labels: dict,
    description: str = ZOO_DESCRIPTION,
) -> None:
    """An nnU-Net v2 raw dataset; volumes are D x H x W and stored as NIfTI (i, j, k) = (W, H, D), images rounded
    to int16. nibabel gzips without a name or time in the header, so the same arrays give the same bytes."""
    import nibabel as nib

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    prefix = folder.name.split("_", 1)[1].lower()
    for index, (image, label) in enumerate(cases):
        case = f"{prefix}_{index:03d}"
        stored = np.rint(image).astype(np.int16).transpose(2, 1, 0)
        nib.save(nib.Nifti1Image(stored, np.eye(4)), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), folder / "labelsTr" / f"{case}.nii.gz")
    manifest = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, **labels},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "description": description,
    }
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")


# file -> (the key of the training file's dict that holds the state dict, or None for a plain one; its key prefix):
# a plain SAM state dict, torch_em's {"model_state": {"sam." + key}}, MedSAM's training file {"model": {"module." +
# key}}.
LAYOUTS: dict[str, tuple[str | None, str]] = {
    BASE_FILE: (None, ""),
    CT_FILE: ("model_state", "sam."),
    MR_FILE: ("model", "module."),
}


def save_zoo_file(state: dict[str, torch.Tensor], path: Path) -> None:
    """`state` written in the layout of the zoo file `path` names (`LAYOUTS`), atomically."""
    wrapper, prefix = LAYOUTS[path.name]
    stored = {prefix + k: v for k, v in state.items()}
    atomic_write(path, lambda temp: torch.save(stored if wrapper is None else {wrapper: stored, "epoch": 0}, temp))


def read_zoo_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a zoo file holds, every key as written (the loader's dropped buffers included)."""
    wrapper, prefix = LAYOUTS[path.name]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix(prefix): v for k, v in (raw if wrapper is None else raw[wrapper]).items()}


# --------------------------------------------------------------------------------------------------------------
# The premise table.
# --------------------------------------------------------------------------------------------------------------

# model -> (file, normalisation = geometry, domain it specialises in or None)
MODELS = {
    "base": (BASE_FILE, "sam", None),
    "ct_specialist": (CT_FILE, "sam", "ct"),
    "mr_specialist": (MR_FILE, "medsam", "mr"),
}


def task_specs(root: Path) -> dict[str, dict[str, Any]]:
    """The zoo's tasks (one per label) as `load_task` specs; the task name's prefix is its domain."""
    ct, mr = Path(root) / "datasets" / CT_DATASET, Path(root) / "datasets" / MR_DATASET
    common = {"format": "nnunet", "min_component": MIN_COMPONENT, "seed": SPLIT_SEED}
    common["calibration_fraction"] = CALIBRATION_FRACTION
    specs = {}
    for name, label in CT_LABELS.items():
        specs[f"ct_{name}"] = {"name": f"ct_{name}", "path": ct, "labels": label, "preset": "ct_abdomen", **common}
    for name, label in MR_LABELS.items():
        specs[f"mr_{name}"] = {"name": f"mr_{name}", "path": mr, "labels": label, "preset": "mr", **common}
    return specs


def search_config(root: Path, tasks: Sequence[str], **settings: Any) -> dict[str, Any]:
    """A `medsamix search` configuration over the zoo's three models and some of its tasks (JSON-ready, paths
    relative to `root`); `settings` add or replace top-level keys (trials, budget, output, ...)."""
    specs = task_specs(Path(root))
    inputs = [
        {"name": name, "path": str(Path(root) / file), "normalization": convention}
        for name, (file, convention, _) in MODELS.items()
    ]
    unknown = [t for t in tasks if t not in specs]
    if unknown:
        raise DataError(f"unknown zoo task '{unknown[0]}': expected some of {', '.join(specs)}")
    return {
        "base": inputs[0],
        "models": inputs[1:],
        "tasks": [{**specs[t], "path": str(specs[t]["path"])} for t in tasks],
        **settings,
    }


def premise_table(root: Path, budget: int | None = None) -> dict[str, dict[str, float]]:
    """Dice (case_mean over the test split) of every zoo model on every task, each model in its convention."""
    from search.checkpoints import load_checkpoint
    from search.data import load_task
    from search.evaluate import Evaluator, case_mean

    torch.set_num_threads(THREADS)
    tasks = {name: load_task(spec).test for name, spec in task_specs(root).items()}
    evaluator = Evaluator(get_architecture(ARCH), device="cpu")
    table: dict[str, dict[str, float]] = {}
    for model, (file, convention, _) in MODELS.items():
        evaluator.load(load_checkpoint(Path(root) / file).state_dict)
        table[model] = {}
        for name, task in tasks.items():
            scores = evaluator.dice(task, convention, budget=budget)
            table[model][name] = round(case_mean(task, scores), 4)  # zip: a budget scores a prefix
    return table


def premise_holds(table: dict[str, dict[str, float]]) -> list[str]:
    """The violations of the premise (empty when it holds): each specialist beats the base on every task of its
    domain and loses to it on every task of the other domain."""
    problems = []
    for model, (_, _, domain) in MODELS.items():
        if domain is None:
            continue
        for task, value in table[model].items():
            base = table["base"][task]
            own = task.startswith(domain + "_")
            if own and not value > base:
                problems.append(f"{model} does not beat the base on its own task {task} ({value} vs {base})")
            if not own and not value < base:
                problems.append(f"{model} does not lose to the base on {task} ({value} vs {base})")
    return problems


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    tasks = list(next(iter(table.values())))
    lines = ["| model (convention) | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for model, row in table.items():
        lines.append(f"| {model} ({MODELS[model][1]}) | " + " | ".join(f"{row[t]:.3f}" for t in tasks) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The whole zoo.
# --------------------------------------------------------------------------------------------------------------


def training_pools(config: ZooConfig, t1: np.ndarray, mr_label: np.ndarray) -> dict[str, list]:
    """The CT and MR training components (other seeds than the written datasets'), in memory."""
    first_train = config.first_training_seed
    ct_train = (ct_volume(first_train + i, config.ct_depth) for i in range(config.ct_train_cases))
    mr_train = (mr_volume(t1, mr_label, first_train + i, config.mr_slices) for i in range(config.mr_train_cases))
    return {
        "ct": domain_pool(ct_train, "ct_abdomen", list(CT_LABELS.values())),
        "mr": domain_pool(mr_train, "mr", list(MR_LABELS.values())),
    }


def fit_iou_heads(
    out: Path, config: ZooConfig, pools: dict[str, list], log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Fit the IoU head of each zoo file in `out` on its own training mixture and rewrite the file with nothing
    else changed (`search.iou_head`). The base's head is fitted first; each specialist's starts from it, as a
    fine-tune's would, so the heads' task vectors are what fine-tuning the head would make them. Returns a record
    per model: the fit's MSE and Pearson r to the real IoU on its samples."""
    torch.set_num_threads(THREADS)
    stages = {"base": config.base, "ct_specialist": config.ct, "mr_specialist": config.mr}
    records: dict[str, dict[str, Any]] = {}
    base_head: dict[str, torch.Tensor] = {}
    for name, (file, _, _) in MODELS.items():
        stage = stages[name]
        state = read_zoo_file(out / file)
        model = build_sam(ARCH)
        # the file's tensors, then the base's fitted head (the specialists start from it); the built model's own
        # tensors fill anything the file does not store
        model.load_state_dict({**model.state_dict(), **{k: v.float() for k, v in state.items()}, **base_head})
        model.eval()
        sampler = Sampler(pools, stage.mixture, stage.seed + 100)  # another stream than the stage's training
        batches = (
            make_batch([sampler.draw() for _ in range(32)], stage.normalization, stage.geometry)
            for _ in range(config.iou_samples // 32)
        )
        features, iou = head_inputs(model, batches)
        records[name] = fit_head(model, features, iou, config.iou_steps, config.iou_lr, stage.seed)
        head = {k: v.detach().half() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}
        base_head = base_head or {k: v.float() for k, v in head.items()}
        save_zoo_file({**state, **head}, out / file)
        if log:
            log(f"{name}: IoU head fitted, MSE {records[name]['mse']:.4f}, Pearson r {records[name]['pearson']:.3f}")
    return records


def refit_iou_heads(out: str | Path, config: ZooConfig | None = None, wheel=None, log=print) -> dict[str, Any]:
    """Fit the IoU heads of an existing zoo (trained before the heads were fitted) and record them in zoo.json;
    the premise table is measured again and must not move (no mask changes)."""
    config, out = config or ZooConfig(), Path(out)
    record = json.loads((out / "zoo.json").read_text())
    record["iou_heads"] = fit_iou_heads(out, config, training_pools(config, *mni_template(wheel)), log)
    table = premise_table(out)
    if table != record["premise"]["table"]:
        raise DataError(f"fitting the IoU heads changed the premise table of {out}; it must not change any mask")
    atomic_write(out / "zoo.json", lambda temp: temp.write_text(json.dumps(record, indent=2) + "\n"))
    return record


def build_zoo(
    out: str | Path, config: ZooConfig | None = None, wheel: str | Path | None = None, log=print
) -> dict[str, Any]:
    """Generate the datasets, train base and specialists, write the files and zoo.json; return the record."""
    config = config or ZooConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()

    t1, mr_label = mni_template(wheel)
    seed = config.data_seed
    ct_eval = [ct_volume(seed * 1000 + i, config.ct_depth) for i in range(config.ct_cases)]
    mr_eval = [mr_volume(t1, mr_label, seed * 1000 + i, config.mr_slices) for i in range(config.mr_cases)]
    write_nnunet(out / "datasets" / CT_DATASET, ct_eval, "CT", CT_LABELS)
    write_nnunet(out / "datasets" / MR_DATASET, mr_eval, "T1", MR_LABELS)
    pools = training_pools(config, t1, mr_label)
    data_seconds = time.perf_counter() - started
    log(f"data: {len(pools['ct'])} CT and {len(pools['mr'])} MR training components ({data_seconds:.0f} s)")

    base, base_record = train_stage(None, config.base, pools, log)
    base = as_float16(base)
    save_zoo_file(base, out / BASE_FILE)
    start_state = {k: v.float() for k, v in base.items()}
    ct, ct_record = train_stage(start_state, config.ct, pools, log)
    save_zoo_file(as_float16(ct), out / CT_FILE)
    mr, mr_record = train_stage(start_state, config.mr, pools, log)
    save_zoo_file(as_float16(mr), out / MR_FILE)
    heads = fit_iou_heads(out, config, pools, log)
    train_seconds = time.perf_counter() - started

    table = premise_table(out)
    total_seconds = time.perf_counter() - started
    problems = premise_holds(table)
    record = {
        "command": "medsamix zoo -o tests/zoo",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {THREADS} threads",
        "architecture": ARCH,
        "threads": THREADS,
        "data": {
            "seed": seed,
            "ct_cases": config.ct_cases,
            "mr_cases": config.mr_cases,
            "training_cases": {
                "ct": config.ct_train_cases,
                "mr": config.mr_train_cases,
                "seeds_from": config.first_training_seed,
            },
            "training_components": {k: len(v) for k, v in pools.items()},
            "split_seed": SPLIT_SEED,
            "calibration_fraction": CALIBRATION_FRACTION,
            "min_component": MIN_COMPONENT,
            "mr_source": "MNI152 2009a sym T1 + GM/WM probability maps (nilearn), thresholded at 0.5",
        },
        "models": {
            "base": {"file": BASE_FILE, "format": "sam (plain state dict)", "convention": "sam", **base_record},
            "ct_specialist": {
                "file": CT_FILE,
                "format": "torch_em ({'model_state': {'sam.' + key}})",
                "convention": "sam",
                "fine_tuned_from": BASE_FILE,
                **ct_record,
            },
            "mr_specialist": {
                "file": MR_FILE,
                "format": "medsam_training ({'model': {'module.' + key}})",
                "convention": "medsam",
                "fine_tuned_from": BASE_FILE,
                **mr_record,
            },
        },
        "iou_heads": heads,
        "dtype": "float16",
        "seconds": {
            "data": round(data_seconds, 1),
            "train_total": round(train_seconds, 1),
            "evaluate": round(total_seconds - train_seconds, 1),
            "total": round(total_seconds, 1),
        },
        "premise": {"metric": "Dice, case_mean over the test split", "table": table, "violations": problems},
    }
    (out / "zoo.json").write_text(json.dumps(record, indent=2) + "\n")
    log(markdown_table(table))
    log("premise holds" if not problems else "premise VIOLATED:\n" + "\n".join(problems))
    return record

"""The evaluator against segment_anything's own SamPredictor, and its Dice conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from search.architectures import ARCHITECTURES, build_sam
from search.evaluate import Evaluator, case_mean, dice
from search.slices import Slice, Task
from tests.conftest import fine_tune_of, tiny_state

SHAPES = [(96, 140), (128, 128), (150, 70), (60, 61), (200, 180)]


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A gray image with blobs: structure for the encoder to respond to."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, max(h, w) / 3)
        image += rng.uniform(50, 200) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(image + rng.normal(0, 5, (h, w)), 0, 255).astype(np.uint8)


def random_box(rng: np.random.Generator, h: int, w: int) -> list[float]:
    x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
    return [x0, y0, min(w, x0 + rng.uniform(8, w * 0.4)), min(h, y0 + rng.uniform(8, h * 0.4))]


@pytest.fixture(scope="module")
def task() -> Task:
    rng = np.random.default_rng(3)
    slices = []
    for i, (h, w) in enumerate(SHAPES):
        image = smooth_image(rng, h, w)
        boxes = np.array([random_box(rng, h, w) for _ in range(1 + i % 3)])
        mask = image > np.percentile(image, 70)
        slices.append(Slice(image=image, mask=mask, boxes=boxes, case=f"case{i // 2}", index=i))
    return Task("blobs", tuple(slices))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return fine_tune_of(tiny_state(0), 4, scale=0.05)


def predictor_for(state) -> SamPredictor:
    sam = build_sam("tiny")
    sam.load_state_dict(state)
    return SamPredictor(sam)


@pytest.mark.parametrize(
    "encoder_batch", [1, pytest.param(3, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)]
)
def test_matches_sam_predictor_with_box_prompts(task: Task, state, encoder_batch: int) -> None:
    evaluator = Evaluator(ARCHITECTURES["tiny"], device="cpu", encoder_batch=encoder_batch)
    evaluator.load(state)
    ours = evaluator.dice(task, "sam")

    predictor = predictor_for(state)
    prepared = evaluator.prepare(task, "sam", "sam")
    reference = []
    differing, total = 0, 0
    for i, piece in enumerate(task.slices):
        predictor.set_image(np.repeat(piece.image[:, :, None], 3, axis=2))
        low_res_ours = evaluator.predict(prepared, i, i + 1)[0]
        union = np.zeros(piece.mask.shape, bool)
        for b, box in enumerate(piece.boxes):
            masks, _, low_res = predictor.predict(box=box, multimask_output=False)
            torch.testing.assert_close(low_res_ours[b], torch.from_numpy(low_res[0]), rtol=1e-4, atol=1e-4)
            union |= masks[0]
        ours_mask = evaluator_masks(evaluator, prepared, i)
        differing += int((ours_mask != union).sum())
        total += union.size
        reference.append(dice(union, piece.mask))
    assert differing / total <= 0.005
    np.testing.assert_allclose(ours, reference, atol=1e-3)
    assert np.nanmax(ours) > 0.05, "the masks are not trivially empty"


def evaluator_masks(evaluator: Evaluator, prepared, i: int) -> np.ndarray:
    from service.imaging import get_geometry

    logits = evaluator.predict(prepared, i, i + 1)[0].numpy()
    return get_geometry("sam").mask_to_image(logits, prepared.frames[i], evaluator.arch.image_size).any(axis=0)


def test_weights_are_swapped_in_place_not_rebuilt(task: Task, state) -> None:
    evaluator = Evaluator(ARCHITECTURES["tiny"], device="cpu")
    pointer = evaluator.model.image_encoder.patch_embed.proj.weight.data_ptr()
    evaluator.load(tiny_state(0))
    first = evaluator.dice(task, "sam")
    evaluator.load(state)
    second = evaluator.dice(task, "sam")
    assert evaluator.model.image_encoder.patch_embed.proj.weight.data_ptr() == pointer
    assert not np.allclose(first, second)
    evaluator.load(tiny_state(0))
    np.testing.assert_array_equal(evaluator.dice(task, "sam"), first)


def test_budget_is_a_prefix(task: Task, state) -> None:
    evaluator = Evaluator(ARCHITECTURES["tiny"], device="cpu", encoder_batch=2)
    evaluator.load(state)
    full = evaluator.dice(task, "medsam")
    np.testing.assert_array_equal(evaluator.dice(task, "medsam", budget=3), full[:3])


def test_dice_conventions(task: Task) -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    prediction = np.zeros((4, 4), bool)
    prediction[:2, :] = True
    assert dice(prediction, truth) == pytest.approx(2 * 4 / (8 + 4))
    assert np.isnan(dice(prediction, np.zeros((4, 4), bool)))
    assert dice(np.zeros((4, 4), bool), truth) == 0.0
    per_slice = np.array([1.0, 0.0, 0.5, np.nan, 0.2])  # cases: case0 = [1, 0], case1 = [0.5, nan], case2 = [0.2]
    assert case_mean(task, per_slice) == pytest.approx(np.mean([0.5, 0.5, 0.2]))


def test_bf16_autocast_stays_close_to_fp32(task: Task, state) -> None:
    """The GPU default (bf16 autocast) exercised on CPU: same code path, looser numbers."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        evaluator = Evaluator(ARCHITECTURES["tiny"], device="cpu", dtype=dtype)
        evaluator.load(state)
        results[dtype] = evaluator.dice(task, "sam")
    np.testing.assert_allclose(results[torch.bfloat16], results[torch.float32], atol=0.05)


@pytest.mark.slow
def test_compiled_encoder_gives_the_same_dice(task: Task, state) -> None:
    """The GPU default compiles the encoder; tracing it (eager backend: no codegen) must not change results."""
    plain = Evaluator(ARCHITECTURES["tiny"], device="cpu", compile_backend=None)
    traced = Evaluator(ARCHITECTURES["tiny"], device="cpu", compile_backend="eager")
    for evaluator in (plain, traced):
        evaluator.load(state)
    np.testing.assert_allclose(traced.dice(task, "sam"), plain.dice(task, "sam"), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sam", "medsam"])
def test_device_dice_equals_the_numpy_mask_path(task: Task, state, mode: str) -> None:
    """Masks and Dice on the device against `service.imaging`'s numpy masks and `dice` of the same logits; the
    prepared inputs stay uint8 (normalised per batch on the device)."""
    from service.imaging import get_geometry

    evaluator = Evaluator(ARCHITECTURES["tiny"], device="cpu", encoder_batch=2)
    evaluator.load(state)
    found = evaluator.dice(task, mode)
    prepared = evaluator.prepare(task, mode, mode)
    assert prepared.images.dtype == torch.uint8 and prepared.images.shape == (len(task.slices), 128, 128, 3)
    geometry, expected = get_geometry(mode), []
    for i, piece in enumerate(task.slices):
        logits = evaluator.predict(prepared, i, i + 1)[0].numpy()
        masks = geometry.mask_to_image(logits, prepared.frames[i], evaluator.arch.image_size)
        expected.append(dice(masks.any(axis=0), piece.mask))
    np.testing.assert_allclose(found, expected, atol=1e-3)
    assert np.nanmax(found) > 0.05

"""search/device_imaging.py against service/imaging.py, the numpy path the service serves with: encoder inputs
bit-identical, masks equal except pixels within float32 rounding of the threshold, Dice as `search.evaluate.dice`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search import device_imaging
from search.evaluate import dice
from service import imaging

SIZE = 128
SHAPES = [(96, 140), (128, 128), (150, 70), (61, 60), (7, 200)]


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]


def test_registries_cover_imagings() -> None:
    assert set(device_imaging.NORMALIZATIONS) == set(imaging.NORMALIZATIONS)
    assert set(device_imaging.POINTWISE) == set(imaging.GEOMETRIES)


@pytest.mark.parametrize("geometry", ["sam", "medsam"])
@pytest.mark.parametrize("normalization", ["sam", "medsam"])
def test_encoder_inputs_are_imagings_bit_for_bit(geometry: str, normalization: str) -> None:
    shape = imaging.get_geometry(geometry)
    prepared = [shape.prepare(image, SIZE) for image in images()]
    expected = np.stack([imaging.encoder_input(m, frame, normalization) for m, frame in prepared])
    uint8 = torch.from_numpy(np.stack([m for m, _ in prepared]))
    found = device_imaging.encoder_inputs(uint8, [frame.resized for _, frame in prepared], normalization)
    assert found.dtype == torch.float32
    np.testing.assert_array_equal(found.numpy(), expected)


def test_an_unknown_normalization_is_refused() -> None:
    with pytest.raises(imaging.ImagingError, match="unknown normalization 'ct'"):
        device_imaging.encoder_inputs(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), [(8, 8)], "ct")


@pytest.mark.parametrize("geometry", ["sam", "medsam"])
def test_masks_and_dice_equal_the_numpy_path(geometry: str) -> None:
    shape = imaging.get_geometry(geometry)
    scorer = device_imaging.MaskScorer(geometry, SIZE, torch.device("cpu"))
    rng = np.random.default_rng(1)
    mismatched = 0
    for h, w in SHAPES:
        frame = shape.frame(h, w, SIZE)
        logits = rng.normal(0, 4, (3, 32, 32)).astype(np.float32)
        truth = rng.random((h, w)) < 0.3
        expected = shape.mask_to_image(logits, frame, SIZE)
        found = scorer.masks(torch.from_numpy(logits), frame).numpy()
        differ = found != expected
        # Only where the numpy score is within float32 rounding of the threshold (matmul summation order).
        near = np.abs(shape.mask_scores(logits, frame, SIZE) - shape.threshold) < 1e-5
        assert not (differ & ~near).any()
        mismatched += int(differ.sum())
        score = scorer.dice(torch.from_numpy(logits), frame, torch.from_numpy(truth))
        assert score.dtype == torch.float64
        assert score.item() == pytest.approx(dice(found.any(axis=0), truth), abs=1e-12)
        assert score.item() == pytest.approx(dice(expected.any(axis=0), truth), abs=1e-3)
    assert mismatched <= 5
    empty = scorer.dice(torch.zeros(1, 32, 32), shape.frame(10, 10, SIZE), torch.zeros(10, 10, dtype=torch.bool))
    assert np.isnan(empty.item())

"""The evaluator's per-slice image work on its own device, in torch: uint8 model inputs -> encoder inputs, and
decoder logits -> masks -> Dice, without a trip to the host per slice.

`service.imaging` (numpy) stays the one definition the service serves with; these are its device-side twins, tested
equal to it on CPU (`tests/test_device_imaging.py`), and they take the mask geometry's own matrices from it
(`Geometry.mask_matrices`), so only the pointwise steps (normalisation, the logistic) are written twice. Keeping
the uint8 model input on the device costs 3 MB per 1024² slice instead of 12 MB of float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service import imaging


def _sam_normalize(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(imaging.PIXEL_MEAN, dtype=torch.float32, device=pixels.device)[:, None, None]
    std = torch.tensor(imaging.PIXEL_STD, dtype=torch.float32, device=pixels.device)[:, None, None]
    return (pixels.float() - mean) / std


def _medsam_normalize(pixels: torch.Tensor) -> torch.Tensor:
    values = pixels.double()
    low = values.min()
    return ((values - low) / (values.max() - low).clamp(min=1e-8)).float()


def _logistic(logits: torch.Tensor) -> torch.Tensor:
    return (0.5 * (1.0 + torch.tanh(logits.double() / 2.0))).float()


# Twins of `imaging.NORMALIZATIONS` (3xhxw uint8 -> float32) and of each geometry's `pointwise` (float32 logits ->
# the values it interpolates); the tests check that both name every entry of imaging's registries.
NORMALIZATIONS = {"sam": _sam_normalize, "medsam": _medsam_normalize}
POINTWISE = {"sam": lambda logits: logits, "medsam": _logistic}


def encoder_inputs(images: torch.Tensor, resized: Sequence[tuple[int, int]], normalization: str) -> torch.Tensor:
    """(B, S, S, 3) uint8 model inputs -> (B, 3, S, S) float32 encoder inputs, as `imaging.encoder_input` computes
    them: only each image's `resized` (h, w) is normalised, the rest is 0."""
    normalize = NORMALIZATIONS[imaging.get_normalization(normalization).name]
    channels = images.permute(0, 3, 1, 2)
    out = torch.zeros(channels.shape, dtype=torch.float32, device=images.device)
    for i, (rh, rw) in enumerate(resized):
        out[i, :, :rh, :rw] = normalize(channels[i, :, :rh, :rw])
    return out


class MaskScorer:
    """Dice of low-resolution logits against ground truth under one geometry, on the logits' device; the geometry's
    (rows, cols) matrices are cached per (frame, low-res shape)."""

    def __init__(self, geometry: str, size: int, device: torch.device) -> None:
        self.geometry = imaging.get_geometry(geometry)
        self.size = size
        self.device = device
        self._matrices: dict[tuple[imaging.Frame, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def masks(self, logits: torch.Tensor, frame: imaging.Frame) -> torch.Tensor:
        """(n, h_lr, w_lr) float logits -> (n, h, w) bool masks in image coordinates (`Geometry.mask_to_image`)."""
        low_res = (int(logits.shape[-2]), int(logits.shape[-1]))
        key = (frame, low_res)
        if key not in self._matrices:
            row_matrix, col_matrix = self.geometry.mask_matrices(low_res, frame, self.size)
            self._matrices[key] = (
                torch.tensor(row_matrix, dtype=torch.float32, device=self.device),
                torch.tensor(col_matrix.T, dtype=torch.float32, device=self.device),
            )
        rows, cols_t = self._matrices[key]
        return rows @ POINTWISE[self.geometry.name](logits.float()) @ cols_t > self.geometry.threshold

    def dice(self, logits: torch.Tensor, frame: imaging.Frame, truth: torch.Tensor) -> torch.Tensor:
        """Dice (0-d float64 tensor) of the union of `logits`' masks against `truth` (HxW bool); NaN when `truth`
        is empty, as `search.evaluate.dice`."""
        prediction = self.masks(logits, frame).any(dim=0)
        truth_area = truth.sum(dtype=torch.float64)
        overlap = (prediction & truth).sum(dtype=torch.float64)
        score = 2.0 * overlap / (prediction.sum(dtype=torch.float64) + truth_area)
        return torch.where(truth_area > 0, score, torch.full_like(score, float("nan")))

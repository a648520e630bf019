"""The evaluator: Dice of every slice of a task for given weights, on one resident SAM.

Every search trial calls this, so it is built for repetition: the model is built once and weights are copied into it
(no rebuild); each task's model inputs are prepared once per preprocessing mode with `service.imaging` (the same
code the service serves with) and kept on the device as uint8 (3 MB per 1024² slice, not 12 MB of float32),
normalised per encoder batch there; the encoder runs in batches, one pass per slice serving all of that slice's
boxes; the mask decoder runs once per batch of slices for all their boxes together; masks and Dice are computed on
the device too (`search/device_imaging.py`, equal to `service.imaging`'s numpy path), one copy to the host per
call. The stock `MaskDecoder` repeats a single image's embedding for every prompt, so a per-slice call is
launch-bound on a GPU (~4 ms whether it holds 1 box or 16); `decode_boxes` is its `predict_masks` with one image
embedding per prompt instead.

Dice conventions: a slice's prediction is the union of its boxes' masks; Dice = 2|P ∩ G| / (|P| + |G|) on the
image's own pixel grid; a slice with an empty ground truth has no Dice (NaN; loaders keep only foreground slices).
`case_mean` averages per case first, then over cases, so a case with many slices does not dominate.
Attention runs fused (`search/attention.py`): on CPU SDPA with the relative position as an additive bias; on a GPU the
Triton kernel that adds it inside the kernel (SDPA where triton is missing). Precision: fp32 on CPU; on a GPU bf16
autocast and a torch.compile'd encoder by default (not yet measured on a GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, Sam

from search.architectures import SamArchitecture, build_sam
from search.attention import use_fused_attention
from search.device_imaging import MaskScorer, encoder_inputs
from search.merge.engine import default_device
from search.slices import Task
from search.trial_timing import Stopwatch
from service import imaging

# The prompt kinds (`service.manifest.PROMPT_KINDS`) this evaluator scores a model with, so its scores and the
# quality gate say nothing of the others: what an export records as the manifest's `scored_prompts`.
SCORED_PROMPTS = ("box",)


@dataclass(frozen=True)
class PreparedSlices:
    """A task's slices in one preprocessing mode: everything a trial needs that does not depend on the weights."""

    images: torch.Tensor  # (N, S, S, 3) uint8 model inputs on the device, normalised per encoder batch there
    normalization: str
    frames: tuple[imaging.Frame, ...]
    boxes: tuple[torch.Tensor, ...]  # per slice (n_i, 4) float32 XYXY in model coordinates
    masks: tuple[torch.Tensor, ...]  # per slice HxW bool ground truth, on the device


def decode_boxes(
    decoder: MaskDecoder,
    embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`MaskDecoder.predict_masks` with one image embedding per prompt (single-mask output).

    embeddings: (M, C, h, w), one per prompt. image_pe: (1, C, h, w). sparse: (M, T, C). dense: (M, C, h, w).
    Returns low-resolution mask logits (M, 4h, 4w) and predicted IoU (M,), as `MaskDecoder.forward` with
    `multimask_output=False` returns them for a single image.
    """
    m = embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(m, -1, -1), sparse], dim=1)
    src = embeddings + dense
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, image_pe.expand(m, -1, -1, -1), tokens)
    mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    # Only the first mask token is used with a single-mask output: skip the other hypernetworks.
    hyper = decoder.output_hypernetworks_mlps[0](mask_tokens[:, 0, :])
    b, c, h, w = upscaled.shape
    logits = (hyper.unsqueeze(1) @ upscaled.reshape(b, c, h * w)).reshape(b, h, w)
    iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 0]
    return logits, iou


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P ∩ G| / (|P| + |G|) of two HxW bool masks; NaN when the ground truth is empty."""
    truth_area = int(truth.sum())
    if truth_area == 0:
        return float("nan")
    overlap = int(np.logical_and(prediction, truth).sum())
    return 2.0 * overlap / (int(prediction.sum()) + truth_area)


def case_means(task: Task, per_slice: np.ndarray) -> dict[str, float]:
    """Each case's mean slice Dice (slices without a Dice are left out; a case with none is absent)."""
    by_case: dict[str, list[float]] = {}
    for piece, value in zip(task.slices, per_slice, strict=False):
        if not np.isnan(value):
            by_case.setdefault(piece.case, []).append(float(value))
    return {case: float(np.mean(values)) for case, values in by_case.items()}


def mean_over_cases(means: Mapping[str, float]) -> float:
    """The mean of `case_means`' values (NaN when no case has a Dice)."""
    return float(np.mean(list(means.values()))) if means else float("nan")


def case_mean(task: Task, per_slice: np.ndarray) -> float:
    """Mean over cases of each case's mean slice Dice (slices without a Dice are left out)."""
    return mean_over_cases(case_means(task, per_slice))


class Evaluator:
    """One resident SAM of `arch`; `load(state)` swaps weights in, `dice(task, mode)` scores them."""

    def __init__(
        self,
        arch: SamArchitecture,
        device: torch.device | str | None = None,
        encoder_batch: int = 8,
        fused_attention: bool = True,
        dtype: torch.dtype | None = None,
        compile_backend: str | None = "auto",
    ) -> None:
        """`dtype` is the autocast compute type: bf16 on a GPU by default, fp32 (no autocast) on CPU.
        `compile_backend` is torch.compile's backend for the image encoder; "auto" is "inductor" on a GPU and none
        on CPU, where compiling costs more than a search's few encoder passes save; None turns it off."""
        self.arch = arch
        self.device = torch.device(device) if device is not None else default_device()
        self.model: Sam = build_sam(arch, self.device)
        self.model.requires_grad_(False)
        if fused_attention:
            use_fused_attention(self.model.image_encoder)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if compile_backend == "auto":
            compile_backend = "inductor" if self.device.type == "cuda" else None
        self.encoder = (
            torch.compile(self.model.image_encoder, backend=compile_backend, dynamic=False)
            if compile_backend
            else self.model.image_encoder
        )
        self.encoder_batch = encoder_batch
        self.stopwatch = Stopwatch(self.device)
        self._prepared: dict[tuple[str, str, str], tuple[Task, PreparedSlices]] = {}
        self._scorers: dict[str, MaskScorer] = {}

    @torch.no_grad()
    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a merged state dict (e.g. the merge engine's views) into the resident model, in place."""
        for name, tensor in self.model.state_dict().items():
            if name in state:
                tensor.copy_(state[name])
            elif name not in ("pixel_mean", "pixel_std"):
                raise KeyError(f"the state dict has no {name}")

    def prepare(self, task: Task, normalization: str, geometry: str) -> PreparedSlices:
        """Encoder inputs, frames and model-space boxes of all of `task`'s slices, cached per task and mode."""
        key = (task.name, normalization, geometry)
        cached = self._prepared.get(key)
        if cached is not None and cached[0] is task:
            return cached[1]
        shape = imaging.get_geometry(geometry)
        size = self.arch.image_size
        imaging.get_normalization(normalization)  # an unknown name fails here, listing the known ones
        images, frames, boxes = [], [], []
        for piece in task.slices:
            model_input, frame = shape.prepare(piece.image, size)
            images.append(model_input)
            frames.append(frame)
            boxes.append(torch.as_tensor(shape.box_to_model(piece.boxes, frame), dtype=torch.float32))
        prepared = PreparedSlices(
            images=torch.from_numpy(np.stack(images)).to(self.device),
            normalization=normalization,
            frames=tuple(frames),
            boxes=tuple(b.to(self.device) for b in boxes),
            masks=tuple(torch.from_numpy(piece.mask).to(self.device) for piece in task.slices),
        )
        self._prepared[key] = (task, prepared)
        return prepared

    @torch.no_grad()
    def predict(self, prepared: PreparedSlices, start: int, stop: int) -> list[torch.Tensor]:
        """Low-resolution logits per slice in [start, stop): one encoder batch, one decoder call for all boxes."""
        model = self.model
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast, self.stopwatch("encoder"):
            resized = [frame.resized for frame in prepared.frames[start:stop]]
            embeddings = self.encoder(encoder_inputs(prepared.images[start:stop], resized, prepared.normalization))
        counts = [prepared.boxes[i].shape[0] for i in range(start, stop)]
        owner = torch.repeat_interleave(
            torch.arange(stop - start, device=self.device), torch.tensor(counts, device=self.device)
        )
        with self.stopwatch("decoder"):
            sparse, dense = model.prompt_encoder(points=None, boxes=torch.cat(prepared.boxes[start:stop]), masks=None)
            with autocast:
                logits, _ = decode_boxes(
                    model.mask_decoder,
                    embeddings.index_select(0, owner),
                    model.prompt_encoder.get_dense_pe(),
                    sparse,
                    dense,
                )
        return list(logits.float().split(counts))

    def dice(
        self, task: Task, normalization: str, geometry: str | None = None, budget: int | None = None
    ) -> np.ndarray:
        """Dice of each of the first `budget` slices under (normalisation, geometry; geometry defaults to the
        normalisation's name: `sam` resize-and-pad, `medsam` stretch). float64 (n,)."""
        count = len(task.budget(budget))
        geometry = geometry or normalization
        prepared = self.prepare(task, normalization, geometry)
        if geometry not in self._scorers:
            self._scorers[geometry] = MaskScorer(geometry, self.arch.image_size, self.device)
        scorer = self._scorers[geometry]
        scores: list[torch.Tensor] = []
        for start in range(0, count, self.encoder_batch):
            stop = min(start + self.encoder_batch, count)
            logits = self.predict(prepared, start, stop)
            with self.stopwatch("masks"):
                scores += [scorer.dice(lr, prepared.frames[i], prepared.masks[i]) for i, lr in enumerate(logits, start)]
        return torch.stack(scores).cpu().numpy() if scores else np.empty(0)  # the one copy to the host

"""Fitting SAM's IoU prediction head on a model whose masks are already trained, as SAM trains it: the MSE between
the head's prediction and the real IoU of the mask the model gives.

The head reads only the decoder's IoU-token output and feeds nothing back, so fitting it changes no mask: a model's
Dice, and every search and quality gate scored on it, stay exactly what they were. That is why it can be fitted
after the masks were trained (the zoo's `fit_iou_heads`) without retraining anything else. The head's input is
collected once with the rest of the model frozen, so fitting it is a small regression.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from search.evaluate import decode_boxes

HEAD_PREFIX = "mask_decoder.iou_prediction_head."
# (encoder inputs (B,3,S,S), model-frame boxes (B,4), targets (B,S,S), valid-pixel weights (B,S,S)): `zoo.make_batch`
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def head_inputs(model, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The IoU-token outputs the head reads (N, C) and the real IoU (N,) of the single-mask prediction (logits > 0,
    upsampled to the model frame as the evaluator does) against each target, over valid pixels."""
    captured: list[torch.Tensor] = []
    hook = model.mask_decoder.iou_prediction_head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    features, ious = [], []
    try:
        for inputs, boxes, target, valid in batches:
            embeddings = model.image_encoder(inputs)
            sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
            low, _ = decode_boxes(model.mask_decoder, embeddings, model.prompt_encoder.get_dense_pe(), sparse, dense)
            logits = F.interpolate(low[:, None], inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            predicted = (logits > 0) & (valid > 0)
            truth = (target > 0) & (valid > 0)
            inter = (predicted & truth).sum((1, 2)).float()
            union = (predicted | truth).sum((1, 2)).float()
            ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
            features.append(captured.pop())
    finally:
        hook.remove()
    return torch.cat(features), torch.cat(ious)


def fit_head(model, features: torch.Tensor, iou: torch.Tensor, steps: int, lr: float, seed: int) -> dict[str, float]:
    """Fit `model`'s IoU head (its first output, the single-mask one) to `iou` by full-batch Adam on the MSE; the
    head is changed in place. Returns the fit's record: MSE and Pearson r on the samples, before and after."""
    head = model.mask_decoder.iou_prediction_head
    torch.manual_seed(seed)

    def measured() -> tuple[float, float]:
        with torch.no_grad():
            predicted = head(features)[:, 0]
        r = np.corrcoef(predicted.numpy(), iou.numpy())[0, 1]
        return float(F.mse_loss(predicted, iou)), float(r)

    before = measured()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.mse_loss(head(features)[:, 0], iou)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = measured()
    return {
        "samples": len(iou),
        "mean_iou": round(float(iou.mean()), 4),
        "mse_before": round(before[0], 5),
        "mse": round(after[0], 5),
        "pearson_before": round(before[1], 4),
        "pearson": round(after[1], 4),
    }

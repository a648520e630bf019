"""Model Stock: move from the base towards the fine-tunes' average by a ratio set by how much they agree.

Per tensor, with task vectors τ_i = θ_i − θ_base of the N fine-tunes and cos the mean pairwise cosine between them:
t = N·cos / (1 + (N − 1)·cos), clamped to [0, 1], and θ = t·mean_i(θ_i) + (1 − t)·θ_base. A pair involving a zero
task vector counts as cos = 0 (nothing shared); with one fine-tune, cos = 1, so the result is that fine-tune.
It has no parameters: the geometry decides. The clamp is ours: mergekit's `model_stock` uses t unclamped, which
extrapolates past the fine-tunes' mean or behind the base when the fine-tunes disagree (cos < 0); here t = 0 there
(the base) and never above 1.

Reference: Jang et al., "Model Stock: All we need is just a few fine-tuned models", https://arxiv.org/abs/2403.19522
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_module
from search.merge.base import MergeMethod, compute_dtype, register
from search.merge.packing import Packing

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py


def model_stock(base: torch.Tensor, models: list[torch.Tensor], packing: Packing) -> torch.Tensor:
    wide = compute_dtype(base)
    anchor = base.to(wide)
    stacked = torch.stack([m.to(wide) for m in models])
    n = len(models)
    if n == 1:
        cos = torch.ones(packing.segments, dtype=torch.float64, device=base.device)
    else:
        gram = packing.gram(stacked - anchor)
        norms = torch.diagonal(gram, dim1=-2, dim2=-1).sqrt()
        denominator = norms.unsqueeze(-1) * norms.unsqueeze(-2)
        cosines = torch.where(denominator > 0, gram / denominator.clamp(min=1e-300), torch.zeros_like(gram))
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=base.device)
        cos = cosines[:, off_diagonal].mean(-1)
    t = (n * cos / (1 + (n - 1) * cos).clamp(min=1e-12)).clamp(0.0, 1.0)
    ratio = packing.expand(t.unsqueeze(0).to(wide)).squeeze(0)
    return (ratio * stacked.mean(0) + (1 - ratio) * anchor).to(base.dtype)


register(
    MergeMethod(
        name="model_stock",
        function=model_stock,
        params=(),
        reference="https://arxiv.org/abs/2403.19522",
        summary="interpolate base to the fine-tunes' mean by their agreement",
    )
)

"""Linear: θ = Σ w_i θ_i over all inputs (base included), weights normalised to sum to 1.

Reference: Wortsman et al., "Model soups", https://arxiv.org/abs/2203.05482
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_module
from search.merge.base import FloatParam, MergeMethod, compute_dtype, normalized, register
from search.merge.packing import Packing

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py


def linear(
    base: torch.Tensor, models: list[torch.Tensor], packing: Packing, *, weights: tuple[float, ...]
) -> torch.Tensor:
    inputs = [base, *models]
    wide = compute_dtype(base)
    out = torch.zeros(base.shape, dtype=wide, device=base.device)
    for w, tensor in zip(normalized(weights, "linear"), inputs, strict=True):
        out.add_(tensor.to(wide), alpha=w)
    return out.to(base.dtype)


register(
    MergeMethod(
        name="linear",
        function=linear,
        params=(FloatParam("weights", 0.0, 1.0, 1.0, per_input=True, doc="relative weight of each input"),),
        reference="https://arxiv.org/abs/2203.05482",
        summary="weighted average of all inputs",
    )
)

"""Task-vector methods: one general function, configured into task arithmetic, TIES, DARE and DARE-TIES.

With task vectors τ_t = θ_t − θ_base (fine-tunes only):
0. weigh each τ_t by its model's weight w_t (mergekit's per-model `weight`; 1 = the paper's plain methods);
1. sparsify each τ_t: keep all (task arithmetic), the round(density·n) largest magnitudes of each tensor (TIES;
   entries tied with the threshold are all kept), or each entry with probability `density`, rescaled by
   1/density (DARE; the draw is fixed by recipe seed, tensor name and element index);
2. combine: the sum Σ_t w_t τ̂_t, or with sign consensus (TIES, DARE-TIES) the weighted mean of the entries whose
   sign agrees with the elected sign s = sgn(Σ_t w_t τ̂_t), entry by entry (the "disjoint mean"):
   Σ_{t agrees} w_t τ̂_t / Σ_{t agrees} w_t, where t agrees when w_t τ̂_t is nonzero with sign s (0 where none does).
   The divisor is the sum of the agreeing models' weights, as in mergekit's `generalized_task_arithmetic`
   (with all weights 1 it is the count of agreeing entries, the paper's TIES);
3. θ = θ_base + λ · combined.

References: task arithmetic https://arxiv.org/abs/2212.04089, TIES https://arxiv.org/abs/2306.01708,
DARE https://arxiv.org/abs/2311.03099.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Literal

from search.lazy import lazy_module
from search.merge.base import FloatParam, MergeMethod, compute_dtype, register
from search.merge.packing import Packing, kth_largest

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py

Sparsify = Literal["none", "magnitude", "random"]

LAMBDA = FloatParam("lambda", 0.0, 1.0, 0.5, doc="scale of the combined task vector")
LAMBDA_CONSENSUS = FloatParam("lambda", 0.0, 1.0, 1.0, doc="scale of the combined task vector")
DENSITY = FloatParam("density", 0.0, 1.0, 0.5, doc="fraction of each task vector's entries kept")
WEIGHTS = FloatParam("weights", 0.0, 1.0, 1.0, per_model=True, doc="weight of each fine-tune's task vector")


def magnitude_thresholds(
    scores: torch.Tensor, density: float, packing: Packing, select: Callable[..., torch.Tensor] = kth_largest
) -> torch.Tensor:
    """(n, S) float32 thresholds keeping round(density·length) entries; +inf where that is 0 (nothing kept).

    `select(scores, k, packing)` finds the k-th largest per row and segment (swappable for benchmarking).
    """
    lengths = torch.tensor(packing.lengths, dtype=torch.float64, device=scores.device)
    k = torch.floor(lengths * density + 0.5).to(torch.int64).expand(scores.shape[0], -1)
    threshold = select(scores, k.clamp(min=1), packing)
    return torch.where(k > 0, threshold, torch.inf)


def task_vector_merge(
    base: torch.Tensor,
    models: list[torch.Tensor],
    packing: Packing,
    *,
    sparsify: Sparsify,
    consensus: bool,
    density: float = 1.0,
    weights: tuple[float, ...] | None = None,
    **params: float,
) -> torch.Tensor:
    """In place on one (n, D) work tensor: a ViT-B merge is memory-bound, so every pass saved is time saved."""
    wide = compute_dtype(base)
    anchor = base.to(wide)
    tau = torch.stack(models).to(wide)
    tau -= anchor
    column = None  # the per-model weights as an (n, 1) column, when any differs from 1
    if weights is not None and any(w != 1.0 for w in weights):
        column = torch.tensor(weights, dtype=wide, device=tau.device).view(-1, *([1] * (tau.dim() - 1)))
        tau *= column
    # 0/1 factors in a float buffer: `torch.ge(..., out=float)` and a multiply are several times faster on CPU
    # than a bool mask with masked_fill.
    flags = torch.empty_like(tau) if sparsify != "none" or consensus else None
    if sparsify == "magnitude":
        # Magnitudes compared in float32, the precision the threshold is selected in.
        scores = torch.abs(tau, out=flags) if wide == torch.float32 else tau.abs().to(torch.float32)
        tau *= torch.ge(scores, packing.expand(magnitude_thresholds(scores, density, packing)), out=flags)
    elif sparsify == "random":
        tau *= torch.lt(packing.uniform(len(models), base.device), density, out=flags)
        if density > 0:
            tau /= density
    if consensus:
        elected = torch.sign(tau.sum(0))
        tau *= elected
        tau.clamp_(min=0)  # what remains is the magnitude of the entries that agree with the elected sign
        agree = torch.gt(tau, 0, out=flags)
        if column is not None:
            agree *= column
        divisor = agree.sum(0)
        combined = tau.sum(0).mul_(elected).div_(divisor.masked_fill_(divisor == 0, 1))
    else:
        combined = tau.sum(0)
    return torch.add(anchor, combined, alpha=params["lambda"]).to(base.dtype)


# (name, sparsify, consensus, params, reference, summary) of each variant registered below.
_VARIANTS: tuple[tuple[str, Sparsify, bool, tuple[FloatParam, ...], str, str], ...] = (
    (
        "task_arithmetic",
        "none",
        False,
        (LAMBDA, WEIGHTS),
        "https://arxiv.org/abs/2212.04089",
        "base plus the scaled sum of task vectors",
    ),
    (
        "ties",
        "magnitude",
        True,
        (DENSITY, LAMBDA_CONSENSUS, WEIGHTS),
        "https://arxiv.org/abs/2306.01708",
        "trim to the largest entries, elect signs, disjoint mean",
    ),
    (
        "dare",
        "random",
        False,
        (DENSITY, LAMBDA, WEIGHTS),
        "https://arxiv.org/abs/2311.03099",
        "random drop and rescale, then task arithmetic",
    ),
    (
        "dare_ties",
        "random",
        True,
        (DENSITY, LAMBDA_CONSENSUS, WEIGHTS),
        "https://arxiv.org/abs/2311.03099",
        "random drop and rescale, then TIES' sign consensus",
    ),
)
for name, sparsify, consensus, params, reference, summary in _VARIANTS:
    register(
        MergeMethod(
            name=name,
            function=partial(task_vector_merge, sparsify=sparsify, consensus=consensus),
            params=params,
            reference=reference,
            summary=summary,
        )
    )

"""SLERP for any number of inputs: the weighted spherical (Karcher) mean, applied as in two-model SLERP.

Two-model SLERP at t is θ = a·θ_1 + b·θ_2 with a = sin((1−t)Ω)/sin Ω, b = sin(tΩ)/sin Ω and Ω the angle between
θ_1 and θ_2: the coefficients that put the unit vectors' combination at fraction t of the great-circle arc,
applied to the raw tensors. For n inputs with weights w (normalised), we take the point p of the unit sphere that
minimises Σ_i w_i·angle(p, u_i)² (u_i = θ_i/|θ_i|; the weighted Karcher mean, whose two-point case is exactly the
arc point at t = w_2), write it as p = Σ_i c_i·u_i, and return Σ_i c_i·θ_i. For two inputs this *is* the formula
above; for one it is the input; it is symmetric in the inputs and does not depend on their order (unlike chained
pairwise SLERP, or the reference code's softmax over two t's).

The mean lives in the span of the u_i, so it is computed on the n×n Gram matrix alone (float64): one pass over the
data for the Gram matrix, a few tiny Riemannian gradient steps, one pass for the combination. Tensors where an
input has zero norm, or whose inputs are spread so widely that the mean is undefined (Σ w_i u_i ≈ 0), fall back to
linear weights; near-parallel inputs are handled by the α/sin α → 1 limit, with no NaN.

Reference: Shoemake 1985 (two inputs); Buss & Fillmore, "Spherical averages", ACM TOG 2001 (n inputs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from search.lazy import lazy_module
from search.merge.base import FloatParam, MergeMethod, compute_dtype, normalized, register
from search.merge.packing import Packing

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py

TOLERANCE = 1e-12
MAX_STEPS = 100
TINY = 1e-30
ANTIPODAL = math.pi - 1e-6


def spherical_mean_coefficients(cosines: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(S, m, m) cosine matrices of unit vectors, (m,) weights -> (S, m) coefficients c with p = Σ c_i u_i.

    Riemannian gradient descent with unit step on the sphere, expressed in coefficient space: the log map of u_i
    at p is (α_i / sin α_i)(u_i − cos α_i · p), with cos α_i = u_i·p = (C c)_i. Segments where the mean is
    undefined (Σ w_i u_i ≈ 0, an input opposite the current point, or no convergence) get NaN rows, which the
    caller replaces by linear weights.
    """
    w = weights.to(cosines).expand(cosines.shape[0], -1)

    def norm(v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("si,sij,sj->s", v, cosines, v).clamp(min=0).sqrt()

    start = norm(w)
    undefined = start < 1e-6
    c = w / torch.where(undefined, 1.0, start).unsqueeze(-1)
    for _ in range(MAX_STEPS):
        cos = torch.einsum("sij,sj->si", cosines, c).clamp(-1.0, 1.0)
        alpha = torch.arccos(cos)
        undefined = undefined | (alpha > ANTIPODAL).any(-1)  # the log map at p is undefined there
        scale = torch.where(alpha > 1e-7, alpha / torch.sin(alpha).clamp(min=TINY), torch.ones_like(alpha))
        step = w * scale - (w * scale * cos).sum(-1, keepdim=True) * c
        length = torch.where(undefined, 0.0, norm(step))
        if bool((length < TOLERANCE).all()):
            break
        sinc = torch.where(length > 1e-12, torch.sin(length) / length.clamp(min=TINY), torch.ones_like(length))
        c = torch.cos(length).unsqueeze(-1) * c + sinc.unsqueeze(-1) * step
        c = c / norm(c).clamp(min=TINY).unsqueeze(-1)
    undefined = undefined | ~(length < TOLERANCE) | ~c.isfinite().all(-1)
    return torch.where(undefined.unsqueeze(-1), torch.nan, c)


def slerp(
    base: torch.Tensor, models: list[torch.Tensor], packing: Packing, *, weights: tuple[float, ...]
) -> torch.Tensor:
    wide = compute_dtype(base)
    inputs = torch.stack([t.to(wide) for t in (base, *models)])
    w = torch.tensor(normalized(weights, "slerp"), dtype=torch.float64, device=base.device)
    gram = packing.gram(inputs)
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).sqrt()
    usable = (norms > 0).all(-1)
    safe = torch.where(usable.unsqueeze(-1), norms, torch.ones_like(norms))
    cosines = gram / (safe.unsqueeze(-1) * safe.unsqueeze(-2))
    cosines = torch.where(usable[:, None, None], cosines, torch.ones_like(cosines))  # converge at once; replaced below
    coefficients = spherical_mean_coefficients(cosines, w)
    usable = usable & ~coefficients.isnan().any(-1)
    coefficients = torch.where(usable.unsqueeze(-1), coefficients, w.expand_as(coefficients))
    per_element = packing.expand(coefficients.T.to(wide))  # (m, D)
    return (per_element * inputs).sum(0).to(base.dtype)


register(
    MergeMethod(
        name="slerp",
        function=slerp,
        params=(
            FloatParam(
                "weights",
                0.0,
                1.0,
                1.0,
                per_input=True,
                doc="relative weight of each input; two inputs with weights (1-t, t) are SLERP at t",
            ),
        ),
        reference="https://dl.acm.org/doi/10.1145/502122.502124",
        summary="spherical weighted mean of all inputs",
    )
)

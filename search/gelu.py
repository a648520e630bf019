"""SAM's exact GELU written in the operand order onnxruntime's GeluFusion recognises: a forward swap for CPU exports.

`nn.GELU()` exports (opset 18) as 0.5·(1 + erf(x/√2)) · x, an order none of onnxruntime's Gelu patterns match, so its
CPU provider runs five element-wise passes over every MLP's (HW × 3072) activations (0.38 s of a 1024 px int8 ViT-B
image on 2 cores; benchmarks/RESULTS.md). (x · (1 + erf(x/√2))) · 0.5 is the same arithmetic (×0.5 is exact) and
fuses into one `Gelu` (`BiasGelu` with the bias before it) when the session loads it.
"""

from __future__ import annotations

import math

import torch


class FusableGelu(torch.nn.Module):
    """The exact (erf) GELU as x·(1 + erf(x/√2))·0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + torch.erf(x / math.sqrt(2.0))) * 0.5


def use_fusable_gelu(module: torch.nn.Module) -> int:
    """Replace every exact `nn.GELU` under `module` with `FusableGelu`; returns how many were replaced (a tanh GELU
    is another function and stays)."""
    targets = [
        (parent, name)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.GELU) and child.approximate == "none"
    ]
    for parent, name in targets:
        setattr(parent, name, FusableGelu())
    return len(targets)

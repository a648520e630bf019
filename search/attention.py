"""SAM's image-encoder attention through `scaled_dot_product_attention`, the relative position as an additive bias.

The stock `Attention.forward` materialises softmax((q·scale)kᵀ + rel) and multiplies by v in separate kernels.
Here the decomposed relative-position terms (rel_h for rows, rel_w for columns, as `add_decomposed_rel_pos`
computes them) are summed into one (HW × HW) bias and handed to PyTorch's fused attention, which picks a fused
kernel where one exists (memory-efficient attention on GPU; on CPU a fused math kernel). Same parameters, same
outputs to floating-point tolerance (tested against the stock module); it is a forward swap on the built model, so
checkpoints and key names are untouched.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def _relative_position_bias(attention: Attention, q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B·heads, HW, HW) bias: rel_h[b, i, j, k] + rel_w[b, i, j, l] for query (i, j) and key (k, l)."""
    h, w = size
    rh = get_rel_pos(h, h, attention.rel_pos_h).to(q.dtype)
    rw = get_rel_pos(w, w, attention.rel_pos_w).to(q.dtype)
    rows = q.reshape(q.shape[0], h, w, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", rows, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", rows, rw)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, h * w)


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """`Attention.forward` with fused attention. x: (B, H, W, C) -> (B, H, W, C)."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, head_dim)
    bias = None
    if self.use_rel_pos:
        flat_q = q.reshape(b * self.num_heads, h * w, -1)
        bias = _relative_position_bias(self, flat_q, (h, w)).view(b, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def use_fused_attention(encoder: torch.nn.Module) -> int:
    """Swap every image-encoder `Attention` of `encoder` to the fused forward; returns how many were swapped."""
    swapped = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
            swapped += 1
    return swapped

"""SAM's image-encoder attention through fused kernels: a forward swap on the built model.

The stock `Attention.forward` materialises softmax((q·scale)kᵀ + rel) and multiplies by v in separate kernels. Two
fused replacements, the same parameters and outputs to floating-point tolerance (tested against the stock module), so
checkpoints and key names are untouched:

- `sdpa`: the decomposed relative-position terms (rel_h for rows, rel_w for columns, as `add_decomposed_rel_pos`
  computes them) are summed into one (HW × HW) bias and handed to PyTorch's fused attention (memory-efficient
  attention on GPU; on CPU a fused math kernel).
- `triton`: `search/flash_rel_pos.py`, flash attention that adds the two terms inside the kernel, so the (HW × HW)
  bias never exists (12.9 GB per global-attention block of ViT-B at batch 32).
- `query_blocks`: the stock arithmetic `QUERY_ROWS` query rows at a time, so only (rows·W × HW) logits exist at once;
  for graphs exported to onnxruntime's CPU provider, whose attention ops take a bias only whole: a 1024 px ViT-B's
  global block makes 805 MB of logits per image and pays for them in page faults and memory passes (the int8 export
  uses it; benchmarks/RESULTS.md).

`auto` is `triton` for an encoder on a CUDA device when triton is importable, `sdpa` everywhere else.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from service.errors import unknown_name

# (attention, q, k, v, (H, W)) -> output; q, k, v and the output (B, heads, HW, head_dim).
RelPosAttention = Callable[[Attention, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def _relative_position_terms(
    attention: Attention, q: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`add_decomposed_rel_pos`'s rel_h (..., H, W, H) and rel_w (..., H, W, W) of q (..., HW, head_dim): the term of
    query (i, j) for key row k and for key column l. Batched products over the query's row (rel_h) and column
    (rel_w), its einsums' arithmetic: onnxruntime's CPU Einsum took 0.46 s of a 1024 px int8 ViT-B image, these
    products and their transposes under a third of that (benchmarks/RESULTS.md)."""
    h, w = size
    c = q.shape[-1]
    rh = get_rel_pos(h, h, attention.rel_pos_h).to(q.dtype)  # (query row, key row, c)
    rw = get_rel_pos(w, w, attention.rel_pos_w).to(q.dtype)  # (query column, key column, c)
    grid = q.reshape(-1, h, w, c)
    n = grid.shape[0]
    by_row = grid.permute(1, 0, 2, 3).reshape(h, n * w, c) @ rh.transpose(1, 2)  # (i, (n, j), k)
    by_column = grid.permute(2, 0, 1, 3).reshape(w, n * h, c) @ rw.transpose(1, 2)  # (j, (n, i), l)
    rel_h = by_row.view(h, n, w, h).permute(1, 0, 2, 3)
    rel_w = by_column.view(w, n, h, w).permute(1, 2, 0, 3)
    return rel_h.reshape(*q.shape[:-2], h, w, h), rel_w.reshape(*q.shape[:-2], h, w, w)


def _relative_position_bias(attention: Attention, q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B·heads, HW, HW) bias: rel_h[b, i, j, k] + rel_w[b, i, j, l] for query (i, j) and key (k, l)."""
    h, w = size
    rel_h, rel_w = _relative_position_terms(attention, q, size)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, h * w)


def _sdpa_attention(
    attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    b, heads, tokens, _ = q.shape
    bias = _relative_position_bias(attention, q.reshape(b * heads, tokens, -1), size).view(b, heads, tokens, tokens)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attention.scale)


def _triton_attention(
    attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    from search.flash_rel_pos import rel_pos_attention  # imports triton: only where this kernel is chosen

    rel_h, rel_w = _relative_position_terms(attention, q, size)
    return rel_pos_attention(q, k, v, rel_h.flatten(2, 3), rel_w.flatten(2, 3), attention.scale)


# Query rows per block of `query_blocks`, measured on a 1024 px ViT-B (64 × 64 grid) on onnxruntime's CPU provider
# (benchmarks/RESULTS.md): 1 row 12.6 s per image, 8 rows 10.7 s, 32 rows 12.6 s, unblocked 13.6 s; 4, 8 and 16 rows
# within noise of each other. The export grows with the number of blocks (1 row: 19 min, 4: 170 s, 8: 73 s).
QUERY_ROWS = 8


def query_blocks(rows: int) -> RelPosAttention:
    """Stock attention `rows` query rows at a time (the last block may be shorter), the blocks concatenated."""

    def attend(
        attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        h, w = size
        b, heads, tokens, _ = q.shape
        rel_h, rel_w = _relative_position_terms(attention, q, size)  # (B, heads, h, w, h), (B, heads, h, w, w)
        keys = k.transpose(-2, -1)
        blocks = []
        for top in range(0, h, rows):
            n = min(rows, h - top)
            logits = ((q[:, :, top * w : (top + n) * w] * attention.scale) @ keys).view(b, heads, n, w, h, w)
            logits = logits + rel_h[:, :, top : top + n, :, :, None] + rel_w[:, :, top : top + n, :, None, :]
            blocks.append(logits.view(b, heads, n * w, tokens).softmax(dim=-1) @ v)
        return torch.cat(blocks, dim=2)

    return attend


KERNELS: dict[str, RelPosAttention] = {
    "sdpa": _sdpa_attention,
    "triton": _triton_attention,
    "query_blocks": query_blocks(QUERY_ROWS),
}


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel `kernel` names on `device` ("auto": triton on CUDA when importable, else sdpa); an unknown name
    fails listing the valid ones."""
    if kernel == "auto":
        return "triton" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else "sdpa"
    if kernel not in KERNELS:
        raise ValueError(unknown_name("attention kernel", kernel, ("auto", *KERNELS)))
    return kernel


def _fused_forward(attend: RelPosAttention) -> Callable[[Attention, torch.Tensor], torch.Tensor]:
    """`Attention.forward` with `attend` for the attention itself (a closure, not a partial: torch.compile traces a
    bound function but not a bound partial)."""

    def forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, head_dim)
        if self.use_rel_pos:
            out = attend(self, q, k, v, (h, w))
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))

    return forward


def use_fused_attention(encoder: torch.nn.Module, kernel: str | RelPosAttention = "auto") -> int:
    """Swap every image-encoder `Attention` of `encoder` to the fused forward of `kernel`, a name (resolved for the
    device the encoder's parameters are on now) or the attention itself (e.g. `query_blocks(3)`); returns how many
    were swapped."""
    if isinstance(kernel, str):
        parameter = next(encoder.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        kernel = KERNELS[resolve_kernel(kernel, device)]
    forward = _fused_forward(kernel)
    swapped = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(forward, module)
            swapped += 1
    return swapped

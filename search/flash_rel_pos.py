"""Flash attention with SAM's decomposed relative position added inside the kernel, in Triton.

SDPA needs the relative position as an (HW × HW) bias: at batch 32 that is 12.9 GB per global-attention block of
ViT-B (4096 tokens, 12 heads, bf16). The bias is a sum of two thin terms (`add_decomposed_rel_pos`): rel_h[q, row]
over key rows and rel_w[q, col] over key columns, (HW × H) and (HW × W). This kernel takes those terms and, per key
block of the online softmax, gathers rel_h[q, key // W] + rel_w[q, key % W] from them, so the bias never exists in
memory; each program re-reads only its query tile's slices of the two terms (BLOCK_M × H and BLOCK_M × W), small
enough to be served from cache across the key loop (by design; not yet measured on a GPU).

Precision: inputs of any float dtype (bf16 on a GPU), fp32 scores, softmax statistics and accumulator; fp32 inputs
use IEEE products (no TF32). Any sequence length and head dimension: blocks are padded and masked. Importing this
module decorates the kernel, so Triton's interpreter (`TRITON_INTERPRET=1`, what the CPU tests use) must be set
before the first import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Scores are kept in base 2 so the softmax runs on exp2.
LOG2_E = tl.constexpr(1.4426950408889634)


@triton.jit
def _rel_pos_attention_kernel(
    Q,
    K,
    V,
    REL_H,
    REL_W,
    OUT,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_on,
    stride_rhb,
    stride_rhh,
    stride_rhn,
    stride_rwb,
    stride_rwh,
    stride_rwn,
    heads,
    seq_len,
    width,
    head_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One (batch·head, query block) program: softmax(q·kᵀ·scale + rel_h + rel_w)·v, online over key blocks.

    batch·head is the grid's first axis, the only one allowed past 65535 programs (windowed blocks at large batch).
    `qk_scale` is the attention scale times log2 e."""
    batch = (tl.program_id(0) // heads).to(tl.int64)  # 64-bit offsets: batch × stride passes 2^31 at large batch
    head = tl.program_id(0) % heads
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < seq_len
    in_d = offs_d < head_dim
    q = tl.load(
        Q + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
        mask=in_m[:, None] & in_d[None, :],
        other=0.0,
    )
    rel_h_rows = REL_H + batch * stride_rhb + head * stride_rhh + offs_m[:, None] * stride_rhn
    rel_w_rows = REL_W + batch * stride_rwb + head * stride_rwh + offs_m[:, None] * stride_rwn
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < seq_len
        kv_mask = in_n[:, None] & in_d[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        bias_mask = in_m[:, None] & in_n[None, :]
        rel_h = tl.load(rel_h_rows + (offs_n // width)[None, :], mask=bias_mask, other=0.0)
        rel_w = tl.load(rel_w_rows + (offs_n % width)[None, :], mask=bias_mask, other=0.0)
        scores += (rel_h.to(tl.float32) + rel_w.to(tl.float32)) * LOG2_E
        scores = tl.where(in_n[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.math.exp2(row_max - new_max)
        p = tl.math.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        row_max = new_max
    acc = acc / row_sum[:, None]
    tl.store(
        OUT + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=in_m[:, None] & in_d[None, :],
    )


@torch.library.custom_op("medsamix::rel_pos_attention", mutates_args=())
def _rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
) -> torch.Tensor:
    """The kernel as an opaque operator, so torch.compile'd encoders call it instead of tracing into it."""
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tensors = [t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, rel_h, rel_w)]
    strides = [s for t in (*tensors[:3], out, *tensors[3:]) for s in t.stride()[:3]]
    _rel_pos_attention_kernel[(batch * heads, triton.cdiv(seq_len, block_m))](
        *tensors[:3],
        *tensors[3:],
        out,
        *strides,
        heads,
        seq_len,
        rel_w.shape[-1],
        head_dim,
        scale * LOG2_E.value,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
        num_stages=2,
    )
    return out


@_rel_pos_attention.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
) -> torch.Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    block_m: int = 128,
    block_n: int = 64,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias)·v with bias[i, j] = rel_h[i, j // W] + rel_w[i, j % W] for a row-major H × W grid.

    q, k, v: (B, heads, HW, head_dim), one float dtype; rel_h: (B, heads, HW, H); rel_w: (B, heads, HW, W) (the
    terms of `add_decomposed_rel_pos`, unscaled). Returns (B, heads, HW, head_dim) contiguous, in q's dtype. Block
    sizes are powers of two of at least 16 (`tl.dot`'s smallest tile)."""
    if not (q.shape == k.shape == v.shape and q.dim() == 4 and q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"expected q, k, v of one shape (B, heads, HW, head_dim) and dtype, found {q.shape}, "
            f"{k.shape}, {v.shape} in {q.dtype}, {k.dtype}, {v.dtype}"
        )
    rows, cols = rel_h.shape[-1], rel_w.shape[-1]
    expected = q.shape[:3]
    if rel_h.shape[:3] != expected or rel_w.shape[:3] != expected or rows * cols != q.shape[2]:
        raise ValueError(
            f"expected rel_h (B, heads, HW, H) and rel_w (B, heads, HW, W) with H·W = {q.shape[2]} "
            f"for q {tuple(q.shape)}, found {tuple(rel_h.shape)} and {tuple(rel_w.shape)}"
        )
    for block in (block_m, block_n):
        if block < 16 or block & (block - 1):
            raise ValueError(f"expected block sizes that are powers of two of at least 16, found {block}")
    return _rel_pos_attention(q, k, v, rel_h, rel_w, scale, block_m, block_n)

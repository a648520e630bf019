"""The fused-attention image encoder gives the stock encoder's outputs."""

from __future__ import annotations

import torch

from search.architectures import build_sam
from search.attention import use_fused_attention
from tests.conftest import fine_tune_of, tiny_state


def test_fused_attention_matches_the_stock_encoder() -> None:
    state = fine_tune_of(tiny_state(0), 9, scale=0.05)  # non-zero relative-position tables
    stock, fused = build_sam("tiny"), build_sam("tiny")
    stock.load_state_dict(state)
    fused.load_state_dict(state)
    assert use_fused_attention(fused.image_encoder) == 12
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, found = stock.image_encoder(images), fused.image_encoder(images)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].abs().sum() > 0

"""The fused-attention image encoder gives the stock encoder's outputs: SDPA in process, the Triton kernel under
Triton's interpreter (float32, in a subprocess: `tests/interpreted_kernel.py`), both against segment_anything."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from search.architectures import build_sam
from search.attention import query_blocks, resolve_kernel, use_fused_attention
from tests.conftest import fine_tune_of, tiny_state

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def tiny_encoder_state() -> dict[str, torch.Tensor]:
    state = fine_tune_of(tiny_state(0), 9, scale=0.05)  # non-zero relative-position tables
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].abs().sum() > 0
    return state


@pytest.mark.slow
def test_fused_attention_matches_the_stock_encoder() -> None:
    state = tiny_encoder_state()
    stock, fused, sdpa = build_sam("tiny"), build_sam("tiny"), build_sam("tiny")
    for model in (stock, fused, sdpa):
        model.load_state_dict(state)
    assert use_fused_attention(fused.image_encoder) == 12
    use_fused_attention(sdpa.image_encoder, kernel="sdpa")
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, found = stock.image_encoder(images), fused.image_encoder(images)
        assert torch.equal(found, sdpa.image_encoder(images))  # on CPU "auto" is the SDPA path
        traced = torch.compile(sdpa.image_encoder, backend="eager")(images)  # dynamo traces the swapped forward
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(traced, found, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [3, 8, 16])
def test_query_blocks_give_the_stock_encoder(rows: int) -> None:
    # tiny: a 16 x 16 grid in the global blocks, 4 x 4 windows: 3 rows make blocks of 3 and a last one of 1 row,
    # 8 rows two blocks (the int8 export's), 16 rows one.
    state = tiny_encoder_state()
    stock, blocked = build_sam("tiny"), build_sam("tiny")
    for model in (stock, blocked):
        model.load_state_dict(state)
    assert use_fused_attention(blocked.image_encoder, query_blocks(rows)) == 12
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(blocked.image_encoder(images), stock.image_encoder(images), rtol=1e-4, atol=1e-5)


def test_auto_chooses_triton_on_cuda_only() -> None:
    assert resolve_kernel("auto", torch.device("cpu")) == "sdpa"
    if importlib.util.find_spec("triton") is not None:
        assert resolve_kernel("auto", torch.device("cuda")) == "triton"
    assert resolve_kernel("sdpa", torch.device("cuda")) == "sdpa"
    with pytest.raises(
        ValueError, match="unknown attention kernel 'flash': expected one of auto, sdpa, triton, query_blocks"
    ):
        resolve_kernel("flash", torch.device("cpu"))


def explicit_attention(job: dict) -> torch.Tensor:
    """softmax(q·kᵀ·scale + rel_h[i, j // W] + rel_w[i, j % W])·v in float64, the bias built in full."""
    q, k, v, rel_h, rel_w = (t.double() for t in job["kernel"])
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)  # key j = row·W + column
    return torch.softmax(q @ k.transpose(-1, -2) * job["scale"] + bias, dim=-1) @ v


def kernel_job(batch: int, heads: int, grid: tuple[int, int], head_dim: int, blocks: tuple[int, int]) -> dict:
    generator = torch.Generator().manual_seed(sum(grid) + head_dim)
    tokens = grid[0] * grid[1]
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator) for _ in range(3))
    # Large relative terms: the softmax's running maximum moves between key blocks.
    rel_h, rel_w = (4 * torch.randn(batch, heads, tokens, side, generator=generator) for side in grid)
    return {"kernel": (q, k, v, rel_h, rel_w), "scale": head_dim**-0.5, "blocks": blocks}


def attention_module(dim: int, heads: int, size: tuple[int, int]) -> Attention:
    torch.manual_seed(3)
    module = Attention(dim, num_heads=heads, qkv_bias=True, use_rel_pos=True, input_size=size)
    with torch.no_grad():
        module.rel_pos_h.normal_(std=0.5)
        module.rel_pos_w.normal_(std=0.5)
    return module.eval()


KERNEL_CASES = {
    # 35 tokens on a 5 × 7 grid in blocks of 16: partial query and key blocks; head dim 24 padded to 32.
    "partial blocks, 5 x 7": kernel_job(2, 3, (5, 7), 24, (16, 16)),
    # ViT-B's head dim; more key blocks than query blocks.
    "head dim 64, 6 x 6": kernel_job(1, 2, (6, 6), 64, (32, 16)),
}


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, torch.Tensor]]:
    """Every job below run once through the Triton kernel in one interpreter subprocess: name -> (job, output)."""
    state = tiny_encoder_state()
    encoder = build_sam("tiny")
    encoder.load_state_dict(state)
    jobs = {
        **KERNEL_CASES,
        "attention 5 x 7": {
            "module": attention_module(48, 2, (5, 7)),
            "input": torch.randn(2, 5, 7, 48, generator=torch.Generator().manual_seed(1)),
            "compile": False,
        },
        "tiny encoder": {
            "module": encoder.image_encoder,
            "input": torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2)),
            "compile": True,
        },
    }
    folder = tmp_path_factory.mktemp("interpreted")
    torch.save([copy.deepcopy(job) for job in jobs.values()], folder / "jobs.pt")
    subprocess.run(
        [sys.executable, "-m", "tests.interpreted_kernel", str(folder / "jobs.pt"), str(folder / "results.pt")],
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        check=True,
        timeout=600,
    )
    results = torch.load(folder / "results.pt", weights_only=True)
    return {name: (job, out) for (name, job), out in zip(jobs.items(), results, strict=True)}


@needs_triton
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_matches_the_explicit_softmax(interpreted: dict, case: str) -> None:
    job, found = interpreted[case]
    assert found.shape == job["kernel"][0].shape and found.dtype == torch.float32
    torch.testing.assert_close(found.double(), explicit_attention(job), rtol=1e-5, atol=1e-5)


@needs_triton
def test_triton_attention_matches_segment_anything_and_sdpa(interpreted: dict) -> None:
    """A non-square grid (rel_h over rows, rel_w over columns cannot be swapped unnoticed), head dim 24."""
    job, found = interpreted["attention 5 x 7"]
    stock, sdpa = job["module"], copy.deepcopy(job["module"])
    use_fused_attention(sdpa, kernel="sdpa")
    with torch.no_grad():
        expected = stock(job["input"])
        torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(found, sdpa(job["input"]), rtol=1e-4, atol=1e-5)


@needs_triton
def test_triton_encoder_matches_the_stock_encoder(interpreted: dict) -> None:
    """The tiny encoder at the kernel's default blocks (4 × 4 windows and 8 × 8 global blocks, both partial),
    traced by torch.compile as the evaluator runs it on a GPU."""
    job, found = interpreted["tiny encoder"]
    with torch.no_grad():
        expected = job["module"](job["input"])
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)

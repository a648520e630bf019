"""Evaluator speed: encoder images/s (stock attention, SDPA, Triton; eager and compiled), decoder boxes/s (per-slice
stock calls vs one batched call across slices), whole-evaluator slices/s on the tiny model. Random weights; median
of --runs.

    python benchmarks/eval_bench.py --device cpu --runs 3 --json eval-cpu.json

Throughput is also given as achieved GFLOP/s (ViT-B: 972 GFLOP per 1024² image) and, on a GPU, as MFU against the
H200's measured bf16 matmul rate (about 790 TFLOP/s); a CPU has no such published peak here, so no MFU there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.architectures import get_architecture  # noqa: E402
from search.attention import use_fused_attention  # noqa: E402
from search.evaluate import Evaluator, decode_boxes  # noqa: E402
from search.tasks import Slice, Task  # noqa: E402


def median_time(fn, device: str, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


VIT_B_GFLOP_PER_IMAGE = 972.0
H200_BF16_TFLOPS = 790.0


# Encoder variants: stock attention, then each fused kernel of `search/attention.py`, eager and torch.compile'd.
ENCODER_VARIANTS = ("stock", "sdpa", "sdpa_compiled", "triton", "triton_compiled")


def encoder_variants(device: str) -> tuple[str, ...]:
    """The variants measured on `device`: compiled and Triton ones on CUDA only (on a CPU compiling a ViT-B costs
    more than the whole benchmark, and Triton runs there only interpreted), Triton ones only where it is installed."""
    if device != "cuda":
        return ("stock", "sdpa")
    triton = importlib.util.find_spec("triton") is not None
    return tuple(v for v in ENCODER_VARIANTS if triton or not v.startswith("triton"))


def encoder_rate(arch_name: str, device: str, batch: int, runs: int, dtype: torch.dtype) -> dict[str, float]:
    """images/s per variant; on CUDA also peak memory per variant and the Triton encoder's largest deviation from
    the SDPA encoder on the same images (the kernel's bf16 check on real hardware)."""
    arch = get_architecture(arch_name)
    evaluator = Evaluator(arch, device=device, fused_attention=False, dtype=dtype)
    encoder = evaluator.model.image_encoder
    images = torch.randn(batch, 3, arch.image_size, arch.image_size, device=device)
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    rates: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for variant in encoder_variants(device):
        kernel, _, compiled = variant.partition("_")
        if kernel != "stock":
            use_fused_attention(encoder, kernel=kernel)
        torch._dynamo.reset()
        run_encoder = torch.compile(encoder, dynamic=False) if compiled else encoder

        def run(run_encoder=run_encoder) -> torch.Tensor:
            with torch.no_grad(), autocast:
                return run_encoder(images)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rates[f"{variant}_images_per_s"] = batch / median_time(run, device, runs)
        if device == "cuda":
            rates[f"{variant}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if not compiled and kernel != "stock":
            outputs[kernel] = run().float()
    if "triton" in outputs:
        rates["triton_vs_sdpa_max_abs_error"] = (outputs["triton"] - outputs["sdpa"]).abs().max().item()
        rates["sdpa_output_max_abs"] = outputs["sdpa"].abs().max().item()
    if arch_name == "vit_b":
        for variant in encoder_variants(device):
            gflops = rates[f"{variant}_images_per_s"] * VIT_B_GFLOP_PER_IMAGE
            rates[f"{variant}_gflop_per_s"] = gflops
            if device == "cuda":
                rates[f"{variant}_mfu"] = gflops / (H200_BF16_TFLOPS * 1e3)
    return rates


def decoder_rate(arch_name: str, device: str, images: int, runs: int) -> dict[str, float]:
    """`images` slices with one box each: stock MaskDecoder call per slice vs one `decode_boxes` call."""
    arch = get_architecture(arch_name)
    model = Evaluator(arch, device=device).model
    grid = arch.embedding_size
    embeddings = torch.randn(images, arch.prompt_embed_dim, grid, grid, device=device)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0]], device=device) * arch.image_size / 1024
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes.expand(images, -1), masks=None)
    pe = model.prompt_encoder.get_dense_pe()

    def per_slice() -> None:
        with torch.no_grad():
            for i in range(images):
                model.mask_decoder(embeddings[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], False)

    def batched() -> None:
        with torch.no_grad():
            decode_boxes(model.mask_decoder, embeddings, pe, sparse, dense)

    return {
        "per_slice_boxes_per_s": images / median_time(per_slice, device, runs),
        "batched_boxes_per_s": images / median_time(batched, device, runs),
    }


def tiny_task(slices: int, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(slices):
        image = rng.integers(0, 255, (160, 120), dtype=np.uint8)
        mask = np.zeros(image.shape, bool)
        mask[40:100, 30:80] = True
        boxes = np.array([[30.0, 40.0, 80.0, 100.0], [10.0, 10.0, 60.0, 50.0]])
        pieces.append(Slice(image=image, mask=mask, boxes=boxes, case=f"c{i % 4}", index=i))
    return Task("bench", tuple(pieces))


def evaluator_rate(device: str, runs: int, slices: int) -> dict[str, float]:
    task = tiny_task(slices)
    evaluator = Evaluator(get_architecture("tiny"), device=device, encoder_batch=16)
    evaluator.prepare(task, "sam", "sam")  # once per search: not part of a trial
    return {"tiny_slices_per_s": slices / median_time(lambda: evaluator.dice(task, "sam"), device, runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vit-b-batch", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    console = Console()
    results = {
        "device": args.device,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "vit_b_encoder": encoder_rate("vit_b", args.device, args.vit_b_batch, args.runs, dtype),
        "tiny_encoder": encoder_rate("tiny", args.device, 32, args.runs, dtype),
        "vit_b_decoder": decoder_rate("vit_b", args.device, 16, args.runs),
        "tiny_evaluator": evaluator_rate(args.device, args.runs, 64),
    }
    table = Table("measure", "value", title=f"evaluator on {args.device} ({dtype}, {torch.get_num_threads()} threads)")
    for group in ("vit_b_encoder", "tiny_encoder", "vit_b_decoder", "tiny_evaluator"):
        for name, value in results[group].items():
            table.add_row(f"{group} {name}", f"{value:,.2f}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

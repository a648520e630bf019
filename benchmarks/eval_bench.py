"""Evaluator speed: encoder images/s (stock attention, SDPA, Triton; eager and compiled), decoder boxes/s (per-slice
stock calls vs one batched call across slices), whole-evaluator slices/s and, on a GPU, the peak memory of a search
trial's evaluation. Random weights; median of --runs.

    python benchmarks/eval_bench.py --device cpu --runs 3 --json eval-cpu.json
    python benchmarks/eval_bench.py --device cuda --arch vit_b --stage evaluator --slices 500 --json task500.json

Throughput is also given as achieved GFLOP/s (ViT-B: 972 GFLOP per 1024² image) and, on a GPU, as MFU against the
H200's measured bf16 matmul rate (about 790 TFLOP/s); a CPU has no such published peak here, so no MFU there.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import JsonRecord, peak_gpu_bytes, reset_peak, time_call  # noqa: E402
from benchmarks.merge_bench import make_engine, plan_for  # noqa: E402
from search.architectures import get_architecture  # noqa: E402
from search.attention import use_fused_attention  # noqa: E402
from search.evaluate import Evaluator, decode_boxes  # noqa: E402
from search.slices import Slice, Task  # noqa: E402


def median_time(fn: Callable[[], object], device: str, runs: int) -> float:
    return statistics.median(time_call(fn, device, runs))


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


def encoder_rates(
    arch_name: str, device: str, batch: int, runs: int, dtype: torch.dtype
) -> Iterator[tuple[str, float]]:
    """images/s per variant, each as measured (a compiled variant can take a minute to compile); on CUDA also peak
    memory per variant and the Triton encoder's largest deviation from the SDPA encoder on the same images (the
    kernel's bf16 check on real hardware)."""
    arch = get_architecture(arch_name)
    evaluator = Evaluator(arch, device=device, fused_attention=False, dtype=dtype)
    encoder = evaluator.model.image_encoder
    images = torch.randn(batch, 3, arch.image_size, arch.image_size, device=device)
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
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

        reset_peak(device)
        rate = batch / median_time(run, device, runs)
        yield f"{variant}_images_per_s", rate
        peak = peak_gpu_bytes(device)
        if peak is not None:
            yield f"{variant}_peak_gib", peak / 2**30
        if arch_name == "vit_b":
            yield f"{variant}_gflop_per_s", rate * VIT_B_GFLOP_PER_IMAGE
            if device == "cuda":
                yield f"{variant}_mfu", rate * VIT_B_GFLOP_PER_IMAGE / (H200_BF16_TFLOPS * 1e3)
        if not compiled and kernel != "stock":
            outputs[kernel] = run().float()
        if kernel == "triton" and not compiled:  # sdpa runs first: both outputs are there
            yield "triton_vs_sdpa_max_abs_error", (outputs["triton"] - outputs["sdpa"]).abs().max().item()
            yield "sdpa_output_max_abs", outputs["sdpa"].abs().max().item()


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


def synthetic_task(slices: int, height: int, width: int, seed: int = 0) -> Task:
    """`slices` random HxW uint8 slices, each with a rectangle of foreground and two XYXY boxes (one on it, one
    partly off it), placed in proportion to the image so any size gets the same layout."""
    rng = np.random.default_rng(seed)
    sy, sx = height / 160, width / 120
    box = np.array([[30.0 * sx, 40.0 * sy, 80.0 * sx, 100.0 * sy], [10.0 * sx, 10.0 * sy, 60.0 * sx, 50.0 * sy]])
    pieces = []
    for i in range(slices):
        mask = np.zeros((height, width), bool)
        mask[round(40 * sy) : round(100 * sy), round(30 * sx) : round(80 * sx)] = True
        image = rng.integers(0, 255, (height, width), dtype=np.uint8)
        pieces.append(Slice(image=image, mask=mask, boxes=box.copy(), case=f"c{i % 4}", index=i))
    return Task("bench", tuple(pieces))


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def evaluator_rate(arch_name: str, device: str, runs: int, slices: int) -> dict[str, float]:
    """A search trial's evaluation: one merge (TIES over base + 3 fine-tunes, the merge benchmark's resident engine)
    loaded into the search's own `Evaluator`, then Dice of `slices` synthetic slices (1024² for ViT-B, 160×120 for
    the tiny model). slices/s is end to end per `dice` call (input normalisation, encoder, decoder, masks, Dice, the
    copy to the host); preparing the uint8 inputs is once per search and timed apart. On CUDA the peak memory counts
    everything a search holds during the trial: engine inputs and output, model, prepared inputs and masks."""
    arch = get_architecture(arch_name)
    engine = make_engine(arch_name, device)
    evaluator = Evaluator(arch, device=device)
    task = synthetic_task(slices, *((160, 120) if arch_name == "tiny" else (arch.image_size,) * 2))
    start = time.perf_counter()
    prepared = evaluator.prepare(task, "sam", "sam")
    prepare_s = time.perf_counter() - start
    reset_peak(device)
    evaluator.load(engine.merge(plan_for(engine, "ties")))
    evaluator.dice(task, "sam")  # compiles the encoder (per batch size): out of the figures, the split too
    evaluator.stopwatch.take()
    times = time_call(lambda: evaluator.dice(task, "sam"), device, runs, warm_up=False)
    split = {f"{name}_s_per_pass": total / runs for name, total in evaluator.stopwatch.take().items()}
    result = {
        "slices": slices,
        "image_shape": list(task.slices[0].image.shape),
        "encoder_batch": evaluator.encoder_batch,
        "slices_per_s": slices / statistics.median(times),
        "prepare_s": prepare_s,
        **split,
        "engine_bytes": nbytes([*engine.inputs, engine.output]),
        "model_bytes": nbytes(evaluator.model.state_dict().values()),
        "prepared_images_bytes": nbytes([prepared.images]),
        "prepared_masks_bytes": nbytes(prepared.masks),
    }
    peak = peak_gpu_bytes(device)
    if peak is not None:
        result["peak_gpu_bytes"] = peak
    return result


# (architecture, stage) measured when no --arch is given: the CPU figures of RESULTS.md.
DEFAULT_GROUPS = (("vit_b", "encoder"), ("tiny", "encoder"), ("vit_b", "decoder"), ("tiny", "evaluator"))
STAGES = ("encoder", "decoder", "evaluator")


def measure(arch: str, stage: str, args: argparse.Namespace, dtype: torch.dtype) -> Iterator[tuple[str, float]]:
    """(name, value) pairs of one stage, each as soon as it is measured."""
    if stage == "encoder":
        yield from encoder_rates(arch, args.device, args.vit_b_batch if arch == "vit_b" else 32, args.runs, dtype)
    elif stage == "decoder":
        yield from decoder_rate(arch, args.device, args.decoder_slices, args.runs).items()
    else:
        yield from evaluator_rate(arch, args.device, args.runs, args.slices).items()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vit-b-batch", type=int, default=1)
    parser.add_argument("--stage", choices=STAGES, action="append", help="repeatable; default: all")
    parser.add_argument("--arch", help="one architecture for every stage (default: the CPU figures' mix)")
    parser.add_argument("--decoder-slices", type=int, default=16)
    parser.add_argument("--slices", type=int, default=64, help="the evaluator stage's synthetic slices")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    stages = args.stage or STAGES
    groups = [(args.arch, s) for s in stages] if args.arch else [g for g in DEFAULT_GROUPS if g[1] in stages]
    record = JsonRecord(args.json, args.device, dtype=str(dtype))
    table = Table("measure", "value", title=f"evaluator on {args.device} ({dtype}, {torch.get_num_threads()} threads)")
    for arch, stage in groups:
        record[f"{arch}_{stage}"] = results = {}
        for name, value in measure(arch, stage, args, dtype):
            results[name] = value
            record.save()
            table.add_row(f"{arch}_{stage} {name}", f"{value:,.2f}" if isinstance(value, float) else str(value))
    record.save()
    Console().print(table)


if __name__ == "__main__":
    main()

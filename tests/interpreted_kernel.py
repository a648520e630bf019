"""Runs `search/flash_rel_pos.py`'s Triton kernel under Triton's interpreter, in a process of its own.

Triton decides at a kernel's decoration (the first import of the kernel module) whether it is interpreted, so the
interpreter cannot be switched on inside a pytest process that may already have imported it; the tests start this
script with TRITON_INTERPRET=1 instead, and compare what it returns against references computed in their own process.

    TRITON_INTERPRET=1 python -m tests.interpreted_kernel JOBS.pt RESULTS.pt

JOBS.pt: a list of jobs, each {"kernel": (q, k, v, rel_h, rel_w), "scale": s, "blocks": (block_m, block_n)} (the
kernel alone) or {"module": an encoder or `Attention`, "input": x, "compile": bool} (its forward with the Triton
attention swapped in; compiled: traced by torch.compile's dynamo, which must call the kernel as an opaque operator).
RESULTS.pt: the list of their outputs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def run(job: dict) -> torch.Tensor:
    from search.attention import use_fused_attention
    from search.flash_rel_pos import rel_pos_attention

    with torch.no_grad():
        if "kernel" in job:
            block_m, block_n = job["blocks"]
            return rel_pos_attention(*job["kernel"], job["scale"], block_m=block_m, block_n=block_n)
        module = job["module"]
        if use_fused_attention(module, kernel="triton") == 0:
            raise ValueError("the job's module has no segment_anything Attention to swap")
        return (torch.compile(module, backend="eager") if job["compile"] else module)(job["input"])


def main(jobs: Path, results: Path) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1: this script runs the kernel under Triton's interpreter only")
    torch.save([run(job) for job in torch.load(jobs, weights_only=False)], results)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""`search.gelu`: the exact GELU in the operand order onnxruntime fuses: CPU exports run one Gelu, not five passes."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from segment_anything.modeling.common import MLPBlock

from search.gelu import FusableGelu, use_fusable_gelu


def test_the_fusable_gelu_is_the_exact_gelu() -> None:
    x = torch.linspace(-12, 12, 100_001)
    # atol: float32 rounding of x·(1 + erf) near |x| = 12
    torch.testing.assert_close(FusableGelu()(x), torch.nn.functional.gelu(x), rtol=1e-6, atol=1e-6)


def test_only_exact_gelus_are_replaced() -> None:
    model = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Sequential(torch.nn.GELU()), torch.nn.GELU("tanh"))
    assert use_fusable_gelu(model) == 2
    assert [type(m).__name__ for m in (model[0], model[1][0])] == ["FusableGelu", "FusableGelu"]
    assert isinstance(model[2], torch.nn.GELU) and model[2].approximate == "tanh"


def optimized_ops(module: torch.nn.Module, tmp_path: Path) -> collections.Counter[str]:
    """Op types of `module`'s ONNX export as onnxruntime's CPU session optimises it (extended level: portable)."""
    path = tmp_path / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(1, 4, 4, 32),), path, opset_version=18, dynamo=True, verbose=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_fuses_the_swapped_gelu_but_not_the_stock_one(tmp_path: Path) -> None:
    stock = MLPBlock(32, 128).eval()
    assert optimized_ops(stock, tmp_path)["Erf"] == 1  # why the swap exists: nn.GELU's export stays five passes
    use_fusable_gelu(stock)
    ops = optimized_ops(stock, tmp_path)
    assert ops["Erf"] == 0 and ops["Gelu"] + ops["BiasGelu"] == 1, ops

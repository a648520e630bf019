"""`search.gelu`: the exact GELU in the operand order onnxruntime fuses: CPU exports run one Gelu, not five passes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from segment_anything.modeling.common import MLPBlock

from search.gelu import FusableGelu, use_fusable_gelu
from tests.graphs import optimized_ops


def test_the_fusable_gelu_is_the_exact_gelu() -> None:
    x = torch.linspace(-12, 12, 100_001)
    # atol: float32 rounding of x·(1 + erf) near |x| = 12
    torch.testing.assert_close(FusableGelu()(x), torch.nn.functional.gelu(x), rtol=1e-6, atol=1e-6)


def test_only_exact_gelus_are_replaced() -> None:
    model = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Sequential(torch.nn.GELU()), torch.nn.GELU("tanh"))
    assert use_fusable_gelu(model) == 2
    assert [type(m).__name__ for m in (model[0], model[1][0])] == ["FusableGelu", "FusableGelu"]
    assert isinstance(model[2], torch.nn.GELU) and model[2].approximate == "tanh"


def exported_ops(module: torch.nn.Module, tmp_path: Path) -> Counter[str]:
    """Op types of `module`'s ONNX export as onnxruntime's CPU session optimises it."""
    path = tmp_path / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(1, 4, 4, 32),), path, opset_version=18, dynamo=True, verbose=False)
    return optimized_ops(path, tmp_path)


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_fuses_the_swapped_gelu_but_not_the_stock_one(tmp_path: Path) -> None:
    stock = MLPBlock(32, 128).eval()
    assert exported_ops(stock, tmp_path)["Erf"] == 1  # why the swap exists: nn.GELU's export stays five passes
    use_fusable_gelu(stock)
    ops = exported_ops(stock, tmp_path)
    assert ops["Erf"] == 0 and ops["Gelu"] + ops["BiasGelu"] == 1, ops

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
    exact = torch.nn.functional.gelu(x.double())
    # float32 rounding: a few roundings of products of |x|'s size, erf's ulps scaled by |x| / 2 where 1 + erf
    # cancels. Against torch's own float32 gelu the gap depends on the CPU's erf (1.2e-6 at x = 3.49 with AVX-512,
    # where torch's float32 gelu is the one further from the exact value); the tanh approximation is 100x outside.
    bound = x.double().abs() * 2**-21 + 2**-24
    assert ((FusableGelu()(x).double() - exact).abs() <= bound).all()
    assert not ((torch.nn.functional.gelu(x, approximate="tanh").double() - exact).abs() <= 100 * bound).all()


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

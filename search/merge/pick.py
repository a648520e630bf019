"""Pick: one input's tensor, unchanged (how the search expresses "this group comes from MedSAM")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_module
from search.merge.base import InputChoice, MergeMethod, register
from search.merge.packing import Packing

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py


def pick(base: torch.Tensor, models: list[torch.Tensor], packing: Packing, *, model: int) -> torch.Tensor:
    return [base, *models][model]


register(
    MergeMethod(
        name="pick",
        function=pick,
        params=(InputChoice("model", doc="the input whose tensor is taken"),),
        reference="(identity)",
        summary="one input's tensor unchanged",
    )
)

"""Pick: one input's tensor, unchanged (how the search expresses "this group comes from MedSAM")."""

from __future__ import annotations

import torch

from search.merge.base import InputChoice, MergeMethod, register
from search.merge.packing import Packing


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

"""The merge engine: inputs loaded once and kept resident; each merge writes into one preallocated buffer.

This is what every search trial calls, so it does no file I/O and allocates no model-sized memory per merge.
Each input is packed into one flat tensor in layer-group order (so every group is one contiguous slice), on the GPU
when there is one. A merge walks the plan group by group and hands each method a chunk of whole tensors at once
(`Packing`): per tensor on a small budget on CPU (low memory), whole groups on GPU (few kernel launches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, reduce
from pathlib import Path
from typing import Any

import torch

from search.architectures import SamArchitecture, state_layout
from search.checkpoints import Checkpoint, load_checkpoint
from search.errors import MergeError, RecipeError
from search.groups import LayerGroup, units
from search.merge.base import MergeMethod
from search.merge.packing import Packing, tensor_key
from search.recipe import Recipe

CPU_CHUNK = 1 << 20
GPU_CHUNK = 1 << 25

Plan = Sequence[tuple[LayerGroup, MergeMethod, Mapping[str, Any]]]


@dataclass(frozen=True)
class FlatLayout:
    """Where each learned parameter of an architecture lives in one flat vector (layer-group order)."""

    shapes: dict[str, tuple[int, ...]]  # in layout order
    spans: dict[str, tuple[int, int]]  # key -> (start, stop)

    @property
    def numel(self) -> int:
        return next(reversed(self.spans.values()))[1]

    def pack(self, state: Mapping[str, torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        flat = torch.empty(self.numel, dtype=dtype, device=device)
        for key, (start, stop) in self.spans.items():
            flat[start:stop].copy_(state[key].reshape(-1))
        return flat

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: flat[start:stop].view(self.shapes[key]) for key, (start, stop) in self.spans.items()}


@cache
def flat_layout(arch: SamArchitecture) -> FlatLayout:
    shapes = state_layout(arch).parameters
    spans: dict[str, tuple[int, int]] = {}
    end = 0
    for key in (k for unit in units(arch) for k in unit.keys):
        spans[key] = (end, end + torch.Size(shapes[key]).numel())
        end = spans[key][1]
    return FlatLayout({k: shapes[k] for k in spans}, spans)


def state_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype that holds every floating-point tensor of `state` exactly."""
    return reduce(torch.promote_types, (v.dtype for v in state.values() if v.is_floating_point()))


def widest(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or wider where one of `dtypes` is: where inputs of different dtypes meet."""
    return reduce(torch.promote_types, dtypes, torch.float32)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MergeEngine:
    """Resident inputs (base first) and a preallocated output; `merge(plan, seed)` fills the output."""

    def __init__(
        self,
        arch: SamArchitecture,
        names: Sequence[str],
        flats: Sequence[torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        chunk_numel: int | None = None,
        output_dtype: torch.dtype | None = None,
    ) -> None:
        self.arch = arch
        self.names = list(names)
        self.layout = flat_layout(arch)
        self.inputs = list(flats)
        self.device = self.inputs[0].device
        self.dtype = output_dtype or self.inputs[0].dtype  # what a merge is written in
        self.buffers = {k: v.to(self.device) for k, v in buffers.items()}
        self.output_buffers = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in self.buffers.items()}
        self.output = torch.empty_like(self.inputs[0], dtype=self.dtype)
        self.chunk_numel = chunk_numel or (GPU_CHUNK if self.device.type == "cuda" else CPU_CHUNK)
        self._chunks: dict[tuple[str, int], list[tuple[int, int, Packing]]] = {}

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Iterable[tuple[str, Checkpoint]],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        chunk_numel: int | None = None,
    ) -> MergeEngine:
        """Pack each checkpoint as it arrives (a generator keeps only one unpacked input in memory at a time).

        All inputs must share one architecture. A merge is written in `dtype` (default: the base's) and rounded into
        it once: inputs are kept in their dtype while they all share it and it is `dtype` (the methods widen half
        precision to float32 themselves), else in float32 (or wider), so no input is rounded to another's dtype
        before its task vector is taken.
        """
        device = torch.device(device) if device is not None else default_device()
        names: list[str] = []
        flats: list[torch.Tensor] = []
        arch: SamArchitecture | None = None
        buffers: dict[str, torch.Tensor] = {}
        stored = torch.float32
        for name, checkpoint in checkpoints:
            own = state_dtype(checkpoint.state_dict)
            if arch is None:
                arch = checkpoint.arch
                dtype = dtype or own
                stored = own if own == dtype else widest(own, dtype)
                buffers = {k: checkpoint.state_dict[k].clone() for k in state_layout(arch).buffers}
            elif checkpoint.arch != arch:
                raise MergeError(
                    f"inputs have different architectures: {names[0]} is {arch.name} but {name} is "
                    f"{checkpoint.arch.name}; all inputs of a merge must be fine-tunes of one architecture"
                )
            elif own != stored:
                stored = widest(stored, own)
                flats = [flat.to(stored) for flat in flats]
            names.append(name)
            flats.append(flat_layout(arch).pack(checkpoint.state_dict, stored, device))
        if arch is None or len(flats) < 2:
            raise MergeError("a merge needs a base model and at least one fine-tuned model")
        return cls(arch, names, flats, buffers, chunk_numel, dtype)

    def _group_chunks(self, group: LayerGroup, seed: int) -> list[tuple[int, int, Packing]]:
        """The group's tensors cut into runs of whole tensors of at most `chunk_numel` elements (cached).

        A group's keys are contiguous in the layout, so each run is one slice of the flat buffers.
        """
        slot = (group.name, seed)
        if slot not in self._chunks:
            spans = self.layout.spans
            runs: list[list[str]] = [[]]
            size = 0
            for key in sorted(group.keys, key=lambda k: spans[k][0]):
                numel = spans[key][1] - spans[key][0]
                if runs[-1] and size + numel > self.chunk_numel:
                    runs.append([])
                    size = 0
                runs[-1].append(key)
                size += numel
            self._chunks[slot] = [
                (
                    spans[run[0]][0],
                    spans[run[-1]][1],
                    Packing(tuple(spans[k][1] - spans[k][0] for k in run), tuple(tensor_key(seed, k) for k in run)),
                )
                for run in runs
            ]
        return self._chunks[slot]

    @torch.no_grad()
    def merge(self, plan: Plan, seed: int = 0) -> dict[str, torch.Tensor]:
        """Merge every group of `plan` into the output buffer; returns the state dict (views + base buffers).

        The returned tensors are overwritten by the next merge: copy them to keep them.
        """
        base, models = self.inputs[0], self.inputs[1:]
        for group, method, kwargs in plan:
            for start, stop, packing in self._group_chunks(group, seed):
                try:
                    merged = method(base[start:stop], [m[start:stop] for m in models], packing, **kwargs)
                except Exception as error:
                    error.add_note(f"while merging layer group {group.name} with {method.name}")
                    raise
                self.output[start:stop].copy_(merged)
        return {**self.layout.views(self.output), **self.output_buffers}

    def input_state(self, index: int) -> dict[str, torch.Tensor]:
        """Input `index` (0 = base) as a state dict: views of its resident flat tensor plus the base's buffers."""
        return {**self.layout.views(self.inputs[index]), **self.buffers}

    def merge_recipe(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        if recipe.input_names != self.names:
            raise RecipeError(
                f"the recipe's inputs ({', '.join(recipe.input_names)}) are not this engine's ({', '.join(self.names)})"
            )
        return self.merge(recipe.plan(self.arch), recipe.seed)


def load_recipe_inputs(
    recipe: Recipe, folder: Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> MergeEngine:
    """A merge engine over a recipe's input files, checking each file's sha256 against the recipe; merges are
    written in `dtype` (default: the base's)."""

    def checkpoints() -> Iterable[tuple[str, Checkpoint]]:
        for model in recipe.inputs:
            checkpoint = load_checkpoint(recipe.resolve_path(model, folder))
            if model.sha256 is not None and checkpoint.sha256 != model.sha256:
                raise RecipeError(
                    f"the sha256 of {checkpoint.path} ({checkpoint.sha256[:12]}…) differs from the recipe's "
                    f"({model.sha256[:12]}…) for input '{model.name}'; the file changed since the recipe was written"
                )
            yield model.name, checkpoint

    return MergeEngine.from_checkpoints(checkpoints(), device=device, dtype=dtype)

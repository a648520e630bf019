"""Layer groups: the units a merge configuration assigns one method (and its parameters) to.

A pure function of the architecture and three granularities. The model is cut into *units* in forward order:

- image encoder: `patch_embed`, `pos_embed`, each block, `neck` (patch/pos embedding and neck are always groups
  of their own; blocks are grouped in runs of `encoder`);
- prompt encoder: `point_embeddings`, `not_a_point_embed`, `mask_downscaling`, `no_mask_embed` (the paper's k = 4),
  in runs of `prompt`;
- mask decoder: `transformer.layers.0`, `transformer.layers.1`, `transformer.final_attn` (final token-to-image
  attention and its norm), `tokens` (IoU and mask tokens), `output_upscaling`, `output_hypernetworks_mlps`,
  `iou_prediction_head`, in runs of `decoder`. The paper counts z + p = 5 decoder layers; we also give the final
  attention and the learned tokens a home, since every learned parameter must be merged by something.

A run shorter than its granularity (at the end) is still a group of its own. Buffers (the prompt encoder's random
Fourier matrix) are in no group: they are not learned and are copied from the base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from search.architectures import SamArchitecture, get_architecture, state_layout
from search.errors import RecipeError

PROMPT_UNITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("point_embeddings", ("point_embeddings",)),
    ("not_a_point_embed", ("not_a_point_embed",)),
    ("mask_downscaling", ("mask_downscaling",)),
    ("no_mask_embed", ("no_mask_embed",)),
)
DECODER_UNITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transformer.layers.0", ("transformer.layers.0",)),
    ("transformer.layers.1", ("transformer.layers.1",)),
    ("transformer.final_attn", ("transformer.final_attn_token_to_image", "transformer.norm_final_attn")),
    ("tokens", ("iou_token", "mask_tokens")),
    ("output_upscaling", ("output_upscaling",)),
    ("output_hypernetworks_mlps", ("output_hypernetworks_mlps",)),
    ("iou_prediction_head", ("iou_prediction_head",)),
)


@dataclass(frozen=True)
class Granularity:
    """How many consecutive units share one group, per component (the paper's g_enc, g_prompt, g_dec)."""

    encoder: int = 1
    prompt: int = 1
    decoder: int = 1

    def __post_init__(self) -> None:
        for field, value in (("encoder", self.encoder), ("prompt", self.prompt), ("decoder", self.decoder)):
            if not isinstance(value, int) or value < 1:
                raise RecipeError(f"granularity.{field} must be a whole number >= 1, found {value!r}")


@dataclass(frozen=True)
class Unit:
    component: str
    label: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class LayerGroup:
    """One group: a stable readable name and the state-dict keys it owns, in layout order."""

    name: str
    component: str
    units: tuple[str, ...]
    keys: tuple[str, ...]


def _owned(keys: list[str], prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in keys if any(k == p or k.startswith(p + ".") for p in prefixes))


@cache
def units(arch: SamArchitecture) -> tuple[Unit, ...]:
    """Every learned parameter's unit, in forward order; raises if the table misses a parameter."""
    keys = list(state_layout(arch).parameters)
    table: list[tuple[str, str, tuple[str, ...]]] = [
        ("image_encoder", "patch_embed", ("patch_embed",)),
        ("image_encoder", "pos_embed", ("pos_embed",)),
        *(("image_encoder", f"blocks.{i}", (f"blocks.{i}",)) for i in range(arch.encoder_depth)),
        ("image_encoder", "neck", ("neck",)),
        *(("prompt_encoder", label, prefixes) for label, prefixes in PROMPT_UNITS),
        *(("mask_decoder", label, prefixes) for label, prefixes in DECODER_UNITS),
    ]
    result = tuple(
        Unit(component, label, _owned(keys, tuple(f"{component}.{p}" for p in prefixes)))
        for component, label, prefixes in table
    )
    covered = [k for unit in result for k in unit.keys]
    if sorted(covered) != sorted(keys):
        raise RuntimeError(f"unit table does not partition the parameters of {arch.name}")
    return result


def _run_name(component: str, labels: list[str]) -> str:
    """`blocks.4`,`blocks.5` -> `blocks.4-5`; different stems are joined with '+'."""
    parts: list[tuple[str, int, int] | str] = []
    for label in labels:
        match = re.fullmatch(r"(.+)\.(\d+)", label)
        last = parts[-1] if parts else None
        if match and isinstance(last, tuple) and last[0] == match[1] and last[2] + 1 == int(match[2]):
            parts[-1] = (last[0], last[1], int(match[2]))
        elif match:
            parts.append((match[1], int(match[2]), int(match[2])))
        else:
            parts.append(label)
    text = [p if isinstance(p, str) else f"{p[0]}.{p[1]}" + (f"-{p[2]}" if p[2] > p[1] else "") for p in parts]
    return f"{component}." + "+".join(text)


@cache
def _layer_groups(arch: SamArchitecture, granularity: Granularity) -> tuple[LayerGroup, ...]:
    runs: list[list[Unit]] = []
    all_units = units(arch)
    sizes = {"prompt_encoder": granularity.prompt, "mask_decoder": granularity.decoder}
    for component in ("image_encoder", "prompt_encoder", "mask_decoder"):
        members = [u for u in all_units if u.component == component]
        if component == "image_encoder":
            blocks = [u for u in members if u.label.startswith("blocks.")]
            runs += [[u] for u in members if u.label in ("patch_embed", "pos_embed")]
            runs += [blocks[i : i + granularity.encoder] for i in range(0, len(blocks), granularity.encoder)]
            runs += [[u] for u in members if u.label == "neck"]
        else:
            size = sizes[component]
            runs += [members[i : i + size] for i in range(0, len(members), size)]
    return tuple(
        LayerGroup(
            name=_run_name(run[0].component, [u.label for u in run]),
            component=run[0].component,
            units=tuple(u.label for u in run),
            keys=tuple(k for u in run for k in u.keys),
        )
        for run in runs
    )


def layer_groups(arch: SamArchitecture | str, granularity: Granularity) -> tuple[LayerGroup, ...]:
    """The groups of `arch` at `granularity`, in forward order (so each group is contiguous in that order)."""
    return _layer_groups(get_architecture(arch) if isinstance(arch, str) else arch, granularity)

"""Layer groups: a partition of the learned parameters, for every architecture and granularity."""

from __future__ import annotations

import itertools
import math

import pytest

from search.architectures import ARCHITECTURES, build_sam
from search.errors import RecipeError
from search.groups import Granularity, layer_groups, units
from search.merge.engine import flat_layout

GRANULARITIES = [Granularity(*g) for g in itertools.product(range(1, 5), repeat=3)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def test_every_learned_parameter_is_in_exactly_one_group(arch) -> None:
    model = build_sam(arch, device="meta")
    learned = {name for name, p in model.named_parameters() if p.dtype.is_floating_point}
    buffers = {name for name, _ in model.named_buffers()}
    order = list(flat_layout(arch).spans)
    for granularity in GRANULARITIES:
        groups = layer_groups(arch, granularity)
        owned = [key for group in groups for key in group.keys]
        assert len(owned) == len(set(owned)), granularity
        assert set(owned) == learned, granularity
        assert not set(owned) & buffers
        assert len({g.name for g in groups}) == len(groups)
        # The paper's G, plus patch_embed, pos_embed and neck; 4 prompt units, 7 decoder units.
        expected = (
            3
            + math.ceil(arch.encoder_depth / granularity.encoder)
            + math.ceil(4 / granularity.prompt)
            + (math.ceil(7 / granularity.decoder))
        )
        assert len(groups) == expected
        for group in groups:  # contiguous in the engine's flat layout, so one slice per group
            positions = sorted(order.index(k) for k in group.keys)
            assert positions == list(range(positions[0], positions[0] + len(positions))), group.name


def test_a_shorter_last_run_keeps_its_own_group() -> None:
    names = [g.name for g in layer_groups("vit_b", Granularity(encoder=5))]
    assert names[2:5] == ["image_encoder.blocks.0-4", "image_encoder.blocks.5-9", "image_encoder.blocks.10-11"]
    names = [g.name for g in layer_groups("vit_h", Granularity(encoder=3))]
    assert "image_encoder.blocks.30-31" in names
    decoder = [g for g in layer_groups("vit_b", Granularity(decoder=4)) if g.component == "mask_decoder"]
    assert [len(g.units) for g in decoder] == [4, 3]


def test_group_names_are_stable() -> None:
    names = [g.name for g in layer_groups("vit_b", Granularity(2, 2, 2))]
    assert names == [
        "image_encoder.patch_embed",
        "image_encoder.pos_embed",
        "image_encoder.blocks.0-1",
        "image_encoder.blocks.2-3",
        "image_encoder.blocks.4-5",
        "image_encoder.blocks.6-7",
        "image_encoder.blocks.8-9",
        "image_encoder.blocks.10-11",
        "image_encoder.neck",
        "prompt_encoder.point_embeddings+not_a_point_embed",
        "prompt_encoder.mask_downscaling+no_mask_embed",
        "mask_decoder.transformer.layers.0-1",
        "mask_decoder.transformer.final_attn+tokens",
        "mask_decoder.output_upscaling+output_hypernetworks_mlps",
        "mask_decoder.iou_prediction_head",
    ]
    single = [g.name for g in layer_groups("tiny", Granularity())]
    assert single[2] == "image_encoder.blocks.0" and single[-1] == "mask_decoder.iou_prediction_head"


def test_tiny_keeps_vit_b_module_tree_and_key_names() -> None:
    tiny = build_sam("tiny", device="meta").state_dict()
    vit_b = build_sam("vit_b", device="meta").state_dict()
    assert list(tiny) == list(vit_b)
    assert [u.label for u in units(ARCHITECTURES["tiny"])] == [u.label for u in units(ARCHITECTURES["vit_b"])]
    assert sum(t.numel() for t in tiny.values()) < 1_000_000


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_granularity_must_be_a_positive_whole_number(bad) -> None:
    with pytest.raises(RecipeError, match="granularity.encoder must be a whole number >= 1"):
        Granularity(encoder=bad)


def test_buffers_are_not_learned() -> None:
    model = build_sam("tiny", device="meta")
    assert [name for name, _ in model.named_buffers() if name not in ("pixel_mean", "pixel_std")] == [
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    ]

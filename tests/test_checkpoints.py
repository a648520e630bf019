"""Checkpoint loading: every real file layout loads to the same weights; everything else is refused in one sentence."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from segment_anything import sam_model_registry

from search.architectures import ARCHITECTURES, build_sam, state_layout
from search.checkpoints import load_checkpoint, save_checkpoint, sha256_file, validate_state_dict
from search.errors import CheckpointError, MergeError
from search.merge.engine import MergeEngine
from tests.conftest import WRITERS, fine_tune_of, with_non_finite, write_torch_em


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_real_layout_loads_to_the_same_weights(tmp_path: Path, tiny_base, fmt: str) -> None:
    suffix, write = WRITERS[fmt]
    state = fine_tune_of(tiny_base, 5)
    path = tmp_path / f"model{suffix}"
    write(state, path)

    checkpoint = load_checkpoint(path)

    assert checkpoint.format == fmt
    assert checkpoint.arch.name == "tiny"
    assert checkpoint.sha256 == sha256_file(path)
    assert list(checkpoint.state_dict) == list(state_layout("tiny").all)
    for key, tensor in state.items():
        assert torch.equal(checkpoint.state_dict[key], tensor), key


def test_torch_em_module_sam_prefix_and_pixel_statistics_are_removed(tmp_path: Path, tiny_base) -> None:
    state = {**tiny_base, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}
    write_torch_em(state, tmp_path / "ddp.pt", prefix="module.sam.")

    checkpoint = load_checkpoint(tmp_path / "ddp.pt")

    assert checkpoint.prefix == "module.sam."
    assert "pixel_mean" not in checkpoint.state_dict and "pixel_std" not in checkpoint.state_dict


def test_loaded_weights_fit_segment_anything_strictly(tiny_inputs) -> None:
    model = build_sam("tiny")
    model.load_state_dict(load_checkpoint(tiny_inputs["medsam"]).state_dict, strict=True)


def test_legacy_torch_serialisation_and_half_precision_load(tmp_path: Path, tiny_base) -> None:
    half = {k: v.half() for k, v in tiny_base.items()}
    torch.save(half, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)

    checkpoint = load_checkpoint(tmp_path / "legacy.pth")

    assert all(t.dtype == torch.float16 for t in checkpoint.state_dict.values())


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_real_sizes_are_recognised_from_segment_anythings_own_builders(name: str) -> None:
    with torch.device("meta"):
        reference = sam_model_registry[name]().state_dict()
    assert validate_state_dict("file", reference) is ARCHITECTURES[name]


def one_sentence(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "nope.pth")
    assert "does not exist" in one_sentence(error)


def test_not_a_torch_or_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("hello, I am a text file\n")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "notes.pth")
    assert "neither a PyTorch checkpoint nor a safetensors file" in one_sentence(error)


def test_truncated_file(tmp_path: Path, tiny_inputs) -> None:
    data = tiny_inputs["sam"].read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "cut.pth")
    assert "truncated or corrupt" in one_sentence(error)


def test_pickled_code_is_never_run(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "evil.pth")
    assert "could run code" in one_sentence(error)
    assert "pwned" not in capfd.readouterr().out


def test_not_a_sam_checkpoint_names_three_missing_keys(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "resnet.pth")
    message = one_sentence(error)
    assert "is not a SAM checkpoint" in message
    assert (
        "image_encoder.pos_embed, image_encoder.patch_embed.proj.weight, image_encoder.patch_embed.proj.bias" in message
    )
    assert "more" in message


def test_shape_mismatch_names_key_expected_and_found(tmp_path: Path, tiny_base) -> None:
    broken = dict(tiny_base)
    broken["mask_decoder.iou_token.weight"] = torch.zeros(2, 32)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "broken.pth")
    assert "mask_decoder.iou_token.weight has shape [2, 32] but tiny expects [1, 32]" in one_sentence(error)


def test_missing_and_unexpected_keys(tmp_path: Path, tiny_base) -> None:
    partial = {k: v for k, v in tiny_base.items() if "blocks.3." not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "partial.pth")
    assert "incomplete tiny checkpoint: it lacks image_encoder.blocks.3.norm1.weight" in one_sentence(error)

    torch.save({**tiny_base, "lora.A": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "extra.pth")
    assert "not part of a tiny SAM: lora.A" in one_sentence(error)


def test_inputs_of_different_architectures_are_refused(tiny_inputs) -> None:
    with torch.device("meta"):
        vit_b = sam_model_registry["vit_b"]().state_dict()
    tiny = load_checkpoint(tiny_inputs["sam"])
    other = type(tiny)(Path("vit_b.pth"), "sam", "", ARCHITECTURES["vit_b"], vit_b, "0" * 64, 0)
    with pytest.raises(MergeError) as error:
        MergeEngine.from_checkpoints([("sam", tiny), ("medsam", other)], device="cpu")
    assert "sam is tiny but medsam is vit_b" in one_sentence(error)


def test_save_refuses_unknown_suffix_and_leaves_nothing_behind(tmp_path: Path, tiny_base) -> None:
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(tiny_base, tmp_path / "merged.bin")
    assert ".safetensors, .pth, .pt" in one_sentence(error)
    assert list(tmp_path.iterdir()) == []


def test_a_sam_of_unknown_size_says_what_sizes_are_known(tmp_path: Path, tiny_base) -> None:
    shallow = {k: v for k, v in tiny_base.items() if not k.startswith("image_encoder.blocks.11.")}
    torch.save(shallow, tmp_path / "shallow.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "shallow.pth")
    message = one_sentence(error)
    assert "unknown size (patch embedding [64, 3, 8, 8], 11 encoder blocks)" in message
    assert "expected one of vit_b, vit_l, vit_h, tiny" in message


@pytest.mark.parametrize("fmt", ["sam", "safetensors"])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, tiny_base, fmt: str) -> None:
    suffix, write = WRITERS[fmt]
    path = tmp_path / f"broken{suffix}"
    write(with_non_finite(tiny_base), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = one_sentence(error)
    assert "tensor image_encoder.blocks.0.attn.qkv.bias holds 1 non-finite value(s)" in message
    assert "(and 1 more tensors)" in message and "expected finite weights" in message
    # Reading it to report on it (inspect) is allowed, and counts each bad tensor.
    assert load_checkpoint(path, allow_non_finite=True).non_finite() == {
        "image_encoder.blocks.0.attn.qkv.bias": 1,
        "mask_decoder.iou_prediction_head.layers.0.weight": 1,
    }

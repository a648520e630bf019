"""Recipes and the merge engine: validation names the problem; replay is bit-identical; merges are exact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from search.architectures import state_layout
from search.checkpoints import load_checkpoint, save_checkpoint
from search.errors import RecipeError
from search.groups import Granularity
from search.merge import METHODS, get_method
from search.merge.engine import MergeEngine, load_recipe_inputs
from search.recipe import InputModel, Recipe, load_recipe, parse_recipe, recipe_yaml, save_recipe, uniform_recipe
from tests.conftest import fine_tune_of, write_sam

NAMES = ["sam", "medicosam", "medsam"]


def make_recipe(tiny_inputs, method: str = "linear", granularity=Granularity(2, 2, 2), **kwargs) -> Recipe:
    checkpoints = {name: load_checkpoint(tiny_inputs[name]) for name in NAMES}
    inputs = [InputModel(name=n, path=str(tiny_inputs[n]), sha256=checkpoints[n].sha256) for n in NAMES]
    return uniform_recipe(inputs[0], inputs[1:], checkpoints["sam"].arch, method, granularity, **kwargs)


def with_groups(recipe: Recipe, update) -> Recipe:
    data = recipe.model_dump()
    data["groups"] = update(data["groups"])
    return Recipe.model_validate(data)


@pytest.fixture(scope="module")
def engine(tiny_inputs) -> MergeEngine:
    return load_recipe_inputs(make_recipe(tiny_inputs), Path("/"), device="cpu")


def test_yaml_round_trip(tiny_inputs, tmp_path: Path) -> None:
    recipe = make_recipe(tiny_inputs, "ties", seed=3)
    save_recipe(recipe, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == recipe


def test_pick_everywhere_gives_that_model_exactly(tiny_inputs, engine) -> None:
    for name in NAMES:
        recipe = with_groups(
            make_recipe(tiny_inputs), lambda gs, n=name: [{**g, "method": "pick", "params": {"model": n}} for g in gs]
        )
        merged = engine.merge_recipe(recipe)
        original = load_checkpoint(tiny_inputs[name]).state_dict
        base = load_checkpoint(tiny_inputs["sam"]).state_dict
        for key in original:
            expected = base[key] if "positional_encoding_gaussian_matrix" in key else original[key]
            assert torch.equal(merged[key], expected), (name, key)


def test_each_group_gets_its_own_method(tiny_inputs, engine) -> None:
    """Mixed recipe: blocks 0-1 from medsam, the rest from sam; nothing leaks across group boundaries."""
    recipe = with_groups(
        make_recipe(tiny_inputs),
        lambda gs: [
            {
                **g,
                "method": "pick",
                "params": {"model": "medsam" if g["group"] == "image_encoder.blocks.0-1" else "sam"},
            }
            for g in gs
        ],
    )
    merged = engine.merge_recipe(recipe)
    medsam = load_checkpoint(tiny_inputs["medsam"]).state_dict
    sam = load_checkpoint(tiny_inputs["sam"]).state_dict
    for key, tensor in merged.items():
        source = medsam if key.startswith(("image_encoder.blocks.0.", "image_encoder.blocks.1.")) else sam
        assert torch.equal(tensor, source[key]), key


def test_engine_writes_into_one_preallocated_buffer(tiny_inputs, engine) -> None:
    first = engine.merge_recipe(make_recipe(tiny_inputs, "linear"))
    pointer = first["image_encoder.pos_embed"].data_ptr()
    second = engine.merge_recipe(make_recipe(tiny_inputs, "ties"))
    assert second["image_encoder.pos_embed"].data_ptr() == pointer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_packing_does_not_change_the_merge(tiny_inputs, method: str) -> None:
    """Per-tensor chunks (CPU default) and whole-group chunks (GPU default) give the same weights."""
    recipe = make_recipe(tiny_inputs, method)
    small = load_recipe_inputs(recipe, Path("/"), device="cpu")
    small.chunk_numel = 1
    large = load_recipe_inputs(recipe, Path("/"), device="cpu")
    large.chunk_numel = 1 << 30
    a, b = small.merge_recipe(recipe), large.merge_recipe(recipe)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_half_precision_inputs_stay_half(tiny_inputs, tiny_base, tmp_path: Path) -> None:
    paths = {}
    for i, name in enumerate(NAMES):
        paths[name] = tmp_path / f"{name}.pth"
        write_sam({k: v.to(torch.bfloat16) for k, v in fine_tune_of(tiny_base, 10 + i).items()}, paths[name])
    recipe = make_recipe(paths, "slerp")
    merged = load_recipe_inputs(recipe, Path("/"), device="cpu").merge_recipe(recipe)
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}


MIXED = {"sam": torch.bfloat16, "medicosam": torch.float16, "medsam": torch.float16}  # a bf16 base, fp16 fine-tunes


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, tiny_base) -> dict[str, dict[str, Path]]:
    """The same weights twice: as a bf16 base with fp16 fine-tunes, and as float32 copies of exactly those values."""
    folder = tmp_path_factory.mktemp("mixed")
    paths: dict[str, dict[str, Path]] = {"mixed": {}, "float32": {}}
    for i, (name, dtype) in enumerate(MIXED.items()):
        state = {k: v.to(dtype) for k, v in fine_tune_of(tiny_base, 10 + i, scale=0.05).items()}
        for kind, cast in (("mixed", state), ("float32", {k: v.to(torch.float32) for k, v in state.items()})):
            paths[kind][name] = folder / f"{kind}_{name}.pth"
            write_sam(cast, paths[kind][name])
    return paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_mixed_dtype_inputs_merge_in_float32_and_round_once(mixed_inputs, method, dtype) -> None:
    merged = {}
    for kind, paths in mixed_inputs.items():
        recipe = make_recipe(paths, method, seed=3)
        merged[kind] = load_recipe_inputs(recipe, Path("/"), device="cpu", dtype=dtype).merge_recipe(recipe)
    for key, reference in merged["float32"].items():
        assert merged["mixed"][key].dtype == dtype, key
        torch.testing.assert_close(merged["mixed"][key], reference, rtol=torch.finfo(dtype).eps, atol=1e-7)


def test_mixed_dtype_task_arithmetic_matches_float64(mixed_inputs) -> None:
    """Independently: θ_base + λ Σ_t τ_t in float64 from the inputs' own values, rounded once to float32."""
    recipe = make_recipe(mixed_inputs["mixed"], "task_arithmetic")
    merged = load_recipe_inputs(recipe, Path("/"), device="cpu", dtype=torch.float32).merge_recipe(recipe)
    states = {n: load_checkpoint(p).state_dict for n, p in mixed_inputs["mixed"].items()}
    lam = get_method("task_arithmetic").defaults(NAMES)["lambda"]
    buffers = state_layout("tiny").buffers  # copied from the base, not merged
    for key, tensor in merged.items():
        base = states["sam"][key].double()
        expected = base if key in buffers else base + lam * sum(states[n][key].double() - base for n in NAMES[1:])
        torch.testing.assert_close(tensor, expected.float(), rtol=2e-7, atol=1e-7)


def test_a_failing_method_is_never_swallowed(tiny_inputs, engine, monkeypatch) -> None:
    def explode(*args, **kwargs):
        raise FloatingPointError("boom")

    broken = type(get_method("linear"))(name="explode", function=explode, params=(), reference="", summary="")
    monkeypatch.setitem(METHODS, "explode", broken)
    recipe = with_groups(make_recipe(tiny_inputs), lambda gs: [{**g, "method": "explode", "params": {}} for g in gs])
    with pytest.raises(FloatingPointError) as error:
        engine.merge_recipe(recipe)
    assert "while merging layer group image_encoder.patch_embed with explode" in error.value.__notes__[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["dare", "ties", "slerp"])
def test_replay_is_bit_identical(tiny_inputs, tmp_path: Path, method: str) -> None:
    recipe = make_recipe(tiny_inputs, method, seed=11)
    outputs = []
    for attempt in range(2):
        engine = load_recipe_inputs(recipe, Path("/"), device="cpu")
        outputs.append(save_checkpoint(engine.merge_recipe(recipe), tmp_path / f"m{attempt}.safetensors"))
    assert sha256(outputs[0]) == sha256(outputs[1])


def test_safetensors_bytes_do_not_depend_on_the_order_of_the_metadata(tiny_base, tmp_path: Path) -> None:
    from safetensors import safe_open

    metadata = {f"key{i}": f"value {i}" for i in range(8)}  # safetensors itself orders these differently each time
    paths = [tmp_path / f"m{i}.safetensors" for i in range(4)]
    for i, path in enumerate(paths):
        save_checkpoint(tiny_base, path, metadata=dict(reversed(metadata.items())) if i % 2 else metadata)
    assert len({sha256(path) for path in paths}) == 1
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == metadata
    loaded = load_checkpoint(paths[0]).state_dict
    assert all(torch.equal(loaded[k], tiny_base[k]) for k in loaded)


def test_dare_depends_on_the_recipe_seed(tiny_inputs, engine) -> None:
    one = {k: v.clone() for k, v in engine.merge_recipe(make_recipe(tiny_inputs, "dare", seed=1)).items()}
    two = engine.merge_recipe(make_recipe(tiny_inputs, "dare", seed=2))
    assert not torch.equal(one["image_encoder.blocks.0.attn.qkv.weight"], two["image_encoder.blocks.0.attn.qkv.weight"])


# ---- validation: each error is one sentence naming the problem ----


def error_of(text: str) -> str:
    with pytest.raises(RecipeError) as error:
        recipe = parse_recipe(text, "r.yaml")
        recipe.plan("tiny")
    message = str(error.value)
    assert "\n" not in message
    return message


def edited(tiny_inputs, edit) -> str:
    data = yaml.safe_load(recipe_yaml(make_recipe(tiny_inputs)))
    edit(data)
    return yaml.safe_dump(data)


def test_unknown_group(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"][2].update(group="image_encoder.blocks.0-2"))
    assert "unknown group 'image_encoder.blocks.0-2' for tiny at granularity encoder=2" in error_of(text)


def test_missing_group(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"].pop(3))
    assert "no method for group 'image_encoder.blocks.2-3'" in error_of(text)


def test_duplicate_group(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"].append(dict(d["groups"][0])))
    assert "group 'image_encoder.patch_embed' appears twice" in error_of(text)


def test_unknown_method_lists_valid_ones(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"][0].update(method="fisher"))
    message = error_of(text)
    assert (
        "unknown merge method 'fisher'" in message
        and "linear, model_stock, pick, slerp, task_arithmetic, ties" in message
    )


def test_parameter_out_of_range(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"][4].update(method="ties", params={"density": 1.4}))
    assert "group image_encoder.blocks.4-5: density=1.4 is out of range [0.0, 1.0]" in error_of(text)


def test_unknown_parameter_and_incomplete_weights(tiny_inputs) -> None:
    text = edited(tiny_inputs, lambda d: d["groups"][0].update(method="ties", params={"k": 0.2}))
    assert "ties has no parameter 'k' (its parameters: density, lambda, weights)" in error_of(text)
    text = edited(tiny_inputs, lambda d: d["groups"][0].update(params={"weights": {"sam": 1.0, "medsam": 0.5}}))
    assert "weights must give a value for each input (sam, medicosam, medsam)" in error_of(text)


def test_sha256_of_a_changed_input_is_caught(tiny_inputs, tiny_base, tmp_path: Path) -> None:
    paths = {n: tmp_path / f"{n}.pth" for n in NAMES}
    for i, name in enumerate(NAMES):
        write_sam(fine_tune_of(tiny_base, 20 + i), paths[name])
    recipe = make_recipe(paths)
    write_sam(fine_tune_of(tiny_base, 99), paths["medsam"])
    with pytest.raises(
        RecipeError, match=r"the sha256 of .*medsam.pth .* differs from the recipe's .* for input 'medsam'"
    ):
        load_recipe_inputs(recipe, Path("/"), device="cpu")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base: {name: sam\nmodels: [", "r.yaml is not valid YAML at line"),
        ("!!python/object/apply:os.system ['echo hi']", "r.yaml is not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping with base, models and groups; found list"),
        (
            "base: {name: sam, path: a.pth}\nmodels: []\ngroups: []\n",
            "r.yaml: models: List should have at least 1 item",
        ),
        (
            "base: {name: sam, path: a.pth}\nmodels: [{name: sam, path: b.pth}]\ngroups: []\n",
            "input name 'sam' is used twice",
        ),
        (
            "base: {name: sam, path: a.pth}\nmodels: [{name: m, path: b.pth}]\ngroups: []\nextra: 1\n",
            "r.yaml: extra: Extra inputs are not permitted",
        ),
        (
            "base: {name: sam, path: a.pth}\nmodels: [{name: m, path: b.pth}]\narchitecture: vit_z\ngroups: []\n",
            "unknown architecture 'vit_z'",
        ),
    ],
)
def test_malformed_recipes(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, "r.yaml")
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_recipe_for_another_architecture(tiny_inputs) -> None:
    recipe = make_recipe(tiny_inputs).model_copy(update={"architecture": "vit_b"})
    with pytest.raises(RecipeError, match="the recipe is for vit_b but its input files are tiny"):
        recipe.plan("tiny")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")

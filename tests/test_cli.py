"""The `medsamix` command as a user runs it: a real subprocess, real files, one-line errors, no tracebacks."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from search.architectures import build_sam
from search.checkpoints import load_checkpoint
from tests.cli_runs import one_line_error
from tests.conftest import WRITERS, fine_tune_of


def medsamix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def five_files(tmp_path_factory, tiny_base) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    paths = {}
    for fmt, (suffix, write) in WRITERS.items():
        paths[fmt] = folder / f"{fmt}{suffix}"
        write(fine_tune_of(tiny_base, 3), paths[fmt])
    return paths


@pytest.mark.slow
def test_inspect_reads_each_real_format(five_files) -> None:
    for fmt, path in five_files.items():
        result = medsamix("inspect", str(path))
        assert result.returncode == 0, result.stderr
        assert "│ format" in result.stdout and fmt in result.stdout
        assert "tiny" in result.stdout
        assert "image_encoder parameters" in result.stdout and "645,696" in result.stdout
        assert hashlib.sha256(path.read_bytes()).hexdigest() in result.stdout.replace("│", "").replace(" ", "").replace(
            "\n", ""
        )


def test_inspect_refuses_a_non_sam_file_in_one_line(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "classifier.pth")
    result = medsamix("inspect", str(tmp_path / "classifier.pth"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not a SAM checkpoint" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_recipe_then_merge_replays_bit_identically_and_loads_into_segment_anything(tiny_inputs, tmp_path: Path) -> None:
    names = [f"{n}={tiny_inputs[n]}" for n in ("sam", "medicosam", "medsam")]
    made = medsamix(
        "recipe", *names, "-o", str(tmp_path / "recipe.yaml"), "--method", "dare", "--granularity", "2", "1", "3"
    )
    assert made.returncode == 0, made.stderr
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["granularity"] == {"encoder": 2, "prompt": 1, "decoder": 3}
    assert {g["method"] for g in recipe["groups"]} == {"dare"}

    digests = []
    for out in ("a.pth", "b.pth", "c.safetensors", "d.safetensors"):  # each merge in its own process
        result = medsamix("merge", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / out), "--device", "cpu")
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256((tmp_path / out).read_bytes()).hexdigest())
    assert digests[0] == digests[1] and digests[2] == digests[3]

    model = build_sam("tiny")
    model.load_state_dict(torch.load(tmp_path / "a.pth", weights_only=True), strict=True)
    from_safetensors = load_checkpoint(tmp_path / "c.safetensors").state_dict
    for key, tensor in model.state_dict().items():
        if key in from_safetensors:
            assert torch.equal(tensor, from_safetensors[key]), key
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_merge_with_a_changed_input_fails_and_writes_nothing(tiny_base, tmp_path: Path) -> None:
    from tests.conftest import write_sam

    for i, name in enumerate(("sam", "ft")):
        write_sam(fine_tune_of(tiny_base, 40 + i), tmp_path / f"{name}.pth")
    assert medsamix("recipe", "sam.pth", "ft.pth", "-o", "r.yaml", cwd=tmp_path).returncode == 0
    write_sam(fine_tune_of(tiny_base, 77), tmp_path / "ft.pth")
    result = medsamix("merge", "r.yaml", "-o", "out.safetensors", cwd=tmp_path)
    assert result.returncode == 2
    assert "differs from the recipe's" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.pth", "r.yaml", "sam.pth"]


def test_methods_and_groups_listings() -> None:
    methods = medsamix("methods")
    assert methods.returncode == 0
    for name in ("linear", "task_arithmetic", "ties", "slerp", "dare", "model_stock", "pick"):
        assert name in methods.stdout
    groups = medsamix("groups", "--arch", "vit_b", "--granularity", "2", "2", "2")
    assert "vit_b: 15 groups" in groups.stdout and "image_encoder.blocks.10-11" in groups.stdout


def test_commands_that_need_no_model_never_import_torch() -> None:
    """`--help` and `methods` answer at once: torch (about 3 s to import) loads only where a model or tensor is used."""
    probe = (  # atexit: argparse's --help leaves through SystemExit
        "import atexit, sys; atexit.register(lambda: print('torch ran:', 'torch._C' in sys.modules)); "
        "from search.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for args in (["methods"], ["merge", "--help"], ["--help"]):
        result = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, env={"COLUMNS": "200"}, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "torch ran: False", args


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_take_the_users_umask(tiny_inputs, tmp_path: Path, umask: int) -> None:
    names = [f"{n}={tiny_inputs[n]}" for n in ("sam", "medsam")]
    old = os.umask(umask)  # inherited by the command, as from a shell
    try:
        assert medsamix("recipe", *names, "-o", str(tmp_path / "r.yaml")).returncode == 0
        assert medsamix("merge", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "m.pth")).returncode == 0
    finally:
        os.umask(old)
    for name in ("r.yaml", "m.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_folder_given_for_a_file_is_called_a_folder(tmp_path: Path) -> None:
    result = medsamix("inspect", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint {tmp_path} is a folder, not a file"
    assert "does not exist" in medsamix("inspect", str(tmp_path / "none.pth")).stderr


@pytest.mark.slow
def test_non_finite_weights_are_reported_by_inspect_and_refused_by_merge_export_and_search(tiny_base, tmp_path):
    from search.config import parse_search_config
    from search.errors import CheckpointError
    from search.optimize import Search
    from search.zoo import search_config
    from tests.conftest import with_non_finite, write_sam

    write_sam(tiny_base, tmp_path / "sam.pth")
    write_sam(with_non_finite(tiny_base), tmp_path / "ft.pth")
    shown = medsamix("inspect", "ft.pth", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "non-finite tensors" in line)
    assert "2: image_encoder.blocks.0.attn.qkv.bias (1 NaN/inf)" in row
    assert "mask_decoder.iou_prediction_head.layers.0.weight (1 NaN/inf)" in shown.stdout
    assert re.search(r"non-finite tensors\s+│ none ", medsamix("inspect", "sam.pth", cwd=tmp_path).stdout)
    refusal = "ft.pth: tensor image_encoder.blocks.0.attn.qkv.bias holds 1 non-finite value(s)"
    assert refusal in one_line_error(medsamix("recipe", "sam.pth", "ft.pth", "-o", "r.yaml", cwd=tmp_path))
    # A recipe written before the fine-tune went bad: merging and exporting it refuse it.
    write_sam(fine_tune_of(tiny_base, 9), tmp_path / "ft.pth")
    assert medsamix("recipe", "sam.pth", "ft.pth", "-o", "r.yaml", cwd=tmp_path).returncode == 0
    recipe = yaml.safe_load((tmp_path / "r.yaml").read_text())
    recipe["models"][0].pop("sha256")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    write_sam(with_non_finite(tiny_base), tmp_path / "ft.pth")
    assert refusal in one_line_error(medsamix("merge", "r.yaml", "-o", "out.pth", cwd=tmp_path))
    assert not (tmp_path / "out.pth").exists()
    export = medsamix("export", "r.yaml", "--name", "m", "--out", "models", "--force", cwd=tmp_path)
    assert refusal in one_line_error(export) and not (tmp_path / "models" / "m").exists()
    # A search loads its inputs through the same path.
    data = search_config(Path(__file__).parent / "zoo", ["ct_kidney"], output=str(tmp_path / "run"))
    data["models"][0]["path"] = str(tmp_path / "ft.pth")
    config = parse_search_config(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="tensor image_encoder.blocks.0.attn.qkv.bias holds 1 non-finite"):
        Search(config, progress=False, report=False).run()

"""The model-store contract: what a `models/<name>/` folder holds and how its `manifest.json` is checked.

`search/export.py` writes folders against this contract and `service/store.py` reads them, so both import it; it
uses only the standard library and `service.imaging` (no torch, no onnxruntime).

A folder holds `manifest.json`, `encoder.onnx`, `decoder.onnx`, optionally `recipe.yaml` and `report/`. The
manifest's `files` maps every other file's path (relative, '/'-separated) to its sha256: a folder matches its
manifest when it holds exactly those files with exactly those hashes. The fields that decide how pixels are computed
(`PINNED_FIELDS`) are also written into `encoder.onnx`'s metadata under `METADATA_KEY`, so a hand edit of them in the
manifest is caught through the hashed encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from service import imaging

FORMAT_VERSION = 2  # 2: the decoder takes SAM's sparse prompt (point_coords, point_labels) instead of boxes
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
RECIPE_FILE = "recipe.yaml"
REPORT_DIR = "report"
METADATA_KEY = "medsamix"
PINNED_FIELDS = ("architecture", "image_size", "embedding_shape", "precision", "preprocessing", "tasks")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PRECISIONS = ("float32", "float16", "int8")  # int8: the encoder's matrix products (search/quantize.py)
# What every format-2 decoder takes (boxes, clicks, or both in one prompt); a manifest's `scored_prompts` lists
# those its scores and quality gate were measured with.
PROMPT_KINDS = ("box", "points")


class StoreError(ValueError):
    """A model folder or manifest that does not meet the contract; the message is one sentence naming what was
    expected and what was found."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every regular file under `folder` except the manifest, as sorted '/'-separated relative paths."""
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )


def pinned(manifest: Mapping[str, Any]) -> str:
    """The JSON of the manifest's `PINNED_FIELDS` (sorted keys): what `encoder.onnx`'s metadata must equal."""
    return json.dumps({k: manifest[k] for k in PINNED_FIELDS}, sort_keys=True)


def _field(manifest: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in manifest:
        raise StoreError(f"{where} lacks the field '{key}'")
    value = manifest[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise StoreError(f"{where}: field '{key}' should be of type {kind.__name__}, found {type(value).__name__}")
    return value


def check_tasks(
    tasks: Sequence[object], presets: Mapping[str, object], scores: Mapping[str, object], where: str
) -> None:
    """StoreError unless `tasks` are names, `presets` maps some of them to known intensity presets and `scores` maps
    some of them to an object with the 'split' the score was measured on."""
    if not all(isinstance(t, str) and t for t in tasks):
        raise StoreError(f"{where}: tasks should be a list of task names, found {list(tasks)}")
    for task, preset in presets.items():
        if task not in tasks:
            raise StoreError(f"{where}: an intensity preset is given for '{task}', which is not one of the tasks")
        try:
            imaging.get_preset(preset)
        except imaging.ImagingError as error:
            raise StoreError(f"{where}: task '{task}': {error}") from None
    for task, score in scores.items():
        if task not in tasks or not isinstance(score, dict) or not isinstance(score.get("split"), str):
            raise StoreError(f"{where}: scores['{task}'] should be an object with a 'split' for one of the tasks")


def check_manifest(manifest: object, where: str) -> dict[str, Any]:
    """The manifest if its structure is the contract's, else StoreError; `where` names it in messages.

    Checks types and cross-references (the ONNX files are listed in `files`; paths are relative and stay inside the
    folder; preprocessing names are known to `service.imaging`), not the files themselves (see `check_files`).
    """
    if not isinstance(manifest, dict):
        raise StoreError(f"{where} should hold a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{where} has format_version {version!r}; this service reads format_version {FORMAT_VERSION}, so "
            "re-export the model with this version's medsamix export"
        )
    name = _field(manifest, "name", str, where)
    if not NAME_PATTERN.match(name):
        raise StoreError(f"{where}: name {name!r} should be letters, digits, '_', '.' or '-' (not first)")
    for key in ("version", "created", "architecture"):
        _field(manifest, key, str, where)
    if _field(manifest, "precision", str, where) not in PRECISIONS:
        raise StoreError(
            f"{where}: precision should be one of {', '.join(PRECISIONS)}, found {manifest['precision']!r}"
        )
    _field(manifest, "image_size", int, where)
    shape = _field(manifest, "embedding_shape", list, where)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise StoreError(f"{where}: embedding_shape should be three positive integers (C, h, w), found {shape}")
    preprocessing = _field(manifest, "preprocessing", dict, where)
    try:
        imaging.get_geometry(preprocessing.get("geometry"))
        imaging.get_normalization(preprocessing.get("normalization"))
    except imaging.ImagingError as error:
        raise StoreError(f"{where}: {error}") from None
    check_tasks(
        _field(manifest, "tasks", list, where),
        _field(preprocessing, "intensity_presets", dict, f"{where} preprocessing"),
        _field(manifest, "scores", dict, where),
        where,
    )
    scored = _field(manifest, "scored_prompts", list, where)
    if not all(kind in PROMPT_KINDS for kind in scored) or len(set(scored)) != len(scored):
        raise StoreError(f"{where}: scored_prompts should list distinct prompt kinds out of {', '.join(PROMPT_KINDS)}")
    _field(manifest, "inputs", list, where)
    if manifest.get("recipe") is not None:
        _field(manifest, "recipe", dict, where)
    files = _field(manifest, "files", dict, where)
    for path, digest in files.items():
        parts = PurePosixPath(path).parts
        if PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path or path == MANIFEST_FILE:
            raise StoreError(f"{where}: files lists {path!r}; expected relative paths inside the model folder")
        if not isinstance(digest, str) or not SHA256_PATTERN.match(digest):
            raise StoreError(f"{where}: files['{path}'] should be a sha256 (64 hex digits)")
    onnx = _field(manifest, "onnx", dict, where)
    for part, file in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
        entry = _field(onnx, part, dict, f"{where} onnx")
        if entry.get("file") != file or file not in files:
            raise StoreError(f"{where}: onnx.{part}.file should be {file!r} and listed in files")
        for side in ("inputs", "outputs"):
            ports = _field(entry, side, list, f"{where} onnx.{part}")
            if not ports or not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in ports):
                raise StoreError(f"{where}: onnx.{part}.{side} should be a non-empty list of named tensors")
    return manifest


def check_files(folder: Path, manifest: Mapping[str, Any]) -> None:
    """StoreError unless `folder` holds exactly the manifest's files, each with its listed sha256."""
    listed: Mapping[str, str] = manifest["files"]
    present = folder_files(folder)
    missing = sorted(set(listed) - set(present))
    if missing:
        raise StoreError(f"model '{folder.name}' is incomplete: {missing[0]} is listed in its manifest but missing")
    extra = sorted(set(present) - set(listed))
    if extra:
        raise StoreError(f"model '{folder.name}' holds {extra[0]}, which its manifest does not list")
    for path in present:
        if sha256_file(folder / path) != listed[path]:
            raise StoreError(
                f"model '{folder.name}' was modified: the sha256 of {path} differs from its manifest's; re-export it"
            )

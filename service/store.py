"""The model store: `models/<name>/` folders written by `medsamix export`, listed, verified and loaded.

Nothing is served unverified: `load` checks the manifest's structure, that the folder holds exactly the files the
manifest lists with exactly their sha256, and that the manifest's preprocessing fields equal those pinned inside the
(hashed) encoder; any mismatch is a `StoreError` of one sentence. Folders whose name starts with '.' are an export
in progress (or an old model being replaced) and are not models. numpy/onnxruntime/json/hashlib only: no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    METADATA_KEY,
    StoreError,
    check_files,
    check_manifest,
    pinned,
)
from service.runtime import create_session

__all__ = ["DEFAULT_MODEL", "GRAPHS", "LoadedModel", "ModelInfo", "ModelStore", "StoreError"]

# The embedded demo model: served when a request names no model and no task routes it elsewhere.
DEFAULT_MODEL = "demo"


@dataclass(frozen=True)
class ModelInfo:
    """One model as `GET /models` lists it (from its manifest, before its files are verified)."""

    name: str
    version: str
    tasks: tuple[str, ...]
    default: bool


GRAPHS = ("encoder", "decoder")


@dataclass(frozen=True)
class LoadedModel:
    """A verified model: its manifest, the manifest file's sha256, and an onnxruntime session per graph loaded
    (None for a graph not asked for)."""

    name: str
    manifest: dict[str, Any]
    manifest_sha256: str
    encoder: ort.InferenceSession | None
    decoder: ort.InferenceSession | None

    def sessions(self) -> list[ort.InferenceSession]:
        return [s for s in (self.encoder, self.decoder) if s is not None]


class ModelStore:
    """The models under `root`; `default` names the one served when a request names none."""

    def __init__(self, root: str | Path, default: str | None = DEFAULT_MODEL) -> None:
        self.root = Path(root)
        self.default = default

    def names(self) -> list[str]:
        """Sorted names of the model folders (hidden folders excluded); a missing root holds none."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _folder(self, name: str) -> Path:
        names = self.names()
        if name not in names:
            known = ", ".join(names) if names else "none"
            raise StoreError(f"there is no model '{name}' in {self.root}; the models there are: {known}")
        return self.root / name

    def manifest(self, name: str) -> tuple[dict[str, Any], str]:
        """Model `name`'s checked manifest and the sha256 of its manifest file (files not yet verified)."""
        folder = self._folder(name)
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise StoreError(f"model '{name}' has no {MANIFEST_FILE}; expected a folder written by medsamix export")
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise StoreError(f"the manifest of model '{name}' is not valid JSON ({error.msg} at {error.pos})") from None
        except UnicodeDecodeError as error:
            raise StoreError(
                f"the manifest of model '{name}' is not valid JSON ({error.reason} at {error.start})"
            ) from None
        manifest = check_manifest(data, f"the manifest of model '{name}'")
        if manifest["name"] != name:
            raise StoreError(f"the manifest in folder '{name}' names the model '{manifest['name']}'; they must match")
        return manifest, hashlib.sha256(raw).hexdigest()

    def models(self) -> list[ModelInfo]:
        """Every model with a well-formed manifest; a malformed one raises (it would not load either)."""
        infos = []
        for name in self.names():
            manifest, _ = self.manifest(name)
            infos.append(ModelInfo(name, manifest["version"], tuple(manifest["tasks"]), name == self.default))
        return infos

    def load_all(
        self, providers: Sequence[str] | None = None, graphs: Sequence[str] = GRAPHS
    ) -> tuple[dict[str, LoadedModel], dict[str, str]]:
        """Every model of the store that verifies and opens, and for each folder that does not, the one sentence
        why: a broken folder (a changed byte, a missing or extra file, a bad manifest, another model's manifest) is
        refused on its own and never keeps the others from being served."""
        loaded: dict[str, LoadedModel] = {}
        refused: dict[str, str] = {}
        for name in self.names():
            try:
                loaded[name] = self.load(name, providers, graphs)
            except StoreError as error:
                refused[name] = str(error)
            except Exception as error:  # onnxruntime refusing a graph whose hashes match: its text names paths
                refused[name] = f"onnxruntime could not open a graph of model '{name}' ({type(error).__name__})"
        return loaded, refused

    def load(
        self, name: str | None = None, providers: Sequence[str] | None = None, graphs: Sequence[str] = GRAPHS
    ) -> LoadedModel:
        """Model `name` (default: the store's default) verified and its `graphs` opened on `providers` (default:
        TensorRT, CUDA, CPU, whichever this onnxruntime offers).

        Every file's sha256 is checked whatever `graphs` says. The manifest's pinned fields are compared with the
        encoder's metadata when the encoder is opened: a process that serves only decoders relies on the process
        that opens the encoder (the service's encoder worker) for that check.
        """
        unknown = set(graphs) - set(GRAPHS)
        if unknown or not graphs:
            raise ValueError(f"graphs should name some of {', '.join(GRAPHS)}, found {list(graphs)}")
        if name is None:
            if self.default is None or self.default not in self.names():
                raise StoreError(f"no model was named and the default '{self.default}' is not in {self.root}")
            name = self.default
        manifest, digest = self.manifest(name)
        folder = self.root / name
        check_files(folder, manifest)
        sessions = {}
        for part, file in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
            if part not in graphs:
                continue
            session = sessions[part] = create_session(folder / file, providers)
            names = {side: [p["name"] for p in manifest["onnx"][part][side]] for side in ("inputs", "outputs")}
            actual = {
                "inputs": [a.name for a in session.get_inputs()],
                "outputs": [a.name for a in session.get_outputs()],
            }
            if names != actual:
                raise StoreError(f"the manifest of model '{name}' lists {part} ports {names}, the graph has {actual}")
        if "encoder" in sessions:
            embedded = sessions["encoder"].get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            if embedded is None or json.loads(embedded) != json.loads(pinned(manifest)):
                raise StoreError(
                    f"the manifest of model '{name}' disagrees with its encoder about the architecture, precision, "
                    "preprocessing or tasks; re-export it rather than editing the manifest"
                )
        return LoadedModel(name, manifest, digest, sessions.get("encoder"), sessions.get("decoder"))

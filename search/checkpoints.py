"""Load SAM checkpoints in every shape the real files ship in, and refuse anything else in one sentence.

Real files: SAM's `sam_vit_b_01ec64.pth`, MedSAM's `medsam_vit_b.pth` and exported MedicoSAM are plain state dicts;
micro-sam / torch_em training files wrap it as `{"model_state": ...}` with `sam.` or `module.sam.` prefixes;
MedSAM training files as `{"model": ...}` with `module.`; Lightning-style files as `{"state_dict": ...}`;
and `.safetensors`. Loading never runs pickled code (`weights_only=True`).
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as save_safetensors

from search.architectures import ARCHITECTURES, SamArchitecture, identify, state_layout
from search.errors import CheckpointError
from search.files import atomic_write, require_file
from service.manifest import sha256_file

# Buffers that some files carry but that belong to the input convention, not to the weights.
DROPPED_KEYS = ("pixel_mean", "pixel_std")
ANCHOR_KEY = "image_encoder.patch_embed.proj.weight"
WRAPPERS = {"model_state": "torch_em", "model": "medsam_training", "state_dict": "state_dict"}
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80


@dataclass
class Checkpoint:
    """A validated SAM state dict (prefixes stripped, pixel_mean/std dropped) and where it came from."""

    path: Path
    format: str  # sam | torch_em | medsam_training | state_dict | safetensors
    prefix: str  # the prefix that was stripped ("" when none)
    arch: SamArchitecture
    state_dict: dict[str, torch.Tensor]
    sha256: str
    ignored_keys: int  # keys outside the SAM prefix of a training file (optimizer-side modules)

    def non_finite(self) -> dict[str, int]:
        """Tensor name -> count of its NaN and inf entries, for the tensors that hold any (in state order)."""
        return non_finite_counts(self.state_dict)

    def component_sizes(self) -> dict[str, int]:
        """Learned parameter count per top-level component (image_encoder, prompt_encoder, mask_decoder)."""
        params = state_layout(self.arch).parameters
        sizes: dict[str, int] = {}
        for key, tensor in self.state_dict.items():
            if key in params:
                component = key.split(".", 1)[0]
                sizes[component] = sizes.get(component, 0) + tensor.numel()
        return sizes


def _read_weights(path: Path) -> tuple[str, Mapping[str, object]]:
    """The format name ('safetensors', or a PyTorch file's as `_unwrap` names it) and the dict that holds the SAM
    weights (possibly still prefixed)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == ZIP_MAGIC or (head and head[0] == PICKLE_PROTO):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=head[:4] == ZIP_MAGIC)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path} holds pickled Python objects other than tensors and plain containers, which are not "
                "loaded because unpickling them could run code; expected a SAM state dict"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError):
            raise CheckpointError(f"{path} is a truncated or corrupt PyTorch file") from None
        return _unwrap(path, raw)
    if len(head) == 9 and head[8:9] == b"{":
        try:
            header_len = struct.unpack("<Q", head[:8])[0]
            with open(path, "rb") as f:
                f.seek(8)
                json.loads(f.read(header_len))
            return "safetensors", load_safetensors(str(path), device="cpu")
        except Exception:  # any failure below means the same thing to the user
            raise CheckpointError(f"{path} is a truncated or corrupt safetensors file") from None
    raise CheckpointError(f"{path} is neither a PyTorch checkpoint nor a safetensors file; expected a SAM checkpoint")


def _unwrap(path: Path, raw: object) -> tuple[str, Mapping[str, object]]:
    """The format name and the dict that holds the SAM weights (possibly still prefixed)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a dict of tensors; expected a SAM state dict")
    if any(isinstance(k, str) and k.endswith(ANCHOR_KEY) for k in raw):
        return "sam", raw
    for wrapper, fmt in WRAPPERS.items():
        inner = raw.get(wrapper)
        if isinstance(inner, Mapping):
            return fmt, inner
    return "sam", raw


def _strip_prefix(path: Path, weights: Mapping[str, object]) -> tuple[str, dict[str, object], int]:
    candidates = {k[: -len(ANCHOR_KEY)] for k in weights if isinstance(k, str) and k.endswith(ANCHOR_KEY)}
    if len(candidates) > 1:
        raise CheckpointError(
            f"{path} holds more than one SAM model (prefixes {', '.join(sorted(map(repr, candidates)))}); "
            "expected exactly one"
        )
    prefix = candidates.pop() if candidates else ""
    inside = {k[len(prefix) :]: v for k, v in weights.items() if isinstance(k, str) and k.startswith(prefix)}
    return prefix, inside, len(weights) - len(inside)


def _some(keys: list[str]) -> str:
    """Up to three keys, and how many more: enough to act on, short enough for one sentence."""
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _tensors(path: Path | str, state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """`state` as a dict of tensors, or CheckpointError naming (the first in sorted order) a key that holds anything
    else."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    not_tensors = sorted(k for k in state if k not in tensors)
    if not_tensors:
        raise CheckpointError(
            f"{path} holds non-tensor values under keys such as '{not_tensors[0]}'; expected only tensors"
        )
    return tensors


def validate_state_dict(path: Path | str, state: Mapping[str, object]) -> SamArchitecture:
    """The architecture of `state`, after checking that every key and shape is exactly that architecture's.

    Works on any tensors, meta tensors included, so the check is testable for vit_h without 2.5 GB of weights.
    """
    shapes = {k: tuple(v.shape) for k, v in _tensors(path, state).items()}
    arch = identify(shapes)
    if arch is None:
        # Keys every size shares (all but the encoder blocks): their absence means "not SAM", not "unknown size".
        shared = (k for k in state_layout("vit_b").all if not k.startswith("image_encoder.blocks."))
        missing = [k for k in shared if k not in shapes]
        if missing:
            raise CheckpointError(f"{path} is not a SAM checkpoint: it lacks {_some(missing)}")
        blocks = sum(k.startswith("image_encoder.blocks.") and k.endswith(".norm1.weight") for k in shapes)
        raise CheckpointError(
            f"{path} is a SAM-like checkpoint of an unknown size (patch embedding {list(shapes[ANCHOR_KEY])}, "
            f"{blocks} encoder blocks); expected one of {', '.join(ARCHITECTURES)}"
        )
    expected = state_layout(arch).all
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError(f"{path} is an incomplete {arch.name} checkpoint: it lacks {_some(missing)}")
    unexpected = [k for k in shapes if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path} holds keys that are not part of a {arch.name} SAM: {_some(unexpected)}")
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(f"{path}: {key} has shape {list(shapes[key])} but {arch.name} expects {list(shape)}")
    return arch


def non_finite_counts(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Tensor name -> count of its NaN and inf entries, for the floating-point tensors that hold any."""
    counts = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    return {k: n for k, n in counts.items() if n}


def load_checkpoint(path: str | Path, allow_non_finite: bool = False) -> Checkpoint:
    """Read, unwrap and validate one SAM checkpoint file.

    A tensor with NaN or inf entries is refused unless `allow_non_finite` (for `inspect`, which reports them): every
    merge method would carry it into the output (even at weight 0, as 0·NaN = NaN), silently."""
    path = require_file(Path(path), "checkpoint", CheckpointError)
    fmt, weights = _read_weights(path)
    prefix, stripped, ignored = _strip_prefix(path, weights)
    for key in DROPPED_KEYS:
        stripped.pop(key, None)
    state = _tensors(path, stripped)
    arch = validate_state_dict(path, state)
    order = state_layout(arch).all
    bad = {} if allow_non_finite else non_finite_counts({k: state[k] for k in order})
    if bad:
        name, count = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: tensor {name} holds {count} non-finite value(s) (NaN or inf){more}; expected finite weights"
        )
    return Checkpoint(
        path=path,
        format=fmt,
        prefix=prefix,
        arch=arch,
        state_dict={k: state[k] for k in order},
        sha256=sha256_file(path),
        ignored_keys=ignored,
    )


SAVE_FORMATS = (".safetensors", ".pth", ".pt")
HEADER_LENGTH = 8  # safetensors: a little-endian u64, then the JSON header, padded with spaces to 8 bytes


def write_safetensors(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: Path) -> None:
    """A safetensors file whose bytes depend only on `state` and `metadata`: safetensors writes the metadata's keys in
    an order that varies between processes, so the header is written again with every key sorted (the offsets,
    relative to the end of the header, stay valid)."""
    data = save_safetensors(dict(state), metadata=dict(metadata))
    length = int.from_bytes(data[:HEADER_LENGTH], "little")
    header = json.loads(data[HEADER_LENGTH : HEADER_LENGTH + length])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    canonical += b" " * (-len(canonical) % HEADER_LENGTH)
    with open(path, "wb") as f:
        f.write(len(canonical).to_bytes(HEADER_LENGTH, "little"))
        f.write(canonical)
        f.write(memoryview(data)[HEADER_LENGTH + length :])


def save_checkpoint(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a plain SAM state dict atomically: `.safetensors`, or `.pth`/`.pt` (loadable by segment_anything).

    Tensors are copied out of any shared buffer first (safetensors refuses shared storage, and torch.save would
    write the whole buffer behind each view).
    """
    path = Path(path)
    if path.suffix not in SAVE_FORMATS:
        raise CheckpointError(f"cannot write {path}: expected a file name ending in {', '.join(SAVE_FORMATS)}")
    owned = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if path.suffix == ".safetensors":
        return atomic_write(path, lambda temp: write_safetensors(owned, metadata or {}, temp))

    def write_torch(temp: Path) -> None:
        with open(temp, "wb") as f:  # a file object: the archive's inner name is fixed, not the temp file's name
            torch.save(owned, f)

    return atomic_write(path, write_torch)

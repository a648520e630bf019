"""The service's settings, read once from `MEDSAMIX_*` environment variables (a container sets them; nothing is
read from a request).

Every variable is optional. A bad value stops the service at start with one sentence naming the variable and what
it expects, rather than serving with a silently different limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from service.dicom import Limits
from service.dicomweb import DicomwebConfig, load_config

DEVICES = ("cpu", "gpu")


class SettingsError(ValueError):
    """An environment variable the service cannot use; the message names it and what it expects."""


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name} should be a positive integer, found '{raw}'")
    return value


def _flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise SettingsError(f"{name} should be one of 1/0, true/false, yes/no, on/off, found '{raw}'")
    return lowered in ("1", "true", "yes", "on")


def _device(name: str, raw: str) -> str:
    if raw not in DEVICES:
        raise SettingsError(f"{name} should be one of {', '.join(DEVICES)}, found '{raw}'")
    return raw


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name} is set but empty; unset it or give a value")
    return raw


def _dicomweb(name: str, raw: str) -> DicomwebConfig:
    path = Path(_text(name, raw))
    try:
        return load_config(path)
    except ValueError as error:
        raise SettingsError(f"{name} should name a DICOMweb allow-list file: {error}") from None


# field -> parser of its environment variable (MEDSAMIX_<FIELD>)
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "models": lambda name, raw: Path(_text(name, raw)),
    "default_model": _text,
    "token": _text,
    "device": _device,
    "max_request_bytes": _positive_int,
    "max_pacs_bytes": _positive_int,
    "max_pixels": _positive_int,
    "max_frames": _positive_int,
    "max_decoded_pixels": _positive_int,
    "max_prompts": _positive_int,
    "max_instances": _positive_int,
    "max_points": _positive_int,
    "cache_mb": _positive_int,
    "batching": _flag,
    "max_batch_size": _positive_int,
    "max_latency_ms": _positive_int,
    "dicomweb": _dicomweb,
    "monailabel_pacs": _text,
    "max_sessions": _positive_int,
    "max_session_bytes": _positive_int,
    "session_ttl_s": _positive_int,
}


@dataclass(frozen=True)
class Settings:
    """What the service serves and how much it accepts.

    models: the model store folder. default_model: served when a request names no model and no task routes it.
    token: when set, every route but /livez, /readyz and /metrics needs `Authorization: Bearer <token>`.
    device: `gpu` makes /readyz fail unless the sessions run on a GPU provider. max_*: refuse larger requests
    with 413: body bytes (counted as received); rows x columns of one frame; frames a file declares; rows x columns
    summed over the frames one request decodes; prompts per request; clicks (foreground and background) per prompt;
    instances of one series request (uploaded or listed by the PACS; a CT of 500 slices fits).
    The pixel limits bound what a request costs whatever its bytes (a blank frame compresses to almost nothing): a
    1024 px model gains nothing from frames past 4096 x 4096, and 64 Mpx are 256 CT slices of 512 x 512. cache_mb:
    the embedding cache's size. batching, max_batch_size, max_latency_ms: the encoder's adaptive batching; BentoML
    refuses (503) images it estimates would wait and run past max_latency_ms, so it must exceed the encoder's time
    for one batch (BentoML's own default, 60 s; a ViT-B encodes an image in about 8 s on 2 CPU cores). Unset,
    batching is on with device `gpu` and off with `cpu`: on a CPU one image's intra-op threads already use every
    core, so a batch gains nothing (two images a call: 6-15% slower per image), while BentoML's batcher, learning
    its costs from the server's first calls, holds the 10th and 11th lone images for companions that a single
    client never sends (16 and 21 s more on a ViT-B on 2 cores, benchmarks/RESULTS.md).
    dicomweb: the PACS `POST /segment/dicomweb` may call (the file `MEDSAMIX_DICOMWEB` names; none when unset).
    max_pacs_bytes: the most one answer of a PACS may carry (an instance retrieved, a page of a listing, a STOW
    reply); answers are read streaming and cut off past it with 502, never held whole first.
    token: several clients may each have their own, comma-separated; a MONAI Label session belongs to the token
    that made it. monailabel_pacs: the allow-list entry (by name) the MONAI Label routes fetch an `image` (a Series
    Instance UID) from, as MONAI Label's own DICOMweb datastore is one server. max_sessions, max_session_bytes,
    session_ttl_s: how many MONAI Label sessions the server keeps at once, how many uploaded bytes they hold
    together, and how long one lives after its last use (a viewer's `expiry` may only shorten it).
    """

    models: Path = Path("models")
    default_model: str = "demo"
    token: str | None = None
    device: str = "cpu"
    max_request_bytes: int = 256 * 1024 * 1024
    max_pacs_bytes: int = 256 * 1024 * 1024
    max_pixels: int = Limits.max_pixels
    max_frames: int = Limits.max_frames
    max_decoded_pixels: int = Limits.max_decoded_pixels
    max_prompts: int = 64
    max_instances: int = 1000
    max_points: int = 32
    cache_mb: int = 1024
    batching: bool | None = None  # None: on with device `gpu`, off with `cpu` (set so by __post_init__)
    max_batch_size: int = 8
    max_latency_ms: int = 60000
    dicomweb: DicomwebConfig | None = None
    monailabel_pacs: str | None = None
    max_sessions: int = 16
    max_session_bytes: int = 4 * 1024 * 1024 * 1024
    session_ttl_s: int = 3600

    def __post_init__(self) -> None:
        if self.batching is None:
            object.__setattr__(self, "batching", self.device == "gpu")
        if self.monailabel_pacs is not None and (
            self.dicomweb is None or self.monailabel_pacs not in self.dicomweb.pacs
        ):
            raise SettingsError(
                "MEDSAMIX_MONAILABEL_PACS should name a PACS of the allow-list MEDSAMIX_DICOMWEB names, found a name "
                "that is not on it" + (" (MEDSAMIX_DICOMWEB is unset)" if self.dicomweb is None else "")
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `MEDSAMIX_<FIELD>` variables (e.g. MEDSAMIX_MAX_PROMPTS=64); unset ones keep defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = f"MEDSAMIX_{field.name.upper()}"
            if name in environ:
                values[field.name] = _PARSERS[field.name](name, environ[name])
        return cls(**values)

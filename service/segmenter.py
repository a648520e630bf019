"""From a decoded DICOM image and prompts (boxes, clicks, or both) to masks: routing, preprocessing, the embedding
cache, the encoder, the decoder. No HTTP here, so the BentoML service, the tests and the benchmark run exactly the
same steps.

The encoder is a callable (`Encode`): in the service it is the batched encoder service (which batches images across
requests), in-process it is `encode_jobs` on the loaded sessions. The decoder runs here, once per (model, frame)
and number of prompt points over all of that frame's prompts.

The embedding cache is consulted only once the frame has been decoded and displayed, so a file is refused the same
way whether or not an equal image was seen before, and it is keyed by what the encoder input is made of: the model
(name and manifest hash) and a digest of the uint8 image the geometry turns into that input. Two files that share a
UID but differ in anything that changes the displayed pixels (photometric interpretation, rescale, VOI window,
modality default) never share an entry; two that display identically do. The one shortcut: a file whose very bytes
were displayed before (`DisplayMemo`, by the file's sha256) is known to display as it did then, so more prompts on
an image a client resends cost neither a decode nor a window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np

from service import cancellation, imaging
from service.cache import DisplayMemo, Embedding, EmbeddingCache
from service.config import Settings
from service.dicom import DicomImage
from service.errors import RequestError
from service.propagation import Ask, SliceAnswer, plan, propagate
from service.schemas import EncodeJob, Prompt, SeriesPrompt
from service.store import LoadedModel
from service.volume import SliceImage, Volume

Encode = Callable[[list[EncodeJob]], list[np.ndarray]]


@dataclass(frozen=True)
class Served:
    """A loaded model with what serving it needs from its manifest."""

    model: LoadedModel
    geometry: imaging.Geometry
    size: int
    tasks: tuple[str, ...]
    presets: Mapping[str, str]

    @classmethod
    def of(cls, model: LoadedModel) -> Served:
        manifest = model.manifest
        preprocessing = manifest["preprocessing"]
        return cls(
            model,
            imaging.get_geometry(preprocessing["geometry"]),
            int(manifest["image_size"]),
            tuple(manifest["tasks"]),
            dict(preprocessing["intensity_presets"]),
        )

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.manifest["version"]

    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1

    def providers(self) -> list[str]:
        """The execution providers of the first session opened (all are opened on the same list)."""
        return list(self.model.sessions()[0].get_providers())

    def decode(self, embedding: Embedding, prompts: Sequence[imaging.SparsePrompt]) -> tuple[np.ndarray, np.ndarray]:
        """Prompts in image coordinates on one embedding -> (N, h, w) bool masks in image coordinates and (N,)
        float32 IoUs, in prompt order. The decoder runs once per number of points: padding a shorter prompt with
        padding points to batch it with longer ones would change SAM's answer to it."""
        frame = embedding.frame
        masks = np.zeros((len(prompts), *frame.original), bool)
        ious = np.zeros(len(prompts), np.float32)
        rows = [prompt.to_model(self.geometry, frame) for prompt in prompts]
        groups: dict[int, list[int]] = {}
        for i, (_, labels) in enumerate(rows):
            groups.setdefault(len(labels), []).append(i)
        for indices in groups.values():
            feed = {
                "image_embeddings": embedding.array[None],
                "point_coords": np.stack([rows[i][0] for i in indices]),
                "point_labels": np.stack([rows[i][1] for i in indices]),
            }
            decoder = self.model.decoder
            assert decoder is not None, "decode runs only where the decoder graph was loaded (the front service)"
            logits, iou = decoder.run(None, feed)
            ious[indices] = iou
            masks[indices] = self.geometry.mask_to_image(logits, frame, self.size)
        return masks, ious

    def warm(self) -> None:
        """One run of each graph loaded on a blank image, so the first request does not pay for allocation."""
        model_input, frame = self.geometry.prepare(np.zeros((self.size, self.size), np.uint8), self.size)
        if self.model.encoder is not None:
            encode_jobs({self.name: self}, [EncodeJob(model=self.name, image=model_input, resized=frame.resized)])
        if self.model.decoder is not None:
            blank = np.zeros(self.model.manifest["embedding_shape"], np.float32)
            half = self.size / 2
            prompt = imaging.SparsePrompt(np.array([0.0, 0.0, half, half]), np.array([[half / 2, half / 2]]))
            self.decode(Embedding(blank, frame), [prompt])


def encode_jobs(models: Mapping[str, Served], jobs: Sequence[EncodeJob]) -> list[np.ndarray]:
    """The embedding (C, h, w) of every job, in job order; the jobs of one model run as one batch."""
    out: list[np.ndarray | None] = [None] * len(jobs)
    by_model: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault(job["model"], []).append(i)
    for name, indices in by_model.items():
        images = np.stack([np.asarray(jobs[i]["image"], np.uint8) for i in indices])
        resized = np.array([jobs[i]["resized"] for i in indices], np.int64)
        encoder = models[name].model.encoder
        assert encoder is not None, "encode_jobs runs only where the encoder graph was loaded (the encoder service)"
        (embeddings,) = encoder.run(None, {"image": images, "resized_hw": resized})
        for i, embedding in zip(indices, embeddings, strict=True):
            out[i] = embedding
    return out  # type: ignore[return-value]


class Router:
    """Which model answers a prompt: an explicit model wins; a task goes to the model merged for that task alone,
    else to the default (multi-task) model; no task goes to the default."""

    def __init__(self, models: Mapping[str, Served], default: str | None) -> None:
        self.models = models
        self.default = default if default in models else None

    def route(self, task: str | None, model: str | None, prompt: int = 0) -> Served:
        """The model for prompt number `prompt` (named in refusals, which never repeat the request's names)."""
        if model is not None:
            if model not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise RequestError(
                    f"the request names a model this server does not serve; it serves: {known}", HTTPStatus.NOT_FOUND
                )
            served = self.models[model]
        elif task is not None:
            single = sorted(n for n, s in self.models.items() if s.tasks == (task,))
            if single:
                served = self.models[single[0]]
            elif self.default is not None and task in self.models[self.default].tasks:
                served = self.models[self.default]
            else:
                raise RequestError(
                    f"prompt {prompt} names a task no model on this server was merged for; the tasks are: "
                    f"{self.tasks()}"
                )
        elif self.default is not None:
            served = self.models[self.default]
        else:
            raise RequestError("this server has no default model; name a model or a task in the request")
        if task is not None and task not in served.tasks:
            raise RequestError(
                f"model '{served.name}' was not merged for the task prompt {prompt} names; its tasks are: "
                f"{', '.join(served.tasks)}"
            )
        return served

    def tasks(self) -> str:
        return ", ".join(sorted({t for s in self.models.values() for t in s.tasks})) or "none"


@dataclass(frozen=True)
class Segmented:
    """The answer to one prompt: a bool mask (rows, columns) on its frame, the model's predicted IoU, and who made
    it."""

    label: str
    frame: int
    task: str | None
    model: str
    mask: np.ndarray
    iou: float


@dataclass(frozen=True)
class Segmentation:
    """Every prompt's answer in request order, and how many embeddings were computed vs taken from the cache."""

    results: list[Segmented]
    encoded: int
    cached: int


@dataclass(frozen=True)
class SeriesSegmented:
    """The answer to one series prompt: the slices its walk segmented (slice order), from its start slice."""

    label: str
    task: str | None
    model: str
    start: int
    slices: list[SliceAnswer]


@dataclass(frozen=True)
class SeriesSegmentation:
    """Every series prompt's answer in request order, and how many embeddings were computed vs taken from the
    cache."""

    results: list[SeriesSegmented]
    encoded: int
    cached: int


class Segmenter:
    def __init__(
        self,
        models: Mapping[str, Served],
        default: str | None,
        encode: Encode,
        cache: EmbeddingCache,
        max_prompts: int,
        displays: DisplayMemo | None = None,
        max_points: int = Settings.max_points,
    ) -> None:
        self.models = models
        self.router = Router(models, default)
        self.encode = encode
        self.cache = cache
        self.max_prompts = max_prompts
        self.max_points = max_points
        self.displays = DisplayMemo() if displays is None else displays

    def segment(
        self, image: DicomImage, prompts: Sequence[Prompt], model: str | None = None, preset: str | None = None
    ) -> Segmentation:
        """Masks for `prompts` on `image`; `model` overrides routing, `preset` the intensity window of every
        prompt (else a prompt's task's preset, else the image's own window)."""
        self._check_request(len(prompts), preset)
        sparse = self._sparse_prompts(prompts, image.rows, image.columns)

        # (model, frame, preset) -> the prompts it serves; one embedding and one decoder run each.
        groups: dict[tuple[str, int, str | None], list[int]] = {}
        for i, prompt in enumerate(prompts):
            served = self.router.route(prompt.task, model, i)
            frame = image.check_frame(prompt.frame)
            window = preset or (served.presets.get(prompt.task) if prompt.task else None)
            groups.setdefault((served.name, frame, window), []).append(i)
        image.reserve({frame for _, frame, _ in groups})

        keys = list(groups)
        found, encoded = self._embeddings([(image, frame, name, window) for name, frame, window in keys])
        embeddings = dict(zip(keys, found, strict=True))
        results: list[Segmented | None] = [None] * len(prompts)
        for key, indices in groups.items():
            cancellation.check()
            served = self.models[key[0]]
            masks, ious = served.decode(embeddings[key], [sparse[i] for i in indices])
            for i, mask, iou in zip(indices, masks, ious, strict=True):
                prompt = prompts[i]
                label = prompt.label or prompt.task or "segment"
                results[i] = Segmented(label, prompt.frame, prompt.task, served.name, mask, float(iou))
        return Segmentation(results, encoded, len(groups) - encoded)  # type: ignore[arg-type]

    def _check_request(self, prompts: int, preset: str | None) -> None:
        if not prompts:
            raise RequestError("expected at least one prompt (a box, clicks or both); the request has none")
        if prompts > self.max_prompts:
            raise RequestError(
                f"the request has {prompts} prompts; this server takes at most {self.max_prompts} per request",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        if preset is not None and preset not in imaging.PRESETS:
            raise RequestError(
                f"the request names an intensity preset this server does not know; known presets: "
                f"{', '.join(imaging.PRESETS)}"
            )

    def segment_series(
        self, volume: Volume, prompts: Sequence[SeriesPrompt], model: str | None = None, preset: str | None = None
    ) -> SeriesSegmentation:
        """Masks through `volume` for each series prompt (`service.propagation`): routed and windowed as `segment`
        routes a prompt; each slice encoded at most once per request, the next slices of every walk in one batch."""
        self._check_request(len(prompts), preset)
        routed = [self.router.route(p.task, model, i) for i, p in enumerate(prompts)]
        windows = [preset or (s.presets.get(p.task) if p.task else None) for s, p in zip(routed, prompts, strict=True)]
        walks = [plan(p, i, len(volume), volume.rows, volume.columns, self.max_points) for i, p in enumerate(prompts)]
        memo: dict[tuple[str, int, str | None], Embedding] = {}
        encoded = 0

        def key(walk: int, z: int) -> tuple[str, int, str | None]:
            return routed[walk].name, z, windows[walk]

        def decode(asks: Sequence[Ask], upcoming: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, float]]:
            nonlocal encoded
            wanted = [key(a.walk, a.slice) for a in asks] + [key(w, z) for w, z in upcoming]
            new = [k for k in dict.fromkeys(wanted) if k not in memo]
            items = [(volume.slices[z].image, volume.slices[z].frame, name, window) for name, z, window in new]
            found, count = self._embeddings(items)
            memo.update(zip(new, found, strict=True))
            encoded += count
            out: list[tuple[np.ndarray, float] | None] = [None] * len(asks)
            groups: dict[tuple[str, int, str | None], list[int]] = {}
            for i, ask in enumerate(asks):
                groups.setdefault(key(ask.walk, ask.slice), []).append(i)
            for k, indices in groups.items():
                cancellation.check()
                prompts_here = [asks[i].prompt for i in indices]
                sparse = self._sparse_prompts(prompts_here, volume.rows, volume.columns)
                masks, ious = self.models[k[0]].decode(memo[k], sparse)
                for i, mask, iou in zip(indices, masks, ious, strict=True):
                    out[i] = (mask, float(iou))
            return out  # type: ignore[return-value]

        walked = propagate(walks, decode)
        results = [
            SeriesSegmented(p.label or p.task or "segment", p.task, served.name, walk.start, answers)
            for p, served, walk, answers in zip(prompts, routed, walks, walked, strict=True)
        ]
        return SeriesSegmentation(results, encoded, len(memo) - encoded)

    def _sparse_prompts(self, prompts: Sequence[Prompt], rows: int, columns: int) -> list[imaging.SparsePrompt]:
        """Each prompt checked against the image (a box inside it as today, every click inside it, at most
        `max_points` clicks) as the decoder's sparse prompt; refusals name the prompt by its index."""
        for i, prompt in enumerate(prompts):
            if len(prompt.foreground) + len(prompt.background) > self.max_points:
                raise RequestError(
                    f"prompt {i} has more clicks than this server takes; expected at most {self.max_points} "
                    "foreground and background clicks per prompt",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
        try:
            return [
                imaging.SparsePrompt.checked(p.box, p.foreground, p.background, rows, columns, f"prompt {i}")
                for i, p in enumerate(prompts)
            ]
        except imaging.ImagingError as error:
            raise RequestError(str(error)) from None

    def _embeddings(self, items: Sequence[tuple[SliceImage, int, str, str | None]]) -> tuple[list[Embedding], int]:
        """The embedding of each (image, frame, model, window), in order, and how many were encoded: every frame
        decoded and displayed (so checked) first, then taken from the cache, else encoded in one call for all
        misses."""
        found: list[Embedding | None] = [None] * len(items)
        missing: list[tuple[int, tuple[str, str, str], imaging.Frame]] = []
        jobs: list[EncodeJob] = []
        for index, (image, frame, name, window) in enumerate(items):
            served = self.models[name]
            seen = (image.file_digest, frame, window)
            digest = self.displays.get(seen)
            if digest is not None:  # these very bytes were displayed before: the digest is known without decoding
                entry = self.cache.get((name, served.model.manifest_sha256, digest))
                if entry is not None:
                    found[index] = entry
                    continue
            try:
                pixels = image.display(frame, window)
                digest = pixels_digest(pixels)
                self.displays.put(seen, digest)
                cache_key = (name, served.model.manifest_sha256, digest)
                entry = self.cache.get(cache_key)
                if entry is not None:
                    found[index] = entry
                    continue
                model_input, geometry_frame = served.geometry.prepare(pixels, served.size)
            except imaging.ImagingError as error:
                raise RequestError(
                    f"frame {frame} cannot be prepared for the model: {error}", HTTPStatus.UNPROCESSABLE_ENTITY
                ) from None
            jobs.append(EncodeJob(model=name, image=model_input, resized=geometry_frame.resized))
            missing.append((index, cache_key, geometry_frame))
        if jobs:
            cancellation.check()
            for (index, cache_key, geometry_frame), array in zip(missing, self.encode(jobs), strict=True):
                entry = Embedding(np.asarray(array, np.float32), geometry_frame)
                self.cache.put(cache_key, entry)
                found[index] = entry
        return found, len(jobs)  # type: ignore[return-value]


def pixels_digest(pixels: np.ndarray) -> str:
    """sha256 of a displayed uint8 image with its shape: for a given model, the encoder input is a function of
    exactly this (the geometry's resize and pad), so equal digests mean equal embeddings."""
    digest = hashlib.sha256(repr((pixels.shape, pixels.dtype.str)).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()

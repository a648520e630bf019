"""The BentoML service hospitals run: DICOM + prompts (boxes, clicks) in, masks (RLE JSON) or a DICOM SEG out, for
one image or, propagated from one prompt, for a whole series.

Two services in one process tree (`bentoml serve service.service:MedSAMix`): the front `MedSAMix` decodes DICOM,
routes prompts, keeps the embedding cache and runs the decoders; it `depends` on `Encoder`, whose one batchable
method BentoML's adaptive batching feeds with images from concurrent requests. Both load every model in the store
(hashes verified) and warm it before they report ready. Settings come from `MEDSAMIX_*` variables
(`service/config.py`).

A model folder that does not verify or open is refused on its own, never the service: both processes serve the
models that do, the front takes the encoder's verdict too (a model either refused is served by neither), and the
refused folders are reported with their reasons in `GET /models`, in `/readyz`'s body and in the log at start.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, TypeVar, cast

import bentoml
import highdicom
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from service import forms, monailabel, redaction
from service.cache import DisplayMemo, EmbeddingCache
from service.cancellation import ClientGone
from service.config import Settings
from service.dicom import DicomImage, Limits, PixelBudget, Source, part10, read_dicom
from service.dicomweb import Pacs
from service.errors import RequestError
from service.home import HomePage
from service.manifest import PROMPT_KINDS
from service.masks import encode_rle
from service.middleware import DocumentedErrors, Guard, OneSentence, Readiness, Tokens
from service.runtime import available_providers
from service.schemas import (
    DicomwebRequest,
    DicomwebResponse,
    DicomwebSeriesRequest,
    DicomwebSeriesResponse,
    DicomwebStudy,
    EncodeJob,
    InstanceRef,
    InstanceResult,
    ModelCard,
    ModelList,
    ModelRef,
    Prompt,
    PromptResult,
    RefusedModel,
    Rle,
    SegmentResponse,
    SeriesPrompt,
    SeriesResponse,
    SeriesResult,
    SliceResult,
    StoredSeg,
    VolumeInfo,
    field_names,
)
from service.seg import (
    Algorithm,
    InstanceMask,
    SegmentMask,
    SliceMask,
    build_instances_seg,
    build_seg,
    build_series_seg,
)
from service.segmenter import Segmentation, Segmenter, SeriesSegmentation, Served, encode_jobs
from service.sessions import Sessions
from service.store import ModelStore
from service.volume import Volume, build_volume

logger = logging.getLogger("medsamix")
SETTINGS = Settings.from_env()
CPU = "CPUExecutionProvider"
# What a request whose client left is logged with (nginx's "client closed request"); nobody reads the answer.
CLIENT_CLOSED = 499
T = TypeVar("T")
forms.install(max_files=SETTINGS.max_instances)

EMBEDDINGS = bentoml.metrics.Counter(
    name="medsamix_embeddings_total",
    documentation="Image embeddings a request needed: computed by the encoder or taken from the cache.",
    labelnames=["source"],
)
PROMPTS = bentoml.metrics.Counter(
    name="medsamix_prompts_total", documentation="Prompts segmented, by model.", labelnames=["model"]
)
REFUSED = bentoml.metrics.Counter(
    name="medsamix_refused_total",
    documentation="Requests the service refused (4xx) or a PACS failed (502/504), by status.",
    labelnames=["status"],
)
ABANDONED = bentoml.metrics.Counter(
    name="medsamix_abandoned_total",
    documentation="Requests whose client left before the answer was ready; their remaining work was dropped.",
)
# The front -> encoder hop (HTTP, serialisation, the batcher's wait) is the difference of the two means below, where
# one call is one batch (a single client); seconds up to a CPU's ViT-B batch.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENCODER_CALLS = bentoml.metrics.Histogram(
    name="medsamix_encoder_call_seconds",
    documentation="Seconds the front waits for one call of the encoder service: the encoding and the hop to it.",
    buckets=SECONDS,
)
ENCODING = bentoml.metrics.Histogram(
    name="medsamix_encoding_seconds",
    documentation="Seconds the encoder service spends encoding one batch, the hop to it left out.",
    buckets=SECONDS,
)
REFUSED_MODELS = bentoml.metrics.Gauge(
    name="medsamix_models_refused",
    documentation="Folders of the model store that are not served (see GET /models for why).",
    multiprocess_mode="livemax",  # one value for the server, not one per worker process
)


def load_models(settings: Settings, graph: str) -> tuple[dict[str, Served], dict[str, str]]:
    """Every model in the store that verifies, its `graph` opened on the providers `settings.device` asks for and
    warmed, and for each one that does not, why. Each service opens only the graph it runs: an encoder is held
    once, by the encoder service."""
    redaction.install()  # the worker's logging is configured by now
    store = ModelStore(settings.models, default=settings.default_model)
    providers = available_providers() if settings.device == "gpu" else [CPU]
    loaded, refused = store.load_all(providers, graphs=(graph,))
    models: dict[str, Served] = {}
    for name, model in loaded.items():
        served = Served.of(model)
        try:
            served.warm()
        except Exception as error:  # onnxruntime's text names shapes and paths of its own: the type is enough
            refused[name] = f"model '{name}' failed its warm-up run on a blank image ({type(error).__name__})"
            continue
        models[name] = served
    for name, reason in sorted(refused.items()):
        logger.warning("the model folder %s is not served: %s", name, reason)
    return models, refused


def on_requested_device(models: dict[str, Served], settings: Settings) -> bool:
    """False when a GPU was asked for and a session fell back to the CPU (ready on a CPU would be a lie)."""
    return settings.device != "gpu" or all(s.providers()[0] != CPU for s in models.values())


@bentoml.service(name="medsamix-encoder", workers=1, traffic={"timeout": 300})
class Encoder:
    """The image encoders of all served models behind one batchable method."""

    def __init__(self) -> None:
        self.models, self.refused_models = load_models(SETTINGS, "encoder")

    def __is_ready__(self) -> bool:
        return on_requested_device(self.models, SETTINGS)

    @bentoml.api(
        batchable=bool(SETTINGS.batching),
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def encode(self, jobs: list[EncodeJob]) -> list[Any]:
        """(C, h, w) float32 embeddings, one per job, in order; jobs from several requests arrive as one list."""
        with ENCODING.time():
            return encode_jobs(self.models, jobs)

    @bentoml.api
    def refused(self) -> dict[str, str]:
        """The store's folders this service refused, and why (the front serves none of them either)."""
        return self.refused_models


models_app = FastAPI(title="medsamix models", openapi_url=None, docs_url=None, redoc_url=None)


@models_app.get("/models", response_model=ModelList, summary="The served models, and the refused folders with why")
def list_models(request: Request) -> ModelList:
    return bentoml.get_current_service().model_list()


# Uploads are taken whatever content type the client gives them (curl says application/octet-stream); the bytes
# are checked as DICOM. The SEG answer is application/dicom.
SegFile = Annotated[Path, ContentType("application/dicom")]

if TYPE_CHECKING:
    # What an endpoint returns: its response model, or `_answer`'s refusal, a Response that bypasses the output spec.
    Answer: TypeAlias = T | Response
else:

    class Answer:
        """`Answer[M]` is `M` at run time: BentoML documents and serializes an endpoint's result by its model."""

        def __class_getitem__(cls, model: Any) -> Any:
            return model


@bentoml.asgi_app(models_app, path="/")
@bentoml.service(name="medsamix", workers=1, traffic={"timeout": 300})
class MedSAMix:
    """POST /segment, /segment/seg, /segment/series, /segment/series/seg, /segment/dicomweb,
    /segment/dicomweb/series, /segment/dicomweb/instances, GET /models; /livez, /readyz, /metrics come with BentoML."""

    encoder = bentoml.depends(Encoder)

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.models, self.refused_models = load_models(SETTINGS, "decoder")
        self.limits = Limits(
            max_pixels=SETTINGS.max_pixels,
            max_frames=SETTINGS.max_frames,
            max_decoded_pixels=SETTINGS.max_decoded_pixels,
        )
        self.cache = EmbeddingCache(SETTINGS.cache_mb * 1024 * 1024)
        self.displays = DisplayMemo()
        self.segmenter = self._segmenter()
        self.sessions = Sessions(SETTINGS.max_sessions, SETTINGS.max_session_bytes, SETTINGS.session_ttl_s)
        self._settled = False
        self._settling = threading.Lock()

    def _segmenter(self) -> Segmenter:
        return Segmenter(
            self.models,
            SETTINGS.default_model,
            self._encode,
            self.cache,
            SETTINGS.max_prompts,
            self.displays,
            SETTINGS.max_points,
        )

    def _settle(self) -> bool:
        """Take the encoder service's verdict on the store, once: a model it refused (its encoder disagrees with
        the manifest, say) is not served here either. False while the encoder service cannot be asked yet."""
        with self._settling:
            if not self._settled:
                try:
                    refused = self.encoder.refused()
                except Exception:  # the encoder service is still starting
                    return False
                for name, reason in refused.items():
                    self.models.pop(name, None)
                    self.refused_models.setdefault(name, reason)
                self.segmenter = self._segmenter()
                REFUSED_MODELS.set(len(self.refused_models))
                self._settled = True
            return True

    @bentoml.on_shutdown
    def _close_sessions(self) -> None:
        """MONAI Label sessions are temporary: none outlives the server."""
        self.sessions.close()

    def __is_ready__(self) -> bool:
        return self._settle() and bool(self.models) and on_requested_device(self.models, SETTINGS)

    def _encode(self, jobs: list[EncodeJob]) -> list[Any]:
        """The encoder service's embeddings for `jobs`, in calls of at most one batch each (a series asks for many
        slices at once). The encoder sheds work its batching estimates would finish past MEDSAMIX_MAX_LATENCY_MS:
        that is a 503 of one sentence, never BentoML's generic one."""
        size = self.settings.max_batch_size
        embeddings: list[Any] = []
        try:
            for start in range(0, len(jobs), size):
                # The proxy's methods exist only once the encoder service is up, so they are looked up per call.
                with ENCODER_CALLS.time():
                    embeddings += self.encoder.encode(jobs[start : start + size])
        except ServiceUnavailable:
            raise RequestError(
                "the encoder service is overloaded: it refused images it estimates it cannot encode within "
                f"{self.settings.max_latency_ms} ms (MEDSAMIX_MAX_LATENCY_MS); retry later",
                HTTPStatus.SERVICE_UNAVAILABLE,
            ) from None
        return embeddings

    def readiness(self) -> dict[str, Any]:
        """What /readyz answers in its body: the models served and the folders refused, with why."""
        return {"models": sorted(self.models), "refused": dict(sorted(self.refused_models.items()))}

    def model_list(self) -> ModelList:
        self._settle()
        refused = [RefusedModel(name=n, reason=r) for n, r in sorted(self.refused_models.items())]
        return ModelList(models=self.model_cards(), refused=refused)

    def model_cards(self) -> list[ModelCard]:
        default = self.segmenter.router.default
        return [
            ModelCard(
                name=name,
                version=s.version,
                manifest_sha256=s.model.manifest_sha256,
                tasks=list(s.tasks),
                single_task=s.single_task,
                default=name == default,
                intensity_presets=dict(s.presets),
                scores=s.model.manifest["scores"],
                prompt_kinds=list(PROMPT_KINDS),
                scored_prompts=s.model.manifest["scored_prompts"],
                providers=s.providers(),
                manifest=s.model.manifest,
            )
            for name, s in sorted(self.models.items())
        ]

    @bentoml.api(route="/segment")
    def segment(
        self, file: Path, prompts: list[Prompt], model: str | None = None, preset: str | None = None
    ) -> Answer[SegmentResponse]:
        """Masks for prompts on a DICOM image: one COCO RLE mask, its area and predicted IoU per prompt.

        `file`: a DICOM Part 10 file (single- or multi-frame; native or compressed transfer syntaxes).
        `prompts`: JSON list of {box: [x0, y0, x1, y1], foreground: [[x, y], ...], background: [[x, y], ...], frame,
        label, task}, in the image's pixel coordinates; a box, clicks or both.
        `model`: serve every prompt with this model (else routing by task). `preset`: force an intensity preset.
        """
        return _answer(lambda: self._segment_response(self._run(file, prompts, model, preset)[1]))

    @bentoml.api(route="/segment/seg")
    def segment_seg(
        self, file: Path, prompts: list[Prompt], model: str | None = None, preset: str | None = None
    ) -> Answer[SegFile]:
        """The same masks as one DICOM SEG instance (one segment per label) that references the source image.

        All prompts of one request must be answered by one model (the SEG names it as its algorithm)."""
        return _answer(lambda: self._dicom_response(self._segmentation(*self._run(file, prompts, model, preset))))

    @bentoml.api(route="/segment/dicomweb")
    def segment_dicomweb(self, request: DicomwebRequest, /) -> Answer[DicomwebResponse]:
        """Retrieve instances of one series from an allowed PACS (WADO-RS), segment them, store one DICOM SEG for
        all of them back (one STOW-RS request, after every instance was segmented: a request that fails part way
        stores nothing) and answer with the SEG's UIDs and the masks.

        The PACS is named by its DICOMweb URL and must be on the server's allow-list (else 403); its credentials
        come from the server's configuration. A PACS that cannot be reached or answers an error: 502; that does not
        answer in time: 504; that has no such instance: 404."""
        return _answer(lambda: self._segment_dicomweb(request))

    @bentoml.api(route="/segment/dicomweb/instances")
    def dicomweb_instances(self, request: DicomwebStudy, /) -> Answer[list[InstanceRef]]:
        """The instances of a study (or of one of its series) on an allowed PACS (QIDO-RS): what a batch client
        iterates over, one `/segment/dicomweb` call per instance."""
        return _answer(
            lambda: [
                InstanceRef(series=series, instance=instance)
                for series, instance in self._pacs(request).instances(request.study, request.series)
            ]
        )

    @bentoml.api(route="/segment/series")
    def segment_series(
        self, files: list[Path], prompts: list[SeriesPrompt], model: str | None = None, preset: str | None = None
    ) -> Answer[SeriesResponse]:
        """Masks through a series from one prompt per structure: the slices are sorted into a volume along their
        normal, the prompted slice is segmented and each neighbour outward is prompted with the previous mask's box
        (MedSAM's 3-D inference); one COCO RLE mask per segmented slice.

        `files`: the DICOM files of one series (single-frame instances, or one enhanced multi-frame instance), one
        part each. `prompts`: JSON list of {box + slice | box3d [x0, y0, z0, x1, y1, z1] | foreground/background
        clicks [x, y, z], label, task, margin, min_area}; slice indices are the volume's (0-based, along the
        normal). `model`, `preset`: as for /segment."""
        return _answer(lambda: self._series_response(*self._run_series(files, prompts, model, preset)))

    @bentoml.api(route="/segment/series/seg")
    def segment_series_seg(
        self, files: list[Path], prompts: list[SeriesPrompt], model: str | None = None, preset: str | None = None
    ) -> Answer[SegFile]:
        """The same masks as one DICOM SEG for the series: it references every instance that has a mask, one
        segment per label, frames only where a mask is non-empty."""
        return _answer(lambda: self._dicom_response(self.series_seg(*self._run_series(files, prompts, model, preset))))

    @bentoml.api(route="/segment/dicomweb/series")
    def segment_dicomweb_series(self, request: DicomwebSeriesRequest, /) -> Answer[DicomwebSeriesResponse]:
        """Retrieve every instance of a series from an allowed PACS, segment it as /segment/series does, store one
        DICOM SEG for the whole series back (one STOW-RS request, once every slice is segmented: a request that
        fails part way stores nothing) and answer with its UIDs and a per-slice summary (no masks: the SEG holds
        them). Errors as for /segment/dicomweb."""
        return _answer(lambda: self._segment_dicomweb_series(request))

    def _pacs(self, request: DicomwebStudy) -> Pacs:
        if self.settings.dicomweb is None:
            raise RequestError(
                "expected a DICOMweb allow-list on this server to call a PACS, found none (MEDSAMIX_DICOMWEB is unset)",
                HTTPStatus.FORBIDDEN,
            )
        return self.settings.dicomweb.find(request.dicomweb, self.settings.max_pacs_bytes)

    def _segment_dicomweb(self, request: DicomwebRequest) -> DicomwebResponse:
        pacs = self._pacs(request)
        work = self._dicomweb_work(request, pacs)
        count = sum(len(prompts) for _, prompts in work)
        if count > self.settings.max_prompts:
            raise RequestError(
                f"the request asks for {count} prompts over {len(work)} instance(s); this server takes at most "
                f"{self.settings.max_prompts} per request",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        budget = PixelBudget(self.limits.max_decoded_pixels)  # one for the whole request, however many instances
        segmented = [
            (
                uid,
                *self._run(
                    pacs.retrieve(request.study, request.series, uid), prompts, request.model, request.preset, budget
                ),
            )
            for uid, prompts in work
        ]
        masks = [
            InstanceMask(r.label, index, r.frame, r.mask)
            for index, (_, _, result) in enumerate(segmented)
            for r in result.results
        ]
        names = {r.model for _, _, result in segmented for r in result.results}
        seg = build_instances_seg([image.dataset for _, image, _ in segmented], masks, self._algorithm(names))
        pacs.store([seg])
        logger.info("stored 1 SEG over %d instance(s) into PACS '%s'", len(segmented), pacs.name)
        stored = StoredSeg(study=seg.StudyInstanceUID, series=seg.SeriesInstanceUID, instance=seg.SOPInstanceUID)
        instances = [
            InstanceResult(source=uid, seg=stored, results=self._prompt_results(result)) for uid, _, result in segmented
        ]
        return DicomwebResponse(instances=instances, models=self._refs(names))

    def _segment_dicomweb_series(self, request: DicomwebSeriesRequest) -> DicomwebSeriesResponse:
        pacs = self._pacs(request)
        sources = self.fetch_series(pacs, request.study, request.series, Path(bentoml.Context().temp_dir))
        volume, result = self._run_series(sources, request.prompts, request.model, request.preset)
        seg = self.series_seg(volume, result)
        pacs.store([seg])
        logger.info("stored 1 SEG over %d slices into PACS '%s'", len(volume), pacs.name)
        return DicomwebSeriesResponse(
            seg=StoredSeg(study=seg.StudyInstanceUID, series=seg.SeriesInstanceUID, instance=seg.SOPInstanceUID),
            volume=_volume_info(volume),
            results=self._series_results(volume, result, masks=False),
            models=self._refs({r.model for r in result.results}),
        )

    def _check_instances(self, count: int) -> None:
        if count > self.settings.max_instances:
            raise RequestError(
                f"the series has {count} instances; this server takes at most {self.settings.max_instances} per "
                "request (MEDSAMIX_MAX_INSTANCES)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )

    def _run_series(
        self, sources: Sequence[Source], prompts: list[SeriesPrompt], model: str | None, preset: str | None
    ) -> tuple[Volume, SeriesSegmentation]:
        volume = self.read_series(sources)
        return volume, self.segment_volume(volume, prompts, model, preset)

    def read_series(self, sources: Sequence[Source]) -> Volume:
        """The volume of one series' DICOM files (within the instance and pixel limits; headers only)."""
        self._check_started()
        self._check_instances(len(sources))
        budget = PixelBudget(self.limits.max_decoded_pixels)  # one for the whole series
        return build_volume([read_dicom(source, self.limits, budget) for source in sources])

    def segment_volume(
        self, volume: Volume, prompts: list[SeriesPrompt], model: str | None, preset: str | None
    ) -> SeriesSegmentation:
        """`Segmenter.segment_series`, counted in the metrics: what every series route (and MONAI Label's infer)
        runs."""
        self._check_started()
        result = self.segmenter.segment_series(volume, prompts, model, preset)
        self._count(result.encoded, result.cached, [r.model for r in result.results])
        return result

    def fetch_series(self, pacs: Pacs, study: str, series: str, folder: Path) -> list[Path]:
        """Every instance of a series retrieved from `pacs` into files in `folder` (read from disk slice by slice
        later, never held in memory whole)."""
        refs = pacs.instances(study, series)
        self._check_instances(len(refs))
        return [_spooled(pacs.retrieve(study, series, uid), folder) for _, uid in refs]

    def named_pacs(self, name: str) -> Pacs:
        """The allow-list's PACS `name` (a setting names it; `Settings` checked that it is on the list)."""
        return Pacs(name, self.settings.dicomweb.pacs[name], self.settings.max_pacs_bytes)  # type: ignore[union-attr]

    def _series_results(self, volume: Volume, result: SeriesSegmentation, masks: bool) -> list[SeriesResult]:
        return [
            SeriesResult(
                label=r.label,
                task=r.task,
                model=r.model,
                start=r.start,
                voxels=sum(int(a.mask.sum()) for a in r.slices),
                slices=[
                    SliceResult(
                        slice=a.slice,
                        source=volume.slices[a.slice].uid,
                        frame=volume.slices[a.slice].frame,
                        box=a.box,
                        area=int(a.mask.sum()),
                        iou=a.iou,
                        mask=Rle(**encode_rle(a.mask)) if masks else None,
                    )
                    for a in r.slices
                ],
            )
            for r in result.results
        ]

    def _series_response(self, volume: Volume, result: SeriesSegmentation) -> SeriesResponse:
        return SeriesResponse(
            volume=_volume_info(volume),
            results=self._series_results(volume, result, masks=True),
            models=self._refs({r.model for r in result.results}),
        )

    def series_seg(self, volume: Volume, result: SeriesSegmentation) -> highdicom.seg.Segmentation:
        """The one DICOM SEG of `result` on `volume`, named after the one model that answered every prompt."""
        masks = [SliceMask(r.label, a.slice, a.mask) for r in result.results for a in r.slices]
        return build_series_seg(volume, masks, self._algorithm({r.model for r in result.results}))

    def _dicomweb_work(self, request: DicomwebRequest, pacs: Pacs) -> list[tuple[str, list[Prompt]]]:
        """(SOP Instance UID, its prompts) for each instance the request names, or for the whole series."""
        if isinstance(request.prompts, dict):
            if request.instance is not None or not request.prompts:
                raise RequestError(
                    "expected prompts as a non-empty mapping SOP Instance UID -> prompts without 'instance', or as a "
                    "list with or without 'instance', found "
                    + ("a mapping and 'instance'" if request.prompts else "an empty mapping")
                )
            return list(request.prompts.items())
        if request.instance is not None:
            return [(request.instance, request.prompts)]
        return [(uid, request.prompts) for _, uid in pacs.instances(request.study, request.series)]

    def _run(
        self,
        source: Source,
        prompts: list[Prompt],
        model: str | None,
        preset: str | None,
        budget: PixelBudget | None = None,
    ) -> tuple[DicomImage, Segmentation]:
        self._check_started()
        image = read_dicom(source, self.limits, budget)
        result = self.segmenter.segment(image, prompts, model, preset)
        self._count(result.encoded, result.cached, [r.model for r in result.results])
        return image, result

    def _check_started(self) -> None:
        if not self._settle():
            raise RequestError(
                "the service is still starting; retry once /readyz answers 200", HTTPStatus.SERVICE_UNAVAILABLE
            )

    @staticmethod
    def _count(encoded: int, cached: int, models: list[str]) -> None:
        EMBEDDINGS.labels(source="encoder").inc(encoded)
        EMBEDDINGS.labels(source="cache").inc(cached)
        for name in models:
            PROMPTS.labels(model=name).inc()

    def _refs(self, names: set[str]) -> dict[str, ModelRef]:
        return {
            n: ModelRef(version=self.models[n].version, manifest_sha256=self.models[n].model.manifest_sha256)
            for n in sorted(names)
        }

    def _segment_response(self, result: Segmentation) -> SegmentResponse:
        return SegmentResponse(
            results=self._prompt_results(result), models=self._refs({r.model for r in result.results})
        )

    def _prompt_results(self, result: Segmentation) -> list[PromptResult]:
        return [
            PromptResult(
                label=r.label,
                frame=r.frame,
                task=r.task,
                model=r.model,
                mask=Rle(**encode_rle(r.mask)),
                area=int(r.mask.sum()),
                iou=r.iou,
            )
            for r in result.results
        ]

    @staticmethod
    def _dicom_response(seg: highdicom.seg.Segmentation) -> Response:
        disposition = {"content-disposition": "attachment; filename=seg.dcm"}
        return Response(part10(seg), media_type="application/dicom", headers=disposition)

    def _segmentation(self, image: DicomImage, result: Segmentation) -> highdicom.seg.Segmentation:
        """The DICOM SEG of `result` on `image`, named after the one model that answered every prompt."""
        masks = [SegmentMask(r.label, r.frame, r.mask) for r in result.results]
        return build_seg(image.dataset, masks, self._algorithm({r.model for r in result.results}), frames=image.frames)

    def _algorithm(self, models: set[str]) -> Algorithm:
        """The one model a SEG names as its algorithm; the prompts of one SEG must all have been answered by it."""
        names = sorted(models)
        if len(names) > 1:
            raise RequestError(
                f"the prompts of one SEG must be answered by one model, these were routed to "
                f"{', '.join(names)}; send one request per model or name the model"
            )
        served = self.models[names[0]]
        return Algorithm(served.name, served.version, served.model.manifest_sha256)


# The refusals each route can answer (all `{"error": sentence}`), published in /docs.json.
SEGMENT_ERRORS = (400, 401, 404, 413, 415, 422, 503)
PACS_ERRORS = (400, 401, 403, 404, 502, 504)
ERRORS = {
    "/segment": SEGMENT_ERRORS,
    "/segment/seg": SEGMENT_ERRORS,
    "/segment/series": SEGMENT_ERRORS,
    "/segment/series/seg": SEGMENT_ERRORS,
    "/segment/dicomweb": tuple(sorted({*SEGMENT_ERRORS, *PACS_ERRORS})),
    "/segment/dicomweb/series": tuple(sorted({*SEGMENT_ERRORS, *PACS_ERRORS})),
    "/segment/dicomweb/instances": PACS_ERRORS,
    "/models": (401,),
}
VIEWER_ERRORS = (400, 401, 403, 404, 413, 422, 502, 503, 504)
ERRORS |= {path: VIEWER_ERRORS for path in ("/infer/{model}", "/session/", "/session/{session_id}")}
# In order from the outside in: the Guard refuses before anything reads a body; its answers are already in shape.
# `@bentoml.service` made the class a Service; mypy does not apply class decorators (python/mypy#3135).
SERVICE = cast("bentoml.Service[MedSAMix]", MedSAMix)
SERVICE.add_asgi_middleware(Guard, token=SETTINGS.token, max_bytes=SETTINGS.max_request_bytes)
SERVICE.add_asgi_middleware(OneSentence, fields=field_names(api.input_spec for api in SERVICE.apis.values()))
SERVICE.add_asgi_middleware(DocumentedErrors, errors=ERRORS, bearer=SETTINGS.token is not None)
SERVICE.add_asgi_middleware(Readiness, report=lambda: _readiness(bentoml.get_current_service()))
SERVICE.add_asgi_middleware(HomePage, listing=lambda: _listing(bentoml.get_current_service()))


def _readiness(service: MedSAMix | None) -> dict[str, Any] | None:
    return None if service is None else service.readiness()


def _listing(service: MedSAMix | None) -> ModelList | None:
    return None if service is None else service.model_list()


def _volume_info(volume: Volume) -> VolumeInfo:
    return VolumeInfo(slices=len(volume), rows=volume.rows, columns=volume.columns, spacing=volume.spacing)


def _spooled(data: bytes, folder: Path) -> Path:
    """`data` (an instance a PACS sent) written to a file in `folder` (a request's temporary folder)."""
    handle, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
    with open(handle, "wb") as out:
        out.write(data)
    return Path(name)


def _answer(compute: Callable[[], T]) -> T | Response:
    """The API's result, or a refusal as `{"error": sentence}` with its status (BentoML's own error body for a
    4xx is a list, and not every status is expressible through its exceptions)."""
    try:
        return compute()
    except RequestError as error:
        REFUSED.labels(status=str(int(error.status))).inc()
        return JSONResponse({"error": str(error)}, status_code=int(error.status))
    except ClientGone:
        ABANDONED.inc()
        return Response(status_code=CLIENT_CLOSED)


# The MONAI Label routes join GET /models in the mounted app (they answer files and multipart bodies).
models_app.include_router(monailabel.routes(bentoml.get_current_service, _answer, Tokens(SETTINGS.token)))

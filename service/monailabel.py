"""MONAI Label's REST protocol over the series segmenter: what 3D Slicer's MONAILabel module and OHIF v3's MONAI Label
mode call, so both segment with MedSAMix models unchanged.

Routes (as MONAI Label's `monailabel/endpoints/` define them; the wire format is owned here, the segmenter never
sees HTTP): `GET /info/`; `POST /infer/{model}?image=&session_id=&output=` with a multipart `params` (JSON) and an
optional `file`; `PUT /session/`, `GET|DELETE /session/{id}`; `GET /datastore/` (an empty datastore: volumes come
with the request); `GET /auth/`, `POST /auth/token`, `GET /auth/token/valid` (Slicer's login: the password is the
bearer token). Every route but the two login ones is behind the service's bearer token (`service.middleware.Guard`).

Models. Each served model is one MONAI Label model of type `deepgrow`, dimension 3 (what Slicer's and OHIF's click
panels list); its `labels` are its tasks, numbered from 1 in manifest order: the value a segmented voxel gets in the
label volume. The task of a request is its `label` param when that names one of the model's tasks (Slicer sends the
segment's name, OHIF the current label), else its `task` param, else the model's first task; the task gives the
intensity preset, as a series prompt's does.

Coordinates, as MONAI Label's SAM2 task reads them (`monailabel/sam2/infer.py`): a click `[x, y, z]` indexes the
volume's data array as stored (x the first axis, i; y the second, j; z the slice, k), no reorientation; `roi` is
`[x0, y0, x1, y1, z0, z1]`, cut per slice over `range(z0, z1)` (z1 exclusive). 3D Slicer's module builds its roi
from the ROI node's RAS corners turned into IJK: `[i_min, i_max, j_min, j_max, k_min, k_max]`, a pair reversed where
the RAS-to-IJK matrix flips an axis; it says so by echoing the model's `config` from `GET /info/`, whose
`roi_layout` offers `minmax` first (what Slicer sends) and `sam2` (the default of a request without it). Both become
one `SeriesPrompt`: the roi its 3-D box (z1 - 1 inclusive), the clicks its clicks; slice k is the 2-D image with x
along i and y along j (`service.volumes`), which for a DICOM series is its own pixel grid (i the column, j the row:
the array MONAI Label's DICOMweb datastore converts a series to). The walk then propagates through the volume as
`/segment/series` does, so the label volume's voxels are that route's masks.

Images: an uploaded NIfTI (.nii, .nii.gz), NRRD (.nrrd), a zip of one series' DICOM files, or DICOM files (a
session may hold several); or `image` = a Series Instance UID, fetched from the allow-list's PACS that
MEDSAMIX_MONAILABEL_PACS names. Output (`output`): `image` the label volume, `json` the result params, `all` (and
none, as MONAI Label's client sends) both as multipart/form-data, `dicom_seg` one DICOM SEG for a DICOM volume. The
label volume is NIfTI unless `result_extension` asks for .nii or .nrrd, in the input's geometry: same shape, same
affine (a DICOM series: ITK's array order and its patient geometry).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Protocol

import highdicom
import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from service import volumes
from service.config import Settings
from service.dicom import Source, part10
from service.dicomweb import Pacs
from service.errors import RequestError
from service.middleware import OWNER, Tokens
from service.schemas import SeriesPrompt
from service.segmenter import Segmenter, SeriesSegmentation, Served
from service.sessions import Sessions
from service.volume import Volume, patient_affine

__all__ = ["OUTPUTS", "ROI_LAYOUTS", "Host", "Prompted", "info", "label_volume", "prompt_of", "routes"]

OUTPUTS = ("image", "json", "all", "dicom_seg")
ROI_LAYOUTS = ("minmax", "sam2")  # minmax first: the value Slicer echoes from GET /info/'s config
RESULT_EXTENSIONS = {
    ".nii.gz": "application/gzip",
    ".nii": "application/octet-stream",
    ".nrrd": "application/octet-stream",
}
UID_CHARS = frozenset("0123456789.")


class Host(Protocol):
    """What the routes need of the BentoML front service (`service.service.MedSAMix`)."""

    settings: Settings
    models: Mapping[str, Served]
    segmenter: Segmenter
    sessions: Sessions

    def read_series(self, sources: Sequence[Source]) -> Volume: ...

    def segment_volume(
        self, volume: Volume, prompts: list[SeriesPrompt], model: str | None, preset: str | None
    ) -> SeriesSegmentation: ...

    def series_seg(self, volume: Volume, result: SeriesSegmentation) -> highdicom.seg.Segmentation: ...

    def fetch_series(self, pacs: Pacs, study: str, series: str, folder: Path) -> list[Path]: ...

    def named_pacs(self, name: str) -> Pacs: ...


@dataclass(frozen=True)
class Loaded:
    """A request's volume: what the segmenter walks, its shape (I, J, K) and affine (index -> LPS mm), and whether
    it came from DICOM files (then a DICOM SEG can reference them)."""

    volume: Volume
    shape: tuple[int, int, int]
    affine: np.ndarray
    dicom: bool


def info(models: Mapping[str, Served]) -> dict[str, Any]:
    """`GET /info/`: MONAI Label's app description, one interactive 3-D model per served model."""
    return {
        "name": "MedSAMix",
        "description": "Segment-Anything checkpoints merged per task: clicks or a box on one slice, propagated "
        "through the volume",
        "version": "1",
        "labels": sorted({t for s in models.values() for t in s.tasks}),
        "models": {
            name: {
                "type": "deepgrow",
                "dimension": 3,
                "labels": {task: value for value, task in enumerate(s.tasks, start=1)},
                "description": f"MedSAMix model {name} (version {s.version}): foreground/background clicks and a roi, "
                "propagated slice to slice",
                "config": {"task": list(s.tasks), "roi_layout": list(ROI_LAYOUTS)},
            }
            for name, s in sorted(models.items())
        },
        "trainers": {},
        "strategies": {},
        "scoring": {},
        "train_stats": {},
        "datastore": {"total": 0, "completed": 0},
    }


@dataclass(frozen=True)
class Prompted:
    """A request's params read: the series prompt, its task and that task's label value."""

    prompt: SeriesPrompt
    task: str
    value: int


def _clicks(params: Mapping[str, Any], key: str, shape: tuple[int, int, int]) -> list[tuple[float, float, int]]:
    raw = params.get(key) or []
    if not isinstance(raw, list):
        raise RequestError(f"expected params.{key} to be a list of [x, y, z] voxel indices, found another value")
    out = []
    for index, point in enumerate(raw):
        valid = (
            isinstance(point, list)
            and len(point) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in point)
            and float(point[2]).is_integer()
        )
        if not valid:
            raise RequestError(f"expected {key} click {index} to be [x, y, z]: three numbers, z a whole slice index")
        if not all(0 <= v < n for v, n in zip(point, shape, strict=True)):
            raise RequestError(
                f"{key} click {index} lies outside the volume of {shape[0]}x{shape[1]}x{shape[2]} voxels; expected "
                f"0 <= x < {shape[0]}, 0 <= y < {shape[1]} and 0 <= z < {shape[2]}"
            )
        out.append((float(point[0]), float(point[1]), int(point[2])))
    return out


def _box3d(params: Mapping[str, Any], shape: tuple[int, int, int]) -> tuple[float, ...] | None:
    """The roi as a series prompt's 3-D box (x0, y0, z0, x1, y1, z1; z inclusive), or None without one."""
    roi = params.get("roi")
    if roi is None or roi == []:
        return None
    layout = params.get("roi_layout", "sam2")
    if layout not in ROI_LAYOUTS:
        raise RequestError(f"expected params.roi_layout to be one of {', '.join(ROI_LAYOUTS)}, found another value")
    numbers = isinstance(roi, list) and len(roi) == 6
    if not numbers or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in roi):
        raise RequestError("expected params.roi to be six voxel indices [x0, y0, x1, y1, z0, z1], found another value")
    if layout == "sam2":
        x0, y0, x1, y1, z0, z1 = roi
    else:  # per axis a (min, max) pair of rounded IJK corners, either way round
        x0, x1 = sorted(roi[0:2])
        y0, y1 = sorted(roi[2:4])
        z0, z1 = sorted(roi[4:6])
    (i, j, k) = shape
    if not (float(z0).is_integer() and float(z1).is_integer()):
        raise RequestError("expected the roi's z0 and z1 to be whole slice indices, found fractions")
    if not (0 <= x0 < x1 <= i and 0 <= y0 < y1 <= j and 0 <= z0 < z1 <= k):
        raise RequestError(
            f"the roi reaches outside the volume of {i}x{j}x{k} voxels or spans none of it; expected 0 <= x0 < x1 <= "
            f"{i}, 0 <= y0 < y1 <= {j} and 0 <= z0 < z1 <= {k} (slices z0 to z1 - 1)"
        )
    return (float(x0), float(y0), float(z0), float(x1), float(y1), float(z1) - 1)


def prompt_of(params: Mapping[str, Any], served: Served, shape: tuple[int, int, int]) -> Prompted:
    """The one series prompt of an infer request's params on a volume of `shape` (I, J, K), for `served`; other
    params are ignored, as MONAI Label ignores what a task does not read."""
    label, task = params.get("label"), params.get("task")
    if isinstance(label, str) and label in served.tasks:
        chosen = label
    elif task is not None:
        if task not in served.tasks:
            raise RequestError(
                f"expected params.task to name a task of model '{served.name}': {', '.join(served.tasks)}"
            )
        chosen = task
    else:
        chosen = served.tasks[0]
    box3d = _box3d(params, shape)
    foreground = _clicks(params, "foreground", shape)
    background = _clicks(params, "background", shape)
    if box3d is None and not foreground:
        raise RequestError("expected params to hold a roi or at least one foreground click, found neither")
    try:
        prompt = SeriesPrompt(box3d=box3d, foreground=foreground, background=background, label=chosen, task=chosen)
    except ValidationError as error:
        raise RequestError(f"the params do not form a prompt: {error.errors()[0]['msg']}") from None
    return Prompted(prompt, chosen, served.tasks.index(chosen) + 1)


def label_volume(result: SeriesSegmentation, shape: tuple[int, int, int], value: int) -> np.ndarray:
    """uint8 (I, J, K): `value` where the walk's masks are (a slice's mask is J x I: rows along j), 0 elsewhere."""
    labels = np.zeros(shape, np.uint8)
    for answer in result.results[0].slices:
        labels[:, :, answer.slice][answer.mask.T] = value
    return labels


def _params(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RequestError("expected the params field to be a JSON object, found another value")
    return value


def _save(upload: UploadFile, folder: Path, index: int) -> Path:
    """`upload` written into `folder` under a name of our own that keeps the format's extension (the client's file
    name is neither trusted as a path nor logged)."""
    name = (upload.filename or "").rsplit("/", 1)[-1].lower()
    kind = volumes.find(name)
    suffix = (
        next(e for e in kind.extensions if name.endswith(e)) if kind else (".zip" if name.endswith(".zip") else ".dcm")
    )
    target = folder / f"{index}{suffix}"
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    return target


class Viewer:
    """One request's work against the host: load a volume, segment it, answer in MONAI Label's shapes."""

    def __init__(self, host: Host) -> None:
        self.host = host
        settings = host.settings
        self.limits = volumes.Limits(settings.max_pixels, settings.max_decoded_pixels, settings.max_instances)

    def load(self, files: Sequence[Path], folder: Path) -> Loaded:
        """The volume of uploaded files: one NIfTI or NRRD, one zip of DICOM files, or DICOM files."""
        if len(files) == 1 and (kind := volumes.find(files[0].name)) is not None:
            stored = kind.read(files[0], self.limits)
            return Loaded(stored.volume(), stored.data.shape, stored.affine, dicom=False)  # type: ignore[arg-type]
        if len(files) == 1 and files[0].suffix == ".zip":
            members = folder / "zip"
            members.mkdir()
            settings = self.host.settings
            files = volumes.extract_zip(files[0], members, settings.max_instances, settings.max_request_bytes)
        return self._dicom(files)

    def _dicom(self, sources: Sequence[Path]) -> Loaded:
        volume = self.host.read_series(sources)
        return Loaded(volume, (volume.columns, volume.rows, len(volume)), patient_affine(volume), dicom=True)

    def from_pacs(self, series: str, folder: Path) -> Loaded:
        name = self.host.settings.monailabel_pacs
        if name is None:
            raise RequestError(
                "expected an uploaded file or a session for this image: this server fetches no Series Instance UID "
                "(MEDSAMIX_MONAILABEL_PACS is unset)",
                HTTPStatus.NOT_FOUND,
            )
        pacs = self.host.named_pacs(name)
        return self._dicom(self.host.fetch_series(pacs, pacs.study_of(series), series, folder))

    def infer(self, model: str, loaded: Loaded, params: dict[str, Any], output: str | None) -> Response:
        started = time.monotonic()
        extension = params.get("result_extension") or ".nii.gz"
        if extension not in RESULT_EXTENSIONS:
            raise RequestError(f"expected params.result_extension to be one of {', '.join(RESULT_EXTENSIONS)}")
        served = self.host.models[model]
        prompted = prompt_of(params, served, loaded.shape)
        result = self.host.segment_volume(loaded.volume, [prompted.prompt], model, None)
        answer = {
            "label_names": {task: value for value, task in enumerate(served.tasks, start=1)},
            "task": prompted.task,
            "model": served.name,
            "version": served.version,
            "manifest_sha256": served.model.manifest_sha256,
            "slices": [a.slice for a in result.results[0].slices],
            "voxels": sum(int(a.mask.sum()) for a in result.results[0].slices),
        }
        if output == "dicom_seg":
            if not loaded.dicom:
                raise RequestError("expected a DICOM image (a Series Instance UID or DICOM files) for output=dicom_seg")
            seg = part10(self.host.series_seg(loaded.volume, result))
            return Response(seg, media_type="application/dicom", headers=_attachment("seg.dcm"))
        answer["latencies"] = {"total": round(time.monotonic() - started, 3)}
        if output == "json":
            return JSONResponse(answer)
        labels = label_volume(result, loaded.shape, prompted.value)
        name = f"label-{uuid.uuid4().hex[:12]}{extension}"
        with tempfile.TemporaryDirectory(prefix="medsamix-label-") as scratch:
            path = Path(scratch) / name
            volumes.find(name).write(labels, loaded.affine, path)  # type: ignore[union-attr]
            data = path.read_bytes()
        media = RESULT_EXTENSIONS[extension]
        if output == "image":
            return Response(data, media_type=media, headers=_attachment(name))
        return _multipart(answer, name, data, media)


def _attachment(name: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{name}"'}


def _multipart(params: dict[str, Any], name: str, data: bytes, media: str) -> Response:
    """MONAI Label's `output=all` answer: a multipart/form-data body with the JSON `params` and the label file
    `image` (its client keeps the part that has a file name as the result file)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
        f"{json.dumps(params)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: {media}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


def routes(host: Callable[[], Host], answer: Callable[[Callable[[], Any]], Any], tokens: Tokens) -> APIRouter:
    """The MONAI Label routes over the service `host()` returns; `answer` turns a `RequestError` into the service's
    `{"error": sentence}` refusal."""
    router = APIRouter()

    @router.get("/info/", summary="MONAI Label: the app and its models (one interactive 3-D model per served model)")
    def get_info() -> Any:
        return answer(lambda: info(host().models))

    @router.get("/auth/", summary="MONAI Label: whether a token is needed (no token asked)")
    def get_auth() -> dict[str, bool]:
        return {"enabled": bool(tokens)}

    @router.post("/auth/token", summary="MONAI Label: log in; the password is the bearer token (no token asked)")
    def post_auth_token(username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "") -> Any:
        if tokens and tokens.owner(password.encode()) is not None:
            return {"access_token": password.strip(), "token_type": "bearer"}
        return JSONResponse(
            {"error": "expected the server's bearer token as the password, found another password"},
            HTTPStatus.UNAUTHORIZED,
        )

    @router.get("/auth/token/valid", summary="MONAI Label: the token is valid (the guard let the request in)")
    def get_auth_valid() -> dict[str, str]:
        return {}

    @router.get("/datastore/", summary="MONAI Label: the datastore (empty: volumes come with each request)")
    def get_datastore(output: str | None = None) -> dict[str, Any]:
        if output == "all":
            return {"name": "MedSAMix", "description": "volumes come with each request", "objects": {}}
        return {"total": 0, "completed": 0, "label_tags": {}, "train": 0}

    @router.post("/infer/{model}", summary="MONAI Label: segment a volume from clicks and a roi")
    def post_infer(
        request: Request,
        model: str,
        image: str = "",
        session_id: str = "",
        output: str | None = None,
        params: Annotated[str, Form()] = "{}",
        file: Annotated[UploadFile | None, File()] = None,
    ) -> Any:
        def compute() -> Response:
            front = host()
            front.segmenter.router.route(None, model)  # 404 for a model this server does not serve
            if output is not None and output not in OUTPUTS:
                raise RequestError(f"expected output to be one of {', '.join(OUTPUTS)}, found another value")
            values = _params(params)
            viewer = Viewer(front)
            with tempfile.TemporaryDirectory(prefix="medsamix-infer-") as scratch:
                folder = Path(scratch)
                if session_id:
                    session = front.sessions.get(request.scope.get(OWNER), session_id)
                    loaded = viewer.load(session.files, folder)
                elif file is not None:
                    loaded = viewer.load([_save(file, folder, 0)], folder)
                elif image and set(image) <= UID_CHARS and len(image) <= 64:
                    loaded = viewer.from_pacs(image, folder)
                else:
                    raise RequestError(
                        "expected an uploaded file, a session_id, or an image that is a Series Instance UID, found none"
                    )
                return viewer.infer(model, loaded, values, output)

        return answer(compute)

    @router.put("/session/", summary="MONAI Label: upload a volume once, segment it by session id")
    def put_session(request: Request, files: Annotated[list[UploadFile], File()], expiry: int = 0) -> Any:
        def compute() -> dict[str, Any]:
            front = host()
            folder = front.sessions.folder()
            try:
                saved = [_save(upload, folder, i) for i, upload in enumerate(files)]
                Viewer(front).load(saved, folder)  # refused now, not at the first infer
                shutil.rmtree(folder / "zip", ignore_errors=True)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            session = front.sessions.create(request.scope.get(OWNER), folder, saved, expiry)
            return {"session_id": session.id, "session_info": session.card()}

        return answer(compute)

    @router.get("/session/{session_id}", summary="MONAI Label: a session of this token")
    def get_session(request: Request, session_id: str, update_ts: bool = False) -> Any:
        return answer(lambda: host().sessions.get(request.scope.get(OWNER), session_id, update_ts).card())

    @router.delete("/session/{session_id}", summary="MONAI Label: delete a session of this token")
    def delete_session(request: Request, session_id: str) -> Any:
        return answer(lambda: host().sessions.remove(request.scope.get(OWNER), session_id).card())

    return router

"""The HTTP contract PACS integrators code against (pydantic; BentoML and FastAPI publish it at /docs.json)."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from typing_extensions import TypedDict

SEGMENT_LABEL_CHARS = 64  # a DICOM SegmentLabel is an LO


def check_segment_label(label: str) -> str:
    """`label` if a DICOM SegmentLabel (an LO) can hold it, else ValueError: 1 to 64 printable characters (no
    control characters), none a backslash (LO's value separator). The one rule for the prompts of every route and for
    the SEG builder, so a label `/segment` takes is one `/segment/seg` can write; the message never quotes the label."""
    if not 0 < len(label) <= SEGMENT_LABEL_CHARS:
        found = f"{len(label)} characters"
    elif "\\" in label:
        found = "a backslash"
    elif not label.isprintable():
        found = "a control or other non-printable character"
    else:
        return label
    raise ValueError(
        f"expected a label of 1 to {SEGMENT_LABEL_CHARS} printable characters without a backslash, found {found}"
    )


class Prompt(BaseModel):
    """One structure to segment, given by a box, by clicks, or by both (SAM's prompts), in the DICOM image's pixel
    coordinates (x right, y down; the image spans [0, columns] x [0, rows])."""

    model_config = ConfigDict(extra="forbid")

    box: tuple[float, float, float, float] | None = Field(
        None, description="XYXY: x0, y0, x1, y1 with x0 < x1 and y0 < y1, in pixel coordinates; optional with clicks"
    )
    foreground: list[tuple[float, float]] = Field(
        default_factory=list,
        description="clicks on the structure (SAM's point label 1), each [x, y] in the same pixel coordinates as box",
    )
    background: list[tuple[float, float]] = Field(
        default_factory=list,
        description="clicks off the structure (SAM's point label 0), each [x, y] in the same pixel coordinates as box",
    )
    frame: int = Field(0, ge=0, description="frame index of a multi-frame image (0 for single-frame images)")
    label: Annotated[str, AfterValidator(check_segment_label)] | None = Field(
        None,
        description=f"segment label (the SEG's segment name): 1 to {SEGMENT_LABEL_CHARS} printable characters without "
        "a backslash; default: the task, else 'segment'",
    )
    task: str | None = Field(
        None,
        max_length=64,
        description="route to the model merged for this task (else the default model) and use its intensity preset",
    )

    @model_validator(mode="after")
    def _has_a_prompt(self) -> Prompt:
        if self.box is None and not self.foreground and not self.background:
            raise ValueError("expected a prompt to have a box or at least one foreground or background click")
        return self


class SeriesPrompt(BaseModel):
    """One structure to segment through a series, from a box on one slice, a 3-D box, or clicks.

    Slices are indexed 0..n-1 in the order of the volume: sorted along the slice normal by position (not by
    InstanceNumber or file order). x and y are the DICOM image's pixel coordinates, as in a `Prompt`'s box."""

    model_config = ConfigDict(extra="forbid")

    box: tuple[float, float, float, float] | None = Field(
        None, description="XYXY box (x0, y0, x1, y1) on slice `slice`; propagation starts there"
    )
    slice: int | None = Field(None, ge=0, description="the slice `box` is drawn on (0-based volume index)")
    box3d: tuple[float, float, float, float, float, float] | None = Field(
        None,
        description="3-D box x0, y0, z0, x1, y1, z1: x and y as `box`, z0 <= z1 slice indices, both inclusive; "
        "propagation starts on its middle slice and stays inside it",
    )
    foreground: list[tuple[float, float, int]] = Field(
        [], description="clicks on the structure, [x, y, z] (z: slice index); used on the slices they are on"
    )
    background: list[tuple[float, float, int]] = Field([], description="clicks beside it, [x, y, z]")
    label: Annotated[str, AfterValidator(check_segment_label)] | None = Field(
        None, description="segment label, as a `Prompt`'s; default: the task, else 'segment'"
    )
    task: str | None = Field(None, max_length=64, description="as a `Prompt`'s: routing and intensity preset")
    margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="each next slice's box is the previous slice's mask's box grown on each side by this fraction of "
        "its width and height (at least one pixel)",
    )
    min_area: int = Field(
        25, ge=1, description="propagation stops in a direction at the first slice whose mask has fewer pixels"
    )

    @model_validator(mode="after")
    def _one_start(self) -> SeriesPrompt:
        if self.box3d is not None and (self.box is not None or self.slice is not None):
            raise ValueError("expected either a 3-D box or a box on a slice, found both")
        if (self.box is None) != (self.slice is None):
            raise ValueError("expected a box together with the slice it is drawn on, found only one of the two")
        if self.box is None and self.box3d is None and not self.foreground:
            raise ValueError("expected a box on a slice, a 3-D box or at least one foreground click, found none")
        return self


class Rle(BaseModel):
    """COCO's uncompressed RLE: column-major runs over an image of `size` (rows, columns), starting with 0s."""

    size: tuple[int, int]
    counts: list[int]


class PromptResult(BaseModel):
    """The mask of one prompt, in the order the prompts were sent."""

    label: str
    frame: int
    task: str | None
    model: str = Field(description="the model that segmented this prompt (a key of `models`)")
    mask: Rle
    area: int = Field(description="foreground pixels")
    iou: float = Field(description="the model's predicted IoU of its mask")


class SliceResult(BaseModel):
    """One slice a series prompt's walk segmented."""

    slice: int = Field(description="volume index (0-based, along the slice normal)")
    source: str = Field(description="SOP Instance UID of the instance the slice is in")
    frame: int = Field(description="the slice's frame in that instance (0 for single-frame instances)")
    box: tuple[float, float, float, float] | None = Field(
        description="the box this slice was prompted with (the previous slice's mask's, grown); null: clicks only"
    )
    area: int = Field(description="foreground pixels")
    iou: float = Field(description="the model's predicted IoU of its mask")
    mask: Rle | None = Field(None, description="the mask (null in a DICOMweb answer: the SEG holds it)")


class SeriesResult(BaseModel):
    """What one series prompt gave: every slice its walk segmented, in slice order."""

    label: str
    task: str | None
    model: str = Field(description="the model that segmented this prompt (a key of `models`)")
    start: int = Field(description="the slice the walk started on")
    voxels: int = Field(description="foreground voxels over all slices")
    slices: list[SliceResult]


class VolumeInfo(BaseModel):
    """The volume the series formed."""

    slices: int
    rows: int
    columns: int
    spacing: float = Field(description="mm between neighbouring slices")


class ModelRef(BaseModel):
    """Which exact model answered: its version and the sha256 of its manifest (which hashes every file)."""

    version: str
    manifest_sha256: str


class SegmentResponse(BaseModel):
    results: list[PromptResult]
    models: dict[str, ModelRef]


Uid = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]


class DicomwebStudy(BaseModel):
    """A study, or one of its series, on an allowed PACS."""

    model_config = ConfigDict(extra="forbid")

    dicomweb: str = Field(description="the PACS's DICOMweb base URL, on the server's allow-list (MEDSAMIX_DICOMWEB)")
    study: Uid = Field(description="Study Instance UID")
    series: Uid | None = Field(None, description="Series Instance UID; omit for every series of the study")


class DicomwebRequest(DicomwebStudy):
    """Segment instances of a series on a PACS and store one DICOM SEG for them back into it.

    `prompts` as a list applies to `instance` (or, without it, to every instance of the series); as a mapping
    SOP Instance UID -> prompts it names the instances itself (then `instance` is not given)."""

    series: Uid = Field(description="Series Instance UID")
    instance: Uid | None = Field(None, description="SOP Instance UID; omit to segment the whole series")
    prompts: list[Prompt] | dict[Uid, list[Prompt]]
    model: str | None = Field(None, description="serve every prompt with this model (else routing by task)")
    preset: str | None = Field(None, description="force an intensity preset")


class StoredSeg(BaseModel):
    """The DICOM SEG the service stored into the PACS (STOW-RS)."""

    study: str = Field(description="Study Instance UID (the source's)")
    series: str = Field(description="Series Instance UID (new, one per SEG)")
    instance: str = Field(description="SOP Instance UID")


class InstanceResult(BaseModel):
    source: str = Field(description="the segmented image's SOP Instance UID")
    seg: StoredSeg = Field(description="the request's one SEG, which holds this instance's masks")
    results: list[PromptResult]


class DicomwebResponse(BaseModel):
    instances: list[InstanceResult]
    models: dict[str, ModelRef]


class SeriesResponse(BaseModel):
    volume: VolumeInfo
    results: list[SeriesResult]
    models: dict[str, ModelRef]


class DicomwebSeriesRequest(DicomwebStudy):
    """Segment a whole series on a PACS from prompts on its volume and store one DICOM SEG for it back."""

    series: Uid = Field(description="Series Instance UID")
    prompts: list[SeriesPrompt]
    model: str | None = Field(None, description="serve every prompt with this model (else routing by task)")
    preset: str | None = Field(None, description="force an intensity preset")


class DicomwebSeriesResponse(BaseModel):
    seg: StoredSeg = Field(description="the one SEG stored for the series")
    volume: VolumeInfo
    results: list[SeriesResult]
    models: dict[str, ModelRef]


class InstanceRef(BaseModel):
    """An instance `POST /segment/dicomweb/instances` found: its Series and SOP Instance UIDs."""

    series: str
    instance: str


class ModelCard(BaseModel):
    """A served model as `GET /models` lists it."""

    name: str
    version: str
    manifest_sha256: str
    tasks: list[str]
    single_task: bool = Field(description="merged for one task: prompts naming that task are routed to it")
    default: bool = Field(description="serves prompts that name no model and no single-task model's task")
    intensity_presets: dict[str, str]
    scores: dict[str, Any]
    prompt_kinds: list[str] = Field(description="the prompt kinds the model takes: 'box', 'points' (clicks)")
    scored_prompts: list[str] = Field(
        description="the prompt kinds its scores and quality gate were measured with; the others are served unscored"
    )
    providers: list[str] = Field(description="onnxruntime execution providers the sessions run on")
    manifest: dict[str, Any]


class RefusedModel(BaseModel):
    """A folder of the model store that is not served, and the one sentence why."""

    name: str = Field(description="the folder's name")
    reason: str


class ModelList(BaseModel):
    """What `GET /models` answers: the served models, and the store's folders that were refused at start."""

    models: list[ModelCard]
    refused: list[RefusedModel]


class EncodeJob(TypedDict):
    """One image for the encoder service: the model's name, its uint8 (S, S, 3) model input and the (h, w) the
    image was resized to inside it (an internal payload between the two services)."""

    model: str
    image: Any
    resized: tuple[int, int]


def field_names(models: Iterable[type[BaseModel]]) -> frozenset[str]:
    """Every field name of `models` and of the models their fields hold (lists, unions, mappings included): the
    only path steps a refusal may repeat back to a client."""
    names: set[str] = set()
    pending = list(models)
    seen: set[type] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            annotations = [field.annotation]
            while annotations:
                annotation = annotations.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    pending.append(annotation)
                annotations.extend(typing.get_args(annotation))
    return frozenset(names)

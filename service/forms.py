"""The multipart forms of the upload routes, read by this service instead of BentoML's generic parser.

BentoML's multipart serde fetches a file field sent as a URL (a request the server would make on a client's
behalf), lets the last of two same-named text fields win and the first of two files, answers 500 to anything its
JSON step or the form parser refuses (`"[" * 3000`, a 5,000-digit number, a missing boundary, too many or too large
parts), and reads an upload whole into memory to copy it to a temporary file. Here: uploaded files only, each field
at most once, text fields parsed as JSON where the field is not plain text, every refusal a 400 (413 for a part
over its size) of one sentence that names the field, never its value, and an upload copied to the request's
temporary folder in chunks (Starlette has already spooled it to disk past 1 MiB).
"""

from __future__ import annotations

import json
import tempfile
import types
import typing
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from bentoml.exceptions import BadInput, BentoMLException
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

__all__ = ["MAX_PARTS", "MAX_TEXT_BYTES", "TooLarge", "UploadForm", "install"]

MAX_TEXT_BYTES = 1024 * 1024  # one text part (prompts for the most prompts a server takes are a few kB)
MAX_PARTS = 16  # text parts of one form: the routes declare four fields
_COPY_CHUNK = 1024 * 1024


class TooLarge(BentoMLException):
    """A part of the form is larger than this service reads."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UploadForm(MultipartSerde):
    """Parses `multipart/form-data` (and url-encoded) bodies for the API's input model `cls`."""

    @staticmethod
    async def ensure_file(obj: str | UploadFile, name: str = "file") -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise BadInput(f"the field '{name}' must be an uploaded file (a multipart file part), not text or a URL")

    #: Files one field of a list of files (a series upload) may hold; `install` sets the server's limit.
    max_files: typing.ClassVar[int] = 1

    async def parse_request(self, request: Request, cls: Any) -> Any:
        files = set(cls.multipart_fields)
        lists = {name for name in files if typing.get_origin(cls.model_fields[name].annotation) is list}
        allowed = {name: self.max_files if name in lists else 1 for name in cls.model_fields}
        # One file more than allowed, so a repeated or one-too-many file gets its own sentence.
        form = await _read_form(request, files=sum(allowed[name] for name in files) + 1, series=bool(lists))
        counts: dict[str, int] = {}
        for name, _ in form.multi_items():
            counts[name] = counts.get(name, 0) + 1
        for name in cls.model_fields:
            if counts.get(name, 0) > allowed[name] == 1:
                raise BadInput(f"expected the field '{name}' once, found it {counts[name]} times")
            if counts.get(name, 0) > allowed[name]:
                raise TooLarge(
                    f"expected at most {allowed[name]} files in the field '{name}' (this server's limit of instances "
                    f"per request), found {counts[name]}"
                )
        data: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name not in cls.model_fields:
                continue  # a field the route does not declare is ignored (and its name never repeated)
            if name in lists:
                data.setdefault(name, []).append(await _spool(await self.ensure_file(value, name)))
            elif name in files:
                data[name] = await _spool(await self.ensure_file(value, name))
            elif isinstance(value, UploadFile):
                raise BadInput(f"expected the field '{name}' as text, found a file part")
            elif _is_text(cls.model_fields[name].annotation):
                data[name] = value
            else:
                data[name] = _json(name, value)
        return cls.model_validate(data)


async def _read_form(request: Request, files: int, series: bool) -> FormData:
    """The parsed form within this service's limits, or one sentence naming the limit it broke; more files than a
    route with a list of files takes (`series`) is a 413 (the limit of instances per request), more than a
    one-file route takes is a malformed form (400)."""
    try:
        return await request.form(max_files=files, max_fields=MAX_PARTS, max_part_size=MAX_TEXT_BYTES)
    except (HTTPException, MultiPartException) as error:
        reason = str(getattr(error, "detail", None) or getattr(error, "message", "") or "malformed")
        if series and "maximum number of files" in reason.lower():
            raise TooLarge(
                f"expected at most {files - 1} file(s) in the form (this server's limit of instances per request), "
                "found more"
            ) from None
        sentence = (
            f"expected a multipart/form-data body with a boundary, at most {MAX_PARTS} text fields of at most "
            f"{MAX_TEXT_BYTES} bytes each and at most {files - 1} file(s), found one this server cannot read "
            f"({reason.rstrip('.').replace('. ', '; ').lower()})"
        )
        raise (TooLarge if "exceeded maximum size" in reason else BadInput)(sentence) from None


async def _spool(upload: UploadFile) -> Path:
    """The upload copied, in chunks, to a file in the request's temporary folder (removed with the request); the
    client's file name is not used."""
    handle, name = tempfile.mkstemp(suffix=".dcm", dir=bentoml.Context().temp_dir)
    with open(handle, "wb") as out:
        while chunk := await upload.read(_COPY_CHUNK):
            out.write(chunk)
    return Path(name)


def _is_text(annotation: Any) -> bool:
    """Whether a field is plain text (str, or str | None): its value is taken as sent, not parsed as JSON."""
    if annotation is str:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation)) <= {str, type(None)}
    return False


def _json(name: str, text: str) -> Any:
    """A text field's JSON, or a 400 naming the field (json raises RecursionError past ~1000 levels of nesting
    and ValueError for numbers past Python's 4300-digit limit: both are the client's input, not a server fault)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(
            f"expected the field '{name}' to hold JSON, found text that is not JSON or is nested or numbered beyond "
            "what this server parses"
        ) from None


def install(max_files: int) -> None:
    """Make this parser the one BentoML uses for multipart and url-encoded bodies, taking at most `max_files` files
    in a field that holds a list of them."""
    UploadForm.max_files = max_files
    for media_type, serde in list(ALL_SERDE.items()):
        if serde is MultipartSerde:
            ALL_SERDE[media_type] = UploadForm  # type: ignore[index]

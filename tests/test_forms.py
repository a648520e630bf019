"""`service/forms.py` replaces BentoML's multipart parser through a private registry (`_bentoml_impl.serde`). These
tests pin what that patch relies on, so that a BentoML upgrade that moves it fails here with a sentence naming what
changed, not later as a silent return to BentoML's own parser (URL fetching, last-field-wins, 500s)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from _bentoml_impl import serde
from _bentoml_impl.server.app import ServiceAppFactory
from starlette.requests import Request

FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
BOUNDARY = "medsamix-test-boundary"


def _service() -> Any:
    """The served module, imported only here (it installs the parser as `bentoml serve` does), so that a BentoML
    without the patch's target fails the tests below with their own sentence."""
    import service.service

    return service.service


def test_the_registry_the_patch_overrides_is_still_there() -> None:
    assert hasattr(serde, "ALL_SERDE") and hasattr(serde, "MultipartSerde"), (
        "BentoML's _bentoml_impl.serde no longer defines ALL_SERDE and MultipartSerde: service/forms.py cannot "
        "replace its multipart parser"
    )
    upload_form = _service().forms.UploadForm
    assert isinstance(serde.ALL_SERDE, dict), (
        f"_bentoml_impl.serde.ALL_SERDE is a {type(serde.ALL_SERDE).__name__}, no longer a dict that forms.install "
        "can write into"
    )
    for media_type in FORM_MEDIA_TYPES:
        assert serde.ALL_SERDE.get(media_type) is upload_form, (
            f"BentoML's serde registry does not map {media_type} to service.forms.UploadForm after forms.install: "
            "its key or its original class (MultipartSerde) changed"
        )
    assert serde.MultipartSerde.__init__ is object.__init__, (
        "BentoML's MultipartSerde now takes constructor arguments; its server builds UploadForm() without any"
    )


def test_the_server_looks_the_serde_up_per_request() -> None:
    """The patch works only because the server resolves the parser from the registry on every request (a copy
    taken at import, or another lookup, would bypass it)."""
    source = inspect.getsource(ServiceAppFactory.api_endpoint)
    assert "ALL_SERDE.get(media_type" in source, (
        "BentoML's ServiceAppFactory.api_endpoint no longer looks its parser up in _bentoml_impl.serde.ALL_SERDE by "
        "media type: service/forms.py's parser would not be used"
    )


@pytest.mark.parametrize(
    ("method", "parameters"),
    [("parse_request", ["self", "request", "cls"]), ("ensure_file", ["obj"])],
)
def test_the_overridden_methods_keep_their_signatures(method: str, parameters: list[str]) -> None:
    original = getattr(serde.MultipartSerde, method, None)
    assert original is not None, f"BentoML's MultipartSerde no longer has {method}, which UploadForm overrides"
    found = list(inspect.signature(original).parameters)
    assert found == parameters, (
        f"BentoML's MultipartSerde.{method} now takes {found}, UploadForm's override was written for {parameters}"
    )


def test_the_input_models_still_declare_their_file_fields() -> None:
    spec = _service().MedSAMix.apis["segment"].input_spec
    assert getattr(spec, "multipart_fields", None) == ["file"], (
        "BentoML's input models no longer list their file fields in `multipart_fields` (UploadForm reads them)"
    )


def _form(parts: list[tuple[str, str]]) -> Request:
    """A multipart request whose text parts are `parts` (name, value), as the server would hand it over."""
    body = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n' for name, value in parts
    )
    data = (body + f"--{BOUNDARY}--\r\n").encode()
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/segment",
        "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    return Request(scope, receive)


def _parse(parts: list[tuple[str, str]]) -> Any:
    """What the server does with a form body: the registry's parser for its media type, through the route's
    input model."""
    spec = _service().MedSAMix.apis["segment"].input_spec
    parser = serde.ALL_SERDE.get("multipart/form-data", serde.ALL_SERDE["application/json"])()
    return asyncio.run(spec.from_http_request(_form(parts), parser))


@pytest.mark.parametrize(
    ("parts", "sentence"),
    [
        # BentoML's parser would fetch this URL on the client's behalf.
        ([("file", "http://127.0.0.1:9/x.dcm"), ("prompts", "[]")], "must be an uploaded file"),
        # BentoML's parser would keep the last of the two.
        ([("model", "a"), ("model", "b"), ("prompts", "[]")], "expected the field 'model' once, found it 2 times"),
        # BentoML's parser answers 500 to JSON nested past Python's recursion limit.
        ([("prompts", "[" * 3000)], "expected the field 'prompts' to hold JSON"),
    ],
)
def test_after_the_patch_forms_are_read_by_the_services_rules(parts: list[tuple[str, str]], sentence: str) -> None:
    try:
        _parse(parts)
        answer = "accepted"
    except Exception as error:  # whatever BentoML's own parser would raise instead, named in the failure
        answer = repr(error)
    assert sentence in answer, (
        f"a form the service's parser refuses with '{sentence}' was {answer}: BentoML's own parser ran instead of "
        "service.forms.UploadForm"
    )

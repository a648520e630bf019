"""The ASGI guard in front of every route: the optional bearer token and the request-size limit.

It runs before BentoML parses a body, so an oversize upload is refused without being read into memory or onto disk,
and a request without the token learns nothing else about the server. Probes (/livez, /readyz, /metrics) stay open
so an orchestrator can check the service without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


async def send_error(send: Send, status: HTTPStatus, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON `{"error": message}` response: the shape every refusal of this service has."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Refuses (401) requests without `Authorization: Bearer <token>` when a token is set, compared in constant
    time, and (413) bodies over `max_bytes`: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, token: str | None, max_bytes: int) -> None:
        self.app = app
        self.token = hashlib.sha256(token.encode()).digest() if token else None
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and not self._authorized(headers.get(b"authorization", b"")):
            await send_error(
                send,
                HTTPStatus.UNAUTHORIZED,
                "this server needs a bearer token: send the header 'Authorization: Bearer <token>' with the token "
                "it was configured with",
                [(b"www-authenticate", b'Bearer realm="medsamix"')],
            )
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large())
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_bounded(receive)
            if body is None:
                await send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large())
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        # Digests of equal length: compare_digest then takes the same time whatever the token sent, even its length.
        valid = hmac.compare_digest(hashlib.sha256(credentials.strip()).digest(), self.token)  # type: ignore[arg-type]
        return valid and scheme.lower() == b"bearer"

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_bytes} bytes per request)"

    async def _read_bounded(self, receive: Receive) -> bytes | None:
        """A chunked body read whole if it stays within the limit, else None (the rest is not read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive_more: Receive) -> Receive:
    """The body already read, then whatever the connection says next (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await receive_more()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _Rewrite:
    """Buffers the responses `wants` picks and sends `rewrite(body)` in their place (same status and
    headers, the length corrected); every other response passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, scope: Scope, start: Message) -> bool:
        raise NotImplementedError

    def rewrite(self, body: bytes) -> bytes:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and self.wants(scope, message):
                start = message
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = self.rewrite(b"".join(chunks))
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        await self.app(scope, receive, capture)


class OneSentence(_Rewrite):
    """Rewrites BentoML's own 4xx bodies (a list around `{"error": ...}`, or pydantic's validation report) into
    this service's shape, `{"error": "one sentence"}`, so a client handles every refusal the same way."""

    def wants(self, scope: Scope, start: Message) -> bool:
        content_type = dict(start.get("headers", [])).get(b"content-type", b"")
        return 400 <= start["status"] < 500 and content_type.startswith(b"application/json")

    def rewrite(self, body: bytes) -> bytes:
        return json.dumps({"error": _sentence(body)}).encode()


def _sentence(body: bytes) -> str:
    """One sentence out of a JSON error body; validation reports name each bad field by its path."""
    try:
        data = json.loads(body)
    except ValueError:
        return "the request was refused"
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return "the request was refused"
    details = data.get("detail")
    if isinstance(details, list) and details:
        fields = [
            f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', 'invalid')}" for d in details if isinstance(d, dict)
        ]
        return "the request's fields do not match the API (" + "; ".join(fields) + ")"
    return str(data.get("error") or data.get("detail") or "the request was refused")


ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "properties": {"error": {"type": "string", "description": "one sentence: what was expected and what was found"}},
    "required": ["error"],
}


class DocumentedErrors(_Rewrite):
    """Completes the OpenAPI document BentoML serves at /docs.json with what this service really answers: the
    refusals of each route (`{"error": sentence}` with their statuses, which BentoML's generator does not know)
    and, when a token is set, the bearer scheme."""

    def __init__(self, app: ASGIApp, errors: Mapping[str, Sequence[int]], bearer: bool) -> None:
        super().__init__(app)
        self.errors = errors
        self.bearer = bearer

    def wants(self, scope: Scope, start: Message) -> bool:
        return scope["path"] == "/docs.json" and start["status"] == 200

    def rewrite(self, body: bytes) -> bytes:
        return json.dumps(self.complete(json.loads(body))).encode()

    def complete(self, spec: dict[str, Any]) -> dict[str, Any]:
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, statuses in self.errors.items():
            for operation in spec.get("paths", {}).get(path, {}).values():
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": reference}
        if self.bearer:
            components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, item in spec.get("paths", {}).items():
                if path not in OPEN_PATHS:
                    for operation in item.values():
                        operation["security"] = [{"bearer": []}]
        return spec

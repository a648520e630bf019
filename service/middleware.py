"""The ASGI guard in front of every route, and the middlewares that put BentoML's answers into this service's shape.

The guard runs before BentoML reads a body: a request without the token learns nothing else about the server, a
body framed two ways at once or in a content coding is refused before it is read, and the body is counted as it
is received (chunked or not), never buffered, so an upload past the limit is cut off where it crosses it. Once a
body is in, the guard watches the connection and tells the request's work (`service.cancellation`) when its
client leaves. Probes (/livez, /readyz, /metrics) need no token, so an orchestrator can check the service without
the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

from service import __version__, cancellation

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
# MONAI Label's login: a viewer asks whether the server wants credentials (GET /auth/) and trades them for a token
# (POST /auth/token) before it sends any token, so these two answer without one (`service.monailabel`).
LOGIN_PATHS = frozenset({"/auth/", "/auth/token"})
#: Where the guard leaves, in the ASGI scope, who the request's token names (`Tokens.owner`); None without tokens.
OWNER = "medsamix.owner"
DISCONNECT: Message = {"type": "http.disconnect"}
# Sent with an answer given before the body was read: the server closes the connection instead of reading on.
CLOSE = (b"connection", b"close")


async def send_error(send: Send, status: HTTPStatus, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
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
    """Refuses, before any body is read: 401 without `Authorization: Bearer <token>` (when a token is set; compared
    in constant time); 400 for a body framed by both Content-Length and Transfer-Encoding (RFC 9112 6.3: a request
    smuggling vector) or a malformed length; 415 for a Content-Encoding (a compressed body would be inflated past
    any limit counted on the wire); 413 for a declared length over `max_bytes`. Then counts the body as it arrives
    and answers 413 where it crosses `max_bytes`, whatever the framing said."""

    def __init__(self, app: ASGIApp, token: str | None, max_bytes: int) -> None:
        self.app = app
        self.tokens = Tokens(token)
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:  # the body was not read: close the connection rather than drain it
            status, sentence, headers = refusal
            await send_error(send, status, sentence, [*headers, CLOSE])
            return
        with cancellation.watching() as gone:
            body = _CountedBody(receive, self.max_bytes, gone)
            replies = _Replies(send, body)
            try:
                await self.app(scope, body.receive, replies.send)
            finally:
                body.stop_watching()
        if body.over_limit and not replies.started:
            await send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large(), [CLOSE])

    def _refusal(self, scope: Scope) -> tuple[HTTPStatus, str, list[tuple[bytes, bytes]]] | None:
        """(status, sentence, headers) of a request refused on its headers alone, or None."""
        headers = _headers(scope)
        scope[OWNER] = None
        if self.tokens and scope["path"] not in OPEN_PATHS | LOGIN_PATHS:
            scope[OWNER] = self._owner(headers.get(b"authorization", [b""])[-1])
            if scope[OWNER] is None:
                sentence = (
                    "this server needs a bearer token: send the header 'Authorization: Bearer <token>' with the "
                    "token it was configured with"
                )
                return HTTPStatus.UNAUTHORIZED, sentence, [(b"www-authenticate", b'Bearer realm="medsamix"')]
        lengths = headers.get(b"content-length", [])
        if lengths and b"transfer-encoding" in headers:
            sentence = "expected a body framed by either Content-Length or Transfer-Encoding, found both"
            return HTTPStatus.BAD_REQUEST, sentence, []
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            sentence = "expected one Content-Length of decimal digits, found a malformed or repeated one"
            return HTTPStatus.BAD_REQUEST, sentence, []
        if any(coding.strip().lower() not in (b"", b"identity") for coding in headers.get(b"content-encoding", [])):
            sentence = "expected an uncompressed body (no Content-Encoding), found a content coding"
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, sentence, []
        if lengths and int(lengths[0]) > self.max_bytes:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._too_large(), []
        return None

    def _owner(self, header: bytes) -> str | None:
        scheme, _, credentials = header.partition(b" ")
        owner = self.tokens.owner(credentials)
        return owner if scheme.lower() == b"bearer" else None

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_bytes} bytes per request)"


class Tokens:
    """The bearer tokens a server accepts (MEDSAMIX_TOKEN: one, or several separated by commas, one per client), held
    as sha256 digests. A token's owner is a digest of it: what a request's sessions belong to, never the token."""

    def __init__(self, raw: str | None) -> None:
        tokens = [t.strip() for t in (raw or "").split(",") if t.strip()]
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def owner(self, credential: bytes) -> str | None:
        """The owner of `credential` if it is one of the tokens, else None. Every token is compared, each in constant
        time over digests of equal length, so the time taken says nothing about which token, or how much of one,
        matched."""
        digest = hashlib.sha256(credential.strip()).digest()
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        return hashlib.sha256(b"owner:" + digest).hexdigest()[:32] if any(matches) else None


def _headers(scope: Scope) -> dict[bytes, list[bytes]]:
    """Header name -> every value sent under it (a repeated header is a framing question, not 'the last wins')."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


class _CountedBody:
    """The request body as the app reads it, counted. Past `limit` bytes the app is told the client left (so it
    stops reading and the guard answers 413). Once the body is complete, one task waits on the connection and sets
    `gone` if the client leaves; the app's own later reads (Starlette asks only to learn of a disconnect) wait for
    that instead of competing for the connection's next message."""

    def __init__(self, receive: Receive, limit: int, gone: threading.Event) -> None:
        self._receive = receive
        self._limit = limit
        self._gone = gone
        self._left = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.received = 0
        self.over_limit = False

    async def receive(self) -> Message:
        if self.over_limit or self._left.is_set():
            return DISCONNECT
        if self._watcher is not None:
            await self._left.wait()
            return DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._leave()
        elif message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._limit:
                self.over_limit = True
                return DISCONNECT
            if not message.get("more_body", False):
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return message

    async def _watch(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._leave()

    def _leave(self) -> None:
        self._left.set()
        self._gone.set()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


class _Replies:
    """The app's `send`, except once the body went over the limit: the app's answer to the disconnect it was then
    shown is dropped, and the guard answers 413 in its place."""

    def __init__(self, send: Send, body: _CountedBody) -> None:
        self._send = send
        self._body = body
        self.started = False

    async def send(self, message: Message) -> None:
        if self._body.over_limit:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class _Rewrite:
    """Buffers the responses `wants` picks and sends `rewrite(start, body)` in their place (same status and
    headers, the length corrected, and the content type `media_type` when one is set); every other response
    passes through untouched."""

    media_type: bytes | None = None

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, scope: Scope, start: Message) -> bool:
        raise NotImplementedError

    def rewrite(self, start: Message, body: bytes) -> bytes:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        replaced = {b"content-length"} | ({b"content-type"} if self.media_type else set())

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and self.wants(scope, message):
                start = message
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = self.rewrite(start, b"".join(chunks))
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
                    headers.append((b"content-length", str(len(body)).encode()))
                    if self.media_type:
                        headers.append((b"content-type", self.media_type))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        await self.app(scope, receive, capture)


class OneSentence(_Rewrite):
    """Rewrites BentoML's own 4xx bodies (a list around `{"error": ...}`, or pydantic's validation report) into
    this service's shape, `{"error": "one sentence"}`, so a client handles every refusal the same way.

    A validation report names the bad field by its path; a path step that is not one of the API's own field names
    (`fields`) is a key the client chose (an extra field, a mapping key such as a UID) and is never repeated."""

    def __init__(self, app: ASGIApp, fields: Collection[str]) -> None:
        super().__init__(app)
        self.fields = frozenset(fields)

    def wants(self, scope: Scope, start: Message) -> bool:
        content_type = dict(start.get("headers", [])).get(b"content-type", b"")
        return 400 <= start["status"] < 500 and content_type.startswith(b"application/json")

    def rewrite(self, start: Message, body: bytes) -> bytes:
        return json.dumps({"error": self.sentence(body)}).encode()

    def sentence(self, body: bytes) -> str:
        """One sentence out of a JSON error body."""
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
                f"{self.path(d.get('loc', ()))}: {d.get('msg', 'invalid')}" for d in details if isinstance(d, dict)
            ]
            return "the request's fields do not match the API (" + "; ".join(fields) + ")"
        return str(data.get("error") or data.get("detail") or "the request was refused")

    def path(self, loc: Sequence[object]) -> str:
        """A validation error's location: list indices and the API's field names; a client's own key is '<key>'.
        pydantic also puts a union member's type (e.g. 'list[Prompt]') into the path: not a step the client wrote."""
        steps = []
        for step in loc:
            if isinstance(step, int) or step in self.fields:
                steps.append(str(step))
            elif not (isinstance(step, str) and step.endswith("]") and "[" in step):
                steps.append("<key>")
        return ".".join(steps) or "request"


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

    def rewrite(self, start: Message, body: bytes) -> bytes:
        return json.dumps(self.complete(json.loads(body))).encode()

    def complete(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec.setdefault("info", {})["version"] = __version__  # BentoML's is the Bento's tag: "None" when served
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


class Readiness(_Rewrite):
    """Gives /readyz a body an operator can read where the orchestrator looks: `{"ready": bool, "models": [...],
    "refused": {folder: why}}` (the status stays BentoML's). `report` returns the service's own account, or None
    before the service is up."""

    media_type = b"application/json"

    def __init__(self, app: ASGIApp, report: Callable[[], Mapping[str, Any] | None]) -> None:
        super().__init__(app)
        self.report = report

    def wants(self, scope: Scope, start: Message) -> bool:
        return scope["path"] == "/readyz"

    def rewrite(self, start: Message, body: bytes) -> bytes:
        return json.dumps(
            {"ready": start["status"] == 200, **(self.report() or {"models": [], "refused": {}})}
        ).encode()

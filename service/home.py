"""GET /: this server's own page, in place of BentoML's stock one (which loads Google Tag Manager).

A server that handles patient images loads nothing from a third party: the page is one self-contained HTML
document (inline style, no script, font or image) saying what the server is, which models it serves and how a
PACS or a viewer reaches it. Every value shown is the store's or the product's, never a request's, and is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from service import __version__
from service.middleware import ASGIApp, Receive, Scope, Send
from service.schemas import ModelList

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .6rem;text-align:left}"
    "code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow-x:auto}"
)


def _models(listing: ModelList | None) -> str:
    if listing is None:
        return "<p>The models are still loading.</p>"
    if not listing.models:
        rows = "<p>No model is served.</p>"
    else:
        cells = "".join(
            f"<tr><td>{escape(card.name)}{' (default)' if card.default else ''}</td><td>{escape(card.version)}</td>"
            f"<td>{escape(', '.join(card.tasks) or '-')}</td><td>{escape(', '.join(card.prompt_kinds))}</td></tr>"
            for card in listing.models
        )
        rows = f"<table><tr><th>model</th><th>version</th><th>tasks</th><th>prompts</th></tr>{cells}</table>"
    refused = "".join(f"<li>{escape(r.name)}: {escape(r.reason)}</li>" for r in listing.refused)
    return rows + (f"<p>Folders of the model store not served:</p><ul>{refused}</ul>" if refused else "")


def render(listing: ModelList | None) -> str:
    """The page, given the service's model listing (None before the service is up)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MedSAMix {__version__}</title><style>{STYLE}</style></head>
<body>
<h1>MedSAMix {__version__}</h1>
<p>Segment-Anything models merged for medical tasks without training, served over HTTP: send a DICOM image and
prompts (boxes, clicks), get masks or a DICOM SEG back.</p>
<h2>Models</h2>
{_models(listing)}
<p>The same as JSON: <a href="/models">/models</a>. The HTTP API (OpenAPI): <a href="/docs.json">/docs.json</a>.
Health: <a href="/livez">/livez</a>, <a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a>.</p>
<h2>From a PACS (DICOMweb)</h2>
<p>Post a study's instance to <code>/segment/dicomweb</code>: the server fetches it from the PACS (one on its
allow-list, <code>MEDSAMIX_DICOMWEB</code>), segments it and stores one DICOM SEG there. A whole series from one prompt:
<code>/segment/dicomweb/series</code>.</p>
<pre>{{"dicomweb": "PACS URL", "study": "1.2...", "series": "1.2...", "instance": "1.2...",
 "prompts": [{{"box": [x0, y0, x1, y1], "task": "TASK", "label": "LABEL"}}]}}</pre>
<h2>From a viewer (3D Slicer, OHIF)</h2>
<p>This server speaks the MONAI Label protocol: in 3D Slicer's MonaiLabel module, or OHIF's MONAI Label panel,
give this server's address as the MONAI Label server; its models appear as segmentation models taking a box or
clicks.</p>
<h2>One image</h2>
<pre>curl -s THIS_SERVER/segment -F file=@image.dcm -F 'prompts=[{{"box": [x0, y0, x1, y1], "task": "TASK"}}]'</pre>
</body></html>
"""


class HomePage:
    """Answers GET and HEAD of / with `render(listing())`; every other request passes to the app untouched."""

    def __init__(self, app: ASGIApp, listing: Callable[[], ModelList | None]) -> None:
        self.app = app
        self.listing = listing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = render(self.listing()).encode()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

"""`medsamix segment`: segment a PACS study through a running MedSAMix server, one instance per request.

The server does the PACS work (its allow-list holds the PACS credentials, which never reach this machine): this
module asks it for the study's instances (`POST /segment/dicomweb/instances`), then calls `POST /segment/dicomweb`
once per instance, so a progress bar can follow a long series and one bad instance does not sink the others.
Standard library HTTP only: the command needs neither torch nor the serve extra.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from search.errors import MedSAMixError
from service.schemas import InstanceRef, Prompt, Uid

PromptsFile = list[Prompt] | dict[Uid, list[Prompt]]
# A refusal every further call would repeat: stop instead of failing each instance the same way.
FATAL = (401, 403)


def load_prompts(path: Path) -> list[Prompt] | dict[str, list[Prompt]]:
    """prompts.json: a list of prompts for every instance, or a mapping SOP Instance UID -> prompts."""
    try:
        return TypeAdapter(PromptsFile).validate_json(path.read_bytes())
    except OSError as error:
        raise MedSAMixError(f"cannot read the prompts file {path} ({error.strerror})") from None
    except ValidationError as error:
        raise MedSAMixError(
            f"{path} should hold a list of prompts or a mapping SOP Instance UID -> prompts, found "
            f"{error.error_count()} problem(s), the first at {'.'.join(map(str, error.errors()[0]['loc']))}"
        ) from None


class ServerError(MedSAMixError):
    """The server refused a call; `status` is its HTTP status, the message its one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the server answered {status}: {message}")
        self.status = status
        self.sentence = message


@dataclass
class Client:
    """A MedSAMix server: base URL, optional bearer token, seconds to wait per call."""

    url: str
    token: str | None
    timeout: float

    def post(self, path: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServerError(error.code, _sentence(error.read())) from None
        except (urllib.error.URLError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise MedSAMixError(f"cannot reach the MedSAMix server at {self.url} ({reason})") from None


def _sentence(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return "no explanation"


@dataclass
class Outcome:
    """Each instance's answer (or refusal), in the order they were sent."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def plan(
    refs: list[InstanceRef], prompts: list[Prompt] | dict[str, list[Prompt]]
) -> list[tuple[InstanceRef, list[Prompt]]]:
    """Each instance to segment with its prompts: all of `refs` for a list, the named ones for a mapping."""
    if isinstance(prompts, list):
        return [(ref, prompts) for ref in refs]
    known = {ref.instance: ref for ref in refs}
    missing = [uid for uid in prompts if uid not in known]
    if missing:
        raise MedSAMixError(
            f"expected every SOP Instance UID of the prompts file in the study, found {len(missing)} of "
            f"{len(prompts)} missing from it"
        )
    return [(known[uid], instance_prompts) for uid, instance_prompts in prompts.items()]


def segment(
    client: Client,
    dicomweb: str,
    study: str,
    series: str | None,
    prompts: list[Prompt] | dict[str, list[Prompt]],
    options: dict[str, str],
    progress: Callable[[Iterable[Any]], Iterable[Any]],
) -> Outcome:
    """Segment every planned instance; `options` are `model`/`preset`, `progress` wraps the iteration."""
    listed = client.post("/segment/dicomweb/instances", {"dicomweb": dicomweb, "study": study, "series": series})
    work = plan([InstanceRef.model_validate(item) for item in listed], prompts)
    outcome = Outcome()
    for ref, instance_prompts in progress(work):
        body = {
            "dicomweb": dicomweb,
            "study": study,
            "series": ref.series,
            "instance": ref.instance,
            "prompts": [p.model_dump(exclude_none=True) for p in instance_prompts],
            **options,
        }
        try:
            outcome.answers.append(client.post("/segment/dicomweb", body))
        except ServerError as error:
            if error.status in FATAL:
                raise
            outcome.failures.append({"instance": ref.instance, "status": error.status, "error": error.sentence})
    return outcome

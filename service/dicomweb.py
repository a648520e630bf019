"""The PACS side of `POST /segment/dicomweb`: the allow-list of DICOMweb servers and the three calls made to one.

The allow-list is a YAML (or JSON) file named by `MEDSAMIX_DICOMWEB`: each allowed PACS has a name, its base URL
and its credentials, so a request names a PACS by URL and never carries (or chooses) credentials, and the service
contacts no other host. Calls go through `dicomweb-client` (QIDO-RS to list a series, WADO-RS to retrieve an
instance as the PACS stores it, STOW-RS to store a SEG), each with the PACS's timeout and no retries, over a
`PacsSession`: it follows no redirect (the allow-list is final) and reads every answer streaming, up to a byte limit.

Failures become `RequestError`s: 504 when the PACS did not answer in time, 404 when it has no such instance, 502
for anything else it answered (a redirect, an answer past the byte limit) or when it could not be reached. Their
sentences name the PACS and the HTTP status, never a UID, a URL or a credential; `dicomweb_client`'s own log
records, which quote UIDs, reach the log without their text (`service.redaction`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pydicom
import requests
import urllib3
import yaml
from dicomweb_client.api import DICOMwebClient
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from service.dicom import part10
from service.errors import RequestError

__all__ = ["DicomwebConfig", "Pacs", "PacsConfig", "load_config", "normalize_url"]


SOP_INSTANCE_UID = "00080018"
SERIES_INSTANCE_UID = "0020000E"
STUDY_INSTANCE_UID = "0020000D"


def normalize_url(url: str) -> str:
    """The form URLs are compared in: no trailing slash."""
    return url.strip().rstrip("/")


class PacsConfig(BaseModel):
    """One allowed PACS: its DICOMweb base URL and either HTTP basic credentials or a bearer token (or neither)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", description="the DICOMweb base URL (QIDO/WADO/STOW share it)")
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    timeout: float = Field(30.0, gt=0, description="seconds to wait for each connect and each read")

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> PacsConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        if self.token is not None and self.username is not None:
            raise ValueError("give either username/password or token, not both")
        return self


class DicomwebConfig(BaseModel):
    """The allow-list: PACS name -> its configuration."""

    model_config = ConfigDict(extra="forbid")

    pacs: dict[str, PacsConfig]

    def find(self, url: str, max_bytes: int) -> Pacs:
        """The allowed PACS at `url`, taking answers of at most `max_bytes`, or 403 (the URL is never contacted)."""
        wanted = normalize_url(url)
        for name, config in self.pacs.items():
            if normalize_url(config.url) == wanted:
                return Pacs(name, config, max_bytes)
        raise RequestError(
            f"expected the DICOMweb URL of a PACS this server is configured for ({len(self.pacs)} allowed), found a "
            "URL that is not on its allow-list",
            HTTPStatus.FORBIDDEN,
        )


def load_config(path: Path) -> DicomwebConfig:
    """The allow-list file, validated; a ValueError names the file and the offending fields, never their values."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {path} as YAML or JSON ({type(error).__name__})") from None
    try:
        return DicomwebConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{path} is not a DICOMweb allow-list ({problems})") from None


class Redirected(Exception):
    """A PACS answered a call with a redirect (3xx), which this server does not follow."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class TooLarge(Exception):
    """A PACS's answer was longer than the session's byte limit; the connection is closed, the rest never read."""


class PacsSession(requests.Session):
    """The HTTP session dicomweb-client calls one PACS through (QIDO, WADO and STOW alike, since all of its calls
    go through `send`): it follows no redirect and holds no answer longer than `max_bytes`.

    Every redirect is refused, even one that stays under the PACS's base URL: whether a Location stays "under" a URL
    depends on how the PACS's router resolves dot segments and percent-encodings, which this side cannot know, and
    a STOW body cannot be sent twice. A PACS that moved is one edit of the allow-list (the URL it now serves at).

    The limit counts decoded bytes (a compressed answer cannot expand past it); an answer whose Content-Length
    already says more is refused before its body is read.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        stream = kwargs.pop("stream", self.stream)
        response = super().send(request, **{**kwargs, "allow_redirects": False, "stream": True})
        if 300 <= response.status_code < 400:
            response.close()
            raise Redirected(response.status_code)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise TooLarge
        response.raw = _Capped(response.raw, self.max_bytes)
        if not stream:
            _ = response.content  # what requests does for stream=False, here through the cap
        return response


class _Capped:
    """`Response.raw` behind a byte limit: requests reads a body through `raw.stream()` (which keeps its mapping of
    urllib3's errors to its own) and ends it with `close()` and `release_conn()`; once redirects are resolved and
    cookies taken, nothing else of `raw` is used, so nothing else is offered (a requests that read `raw` otherwise
    would fail loudly here, and every round trip in tests/test_dicomweb.py with it)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, max_bytes: int) -> None:
        self.raw = raw
        self.max_bytes = max_bytes

    def stream(self, amt: int | None, decode_content: bool | None = None) -> Iterator[bytes]:
        received = 0
        for chunk in self.raw.stream(amt, decode_content=decode_content):
            received += len(chunk)
            if received > self.max_bytes:
                self.raw.close()  # closes the connection: the PACS sends no more
                raise TooLarge
            yield chunk

    def close(self) -> None:
        self.raw.close()

    def release_conn(self) -> None:
        self.raw.release_conn()


class Pacs:
    """One allowed PACS, called through dicomweb-client with its credentials and timeout over a `PacsSession`."""

    def __init__(self, name: str, config: PacsConfig, max_bytes: int) -> None:
        self.name = name
        self.timeout = config.timeout
        self.max_bytes = max_bytes
        session = PacsSession(max_bytes)
        if config.username is not None and config.password is not None:
            session.auth = (config.username, config.password.get_secret_value())
        headers = {"Authorization": f"Bearer {config.token.get_secret_value()}"} if config.token else None
        url = normalize_url(config.url)
        self.client = DICOMwebClient(url, session=session, headers=headers, timeout=config.timeout)
        # Retries would wait seconds between attempts, past the timeout the operator configured.
        self.client.set_http_retry_params(retry=False)

    def instances(self, study: str, series: str | None) -> list[tuple[str, str]]:
        """(Series, SOP Instance UID) of every instance of a study, or of one of its series (QIDO-RS)."""
        with self._call("list instances"):
            found = self.client.search_for_instances(
                study, series, fields=[SERIES_INSTANCE_UID, SOP_INSTANCE_UID], get_remaining=True
            )
        refs = [(_value(item, SERIES_INSTANCE_UID), _value(item, SOP_INSTANCE_UID)) for item in found]
        if not refs:
            raise RequestError(
                f"expected PACS '{self.name}' to list instances, it has none there", HTTPStatus.NOT_FOUND
            )
        if not all(all(isinstance(uid, str) for uid in ref) for ref in refs):
            raise RequestError(
                f"expected PACS '{self.name}' to list each instance's UIDs, some lack them", HTTPStatus.BAD_GATEWAY
            )
        return refs  # type: ignore[return-value]

    def study_of(self, series: str) -> str:
        """The Study Instance UID of a series known only by its Series Instance UID (QIDO-RS over all studies): what
        a MONAI Label `image` id is."""
        with self._call("find a series"):
            found = self.client.search_for_series(
                search_filters={SERIES_INSTANCE_UID: series}, fields=[STUDY_INSTANCE_UID], limit=2
            )
        studies = {_value(item, STUDY_INSTANCE_UID) for item in found}
        if not studies:
            raise RequestError(
                f"expected PACS '{self.name}' to hold the series, it has none with that UID", HTTPStatus.NOT_FOUND
            )
        if len(studies) > 1 or not all(isinstance(uid, str) for uid in studies):
            raise RequestError(
                f"expected PACS '{self.name}' to list the series in one study, found otherwise", HTTPStatus.BAD_GATEWAY
            )
        return studies.pop()  # type: ignore[return-value]

    def retrieve(self, study: str, series: str, instance: str) -> bytes:
        """One instance (WADO-RS, in the transfer syntax the PACS stores it in) as a DICOM Part 10 file."""
        with self._call("retrieve an instance"):
            dataset = self.client.retrieve_instance(study, series, instance, media_types=(("application/dicom", "*"),))
        return part10(dataset)

    def store(self, datasets: list[pydicom.Dataset]) -> None:
        """STOW-RS the instances in one request; a PACS that answers but lists one as failed is a 502 too."""
        with self._call("store the SEG"):
            answer = self.client.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason")
            code = f" (failure reason {int(reason):#06x})" if isinstance(reason, int) else ""
            raise RequestError(
                f"expected PACS '{self.name}' to store the SEG, it refused it{code}", HTTPStatus.BAD_GATEWAY
            )

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Maps what can go wrong while calling the PACS to 504, 404 or 502 (requests' texts quote URLs: dropped)."""
        try:
            yield
        except Redirected as error:
            raise RequestError(
                f"expected PACS '{self.name}' to answer when asked to {what}, found a redirect (HTTP {error.status}), "
                "which this server does not follow",
                HTTPStatus.BAD_GATEWAY,
            ) from None
        except TooLarge:
            raise RequestError(
                f"expected an answer of at most {self.max_bytes} bytes (MEDSAMIX_MAX_PACS_BYTES) from PACS "
                f"'{self.name}' when asked to {what}, found a longer one",
                HTTPStatus.BAD_GATEWAY,
            ) from None
        except requests.Timeout:
            raise RequestError(
                f"PACS '{self.name}' did not answer within {self.timeout:g} s when asked to {what}",
                HTTPStatus.GATEWAY_TIMEOUT,
            ) from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status == HTTPStatus.NOT_FOUND:
                raise RequestError(
                    f"expected PACS '{self.name}' to hold what was asked for, it answered 404 when asked to {what}",
                    HTTPStatus.NOT_FOUND,
                ) from None
            meaning = " (check the credentials configured for it)" if status in (401, 403) else ""
            raise RequestError(
                f"PACS '{self.name}' answered HTTP {status} when asked to {what}{meaning}", HTTPStatus.BAD_GATEWAY
            ) from None
        except requests.JSONDecodeError:  # a RequestException too, but the PACS was reached: it answered non-JSON
            raise self._not_dicomweb(what) from None
        except requests.RequestException as error:
            raise RequestError(
                f"PACS '{self.name}' could not be reached to {what} ({type(error).__name__})", HTTPStatus.BAD_GATEWAY
            ) from None
        except ValueError:  # dicomweb-client's parse of an answer that is not DICOMweb
            raise self._not_dicomweb(what) from None

    def _not_dicomweb(self, what: str) -> RequestError:
        return RequestError(
            f"expected a DICOMweb answer from PACS '{self.name}' when asked to {what}, found something else",
            HTTPStatus.BAD_GATEWAY,
        )


def _value(item: dict, tag: str) -> object:
    """The first value of `tag` in a DICOM JSON item, or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]

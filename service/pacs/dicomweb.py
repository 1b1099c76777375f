"""DICOMweb access: fetch one instance by WADO-RS, store the service's DICOM outputs by STOW-RS.

A request may name a DICOM instance on a DICOMweb server instead of carrying the image. The service then
makes an HTTP request on the caller's behalf, so every URL is checked first (:meth:`DicomWebAccess.check`):
http(s) only, no user-info, and the host must be one the operator allowed — an exact match, never a DNS
lookup or a suffix rule, so a caller cannot point the service at another machine (SSRF). Redirects are not
followed for the same reason. Responses are read as a stream and abandoned as soon as they pass the size
limit; multipart bodies are read and written by :mod:`service.pacs.multipart`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from service.errors import ErrorCode, ServiceError, invalid
from service.pacs.multipart import Part, multipart_related, read_multipart_related

FIELD = "image.dicomweb"
RETRY_AFTER_S = 5.0  # a PACS that is restarting or overloaded usually answers again within seconds
# The multipart envelope around one instance (boundaries, part headers) is a few hundred bytes; the limit
# callers set is about the instance itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_MEDIA_TYPE = "application/dicom"
MAX_UID_CHARS = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_FIELDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")

# STOW-RS response attributes (PS3.18 §10.5.3), in the DICOM JSON model's tag spelling.
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
FAILURE_REASONS = {  # PS3.18 Table 10.5.3-1 (and the C-STORE statuses servers reuse)
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


@dataclass(frozen=True)
class DicomWebReference:
    """One DICOM instance on a DICOMweb server, named instead of sent."""

    base_url: str  # the DICOMweb root, e.g. "http://127.0.0.1:8042/dicom-web"
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    store_results: bool = False  # STOW-RS the service's DICOM outputs back to base_url


class DicomWebAccess:
    """WADO-RS retrieval and STOW-RS storage against the DICOMweb servers the operator allowed.

    ``allowed_hosts`` are host names or IP addresses compared exactly (case-insensitive; IPv6 with or
    without brackets); ``timeout_s`` bounds each whole exchange; ``max_bytes`` bounds a retrieved instance;
    ``headers`` (e.g. an Authorization the PACS wants) go with every request.
    """

    def __init__(self, allowed_hosts: Sequence[str], timeout_s: float, max_bytes: int,
                 headers: Mapping[str, str] | None = None):
        self.allowed_hosts = frozenset(_normalise_host(host) for host in allowed_hosts if host.strip())
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)
        self.headers = dict(headers or {})

    def check(self, ref: DicomWebReference) -> None:
        """Raise ServiceError(INVALID_ARGUMENT, field="image.dicomweb.<name>") unless the base URL is an
        allowed http(s) URL and the three UIDs are valid DICOM UIDs."""
        self._check_base_url(ref.base_url)
        for name in _UID_FIELDS:
            _check_uid(getattr(ref, name), f"{FIELD}.{name}")

    async def retrieve_instance(self, ref: DicomWebReference) -> bytes:
        """The DICOM Part-10 bytes of the referenced instance, fetched by WADO-RS.

        NOT_FOUND when the server has no such instance, PAYLOAD_TOO_LARGE past ``max_bytes``, UNAVAILABLE
        when the server cannot be reached, fails (5xx) or answers without one DICOM part, INVALID_ARGUMENT
        for any other refusal (4xx, redirects).
        """
        self.check(ref)
        url = (f"{_strip_slash(ref.base_url)}/studies/{ref.study_instance_uid}"
               f"/series/{ref.series_instance_uid}/instances/{ref.sop_instance_uid}")
        headers = {**self.headers, "Accept": WADO_ACCEPT}
        response_limit = self.max_bytes + MULTIPART_OVERHEAD_BYTES
        try:
            async with asyncio.timeout(self.timeout_s), self._client() as client:
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 404:
                        raise ServiceError(ErrorCode.NOT_FOUND,
                                           "the DICOMweb server has no instance with these study, series and "
                                           "SOP instance UIDs", field=FIELD)
                    _raise_for_status(response, "retrieve the instance")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and "content-encoding" not in response.headers \
                            and int(declared) > response_limit:
                        raise self._too_large()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():  # decoded bytes: a gzip bomb counts in full
                        body += chunk
                        if len(body) > response_limit:
                            raise self._too_large()
                    content_type = response.headers.get("content-type", "")
        except (httpx.RequestError, TimeoutError) as error:
            raise _unreachable("retrieve the instance", error) from None
        # The stdlib MIME parser costs ~45 ms per MB: keep it off the event loop.
        instance = await asyncio.to_thread(dicom_part_from_multipart, content_type, bytes(body))
        if len(instance) > self.max_bytes:
            raise self._too_large()
        return instance

    async def store(self, base_url: str, instances: Sequence[bytes]) -> None:
        """STOW-RS the Part-10 ``instances`` to ``base_url`` in one request (nothing to do if empty).

        UNAVAILABLE, with the server's status and failure reasons, when the server cannot be reached,
        answers non-2xx, or lists any instance in its FailedSOPSequence.
        """
        self._check_base_url(base_url)
        if not instances:
            return
        content_type, body = multipart_related([Part(DICOM_MEDIA_TYPE, i) for i in instances], DICOM_MEDIA_TYPE)
        headers = {**self.headers, "Accept": "application/dicom+json", "Content-Type": content_type}
        try:
            async with asyncio.timeout(self.timeout_s), self._client() as client:
                response = await client.post(f"{_strip_slash(base_url)}/studies", content=body, headers=headers)
        except (httpx.RequestError, TimeoutError) as error:
            raise _unreachable("store the results", error) from None
        failures = stow_failure_reasons(response.content)
        if response.is_success and not failures:
            return
        detail = f"HTTP {response.status_code}"
        if failures:
            detail += f", {len(failures)} instance(s) failed: " + "; ".join(failures)
        raise ServiceError(ErrorCode.UNAVAILABLE, f"the DICOMweb server did not store the results ({detail})",
                           retry_after=RETRY_AFTER_S)

    def _client(self) -> httpx.AsyncClient:
        # One client per exchange: the service makes one or two DICOMweb calls per request, and a client
        # bound to no event loop keeps this object safe to share. Proxies from the environment are ignored
        # (trust_env=False) so the host that was checked is the host that is contacted.
        return httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)

    def _too_large(self) -> ServiceError:
        return ServiceError(ErrorCode.PAYLOAD_TOO_LARGE,
                            f"the DICOM instance on the DICOMweb server is larger than {self.max_bytes} bytes",
                            field=FIELD)

    def _check_base_url(self, base_url: str) -> None:
        field = f"{FIELD}.base_url"
        if not base_url or not base_url.strip():
            raise invalid("base_url is required", field)
        # urlsplit silently drops tabs and newlines and other parsers treat odd characters differently;
        # refusing them keeps "the URL we checked" and "the URL httpx requests" the same string.
        if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in base_url):
            raise invalid("base_url contains whitespace, control characters or backslashes", field)
        try:
            parts = urlsplit(base_url)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError:
            raise invalid("base_url is not a valid URL", field) from None
        if parts.scheme.lower() not in ("http", "https"):
            raise invalid("base_url must be an http or https URL", field)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise invalid("base_url must not contain user information (credentials go in configured headers)",
                          field)
        if parts.query or parts.fragment or base_url.rstrip("?#") != base_url:
            raise invalid("base_url must not have a query or fragment", field)
        host = _normalise_host(parts.hostname or "")
        if not host:
            raise invalid("base_url has no host", field)
        if host not in self.allowed_hosts:
            raise invalid(f"host {host!r} is not an allowed DICOMweb server", field)
        try:  # the same URL through httpx's own parser must reach the same host
            parsed = httpx.URL(base_url)
        except httpx.InvalidURL:
            raise invalid("base_url is not a valid URL", field) from None
        if _normalise_host(parsed.host) != host or parsed.userinfo:
            raise invalid("base_url is ambiguous: URL parsers disagree on its host", field)


def dicom_part_from_multipart(content_type: str, body: bytes) -> bytes:
    """The one application/dicom part of a multipart/related WADO-RS response body.

    UNAVAILABLE (the server answered, but not with an instance) when the body is not multipart, holds no
    DICOM part or several, or the part is not a DICOM Part-10 file.
    """
    try:
        parts = [part for part in read_multipart_related(content_type, body) if part.media_type == DICOM_MEDIA_TYPE]
    except ValueError as error:
        raise _no_instance(str(error)) from None
    if len(parts) != 1:
        raise _no_instance(f"the response holds {len(parts)} application/dicom parts, not one")
    instance = parts[0].data
    if instance[128:132] != b"DICM":
        raise _no_instance("the application/dicom part is not a DICOM Part-10 file")
    return instance


def stow_failure_reasons(body: bytes) -> list[str]:
    """One text per FailedSOPSequence item of a STOW-RS response body in the DICOM JSON model, e.g.
    "failure reason 0x0110 (processing failure)"; empty when nothing failed or the body is not that JSON (the
    HTTP status then speaks alone). SOP instance UIDs are left out: they identify a patient's images."""
    try:
        document = json.loads(body)
    except ValueError:
        return []
    reasons = []
    for item in _json_values(document, FAILED_SOP_SEQUENCE):
        values = _json_values(item, FAILURE_REASON)
        code = values[0] if values and isinstance(values[0], int) else None
        reasons.append("no reason given" if code is None
                       else f"failure reason 0x{code:04X} ({FAILURE_REASONS.get(code, 'unknown reason')})")
    return reasons


def _json_values(dataset: object, tag: str) -> list:
    """The "Value" list of ``tag`` in a DICOM JSON dataset; empty for anything malformed."""
    attribute = dataset.get(tag) if isinstance(dataset, dict) else None
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    return values if isinstance(values, list) else []


def _check_uid(value: str, field: str) -> None:
    name = field.rsplit(".", 1)[-1]
    if not value:
        raise invalid(f"{name} is required", field)
    # The value itself stays out of the message: UIDs identify a patient's study.
    if len(value) > MAX_UID_CHARS or not _UID.fullmatch(value):
        raise invalid(f"{name} is not a valid DICOM UID (digits and dots, at most {MAX_UID_CHARS} characters, "
                      "no leading zeros in a component)", field)


def _normalise_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]")


def _strip_slash(base_url: str) -> str:
    return base_url.rstrip("/")


def _raise_for_status(response: httpx.Response, action: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500:
        raise ServiceError(ErrorCode.UNAVAILABLE, f"the DICOMweb server failed to {action} (HTTP {status})",
                           retry_after=RETRY_AFTER_S)
    raise invalid(f"the DICOMweb server refused to {action} (HTTP {status})", FIELD)


def _unreachable(action: str, error: BaseException) -> ServiceError:
    if isinstance(error, (TimeoutError, httpx.TimeoutException)):
        reason = "timed out"
    elif isinstance(error, httpx.TransportError):
        reason = "could not be reached"
    else:  # e.g. a body that does not decompress
        reason = "sent an unreadable response"
    return ServiceError(ErrorCode.UNAVAILABLE, f"the DICOMweb server {reason} (while trying to {action})",
                        retry_after=RETRY_AFTER_S)


def _no_instance(reason: str) -> ServiceError:
    return ServiceError(ErrorCode.UNAVAILABLE, f"the DICOMweb server did not return a DICOM instance: {reason}",
                        retry_after=RETRY_AFTER_S)

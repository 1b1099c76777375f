"""multipart/related bodies (RFC 2387): STOW-RS requests and the HTTP responses that carry DICOM objects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Part:
    """One body part: its media type, its bytes and any further headers (e.g. Content-Description)."""

    media_type: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def multipart_related(parts: Sequence[Part], root_type: str) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/related message whose first part is of type ``root_type``."""
    boundary = boundary_absent_from([p.data for p in parts])
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        headers = {"Content-Type": part.media_type, **part.headers}
        head = "".join(f"\r\n{name}: {value}" for name, value in headers.items()).encode("latin-1")
        chunks += [delimiter, head, b"\r\n\r\n", part.data, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return f'multipart/related; type="{root_type}"; boundary={boundary}', b"".join(chunks)


def boundary_absent_from(payloads: Sequence[bytes]) -> str:
    """A random boundary that occurs in none of ``payloads``."""
    while True:  # a random 32-hex boundary inside pixel data is vanishingly unlikely, but cheap to rule out
        boundary = uuid.uuid4().hex
        if not any(boundary.encode("ascii") in payload for payload in payloads):
            return boundary

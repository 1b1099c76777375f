"""JSON logs: one object per line, with the request id of the request being served.

Only an allow-list of record attributes reaches the output, so a careless ``extra=`` cannot leak question
text, pixel data or DICOM identifiers into the logs; about a request's content the service logs sizes and
media types only. An identifier worth correlating (the DICOM StudyInstanceUID) is logged only as a salted
hash (:func:`hash_identifier`); the question text only when ``log_request_text`` is switched on.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import secrets
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

# Set by the transports for the duration of a request, so log lines from the core carry the id as well.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("medclm_request_id", default=None)

# The access-log fields of the request being served (a dict the transport writes in its one access line);
# the core adds to it through note_request without knowing the transport.
request_log_fields_var: contextvars.ContextVar[dict | None] = contextvars.ContextVar("medclm_request_log_fields",
                                                                                     default=None)

ALWAYS_FIELDS = ("request_id", "route", "status", "duration_ms")
OPTIONAL_FIELDS = ("transport", "method", "request_bytes", "content_type", "image_bytes", "image_media_type",
                   "model", "error_code", "modality", "study_hash", "question")
IDENTIFIER_HASH_CHARS = 16
_process_salt = secrets.token_bytes(16)  # used when no salt is configured: hashes link within one process only


def hash_identifier(value: str, salt: str = "") -> str:
    """A salted SHA-256 prefix of an identifier, so log lines about one study can be linked without the
    identifier itself appearing. ``salt`` empty → a random per-process salt."""
    key = salt.encode("utf-8") if salt else _process_salt
    return hashlib.sha256(key + str(value).encode("utf-8")).hexdigest()[:IDENTIFIER_HASH_CHARS]


def note_request(**fields) -> None:
    """Add allow-listed fields to the current request's access log line (no-op outside a request)."""
    target = request_log_fields_var.get()
    if target is not None:
        target.update({k: v for k, v in fields.items() if k in OPTIONAL_FIELDS})
_HANDLER_MARK = "_medclm_json_handler"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, request_id, route, status,
    duration_ms (null when not applicable), allow-listed extras when present, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ALWAYS_FIELDS:
            entry[key] = getattr(record, key, None)
        if entry["request_id"] is None:
            entry["request_id"] = request_id_var.get()
        for key in OPTIONAL_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send every log record (the service's, uvicorn's, grpc's) as JSON lines to ``stream`` (stderr).

    Calling it again replaces the handler it installed before instead of adding a second one. Returns the
    handler (tests read what it wrote).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # The HTTP middleware writes one access line per request with the route template; uvicorn's own
    # access log would repeat it with the raw path and client address.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return handler

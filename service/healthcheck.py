"""Container health probe: exit 0 when this host's service reports ready on ``/health/ready``, else 1.

Used by the Dockerfile's HEALTHCHECK (``python -m service.healthcheck``). It speaks HTTPS when a server
certificate is configured (``MEDCLM_TLS_CERT_FILE``) and then trusts any certificate, because it only ever talks
to 127.0.0.1. With mutual TLS it cannot present a client certificate: probe gRPC health from outside instead.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def ready(timeout_s: float = 4.0) -> bool:
    """True when ``/health/ready`` on this host's HTTP port answers 200."""
    tls = bool(os.environ.get("MEDCLM_TLS_CERT_FILE"))
    port = os.environ.get("MEDCLM_HTTP_PORT", "8000")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health/ready"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 - loopback to ourselves only
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(0 if ready() else 1)

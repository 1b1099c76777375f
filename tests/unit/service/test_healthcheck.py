"""The container's health probe follows /health/ready of the port it is told about."""

import http.server
import threading

import pytest

from service import healthcheck


@pytest.fixture
def ready_server():
    """A loopback HTTP server whose /health/ready answers with ``state["status"]``."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(state["status"] if self.path == "/health/ready" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()


def test_probe_is_healthy_only_while_ready(ready_server, monkeypatch):
    port, state = ready_server
    monkeypatch.setenv("MEDCLM_HTTP_PORT", str(port))
    monkeypatch.delenv("MEDCLM_TLS_CERT_FILE", raising=False)
    assert healthcheck.ready()
    state["status"] = 503
    assert not healthcheck.ready()


def test_probe_is_unhealthy_when_nothing_listens(ready_server, monkeypatch):
    port, _ = ready_server
    monkeypatch.setenv("MEDCLM_HTTP_PORT", str(port))
    monkeypatch.setenv("MEDCLM_TLS_CERT_FILE", "/run/secrets/cert.pem")  # HTTPS against a plain server fails
    assert not healthcheck.ready()

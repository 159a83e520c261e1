"""When the site's hub client keeps its connection, and when it opens a new one.

The hub is a local standard-library HTTP server here, which records the client's address
of each request: the same address is the same kept-alive connection. The real case (the
hub's proxy answering 503 while the service restarts) is in
``tests/test_hub_service_processes.py``.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from usreview.site import SiteConfig, init_site, load_config
from usreview.site.client import HubClient
from usreview.site.errors import HubRefusedError, HubUnreachableError


class _Hub(ThreadingHTTPServer):
    answers: list[int]  # the status of each PUT, in turn
    peers: list[tuple[str, int]]  # the client address of each request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Hub

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.peers.append(self.client_address)
        status = self.server.answers.pop(0)
        body = b"<html>the service is down</html>"
        if status < 300:
            body = json.dumps({"sop_instance_uid": "1.2.3", "duplicate": False}).encode()
        elif status < 500:
            body = json.dumps({"status": status, "error": "conflict", "message": "no"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[_Hub]:
    server = _Hub(("127.0.0.1", 0), _Handler)
    server.answers, server.peers = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def config(hub: _Hub, tmp_path: Path) -> SiteConfig:
    made = init_site("sitea", f"http://127.0.0.1:{hub.server_address[1]}", tmp_path / "site")
    site = load_config(made.config)
    site.token_file.write_text("token\n")
    site.token_file.chmod(0o600)
    return site


def _put(client: HubClient) -> None:
    envelope = b"sealed" * 1000
    client.put_instance("1.2.3", io.BytesIO(envelope), len(envelope))


def test_uploads_share_one_connection_until_an_error_answer(hub: _Hub, config: SiteConfig) -> None:
    hub.answers = [201, 201, 503, 201, 409, 201, 201]
    with HubClient(config) as client:
        _put(client)
        _put(client)
        with pytest.raises(HubUnreachableError) as down:
            _put(client)
        assert str(down.value).endswith(
            ": 503 Service Unavailable (answered by the hub's proxy, not its usreview service)"
        )
        _put(client)
        with pytest.raises(HubRefusedError) as refused:
            _put(client)
        assert refused.value.status == 409
        _put(client)
        _put(client)
    first, second, down, after_down, refused_on, after_refusal, last = hub.peers
    assert first == second == down  # kept alive
    assert after_down != down  # a new connection after the 503
    assert refused_on == after_down
    assert after_refusal != refused_on  # and after the refusal
    assert last == after_refusal

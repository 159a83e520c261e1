"""When the site's hub client keeps its connection, and when it opens a new one.

The hub is a local standard-library HTTP server here, which records the client's address
of each request: the same address is the same kept-alive connection. The real case (the
hub's proxy answering 503 while the service restarts) is in
``tests/test_hub_service_processes.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from usreview.cli import main
from usreview.envelope import generate_keys, write_key_pair
from usreview.simulate import simulate
from usreview.site import SiteConfig, init_site, load_config
from usreview.site.client import HubClient
from usreview.site.errors import HubRefusedError, HubUnreachableError, SiteConfigError


class _Hub(ThreadingHTTPServer):
    answers: list[int]  # the status of each PUT, in turn
    peers: list[tuple[str, int]]  # the client address of each request
    drop_idle = False  # close each connection after its answer, as an idle one is closed
    polled: threading.Event  # a GET (a long-poll) has arrived


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
        self.close_connection = self.server.drop_idle  # without a word to the client

    def do_GET(self) -> None:  # the results feed: a long-poll that never answers
        if "/results" not in self.path:
            self.send_error(501)  # what the hub answers no other GET with here
            return
        self.server.peers.append(self.client_address)
        self.server.polled.set()
        self.rfile.read(1)  # until the client goes

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[_Hub]:
    server = _Hub(("127.0.0.1", 0), _Handler)
    server.answers, server.peers, server.polled = [], [], threading.Event()
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


def test_a_connection_the_hub_closed_while_idle_is_replaced_not_reported(
    hub: _Hub, config: SiteConfig
) -> None:
    hub.answers, hub.drop_idle = [201, 201, 201], True
    with HubClient(config) as client:
        for _ in range(3):
            _put(client)  # each on a kept-alive connection the hub has closed since
    assert len(hub.peers) == 3 and len(set(hub.peers)) == 3  # each PUT arrived once


def test_an_aborted_long_poll_is_not_sent_again(hub: _Hub, config: SiteConfig) -> None:
    hub.answers = [201]
    with HubClient(config) as client:
        _put(client)  # the long-poll goes on this kept-alive connection
        failed: list[BaseException] = []

        def follow() -> None:
            try:
                client.results(0, wait=30)
            except HubUnreachableError as exc:
                failed.append(exc)

        thread = threading.Thread(target=follow)
        thread.start()
        assert hub.polled.wait(10)
        client.abort()
        thread.join(10)
        assert not thread.is_alive() and len(failed) == 1
    assert len(hub.peers) == 2  # the PUT and one GET: the broken poll was not sent again


@pytest.mark.parametrize("url", ["https://hub.example.org:abc", "https://hub.example.org:99999"])
def test_a_bad_port_is_a_configuration_error(config: SiteConfig, url: str) -> None:
    with pytest.raises(SiteConfigError, match="port must be a number") as info:
        HubClient(dataclasses.replace(config, hub_url=url))
    assert info.value.setting == "hub.url"


def test_push_tells_bad_files_from_what_the_hub_refused(
    hub: _Hub, config: SiteConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    (tmp_path / "hubkeys" / "hub.pub").rename(config.hub_public_key)
    [dicom] = simulate("bmode", tmp_path / "sim", seed=0, rows=128, columns=128, inclusions=1)
    junk, missing = tmp_path / "notes.dcm", tmp_path / "missing.dcm"
    junk.write_text("not dicom")
    push = ["site", "push", "--config", str(config.path)]

    damaged = tmp_path / "damaged.dcm"  # a file meta element of a VR pydicom does not know
    damaged.write_bytes(
        bytes(128) + b"DICM" + struct.pack("<HH", 2, 0x10) + b"UF" + struct.pack("<H", 4) + b"1.2\0"
    )
    assert main([*push, str(junk), str(missing), str(damaged)]) == 2  # nothing reaches the hub
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "0 acknowledged, 0 not acknowledged, 3 not sent"
    assert f"usreview: error: 3 file(s) not sent: {damaged}: not a DICOM instance with a " in err
    assert f"; {missing}: no such file; {junk}: not a " in err
    assert "force=True" not in err and "Errno" not in err and "by the hub" not in err
    assert hub.peers == []

    hub.answers = [409]
    assert main([*push, str(dicom), str(junk)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "0 acknowledged, 1 not acknowledged, 1 not sent"
    assert f"1 instance(s) not acknowledged by the hub: {dicom}: the hub refused (409" in err
    assert f"1 file(s) not sent: {junk}: not a DICOM" in err

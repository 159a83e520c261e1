"""``site push`` against a hub that is down: it stops soon, says what is left, resumes.

The hubs are real servers on loopback ports: a port where nothing listens, an HTTP server
where the site expects TLS, and a small standard-library stand-in of the hub's upload API
(``PUT instances/{uid}`` answered with a receipt signed by a hub key the site trusts,
``GET receipts`` with a signed batch receipt) that answers chosen requests 503, as the
hub's proxy does while its service is down.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.site_helpers import USREVIEW, copies, sop_uid
from usreview.envelope import KeyRing, generate_keys, load_public_keys, unseal, write_key_pair
from usreview.ingest.receipts import sign_batch_receipt, sign_instance_receipt
from usreview.simulate import simulate
from usreview.site import PushStoppedError, SiteConfig, init_site, load_config, push_paths
from usreview.site.progress import PushProgress
from usreview.site.push import DOWN_FILES
from usreview.store import InstanceRecord, Receipt

PREFIX = "/services/usreview/api/v1/"
FILES = 30
#: Old code: 4 tries per file, about 3.1 s each against a hub that is down (94 s for 30).
SOON = 8.0


class StandInHub:
    """The hub's upload API for one site. PUT requests numbered in :attr:`outage` (from
    0, failed ones included) and every ``GET receipts`` meanwhile are answered 503."""

    def __init__(self, folder: Path) -> None:
        self.keys = generate_keys("hub")
        write_key_pair(self.keys, folder / "hubkeys")
        self.public_key = folder / "hubkeys" / "hub.pub"
        self.site_key: Any = None
        self.outage: range = range(0)
        self.requests = 0
        self.stored: list[str] = []  # the UIDs uploaded and stored, in order
        self.held: dict[str, tuple[str, int]] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hub._lock:
                    number, hub.requests = hub.requests, hub.requests + 1
                if number in hub.outage:
                    self._down()
                    return
                uid = unquote(urlsplit(self.path).path.rsplit("/", 1)[1])
                self._send(200, hub._store(uid, body))

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != PREFIX + "receipts":
                    self._send(404, {"error": "not_found", "message": "no"})
                elif hub.requests in hub.outage:
                    self._down()
                else:
                    self._send(200, hub._batch(parse_qs(parts.query).get("uid", [])))

            def _down(self) -> None:  # the proxy's page while the service is down
                page = b"<html><body>503 Service Unavailable</body></html>"
                self.send_response(503)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _store(self, uid: str, envelope: bytes) -> dict[str, Any]:
        out = io.BytesIO()
        info = unseal(
            io.BytesIO(envelope), out, recipient=self.keys, keyring=KeyRing([self.site_key])
        )
        data = out.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            duplicate = self.held.get(uid, ("", 0))[0] == sha
            self.held[uid] = (sha, len(data))
            self.stored.append(uid)
        record = InstanceRecord(
            "clinic", uid, "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.6.1", (), sha,
            len(data), "", 0, "", datetime.now(UTC),
        )  # fmt: skip
        receipt = sign_instance_receipt(self.keys, record, message_id=info.message_id)
        return {"receipt": receipt.to_dict(), "duplicate": duplicate}

    def _batch(self, uids: list[str]) -> dict[str, Any]:
        with self._lock:
            held = [(uid, *self.held[uid]) for uid in uids if uid in self.held]
        receipts = [Receipt(uid, "1.2.3", sha, size, datetime.now(UTC)) for uid, sha, size in held]
        return sign_batch_receipt(self.keys, "clinic", receipts).to_dict()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _site(folder: Path, url: str, hub_key: Path) -> tuple[SiteConfig, Any]:
    made = init_site("clinic", url, folder, hub_public_key=hub_key)
    (folder / "token").write_text("token\n")
    (folder / "token").chmod(0o600)
    return load_config(made.config), load_public_keys(made.public_key)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[StandInHub]:
    running = StandInHub(tmp_path / "hub")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("study")
    [path] = simulate("bmode", root / "sim", seed=2, rows=128, columns=128, inclusions=1)
    return copies(path, FILES, root / "files")


@pytest.mark.parametrize("down", ["nothing listens", "no TLS there", "503"])
def test_push_stops_soon_when_the_hub_is_down(
    down: str, hub: StandInHub, study: list[Path], tmp_path: Path
) -> None:
    url = {
        "nothing listens": f"http://127.0.0.1:{_closed_port()}",
        "no TLS there": f"https://127.0.0.1:{hub.port}",  # a plain HTTP server
        "503": f"http://127.0.0.1:{hub.port}",
    }[down]
    hub.outage = range(10**9)
    config, hub.site_key = _site(tmp_path / "site", url, hub.public_key)
    started = time.monotonic()
    report = push_paths(config, study)
    took = time.monotonic() - started
    assert took < SOON, took
    assert report.stopped is not None and not report.acknowledged and not report.failed
    assert report.remaining == study  # in order: the next push starts with them
    assert hub.stored == []
    if down == "503":  # the first file tried 4 times, the next ones once
        assert hub.requests == 4 + DOWN_FILES - 1
        assert "503" in report.stopped


@pytest.mark.slow  # two runs of the command (about 8 s)
def test_push_resumes_without_sending_again_what_the_hub_holds(
    hub: StandInHub, study: list[Path], tmp_path: Path
) -> None:
    config, hub.site_key = _site(tmp_path / "site", f"http://127.0.0.1:{hub.port}", hub.public_key)
    hub.outage = range(5, 10**9)  # the hub goes down after 5 uploads
    push = [*USREVIEW, "site", "push", "--config", str(config.path), str(study[0].parent)]
    started = time.monotonic()
    done = subprocess.run(push, capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - started < 30  # old code: 25 files left, over 75 s
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"5 acknowledged, 0 not acknowledged, 0 not sent, {FILES - 5} left" in done.stdout
    said = str(PushStoppedError("", sent=5, remaining=FILES - 5)).split("); ", 1)[1]
    assert said in done.stderr and "503" in done.stderr
    assert "Run the same command again" in done.stderr
    assert done.stderr.count(": hub unreachable (") == DOWN_FILES
    assert hub.stored == [sop_uid(p) for p in study[:5]]

    hub.outage = range(0)  # back
    again = subprocess.run(push, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert f"{FILES} acknowledged, 0 not acknowledged, 0 not sent\n" == again.stdout
    assert again.stderr.count("already at the hub") == 5
    assert sorted(hub.stored) == sorted(sop_uid(p) for p in study)  # each sent once


def test_a_passing_503_stops_no_push(hub: StandInHub, study: list[Path], tmp_path: Path) -> None:
    config, hub.site_key = _site(tmp_path / "site", f"http://127.0.0.1:{hub.port}", hub.public_key)
    hub.outage = range(3, 5)  # the 4th file: 503 twice, then stored
    report = push_paths(config, study[:8])
    assert report.stopped is None and not report.failed and not report.remaining
    assert list(report.acknowledged) == study[:8]
    assert hub.stored == [sop_uid(p) for p in study[:8]]


def test_a_bar_left_by_a_push_that_stopped_ends_its_line() -> None:
    stream = io.StringIO()
    progress = PushProgress(stream, tty=True)
    progress(1, 5, Path("a.dcm"), "stored")
    assert not stream.getvalue().endswith("\n")
    progress.end()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    progress.end()  # once
    assert stream.getvalue().count("\n") == 1

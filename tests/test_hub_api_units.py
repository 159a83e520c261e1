"""The API's parts without a hub: error mapping, site keys, settings, the service lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tornado.web import HTTPError

from usreview.envelope import TamperedError, generate_keys, write_key_pair
from usreview.errors import InputError, NotDicomError
from usreview.hub.api.app import _lock
from usreview.hub.api.errors import ApiError, problem_for
from usreview.hub.api.settings import ServiceSettings
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.errors import AuditError, StateError
from usreview.ingest import (
    NotForHubError,
    RefusedEnvelopeError,
    RejectedInstanceError,
    RejectReason,
    ReplayedEnvelopeError,
    UnknownSiteError,
    WorkerPoolError,
    WrongSenderError,
)
from usreview.ingest.errors import UidMismatchError
from usreview.store import (
    ConflictError,
    CorruptObjectError,
    InvalidMetadataError,
    NotFoundError,
    StorageError,
)

_MAPPING = [
    (UnknownSiteError("x"), 403, "forbidden"),
    (WrongSenderError("x"), 403, "wrong_sender"),
    (NotForHubError("x"), 400, "not_for_hub"),
    (ReplayedEnvelopeError("x"), 409, "replayed"),
    (RefusedEnvelopeError("x"), 400, "bad_envelope"),
    (RejectedInstanceError(RejectReason.NOT_ULTRASOUND, "x"), 422, "rejected_instance"),
    (UidMismatchError("x"), 400, "uid_mismatch"),
    (ConflictError("1.2", 1, "x"), 409, "conflict"),
    (NotFoundError("no study 1.2"), 404, "not_found"),
    (InvalidMetadataError("x"), 400, "bad_request"),
    (NotDicomError("x"), 400, "bad_request"),
    (InputError("x"), 400, "bad_request"),
    (StorageError("disk full"), 503, "unavailable"),
    (WorkerPoolError("x"), 503, "unavailable"),
    (AuditError("x"), 503, "unavailable"),
    (CorruptObjectError("x"), 500, "internal"),
    (TamperedError("x"), 500, "internal"),  # envelope errors reach handlers wrapped
    (KeyError("x"), 500, "internal"),
    (HTTPError(405), 405, "method_not_allowed"),
    (ApiError(413, "too_large", "big"), 413, "too_large"),
]


@pytest.mark.parametrize(("exc", "status", "code"), _MAPPING, ids=lambda v: type(v).__name__)
def test_every_exception_has_its_status(exc: BaseException, status: int, code: str) -> None:
    problem = problem_for(exc)
    assert (problem.status, problem.error) == (status, code)
    assert problem.message
    if status >= 500:
        assert str(exc) not in problem.message or not str(exc)  # no internals leak


def test_a_rejected_instance_says_why() -> None:
    problem = problem_for(RejectedInstanceError(RejectReason.CORRUPT_PIXEL_DATA, "short"))
    assert problem.to_json()["reason"] == "corrupt pixel data"


def test_site_keys_are_reloaded_when_their_file_changes(tmp_path: Path) -> None:
    keys = SiteKeyFiles(tmp_path)
    assert "sitea" not in keys and keys.get("../hub") is None and len(keys) == 0
    first = generate_keys("sitea")
    write_key_pair(first, tmp_path)
    assert keys["sitea"].key_id == first.key_id and list(keys) == ["sitea"]
    second = generate_keys("sitea")
    (tmp_path / "sitea.pub").write_text(second.public.to_text() + "\n")
    assert keys["sitea"].key_id == second.key_id
    (tmp_path / "sitea.pub").unlink()
    assert keys.get("sitea") is None


def test_settings_come_from_the_state_directory(tmp_path: Path) -> None:
    assert ServiceSettings.from_state(tmp_path).max_upload_bytes == 2 * 1024**3
    config = tmp_path / "service_config.json"
    config.write_text(json.dumps({"ServiceSettings": {"max_upload_bytes": 4096}}))
    assert ServiceSettings.from_state(tmp_path).max_upload_bytes == 4096
    config.write_text(json.dumps({"ServiceSettings": {"max_upload_bytes": 1}}))
    with pytest.raises(StateError, match=r"service_config\.json"):
        ServiceSettings.from_state(tmp_path)
    config.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        ServiceSettings.from_state(tmp_path)


def test_the_database_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USREVIEW_DATABASE_URL", "postgresql://hub@localhost/usreview")
    assert ServiceSettings().database_url == "postgresql://hub@localhost/usreview"


def test_one_service_per_state_directory(tmp_path: Path) -> None:
    import os

    fd = _lock(tmp_path / "service.lock")
    try:
        with pytest.raises(StateError, match=rf"another usreview service \(pid {os.getpid()}\)"):
            _lock(tmp_path / "service.lock", wait=0.3)
    finally:
        os.close(fd)
    os.close(_lock(tmp_path / "service.lock"))


def test_a_restarting_service_waits_for_the_old_one_to_let_go(tmp_path: Path) -> None:
    import os
    import threading

    old = _lock(tmp_path / "service.lock")
    threading.Timer(0.5, os.close, (old,)).start()  # the old service finishes its work
    os.close(_lock(tmp_path / "service.lock", wait=10.0))


def test_the_contract_and_the_routes_agree() -> None:
    import re

    import yaml

    from usreview.hub.api import errors

    contract = yaml.safe_load((Path(__file__).parents[1] / "docs" / "openapi.yaml").read_text())
    assert contract["servers"][0]["url"] == "/services/usreview/api/v1"
    patterns = [re.compile(r"/" + p.split("api/v1/", 1)[1].rstrip("/?") + r"/?") for p in _routes()]
    patterns.append(re.compile(r"/whoami/?"))
    for path in contract["paths"]:
        concrete = re.sub(r"\{number\}", "1", path)  # a frame number
        concrete = re.sub(r"\{[^}]+\}", "1.2.3", concrete)
        assert any(p.fullmatch(concrete) for p in patterns), path
    codes = contract["components"]["schemas"]["Error"]["properties"]["error"]["description"]
    for _, status, code, _ in errors._TABLE:
        assert f"{code} ({status}" in codes, code


def _routes() -> list[str]:
    from usreview.hub.api.app import api_routes

    return [pattern for pattern, _, _ in api_routes("/p/", None, {})]  # type: ignore[arg-type]


def test_behind_the_proxy_the_caller_cannot_name_its_own_address() -> None:
    """The proxy appends the peer it saw to X-Forwarded-For/-Proto; X-Real-Ip and X-Scheme
    come from the client as sent and must not decide the address audited."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient
    from tornado.netutil import bind_sockets
    from tornado.web import Application, RequestHandler

    from usreview.hub.service import ProxiedHTTPServer

    class Echo(RequestHandler):  # type: ignore[misc]
        def get(self) -> None:
            self.write({"ip": self.request.remote_ip, "protocol": self.request.protocol})

    async def ask(headers: dict[str, str]) -> dict[str, str]:
        sockets = bind_sockets(0, "127.0.0.1")
        server = ProxiedHTTPServer(Application([("/", Echo)]))
        server.add_sockets(sockets)
        try:
            url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/"
            answer = await AsyncHTTPClient().fetch(url, headers=headers)
            return dict(json.loads(answer.body))
        finally:
            server.stop()

    forwarded = {"X-Forwarded-For": "10.0.0.9, 192.0.2.7", "X-Forwarded-Proto": "http,https"}
    spoofed = {**forwarded, "X-Real-Ip": "10.9.9.1", "X-Scheme": "http"}
    assert asyncio.run(ask(spoofed)) == {"ip": "192.0.2.7", "protocol": "https"}
    assert asyncio.run(ask(forwarded)) == {"ip": "192.0.2.7", "protocol": "https"}
    assert asyncio.run(ask({"X-Real-Ip": "10.9.9.1"})) == {"ip": "127.0.0.1", "protocol": "http"}


@pytest.mark.parametrize("soft", [256, 1024])
def test_the_service_raises_its_open_files_limit_within_the_hard_one(soft: int) -> None:
    import resource
    import subprocess
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = "from usreview._process import raise_open_files_limit as r; print(r(4096), r(512))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    raised = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    assert done.stdout.split() == [str(raised), str(raised)]  # never lowered


def test_beyond_its_connections_the_server_closes_the_one_idle_longest_never_one_at_work() -> None:
    import asyncio

    from tornado.netutil import bind_sockets
    from tornado.web import Application, RequestHandler

    from usreview.hub.service import CappedHTTPServer

    class Answer(RequestHandler):  # type: ignore[misc]
        def get(self) -> None:
            self.write("ok")

        def post(self) -> None:
            self.write(f"{len(self.request.body)} bytes")

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), 2) == b""
        except TimeoutError:
            return False

    async def scenario(cap: int) -> dict[str, object]:
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        server = CappedHTTPServer(Application([("/", Answer)]), max_connections=cap)
        server.add_sockets(sockets)

        writers: list[asyncio.StreamWriter] = []

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            await asyncio.sleep(0.1)  # accepted and waiting for its first request
            return reader, writer

        try:
            seen: dict[str, object] = {}
            if cap == 1:  # every connection at work: the new one is closed
                busy_r, busy_w = await connect()
                busy_w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
                await asyncio.sleep(0.1)
                new_r, _ = await connect()
                seen["new closed"] = await closed(new_r)
                busy_w.write(b"67890")
                seen["busy answered"] = (await busy_r.read(200)).endswith(b"10 bytes")
                return seen
            silent_r, _ = await connect()  # never sends a request: idle the longest
            kept_r, kept_w = await connect()  # one request answered, then idle
            kept_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            seen["kept answered"] = (await kept_r.read(200)).endswith(b"ok")
            busy_r, busy_w = await connect()  # an upload under way
            busy_w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
            await asyncio.sleep(0.1)
            await connect()  # one too many: the silent one goes
            seen["silent closed"] = await closed(silent_r)
            await connect()  # and then the one idle since its answer
            seen["kept closed"] = await closed(kept_r)
            busy_w.write(b"67890")
            seen["busy answered"] = (await busy_r.read(200)).endswith(b"10 bytes")
            return seen
        finally:
            for writer in writers:
                writer.close()
            server.stop()
            await server.close_all_connections()

    assert asyncio.run(scenario(3)) == {
        "kept answered": True,
        "silent closed": True,
        "kept closed": True,
        "busy answered": True,
    }
    assert asyncio.run(scenario(1)) == {"new closed": True, "busy answered": True}

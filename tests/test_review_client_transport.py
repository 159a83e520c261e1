"""The dashboards' client when the service's answer does not arrive: a clear ReviewError.

A peer on a loopback socket plays the failing network (it answers late, hangs up, or
speaks plain HTTP to a TLS client); the pages catch ReviewError, so nothing else may
escape, and a reviewer must learn whether a change (a publish) may have gone through.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from usreview.errors import ReviewError
from usreview.review.client import ReviewClient

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Peer:
    """Accepts connections on loopback; ``serve(conn, requests)`` handles each one."""

    def __init__(self, serve: Callable[[socket.socket, list[bytes]], None]) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.requests), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
    return head


Serve = Callable[[socket.socket, list[bytes]], None]
MakePeer = Callable[[Serve], _Peer]


@pytest.fixture
def peer() -> Iterator[MakePeer]:
    made: list[_Peer] = []

    def make(serve: Serve) -> _Peer:
        made.append(_Peer(serve))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _silent(conn: socket.socket, requests: list[bytes]) -> None:
    """Reads the request and never answers (the connection stays open)."""
    requests.append(_read_request(conn))
    threading.Event().wait(5)
    conn.close()


def _client(server: _Peer, scheme: str = "http", timeout: float = 60.0) -> ReviewClient:
    return ReviewClient(
        f"{scheme}://127.0.0.1:{server.port}/services/usreview/", "t", timeout=timeout
    )


def _hang_up(conn: socket.socket, requests: list[bytes]) -> None:
    """Reads the request and closes without an answer."""
    requests.append(_read_request(conn))
    conn.close()


def test_a_timeout_is_a_review_error_naming_the_wait(peer: MakePeer) -> None:
    server = peer(_silent)
    with (
        _client(server, timeout=0.3) as client,
        pytest.raises(ReviewError, match=r"did not answer within 0\.3 s$"),
    ):
        client.study("1.2.3")
    assert len(server.requests) == 1  # a read is not sent twice either


def test_a_publish_without_answer_says_it_may_have_gone_through(peer: MakePeer) -> None:
    server = peer(_hang_up)
    with (
        _client(server, "http") as client,
        pytest.raises(ReviewError, match="the change may have been made: reload the study"),
    ):
        client.publish("1.2.3", {"findings": "x"})
    # Never sent a second time: the service may have published the first.
    assert len(server.requests) == 1
    assert server.requests[0].startswith(b"POST /services/usreview/api/v1/studies/1.2.3/reports")


def test_a_kept_alive_connection_closed_by_the_service_is_reopened_once(peer: MakePeer) -> None:
    def answer_then_close(conn: socket.socket, requests: list[bytes]) -> None:
        requests.append(_read_request(conn))
        conn.sendall(_OK)  # HTTP/1.1 without "Connection: close": the client keeps it
        threading.Event().wait(0.2)
        conn.close()

    server = peer(answer_then_close)
    with _client(server) as client:
        assert client.study("1.2.3") == {}
        threading.Event().wait(0.5)  # the service has closed the idle connection
        assert client.claim("1.2.3") == {}  # sent again on a new connection
    assert server.connections == 2
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"POST"]


def _answer_then_hang_up(conn: socket.socket, requests: list[bytes]) -> None:
    """Answers the first request, keeps the connection, reads the next and closes without
    an answer (a service that died while it worked on it)."""
    requests.append(_read_request(conn))
    conn.sendall(_OK)
    following = _read_request(conn)
    if following:  # not the client closing its connection
        requests.append(following)
    conn.close()


def test_a_change_cut_on_a_kept_alive_connection_is_not_sent_again(peer: MakePeer) -> None:
    server = peer(_answer_then_hang_up)
    with _client(server) as client:
        assert client.study("1.2.3") == {}
        with pytest.raises(ReviewError, match="the change may have been made"):
            client.claim("1.2.3")
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"POST"]
    assert server.connections == 1  # the claim was not sent a second time


def test_a_read_cut_on_a_kept_alive_connection_is_sent_once_more(peer: MakePeer) -> None:
    server = peer(_answer_then_hang_up)
    with _client(server) as client:
        assert client.study("1.2.3") == {}
        assert client.study("1.2.4") == {}  # on a new connection, answered there
    assert [r.split(b" ")[1] for r in server.requests] == [
        b"/services/usreview/api/v1/studies/1.2.3",
        b"/services/usreview/api/v1/studies/1.2.4",
        b"/services/usreview/api/v1/studies/1.2.4",
    ]
    assert server.connections == 2


def test_a_broken_transfer_of_a_frame_is_a_review_error(peer: MakePeer) -> None:
    def cut(conn: socket.socket, requests: list[bytes]) -> None:
        requests.append(_read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        conn.sendall(b"\x89PNG" + b"\0" * 100)
        conn.close()

    server = peer(cut)
    with (
        _client(server, "http") as client,
        pytest.raises(ReviewError, match="does not answer") as caught,
    ):
        client.frame("1.2.3")
    assert "may have been made" not in str(caught.value)  # a read changes nothing


def test_tls_to_a_peer_without_tls_is_a_review_error(peer: MakePeer) -> None:
    def plain(conn: socket.socket, requests: list[bytes]) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    server = peer(plain)
    with (
        _client(server, "https") as client,
        pytest.raises(ReviewError, match="secure connection to the usreview service failed"),
    ):
        client.studies()

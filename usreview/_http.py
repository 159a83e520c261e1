"""What the package's HTTP clients share about kept-alive connections.

A server closes a kept-alive connection that stays idle (the hub's proxy after 5 s, the
usreview service after its ``header_timeout``). A client that sends its next request on
such a connection learns it only then, with one of :data:`STALE_CONNECTION_ERRORS`, and
sends the request once more on a new connection: a connection closed while idle was not
reading it. (The same errors also follow a server that died while it answered; the
sites' requests are safe to repeat then too: reads, and uploads, idempotent by SOP
Instance UID.) Before a request, both clients ask :func:`connection_dropped` whether the
server closed the connection while idle (its end of file is already there), and then open a
new one without sending anything (a 48 MB body) into the old; so the errors above mostly
mean a server that died while it answered, and the dashboards' client, whose changes
(claims, publications) are not safe to repeat, sends again only its reads.
"""

from __future__ import annotations

import http.client
import select
from typing import Final

__all__ = ["STALE_CONNECTION_ERRORS", "connection_dropped"]

#: What a request sent on a kept-alive connection that the server had closed fails with.
STALE_CONNECTION_ERRORS: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)


def connection_dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed this kept-alive connection while it was idle.

    An idle connection has nothing to read until the client sends a request: if its socket
    reads as ready, it holds the server's end of file (or bytes nobody asked for), and the
    connection must not carry a request. ``False`` for a connection not yet opened.
    """
    if connection.sock is None:
        return False
    poller = select.poll()  # any descriptor number, unlike select.select
    try:
        poller.register(connection.sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return True

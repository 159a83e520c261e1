"""What the package's HTTP clients share about kept-alive connections.

A server closes a kept-alive connection that stays idle (the hub's proxy after 5 s, the
usreview service after its ``header_timeout``). A client that sends its next request on
such a connection learns it only then, with one of :data:`STALE_CONNECTION_ERRORS`: the
request did not reach the server, and is sent again on a new connection.
"""

from __future__ import annotations

import http.client
from typing import Final

__all__ = ["STALE_CONNECTION_ERRORS"]

#: What a request sent on a kept-alive connection that the server had closed fails with.
STALE_CONNECTION_ERRORS: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)

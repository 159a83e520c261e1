"""What the package's HTTP clients share about kept-alive connections.

A server closes a kept-alive connection that stays idle (the hub's proxy after 5 s, the
usreview service after its ``header_timeout``). A client that sends its next request on
such a connection learns it only then, with one of :data:`STALE_CONNECTION_ERRORS`, and
sends the request once more on a new connection: a connection closed while idle was not
reading it. (The same errors also follow a server that died while it answered; the
sites' requests are safe to repeat then too: reads, and uploads, idempotent by SOP
Instance UID.)
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

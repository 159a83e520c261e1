"""HTTP to the hub's usreview API: TLS with the pinned certificate (and the next one the hub
announced, :mod:`usreview.site.hubkeys`), the site's token.

Standard library only (``http.client``): one kept-alive connection per client, so give
each thread its own :class:`HubClient`. Every failure is one of two errors:
:class:`HubUnreachableError` (no answer, TLS failure, timeout, 5xx, 503: try again
later) or :class:`HubRefusedError` (a 4xx answer, with the hub's error code).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from usreview._http import STALE_CONNECTION_ERRORS, connection_dropped
from usreview.site.config import SiteConfig
from usreview.site.errors import HubRefusedError, HubUnreachableError, SiteConfigError
from usreview.site.hubkeys import ANNOUNCED_CERTIFICATES

__all__ = ["ENVELOPE_TYPE", "RECEIPT_BATCH", "HubClient"]

ENVELOPE_TYPE = "application/vnd.usreview.envelope"
#: UIDs asked about in one ``GET receipts`` (the hub answers at most 100).
RECEIPT_BATCH = 100
_BLOCK = 1 << 20
_log = logging.getLogger(__name__)


def _tls_context(config: SiteConfig) -> ssl.SSLContext:
    cert = config.hub_certificate
    try:
        context = ssl.create_default_context(cafile=str(cert) if cert is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise SiteConfigError(
            f"hub.certificate: cannot use {cert} as the hub's pinned certificate ({exc})",
            "hub.certificate",
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    announced = config.state / ANNOUNCED_CERTIFICATES
    if cert is not None and announced.exists():  # the hub's next one, signed by its key
        try:
            context.load_verify_locations(cafile=str(announced))
        except (OSError, ssl.SSLError) as exc:  # the pinned one still works
            _log.warning("%s cannot be used (%s): the pinned certificate alone", announced, exc)
    return context


def _announced_stamp(config: SiteConfig) -> tuple[int, int] | None:
    """Which version of the announced certificates file a TLS context was made with."""
    try:
        found = (config.state / ANNOUNCED_CERTIFICATES).stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


class HubClient:
    """A client of the hub's API for one site.

    Parameters
    ----------
    config
        The site's configuration (hub URL, pinned certificate, token file, timeout).
    token
        The API token (default: read from ``config.token_file``).
    """

    def __init__(self, config: SiteConfig, token: str | None = None) -> None:
        self.config = config
        parts = urlsplit(config.api_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        try:
            self._port = parts.port or (443 if self._https else 80)
        except ValueError:  # load_config refuses it; a SiteConfig made otherwise may not
            raise SiteConfigError(
                f"hub.url: the port must be a number from 1 to 65535 (got {config.hub_url!r})",
                "hub.url",
            ) from None
        self._prefix = parts.path
        self._token = token if token is not None else config.read_token()
        self._context = _tls_context(config) if self._https else None
        self._announced = _announced_stamp(config)
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False

    def close(self) -> None:
        """Close the kept-alive connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        """Break a request in progress in another thread (a long-poll), from any thread."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        self._aborted = True  # the broken request is not sent again
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints -------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """``GET whoami``: the hub's view of this site's token."""
        return self._json("GET", "whoami")

    def put_instance(self, sop_instance_uid: str, envelope: IO[bytes], size: int) -> dict[str, Any]:
        """``PUT instances/{uid}`` with a sealed envelope; return the upload result.

        The answer's ``receipt`` still has to be verified by the caller.
        """
        return self._json(
            "PUT",
            f"instances/{quote(sop_instance_uid, safe='')}",
            body=envelope,
            size=size,
            content_type=ENVELOPE_TYPE,
        )

    def receipts(self, sop_instance_uids: Sequence[str] | None = None) -> dict[str, Any]:
        """``GET receipts``: a signed batch receipt of what the hub holds for the site.

        Parameters
        ----------
        sop_instance_uids
            Ask only about these (at most :data:`RECEIPT_BATCH`); None: everything.

        Raises
        ------
        ValueError
            More UIDs than one request may carry.
        """
        if sop_instance_uids is None:
            return self._json("GET", "receipts")
        if len(sop_instance_uids) > RECEIPT_BATCH:
            raise ValueError(f"at most {RECEIPT_BATCH} UIDs per receipts request")
        query = urlencode([("uid", uid) for uid in sop_instance_uids])
        return self._json("GET", f"receipts?{query}")

    def hub_keys(self) -> dict[str, Any]:
        """``GET hub-keys``: the hub's current key and its signed transitions (verified by
        :func:`usreview.site.hubkeys.adopt_hub_keys`, not here)."""
        return self._json("GET", "hub-keys")

    def results(self, cursor: int, wait: float = 0.0, limit: int = 100) -> dict[str, Any]:
        """``GET results``: results after ``cursor``, long-polling up to ``wait`` seconds."""
        query = urlencode({"cursor": cursor, "wait": f"{wait:g}", "limit": limit})
        return self._json("GET", f"results?{query}", timeout=self.config.timeout + wait)

    def result(self, result_id: int) -> bytes:
        """``GET results/{id}``: one result's sealed envelope."""
        _, data = self._request("GET", f"results/{int(result_id)}")
        return data

    # -- transport -------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, data = self._request(method, path, **kwargs)
        try:
            answer = json.loads(data)
        except ValueError:
            raise HubUnreachableError(f"{method} {path}: the hub answered with no JSON") from None
        if not isinstance(answer, dict):
            raise HubUnreachableError(f"{method} {path}: unexpected answer from the hub")
        return answer

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https and (stamp := _announced_stamp(self.config)) != self._announced:
                # The hub announced its next certificate since: trust it from now on (a
                # long-lived client, such as the gateway's, would not reach it after the
                # hub's switch).
                self._context, self._announced = _tls_context(self.config), stamp
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=timeout,
                    context=self._context,
                    blocksize=_BLOCK,
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout, blocksize=_BLOCK
                )
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def _send(
        self,
        method: str,
        path: str,
        body: IO[bytes] | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send once; once more on a new connection if the kept-alive one was closed.

        Every request of the sites' API may be sent twice: an upload is idempotent by
        its SOP Instance UID, the others read.
        """
        self._aborted = False
        for attempt in (1, 2):
            conn = self._connection(timeout or self.config.timeout)
            if connection_dropped(conn):  # closed while idle (the proxy's, after 5 s):
                self.close()  # a new one before a byte of the body is sent into it
                conn = self._connection(timeout or self.config.timeout)
            reused = conn.sock is not None
            try:
                if body is not None:
                    body.seek(0)
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                return response, response.read()
            except STALE_CONNECTION_ERRORS:
                if attempt == 2 or not reused or self._aborted:
                    raise
                self.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: IO[bytes] | None = None,
        size: int | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        headers = {"Authorization": f"token {self._token}", "Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if size is not None:
            headers["Content-Length"] = str(size)
        where = f"{method} {self.config.hub_url}{self._prefix}{path.split('?')[0]}"
        try:
            response, data = self._send(method, path, body, headers, timeout)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise HubUnreachableError(
                f"{where}: the hub's TLS certificate does not verify against the pinned "
                f"certificate (hub.certificate): {exc.verify_message}"
            ) from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            self.close()
            raise HubUnreachableError(f"{where}: {type(exc).__name__}: {exc}") from None
        if response.will_close or (body is not None and response.status >= 300):
            # An answer to an unfinished body (the proxy's 503 while the service restarts)
            # can leave the rest of it unread on this connection, and the proxy would not
            # read the next request from it until its keep-alive timeout (about 6 s).
            self.close()
        if response.status >= 500:
            raise HubUnreachableError(f"{where}: {response.status} {_error(response, data)[1]}")
        if response.status >= 400:
            code, message, reason = _error(response, data)
            raise HubRefusedError(response.status, code or response.reason, message, reason)
        if response.status >= 300:
            raise HubUnreachableError(f"{where}: unexpected {response.status} (a proxy?)")
        return response, data


def _error(response: http.client.HTTPResponse, data: bytes) -> tuple[str, str, str | None]:
    """The error code, message and reason of an answer (the service's JSON, or else a
    proxy's); the reason is also said at the end of the message."""
    try:
        doc = json.loads(data)
    except ValueError:
        # The proxy's HTML page while the service is not running, say.
        text = f"{response.reason} (answered by the hub's proxy, not its usreview service)"
        return "", text, None
    if not isinstance(doc, dict):
        return "", str(doc)[:200], None
    message = str(doc.get("message", ""))
    reason = str(doc["reason"]) if doc.get("reason") else None
    if reason:
        message += f" ({reason})"
    return str(doc.get("error", "")), message, reason

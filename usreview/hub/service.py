"""The usreview service: a hub-managed tornado application under ``/services/usreview/``.

JupyterHub starts it (``python -m usreview.hub.service``) with its URL, prefix and API
token in the environment, and stops it with SIGINT. Callers authenticate with a hub
API token (``Authorization: token ...``) or, in a browser, through the hub's OAuth;
they need ``access:services!service=usreview``, and handlers check the custom scopes
they need. Every answer is JSON, errors included: ``{"status": 403, "message": "..."}``
(the API's handlers add a machine-readable ``error``). The contract is
``docs/openapi.yaml``; the handlers are in :mod:`usreview.hub.api`.

Endpoints (prefix ``/services/usreview``):

``GET api/v1/whoami``
    The caller's ``name``, ``kind``, ``groups`` and ``scopes`` (audited, as every access;
    any other path answers an audited JSON 404).
``PUT api/v1/instances/{uid}``
    A site uploads one sealed instance (streamed, size-capped); 201 or 200 with a receipt.
``GET api/v1/instances/{uid}``
    A reviewer reads the instance as DICOM (audited).
``GET api/v1/instances/{uid}/receipt``, ``GET api/v1/receipts``
    Signed receipts of what the hub holds for the calling site.
``GET api/v1/results``, ``GET api/v1/results/{id}``
    A site's results feed (long-poll from a cursor) and one result's sealed envelope.
``GET api/v1/studies``, ``GET api/v1/studies/{uid}``
    Studies for reviewers.

Who is calling. A request's token is checked with the hub once and the answer is kept
by :class:`TokenCache` for :data:`TOKEN_CACHE_SECONDS` (5 s), on the event loop, so that
a site sending a stream of instances costs the hub one lookup every few seconds, not one
per upload, and no request waits for another one's lookup. The cost is revocation lag:
a token deleted at the hub (or a site removed from its group, or a token that expires)
still works here for at most that long. JupyterHub (6.1) answers a service's lookup
(``GET /hub/api/user``) with the owner's model plus ``token_id`` and ``session_id``, but
not the token's ``expires_at`` (that needs ``read:tokens`` on the owner, a right the
service does not get): so an expiring token is honoured within those 5 s of its expiry,
not exactly. Should the model carry ``expires_at`` (a later JupyterHub, or a hub that
adds it), an answer is kept no later than that instant. A refusal (an unknown, deleted or
expired token) is kept as long, so that a client sending a wrong token in a loop costs the
hub one lookup every few seconds (a token the hub refuses never becomes valid: new tokens
are new random strings); failed lookups are never kept. Browsers (the hub's OAuth cookie) use
JupyterHub's own cache, set to the same lifetime.

Slow clients. The server closes a connection whose request headers take longer than
``header_timeout`` seconds, and one whose body (other than an upload's) takes longer than
``body_timeout``; tornado gives no hook to answer those, so they are closed without an
answer. Uploads, which may be large, are watched by their handler instead and answered
408 (:mod:`usreview.hub.api.handlers_upload`). All are timers on the event loop: a
stalled client holds a socket, never a thread.

Idle connections. On the sites' port the header limit also closes a kept-alive
connection idle that long between requests (the site client sends again on a new
connection when it finds its kept-alive one closed). Behind the proxy it limits a
connection's first request only, and a connection may then stay idle
:data:`PROXY_IDLE_TIMEOUT` between requests: the proxy keeps its connections to the
service without a time limit and sends on any of them, so now and then a connection the
service was closing as idle met the proxy's next request, which the proxy answered 503
"socket hang up" (7 of 150 requests sent ``header_timeout`` apart).

Too many connections. Each server of a serving process holds at most
``ServiceSettings.max_connections`` (:class:`CappedHTTPServer`). One more closes the
connection that has waited longest for its next request (never one whose request is being
read or answered: an upload, a long-poll), or, when none waits, the new one: connections
opened and left idle (by a local process on the loopback port, or from the internet on
the sites' port) cannot take every descriptor of the service.

Before serving, :func:`main` binds the port (a second copy fails there, before touching
the state directory) and opens the service's resources with
:func:`usreview.hub.api.open_context`. With ``ServiceSettings.processes`` above 1 it
recovers the state once and forks that many serving processes on the bound port
(:mod:`usreview.hub.supervisor`), each with its own resources. Add handlers to
:func:`make_app`'s table; keep the factory free of side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial, wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from usreview.errors import UsreviewError
from usreview.hub.roles import SITE_GROUP
from usreview.hub.siteport import SitePort

if TYPE_CHECKING:
    from usreview.hub.api import ServiceContext, ServiceWorker

__all__ = [
    "PROXY_IDLE_TIMEOUT",
    "TOKEN_CACHE_SECONDS",
    "ApiHandler",
    "TokenCache",
    "WhoamiHandler",
    "caller_summary",
    "main",
    "make_app",
    "require_scopes",
]

_Method = Callable[..., Awaitable[None] | None]
_log = logging.getLogger("usreview.service")
#: How long the hub's answer about a token is kept (the revocation lag; see the module doc).
TOKEN_CACHE_SECONDS = 5.0
#: Seconds between the audit lines that count refusals, and unchanged re-reads, not
#: recorded one by one (at most).
SUPPRESSED_EVERY = 10.0
#: The application setting that holds the :class:`TokenCache`.
_TOKENS = "usreview_token_cache"
#: Application setting: only callers in the sites' group (the sites' port).
SITES_ONLY = "usreview_sites_only"


class TokenCache:
    """The hub's answers about tokens it knows, kept for ``ttl`` seconds.

    Used on the service's event loop only (no locks). Lookups of the same token that
    arrive while one is in flight wait for it instead of asking the hub again. Keys are
    SHA-256 hashes of the tokens, never the tokens.

    Parameters
    ----------
    ttl
        Seconds an answer is kept; ``0`` keeps nothing.
    max_entries
        Cap on the answers kept (expired ones go first, then the oldest).
    clock
        Monotonic seconds (tests pass a fake one).
    wall_clock
        Unix time, to compare with a model's ``expires_at`` (tests pass a fake one).
    """

    def __init__(
        self,
        ttl: float = TOKEN_CACHE_SECONDS,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._answers: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        #: Lookups sent to the hub so far.
        self.misses = 0

    def __len__(self) -> int:
        return len(self._answers)

    def forget(self, token: str | None = None) -> None:
        """Drop the answer about ``token`` (all answers without it)."""
        if token is None:
            self._answers.clear()
        else:
            self._answers.pop(_token_key(token), None)

    async def lookup(self, hub_auth: Any, token: str) -> dict[str, Any] | None:
        """The hub's model of the owner of ``token``, or ``None`` if the hub refuses it.

        Raises what :meth:`HubAuth.user_for_token` raises when the hub cannot answer.
        """
        key = _token_key(token)
        found = self._answers.get(key)
        if found is not None:
            if found[0] > self._clock():
                return None if found[1] is None else _copy(found[1])
            del self._answers[key]
        pending = self._pending.get(key)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                model = await asyncio.shield(pending)
                return _copy(model) if model is not None else None
            # the lookup we waited for failed: ask the hub ourselves below
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self.misses += 1
        try:
            model = await hub_auth.user_for_token(token, use_cache=False, sync=False)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        if not future.done():
            future.set_result(model)
        if not isinstance(model, dict):
            if self.ttl > 0:
                self._keep(key, None, self.ttl)  # refused: kept as long (module doc)
            return None
        try:
            left = _seconds_left(model.get("expires_at"), self._wall_clock())
        except ValueError:
            left = 0.0  # an expiry we cannot read: use this answer once, keep nothing
        else:
            if left is not None and left <= 0:
                if self.ttl > 0:
                    self._keep(key, None, self.ttl)
                return None  # expired while the hub answered
        ttl = self.ttl if left is None else min(self.ttl, left)
        if ttl > 0:
            self._keep(key, model, ttl)
        return _copy(model)

    def _keep(self, key: str, model: dict[str, Any] | None, ttl: float) -> None:
        now = self._clock()
        if len(self._answers) >= self.max_entries:
            for stale in [k for k, (until, _) in self._answers.items() if until <= now]:
                del self._answers[stale]
            while len(self._answers) >= self.max_entries:
                del self._answers[next(iter(self._answers))]
        self._answers[key] = (now + ttl, None if model is None else _copy(model))


def _seconds_left(expires_at: Any, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) to an ISO 8601 ``expires_at``; ``None``: no expiry.

    Raises ``ValueError`` if ``expires_at`` is not a timestamp.
    """
    if expires_at is None:
        return None
    when = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # JupyterHub's timestamps are UTC
    return when.timestamp() - now


def _copy(model: dict[str, Any]) -> dict[str, Any]:
    """A copy of a user model deep enough that a handler cannot change the cached one
    (nested dicts and lists; ``copy.deepcopy`` cost more than the rest of a lookup)."""
    return {key: _copy_value(value) for key, value in model.items()}


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_value(v) for v in value]
    return value


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class ApiHandler(HubOAuthenticated, RequestHandler):  # type: ignore[misc]
    """Base of the service's JSON handlers: authenticated by the hub, JSON errors."""

    def initialize(self, hub_auth: Any = None) -> None:
        """Use ``hub_auth`` (a :class:`HubOAuth`) instead of the one from the environment."""
        if hub_auth is not None:
            self.hub_auth = hub_auth

    async def prepare(self) -> None:
        """Refuse callers the hub does not know (401) or does not let in (403)."""
        await self.identify()
        if self.current_user is None:
            if self.request.headers.get("Authorization") or self.get_cookie(
                self.hub_auth.cookie_name
            ):
                raise HTTPError(403, "not allowed to use the usreview service")
            raise HTTPError(401, "log in, or send 'Authorization: token TOKEN'")

    async def identify(self) -> None:
        """Ask the hub who the caller is, on the event loop (see the module docstring).

        A token in the request goes through the application's :class:`TokenCache`;
        otherwise (the hub's OAuth cookie) JupyterHub's own asynchronous lookup runs.
        Afterwards :attr:`current_user` is the allowed caller's model or ``None``.
        """
        if hasattr(self, "_hub_auth_user_cache"):
            return
        tokens: TokenCache | None = self.settings.get(_TOKENS)
        token = self.hub_auth.get_token(self, in_cookie=False) if tokens is not None else None
        if tokens is not None and token:
            model = await tokens.lookup(self.hub_auth, token)
            if model:
                self._token_authenticated = True
            self._cached_hub_user = model  # what JupyterHub's own lookup would have kept
        else:
            model = await self.hub_auth.get_user(self, sync=False)
        allowed = None
        if model:
            try:
                allowed = self.check_hub_user(model)
            except UserNotAllowed:
                allowed = None
        self._hub_auth_user_cache = allowed
        if allowed:
            self.hub_auth._persist_url_token_if_set(self)

    @property
    def caller(self) -> dict[str, Any]:
        """The hub's model of the caller (name, kind, groups, scopes)."""
        model: dict[str, Any] = self.current_user
        return model

    def check_xsrf_cookie(self) -> None:
        """Token requests need no XSRF check; cookie requests get the hub's."""
        if self.request.headers.get("Authorization"):
            return
        super().check_xsrf_cookie()

    def write_json(self, payload: Any, status: int = 200) -> None:
        """Send ``payload`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error as ``{"status": ..., "message": ...}``, never a traceback."""
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], HTTPError) and exc_info[1].log_message:
            message = exc_info[1].log_message
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": message}))


def is_site(model: dict[str, Any]) -> bool:
    """Whether the hub's model of a caller is a site (a user in the sites' group)."""
    return model.get("kind", "user") == "user" and SITE_GROUP in (model.get("groups") or [])


def require_scopes(*scopes: str) -> Callable[[_Method], _Method]:
    """Decorate a handler method: answer 403 unless the caller holds one of ``scopes``."""

    def decorate(method: _Method) -> _Method:
        @wraps(method)
        def wrapper(self: ApiHandler, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
            if not self.hub_auth.check_scopes(set(scopes), self.caller):
                raise HTTPError(403, f"needs one of the scopes: {', '.join(scopes)}")
            return method(self, *args, **kwargs)

        return wrapper

    return decorate


def caller_summary(model: dict[str, Any]) -> dict[str, Any]:
    """The body of ``whoami``: name, kind, groups and scopes of the hub's user model."""
    return {
        "name": model["name"],
        "kind": model.get("kind", "user"),
        "groups": sorted(model.get("groups") or []),
        "scopes": sorted(model.get("scopes") or []),
    }


class WhoamiHandler(ApiHandler):
    """``GET api/v1/whoami`` without the API (no context): who the hub says the caller is.

    The service's application serves the audited one of :mod:`usreview.hub.api`.
    """

    def get(self) -> None:
        """Return name, kind, groups and scopes of the caller."""
        self.write_json(caller_summary(self.caller))


class NotFoundHandler(ApiHandler):
    """Any other path without the API: JSON 404 (after authentication, so nothing leaks).

    The service's application serves the audited one of :mod:`usreview.hub.api`.
    """

    def get(self, *args: str) -> None:
        """Answer 404."""
        raise HTTPError(404, "no such endpoint")

    post = put = delete = patch = get


def make_app(
    prefix: str | None = None,
    hub_auth: Any = None,
    context: ServiceContext | None = None,
    *,
    sites_only: bool = False,
) -> Application:
    """Return the service's tornado application.

    Parameters
    ----------
    prefix
        URL prefix; default ``$JUPYTERHUB_SERVICE_PREFIX`` or ``/services/usreview/``.
    hub_auth
        A :class:`jupyterhub.services.auth.HubOAuth`; default: one from the environment
        the hub gives its managed services.
    context
        The opened resources of :func:`usreview.hub.api.open_context`; without it only
        ``whoami`` is served, unaudited. With it, every request is audited, ``whoami``
        and the 404 of unknown paths included.
    sites_only
        The application of the sites' port (:mod:`usreview.hub.siteport`): callers
        other than sites get 403, and there is no OAuth callback (no browsers).
    """
    if sites_only and context is None:
        raise ValueError("the sites' port serves the API's handlers: give the context")
    prefix = prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/usreview/")
    prefix = prefix.rstrip("/") + "/"
    if hub_auth is None:
        # JupyterHub's own cache (cookie logins) as short-lived as ours (default 5 min).
        hub_auth = HubOAuth.instance(cache_max_age=max(1, round(TOKEN_CACHE_SECONDS)))
    auth = hub_auth
    options = {"hub_auth": auth}
    api: list[Any] = [(rf"{prefix}api/v1/whoami/?", WhoamiHandler, options)]
    missing: tuple[Any, ...] = (rf"{prefix}(.*)", NotFoundHandler, options)
    if context is not None:  # the API's audited handlers, whoami and the 404 included
        from usreview.hub.api.app import api_routes, unknown_path_route

        api = api_routes(prefix, context, options)
        missing = unknown_path_route(prefix, context, options)
    settings: dict[str, Any] = {_TOKENS: TokenCache(), SITES_ONLY: sites_only}
    oauth = [] if sites_only else [(rf"{prefix}oauth_callback", HubOAuthCallbackHandler)]
    return Application(
        [*api, *oauth, missing],
        cookie_secret=os.urandom(32),
        hub_auth=auth,
        xsrf_cookies=False,
        **settings,
    )


#: Headers tornado's ``xheaders`` trusts before the proxy's own ``X-Forwarded-For`` and
#: ``X-Forwarded-Proto``. The hub's proxy appends the peer it saw to those two, but passes
#: these on as the client sent them: trusted, they let a caller write any address into the
#: audit log, and start a fresh refusal allowance (:class:`RefusalLimiter`) per request.
CLIENT_SET_HEADERS = ("X-Real-Ip", "X-Scheme")


#: Seconds a connection behind the proxy may stay idle between two requests (tornado's
#: default; the proxy's own connections are never idle that long while the hub is used).
PROXY_IDLE_TIMEOUT = 3600.0


#: Connections each server of a serving process holds at most (``max_connections``).
MAX_CONNECTIONS = 4096


class CappedHTTPServer(HTTPServer):  # type: ignore[misc]
    """A server of at most ``max_connections`` connections (see the module doc): one more
    closes the connection idle the longest, or itself when none is idle.

    A connection is idle from the moment the server waits for its next request (its first
    included) until that request's headers have arrived.
    """

    def initialize(self, *args: Any, max_connections: int = MAX_CONNECTIONS, **kwargs: Any) -> None:
        """As :class:`HTTPServer`, with the cap."""
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self._idle: dict[object, None] = {}  # waiting for a request, longest first

    def handle_stream(self, stream: Any, address: tuple[Any, ...]) -> None:
        """Serve a new connection, after making room for it (see the class doc)."""
        if len(self._connections) >= self.max_connections:
            if not self._idle:
                stream.close()  # every connection is at work: this one waits its turn
                return
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.stream.close()  # type: ignore[attr-defined]  # its loop ends, on_close
        super().handle_stream(stream, address)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Tornado's delegate, behind one that marks the connection busy once the
        request's headers are in."""
        self._idle.pop(server_conn, None)
        self._idle[server_conn] = None  # idle the shortest now
        return _Watched(super().start_request(server_conn, request_conn), self, server_conn)

    def on_close(self, server_conn: object) -> None:
        """Forget the connection."""
        self._idle.pop(server_conn, None)
        super().on_close(server_conn)

    def request_headers(self, server_conn: object, headers: httputil.HTTPHeaders) -> None:
        """The connection is at work (the request is read and answered)."""
        self._idle.pop(server_conn, None)


class ProxiedHTTPServer(CappedHTTPServer):
    """The server behind the hub's proxy: the caller's address and scheme are the last
    entries of the proxy's ``X-Forwarded-For`` and ``X-Forwarded-Proto`` (tornado's
    ``xheaders``); :data:`CLIENT_SET_HEADERS` are dropped before they are read.

    ``idle_connection_timeout`` limits a connection's first request headers only; it may
    then stay idle :data:`PROXY_IDLE_TIMEOUT` between requests (see the module doc).
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """As :class:`CappedHTTPServer`, with ``xheaders`` on."""
        super().initialize(*args, **{**kwargs, "xheaders": True})
        self._after_first = copy.copy(self.conn_params)
        self._after_first.header_timeout = max(
            PROXY_IDLE_TIMEOUT, self.conn_params.header_timeout or 0
        )

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """As :class:`CappedHTTPServer`; the connection's next requests may wait longer."""
        if isinstance(server_conn, HTTP1ServerConnection):
            # Read by the connection's next requests (this one's parameters are set).
            server_conn.params = self._after_first
        return super().start_request(server_conn, request_conn)

    def request_headers(self, server_conn: object, headers: httputil.HTTPHeaders) -> None:
        """Drop :data:`CLIENT_SET_HEADERS` before anything reads them."""
        super().request_headers(server_conn, headers)
        for name in CLIENT_SET_HEADERS:
            if name in headers:
                del headers[name]


class _Watched(httputil.HTTPMessageDelegate):
    """Tornado's delegate of one request; tells the server when its headers are in."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, server: CappedHTTPServer, conn: object
    ) -> None:
        self.delegate, self.server, self.conn = delegate, server, conn

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self.server.request_headers(self.conn, headers)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


async def _serve(
    sockets: list[Any],
    worker: ServiceWorker | None = None,
    site: tuple[ssl.SSLContext, list[Any]] | None = None,
) -> None:
    """Serve the API on ``sockets`` (behind the proxy), and to sites only on the TLS
    sockets of ``site`` (:mod:`usreview.hub.siteport`)."""
    from usreview.hub.api import open_context

    context = open_context(worker=worker)
    try:
        settings = context.settings
        app = make_app(context=context)
        limits = {
            "idle_connection_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
            "max_connections": settings.max_connections,
        }
        servers: list[tuple[HTTPServer, list[Any]]] = [(ProxiedHTTPServer(app, **limits), sockets)]
        if site is not None:  # the sites' own TLS port: no proxy, so no forwarded headers
            tls, site_sockets = site
            sites_app = make_app(context=context, sites_only=True)
            servers.append((CappedHTTPServer(sites_app, ssl_options=tls, **limits), site_sockets))
        every = min(SUPPRESSED_EVERY, settings.unchanged_audit_seconds / 2)
        flush = PeriodicCallback(partial(_flush_suppressed, context), every * 1000)
        flush.start()
        try:
            await _run(servers)
        finally:
            flush.stop()
            await _flush_suppressed(context, stopping=True)
    finally:
        context.close()


async def _flush_suppressed(context: ServiceContext, *, stopping: bool = False) -> None:
    """Record the refusals and the unchanged re-reads counted instead of audited one by
    one (:class:`~usreview.hub.audit.RefusalLimiter`,
    :class:`~usreview.hub.audit.RereadCounter`); every count when ``stopping``."""
    loop = asyncio.get_running_loop()
    counts = context.refusals.drain()
    if counts:
        try:
            await loop.run_in_executor(context.executor, context.record_suppressed, counts)
        except UsreviewError as exc:
            _log.error("cannot record suppressed refusals %s: %s", counts, exc)
    reads = context.rereads.drain(everything=stopping)
    if reads:
        try:
            await loop.run_in_executor(context.executor, context.record_unchanged, reads)
        except UsreviewError as exc:
            _log.error("cannot record unchanged re-reads %s: %s", reads, exc)


async def _run(servers: list[tuple[HTTPServer, list[Any]]]) -> None:
    for server, sockets in servers:
        server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # The hub stops services with SIGINT; a process started from a non-interactive
        # shell inherits SIGINT as ignored, so install handlers rather than rely on it.
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server, _ in servers:
        server.stop()
    with contextlib.suppress(TimeoutError):  # long-polls in flight are cut
        closing = (server.close_all_connections() for server, _ in servers)
        await asyncio.wait_for(asyncio.gather(*closing), timeout=2)


def main() -> None:
    """Run the service until SIGINT or SIGTERM; exit 1 with a sentence if it cannot start.

    With ``ServiceSettings.processes`` above 1, this process binds the port, recovers the
    state and supervises that many serving processes (:mod:`usreview.hub.supervisor`),
    each with its own socket on the port. The sites' port, when the hub gives one
    (:mod:`usreview.hub.siteport`), is bound the same way. Started by the hub, it stops
    as on SIGTERM when the hub dies (:func:`~usreview.hub.supervisor.die_with_hub`).
    """
    from usreview._process import raise_open_files_limit
    from usreview.hub.api.settings import ServiceSettings
    from usreview.hub.state import state_from_env
    from usreview.hub.supervisor import die_with_hub, supervise

    die_with_hub()
    raise_open_files_limit()  # inherited by the serving processes it forks
    try:
        url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
        port, host = url.port or 80, url.hostname or "127.0.0.1"
        sockets = bind_sockets(port, host)  # a copy of the service fails here
        site_port = SitePort.from_env()
        site_sockets = [] if site_port is None else site_port.bind()  # and here
        tls = None if site_port is None else site_port.tls_context()
        processes = ServiceSettings.from_state(state_from_env()).processes
        if processes == 1:
            asyncio.run(_serve(sockets, site=None if tls is None else (tls, site_sockets)))
            return
        from usreview.hub.api import ServiceWorker, recover_shared_state

        # One socket per process on the port (SO_REUSEPORT): the kernel spreads the
        # connections among them. On one shared socket a single process may accept
        # every connection (the proxy keeps a few alive) and leave the others idle.
        for sock in [*sockets, *site_sockets]:
            sock.close()
        groups = [bind_sockets(port, host, reuse_port=True) for _ in range(processes)]
        site_groups = [[] if site_port is None else site_port.bind(reuse_port=True) for _ in groups]
        lock_fd = recover_shared_state()

        def serve_one(index: int) -> int:
            # The others' sockets stay open in the supervisor only: connections the
            # kernel gave to a process that died wait there until it starts again.
            for other, group in enumerate(groups):
                if other != index:
                    for sock in [*group, *site_groups[other]]:
                        sock.close()
            site = None if tls is None else (tls, site_groups[index])
            try:
                asyncio.run(_serve(groups[index], ServiceWorker(index, lock_fd), site))
            except (UsreviewError, OSError) as exc:
                print(f"usreview service process {index}: {exc}", file=sys.stderr)
                return 1
            return 0

        raise SystemExit(supervise(processes, serve_one))
    except (UsreviewError, OSError) as exc:
        print(f"usreview service: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    # Run the importable module, so that the API's handlers share this one.
    from usreview._process import run_then_exit
    from usreview.hub.service import main as _main

    run_then_exit(_main)  # without the interpreter's teardown: the hub waits for it

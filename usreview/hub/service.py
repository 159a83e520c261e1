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
    The caller's ``name``, ``kind``, ``groups`` and ``scopes``.
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

Before serving, :func:`main` binds the port (a second copy fails there, before touching
the state directory) and opens the service's resources with
:func:`usreview.hub.api.open_context`. Add handlers to :func:`make_app`'s table; keep
the factory free of side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from usreview.errors import UsreviewError

if TYPE_CHECKING:
    from usreview.hub.api import ServiceContext

__all__ = ["ApiHandler", "WhoamiHandler", "main", "make_app", "require_scopes"]

_Method = Callable[..., Awaitable[None] | None]


class ApiHandler(HubOAuthenticated, RequestHandler):  # type: ignore[misc]
    """Base of the service's JSON handlers: authenticated by the hub, JSON errors."""

    def initialize(self, hub_auth: Any = None) -> None:
        """Use ``hub_auth`` (a :class:`HubOAuth`) instead of the one from the environment."""
        if hub_auth is not None:
            self.hub_auth = hub_auth

    def prepare(self) -> None:
        """Refuse callers the hub does not know (401) or does not let in (403)."""
        if self.current_user is None:
            if self.request.headers.get("Authorization") or self.get_cookie(
                self.hub_auth.cookie_name
            ):
                raise HTTPError(403, "not allowed to use the usreview service")
            raise HTTPError(401, "log in, or send 'Authorization: token TOKEN'")

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


class WhoamiHandler(ApiHandler):
    """``GET api/v1/whoami``: who the hub says the caller is."""

    def get(self) -> None:
        """Return name, kind, groups and scopes of the caller."""
        model = self.caller
        self.write_json(
            {
                "name": model["name"],
                "kind": model.get("kind", "user"),
                "groups": sorted(model.get("groups") or []),
                "scopes": sorted(model.get("scopes") or []),
            }
        )


class NotFoundHandler(ApiHandler):
    """Any other path: JSON 404 (after authentication, so nothing leaks)."""

    def get(self, *args: str) -> None:
        """Answer 404."""
        raise HTTPError(404, "no such endpoint")

    post = put = delete = patch = get


def make_app(
    prefix: str | None = None, hub_auth: Any = None, context: ServiceContext | None = None
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
        ``whoami`` is served.
    """
    prefix = prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/usreview/")
    prefix = prefix.rstrip("/") + "/"
    auth = hub_auth if hub_auth is not None else HubOAuth.instance()
    options = {"hub_auth": auth}
    api: list[Any] = []
    if context is not None:
        from usreview.hub.api import api_routes

        api = api_routes(prefix, context, options)
    return Application(
        [
            (rf"{prefix}api/v1/whoami/?", WhoamiHandler, options),
            *api,
            (rf"{prefix}oauth_callback", HubOAuthCallbackHandler),
            (rf"{prefix}(.*)", NotFoundHandler, options),
        ],
        cookie_secret=os.urandom(32),
        hub_auth=auth,
        xsrf_cookies=False,
    )


async def _serve() -> None:
    from usreview.hub.api import open_context

    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    sockets = bind_sockets(url.port or 80, url.hostname or "127.0.0.1")
    context = open_context()
    try:
        await _run(HTTPServer(make_app(context=context), xheaders=True), sockets)
    finally:
        context.close()


async def _run(server: HTTPServer, sockets: list[Any]) -> None:
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # The hub stops services with SIGINT; a process started from a non-interactive
        # shell inherits SIGINT as ignored, so install handlers rather than rely on it.
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()
    with contextlib.suppress(TimeoutError):  # long-polls in flight are cut
        await asyncio.wait_for(server.close_all_connections(), timeout=2)


def main() -> None:
    """Run the service until SIGINT or SIGTERM; exit 1 with a sentence if it cannot start."""
    try:
        asyncio.run(_serve())
    except (UsreviewError, OSError) as exc:
        print(f"usreview service: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    # Run the importable module, so that the API's handlers share this one.
    from usreview.hub.service import main as _main

    _main()

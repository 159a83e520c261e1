"""Administering a running hub through its REST API, with the ``usreview-admin`` token.

Why the REST API: JupyterHub assumes it is the only writer of its database (its
sessions never expire cached objects), so a second process writing users, groups or
tokens into ``jupyterhub.sqlite`` behind a running hub could be ignored or overwritten.
Through the API the hub itself creates the site's user, adds it to ``sites`` and mints
its token: JupyterHub hashes the token, checks it does not exceed the site's scopes,
and keeps it in its database, where it survives restarts. No plaintext site token is
ever stored. The cost is that ``add-site`` needs a running hub, which is when a token
is useful anyway.

Alternatives considered: ``c.JupyterHub.api_tokens`` (a plaintext token file read at
every start; pending deprecation), and writing the database directly as
``jupyterhub token`` does (only safe while the hub is stopped).

The API is the hub's own port on loopback (plain HTTP, never exposed; ``run.json``
records it), not the public TLS endpoint.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from usreview.hub.errors import HubUnavailableError

__all__ = ["HubApi"]


class HubApi:
    """A small client of JupyterHub's REST API.

    Parameters
    ----------
    url
        The API root, e.g. ``http://127.0.0.1:8081/hub/api``.
    token
        The ``usreview-admin`` service token.
    timeout
        Seconds per request.
    """

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, ok: Sequence[int] = (), auth: bool = True
    ) -> Any:
        """Send one request and return its JSON answer (``None`` when empty).

        Statuses in ``ok`` besides 2xx are accepted (their answer is returned); ``auth``
        false sends no token (to check that a JupyterHub answers before trusting it).

        Raises
        ------
        HubUnavailableError
            If the hub cannot be reached or answers with another error.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", data=data, method=method)
        if auth:
            req.add_header("Authorization", f"token {self._token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return _json(response.read())
        except urllib.error.HTTPError as exc:
            payload = _json(exc.read())
            if exc.code in ok:
                return payload
            message = payload.get("message") if isinstance(payload, dict) else None
            raise HubUnavailableError(
                f"the hub refused {method} {path}: {exc.code} {message or exc.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HubUnavailableError(
                f"cannot reach the hub at {self.url} ({reason}): start it with 'usreview hub' "
                "and run this command again"
            ) from None

    def ensure_user(self, name: str) -> None:
        """Create the user ``name`` unless it exists."""
        self.request("POST", f"users/{quote(name)}", ok=(409,))

    def add_to_group(self, group: str, name: str) -> None:
        """Add the user ``name`` to ``group``."""
        self.request("POST", f"groups/{quote(group)}/users", {"users": [name]})

    def new_token(self, name: str, scopes: Sequence[str], note: str) -> str:
        """Return a new API token of user ``name`` limited to ``scopes``."""
        answer = self.request(
            "POST", f"users/{quote(name)}/tokens", {"scopes": list(scopes), "note": note}
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise HubUnavailableError("the hub answered a token request without a token")
        return str(answer["token"])


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None

"""The hub's login: one generated password per person, checked against scrypt hashes.

Each person gets their own password from ``usreview hub add-user`` (shown once); the
registry (:mod:`usreview.hub.accounts`) keeps only its scrypt hash. There is no
default password, no shared password and no open sign-up: a name that is not in the
registry, or a site (sites have tokens, not passwords), cannot log in.

Production sites should use their single sign-on instead:
``oauthenticator`` (``GenericOAuthenticator`` for OpenID Connect, ``AzureAdOAuthenticator``
...) or ``ldapauthenticator``, with the group of each person mapped to the groups of
:mod:`usreview.hub.roles` (``manage_groups``). JupyterHub's ``SharedPasswordAuthenticator``
and ``DummyAuthenticator`` let anyone with the one password in as anyone: tests only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import Unicode, validate

from usreview.hub.accounts import Accounts
from usreview.hub.passwords import verify_password

__all__ = ["UsreviewAuthenticator"]


class UsreviewAuthenticator(Authenticator):  # type: ignore[misc]
    """Check a person's own password against the accounts registry."""

    accounts_db = Unicode(
        "",
        help="The accounts registry (accounts.sqlite in the hub's state directory), "
        "written by 'usreview hub add-user'. Required.",
    ).tag(config=True)

    @validate("accounts_db")
    def _check_accounts_db(self, proposal: Any) -> str:
        value = str(proposal["value"])
        if value and not Path(value).is_absolute():
            raise ValueError(
                f"UsreviewAuthenticator.accounts_db must be an absolute path, not {value!r}"
            )
        return value

    @property
    def _accounts(self) -> Accounts:
        if not self.accounts_db:
            raise ValueError("set UsreviewAuthenticator.accounts_db (configure() does)")
        return Accounts(Path(self.accounts_db))

    def check_allow_config(self) -> None:
        """Log who may log in (there is always an allow list: the registry)."""
        self.log.info("Login: people registered with 'usreview hub add-user' only")

    def check_allowed(self, username: str, authentication: Any = None) -> bool:
        """Allow registered people only (never sites, never unknown names)."""
        return self._accounts.is_person(username)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        """Return the user name when the password matches its stored hash, else ``None``."""
        username = str(self.normalize_username(str(data.get("username", ""))))
        password = str(data.get("password", ""))
        stored = await asyncio.to_thread(self._accounts.password_hash, username)
        matched = await asyncio.to_thread(verify_password, password, stored)
        if not matched:
            self.log.warning("Failed login for %r", username)
            return None
        return username

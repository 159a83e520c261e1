"""The hub's state directory: every secret and database of one deployment.

Created with mode 0700 on first start and never committed (default ``./state``, or
``$USREVIEW_STATE``). Files generated when missing (``at-rest.key`` and ``audit.key``
with a new hub only, see :func:`open_state`), each mode 0600 and never overwritten:

==========================  =================================================================
``hub.key`` / ``hub.pub``   the hub's envelope identity (:mod:`usreview.envelope`); sites seal
                            studies to ``hub.pub``
``cookie_secret``           JupyterHub's cookie signing key (hex)
``at-rest.key``             32 random bytes for encrypting stored studies (the archive)
``audit.key``               32 random bytes keying the audit log's hash chain
``audit.log``               the append-only audit log (:mod:`usreview.hub.audit`)
``admin-service.token``     the ``usreview-admin`` service token of the administration
                            commands (as sensitive as the cookie secret: both stay here)
``accounts.sqlite``         people (scrypt hashes) and sites (:mod:`usreview.hub.accounts`)
``jupyterhub.sqlite``       JupyterHub's database (users, groups, hashed API tokens)
``tls.crt`` / ``tls.key``   the self-signed demo certificate (:mod:`usreview.hub.tls`)
``sites/NAME.pub``          each site's envelope public key
``run.json``                where the running hub's API listens (written at each start)
==========================  =================================================================

The hub key is not passphrase-protected because the hub starts unattended; protect
the directory (disk encryption, backups with the same care as the keys).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usreview.envelope import generate_keys, write_key_pair
from usreview.envelope.atomic import replace_file, write_new_file
from usreview.hub.errors import StateError

__all__ = [
    "DEFAULT_STATE",
    "STATE_ENV",
    "HubState",
    "existing_state",
    "open_state",
    "state_from_env",
]

STATE_ENV = "USREVIEW_STATE"
DEFAULT_STATE = Path("state")


@dataclass(frozen=True)
class HubState:
    """Paths inside one state directory (see the module docstring)."""

    root: Path

    @property
    def hub_key(self) -> Path:
        """The hub's private envelope keys."""
        return self.root / "hub.key"

    @property
    def hub_pub(self) -> Path:
        """The hub's public envelope keys (given to sites)."""
        return self.root / "hub.pub"

    @property
    def cookie_secret(self) -> Path:
        """JupyterHub's cookie secret file."""
        return self.root / "cookie_secret"

    @property
    def at_rest_key(self) -> Path:
        """The key that encrypts stored studies."""
        return self.root / "at-rest.key"

    @property
    def audit_key(self) -> Path:
        """The key of the audit log's hash chain."""
        return self.root / "audit.key"

    @property
    def audit_log(self) -> Path:
        """The append-only audit log."""
        return self.root / "audit.log"

    @property
    def admin_token(self) -> Path:
        """The token of the ``usreview-admin`` service."""
        return self.root / "admin-service.token"

    @property
    def accounts(self) -> Path:
        """The people and sites registry."""
        return self.root / "accounts.sqlite"

    @property
    def jupyterhub_db(self) -> Path:
        """JupyterHub's SQLite database."""
        return self.root / "jupyterhub.sqlite"

    @property
    def tls_cert(self) -> Path:
        """The generated certificate (PEM)."""
        return self.root / "tls.crt"

    @property
    def tls_key(self) -> Path:
        """The generated certificate's private key (PEM)."""
        return self.root / "tls.key"

    @property
    def sites(self) -> Path:
        """Folder of the sites' public keys."""
        return self.root / "sites"

    @property
    def homes(self) -> Path:
        """Folder of the single-user servers' working directories."""
        return self.root / "users"

    @property
    def run_info(self) -> Path:
        """Where the running hub listens (JSON)."""
        return self.root / "run.json"

    def read_admin_token(self) -> str:
        """Return the ``usreview-admin`` service token."""
        return _read_text(self.admin_token)

    def write_run_info(self, info: dict[str, Any]) -> None:
        """Record where the hub being started listens."""
        replace_file(self.run_info, json.dumps(info, indent=2).encode(), mode=0o600)

    def read_run_info(self) -> dict[str, Any]:
        """Return what :meth:`write_run_info` recorded.

        Raises
        ------
        StateError
            If the hub was never started with this state directory.
        """
        try:
            info = json.loads(_read_text(self.run_info))
        except ValueError:
            raise StateError(f"{self.run_info} is damaged: start the hub again") from None
        if not isinstance(info, dict):
            raise StateError(f"{self.run_info} is damaged: start the hub again")
        return info


def open_state(root: Path) -> HubState:
    """Create or check the state directory and generate missing secrets.

    ``at-rest.key`` and ``audit.key`` are generated with a new hub only (no ``hub.key``
    yet): what the hub stored depends on them, so in an existing hub a missing one is an
    error, never replaced by a new one.

    Raises
    ------
    StateError
        If the directory is accessible to group or others, or is not a directory; if
        ``at-rest.key`` or ``audit.key`` is missing from an existing hub.
    """
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise StateError(f"state directory {root} is not a directory")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o077:
        raise StateError(
            f"state directory {root} is accessible to others (mode {mode:04o}): "
            f"run 'chmod 700 {root}'"
        )
    state = HubState(root)
    for folder in (state.sites, state.homes):
        folder.mkdir(mode=0o700, exist_ok=True)
    if not state.hub_key.exists():  # a new hub: its key is made last
        if state.hub_pub.exists():
            raise StateError(f"{state.hub_pub} exists without {state.hub_key}: restore both")
        _ensure_secret(state.at_rest_key, lambda: secrets.token_bytes(32))
        _ensure_secret(state.audit_key, lambda: secrets.token_bytes(32))
        write_key_pair(generate_keys("hub"), root)
    # What is stored depends on these two: made with a new hub only, never made again.
    _ensure_secret(state.at_rest_key, None, "the teaching cases stored are encrypted with it")
    _ensure_secret(state.audit_key, None, "the audit log's chain is keyed with it")
    _ensure_secret(state.cookie_secret, lambda: secrets.token_hex(32).encode())
    _ensure_secret(state.admin_token, lambda: secrets.token_hex(32).encode())
    return state


def _ensure_secret(path: Path, make: Callable[[], bytes] | None, needed_for: str = "") -> None:
    """Check ``path``'s mode; make it if missing, or say what it is needed for."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StateError(f"{path} is readable by others (mode {mode:04o}): chmod 600 it")
        return
    if make is None:
        raise StateError(
            f"{path} is missing: restore it from the hub's backup ({needed_for}; a new one "
            "would not open them)"
        )
    write_new_file(path, make(), mode=0o600)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise StateError(
            f"{path} is missing: start the hub once with 'usreview hub --state {path.parent}'"
        ) from None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None


def state_from_env() -> Path:
    """Return ``$USREVIEW_STATE`` or ``./state``."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


def existing_state(root: Path) -> HubState:
    """The state directory of an existing hub (:func:`open_state`), never a new one.

    For the administration commands: a mistyped ``--state`` is an error, not a new hub.

    Raises
    ------
    StateError
        ``root`` holds no hub keys, or see :func:`open_state`.
    """
    root = Path(root).absolute()
    if not (root / "hub.key").is_file():
        raise StateError(
            f"no hub state in {root}: give the hub's --state (or set ${STATE_ENV}); "
            f"'usreview hub --state {root}' would start a new hub there"
        )
    return open_state(root)

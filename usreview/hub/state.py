"""The hub's state directory: every secret and database of one deployment.

Created with mode 0700 on first start and never committed (default ``./state``, or
``$USREVIEW_STATE``). Files generated when missing (``at-rest.key`` and ``audit.key``
with a new hub only, see :func:`open_state`), each mode 0600 and never overwritten:

==========================  =================================================================
``hub.key`` / ``hub.pub``   the hub's envelope identity (:mod:`usreview.envelope`); sites seal
                            studies to ``hub.pub``
``hub-keys/``               the keys ``usreview hub rotate-key`` replaced, and the signed
                            transitions sites follow (:mod:`usreview.hub.hubkeys`)
``cookie_secret``           JupyterHub's cookie signing key (hex)
``at-rest.key``             32 random bytes for encrypting stored studies (the archive)
``audit.key``               32 random bytes keying the audit log's hash chain
``audit.log``               the append-only audit log (:mod:`usreview.hub.audit`)
``admin-service.token``     the ``usreview-admin`` service token of the administration
                            commands (as sensitive as the cookie secret: both stay here)
``accounts.sqlite``         people (scrypt hashes) and sites (:mod:`usreview.hub.accounts`)
``jupyterhub.sqlite``       JupyterHub's database (users, groups, hashed API tokens)
``tls.crt`` / ``tls.key``   the self-signed demo certificate (:mod:`usreview.hub.tls`)
``tls-next.crt``            the certificate served next, announced to the sites ahead (with
                            ``tls-next.key``: made a month before ``tls.crt`` expires; alone:
                            given with ``usreview hub next-certificate``)
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
from usreview.errors import InputError
from usreview.hub.errors import StateError

__all__ = [
    "DEFAULT_STATE",
    "STATE_ENV",
    "HubState",
    "NotAStateError",
    "existing_state",
    "holds_hub",
    "open_state",
    "open_to_servers",
    "state_from_env",
    "state_or_new",
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
    def tls_next_cert(self) -> Path:
        """The certificate the hub serves next, announced to the sites ahead (PEM)."""
        return self.root / "tls-next.crt"

    @property
    def tls_next_key(self) -> Path:
        """Its private key, when the hub made it (a self-signed successor)."""
        return self.root / "tls-next.key"

    @property
    def sites(self) -> Path:
        """Folder of the sites' public keys."""
        return self.root / "sites"

    @property
    def homes(self) -> Path:
        """Folder of the people's homes (their single-user servers' working directories)."""
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
    yet, :func:`holds_hub`): what the hub stored depends on them, so in an existing hub a
    missing one is an error, never replaced by a new one.

    Raises
    ------
    StateError
        If the directory is readable or writable by group or others (passing through,
        mode 0711, is what :func:`open_to_servers` allows), or is not a directory; if
        ``at-rest.key`` or ``audit.key`` is missing from an existing hub, or ``hub.key``
        (``hub.pub`` left).
    """
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise StateError(f"state directory {root} is not a directory")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o066:
        raise StateError(
            f"state directory {root} is accessible to others (mode {mode:04o}): "
            f"run 'chmod 700 {root}'"
        )
    state = HubState(root)
    for folder in (state.sites, state.homes):
        folder.mkdir(mode=0o700, exist_ok=True)
    if not holds_hub(root):  # a new hub: its key is made last
        _ensure_secret(state.at_rest_key, lambda: secrets.token_bytes(32))
        _ensure_secret(state.audit_key, lambda: secrets.token_bytes(32))
        write_key_pair(generate_keys("hub"), root)
    # What is stored depends on these two: made with a new hub only, never made again.
    _ensure_secret(state.at_rest_key, None, "the teaching cases stored are encrypted with it")
    _ensure_secret(state.audit_key, None, "the audit log's chain is keyed with it")
    _ensure_secret(state.cookie_secret, lambda: secrets.token_hex(32).encode())
    _ensure_secret(state.admin_token, lambda: secrets.token_hex(32).encode())
    return state


def open_to_servers(state: HubState) -> None:
    """Let each person's server account pass to its home, and reach nothing else.

    The state directory and ``users/`` become 0711; every other entry of the state
    directory loses all permissions of group and others (``jupyterhub.sqlite``, made by
    JupyterHub, was 0644; the hub's ``hub.pub`` and ``tls.crt`` are public anyway).
    """
    state.homes.mkdir(mode=0o711, exist_ok=True)
    for entry in os.scandir(state.root):
        if entry.name == state.homes.name:
            continue
        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        if mode & 0o077 and not entry.is_symlink():
            os.chmod(entry.path, mode & 0o700)
    os.chmod(state.homes, 0o711)
    os.chmod(state.root, 0o711)


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


class NotAStateError(StateError, InputError):
    """A folder given as a new hub's state that already holds something else (exit status 2)."""


def holds_hub(root: Path) -> bool:
    """Whether ``root`` is the state directory of an existing hub (it has ``hub.key``).

    The one check of what a state directory is, for :func:`open_state`,
    :func:`existing_state` and :func:`state_or_new`.

    Raises
    ------
    StateError
        ``hub.key`` is missing but ``hub.pub`` or a file made after it is there: a hub
        whose key was lost, not a new one (a new key would not open what it stored).
    """
    state = HubState(Path(root).absolute())
    if state.hub_key.exists():
        return True
    if state.hub_pub.exists():
        raise StateError(f"{state.hub_pub} exists without {state.hub_key}: restore both")
    made_after_the_key = (state.cookie_secret, state.admin_token, state.accounts, state.audit_log)
    left = [path.name for path in made_after_the_key if path.exists()]
    if left:
        raise StateError(
            f"{state.hub_key} is missing from a hub's state (it holds {', '.join(left)}): "
            "restore hub.key and hub.pub from the hub's backup"
        )
    return False


def existing_state(root: Path) -> HubState:
    """The state directory of an existing hub (:func:`open_state`), never a new one.

    For the administration commands: a mistyped ``--state`` is an error, not a new hub.

    Raises
    ------
    StateError
        ``root`` holds no hub (see :func:`holds_hub`), or see :func:`open_state`.
    """
    root = Path(root).absolute()
    if not holds_hub(root):
        raise StateError(
            f"no hub state in {root}: give the hub's --state (or set ${STATE_ENV}); "
            f"'usreview hub --state {root}' would start a new hub there"
        )
    return open_state(root)


def state_or_new(root: Path) -> tuple[HubState, bool]:
    """An existing hub's state directory, or a new hub's in a missing or empty folder.

    Returns the state and whether it was created now. For the commands that may come
    before the hub's first start (``usreview hub add-user``).

    Raises
    ------
    NotAStateError
        ``root`` is a folder that holds files but no hub (a site's folder, a typo).
    StateError
        See :func:`holds_hub` and :func:`open_state`.
    """
    root = Path(root).absolute()
    if holds_hub(root):
        return open_state(root), False
    if root.is_dir():
        found = sorted(path.name for path in root.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise NotAStateError(
                f"{root} is not a hub state (it holds {shown}): give the hub's --state "
                f"(or set ${STATE_ENV}), or a new or empty folder for a new hub"
            )
    return open_state(root), True

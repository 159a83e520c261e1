"""The people and sites of a hub: one SQLite file in the state directory.

This registry is the source of truth for who exists: the authenticator reads password
hashes from it at every login, and the hub's configuration turns it into
``c.JupyterHub.load_groups`` at every start, so memberships survive restarts and are
restored even into a new hub database. Site API tokens are not here: they live only
in JupyterHub's database, hashed by JupyterHub (see :mod:`usreview.hub.admin`).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Final

from usreview._names import ACCOUNT_NAME, ACCOUNT_NAME_RULE
from usreview.hub.errors import AccountError, StateError
from usreview.hub.roles import GROUPS, PERSON_ROLES, SITE_GROUP

__all__ = ["UID_BASE", "Accounts", "check_name"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY, public_key TEXT NOT NULL, key_id TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS system_ids (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL
);
CREATE TABLE IF NOT EXISTS uid_block (base INTEGER NOT NULL);
"""

UID_BASE: Final = 1 << 24
"""The lowest system uid a person's server can get (above every usual system range)."""
_UID_BLOCK: Final = 1 << 16  # uids of one hub: UID_BASE + block * _UID_BLOCK + id
_UID_BLOCKS: Final = 32_000  # the highest uid stays below 2**31


def check_name(name: str) -> str:
    """Return ``name`` if it can be a hub user name, else raise :class:`AccountError`."""
    if not ACCOUNT_NAME.fullmatch(name):
        raise AccountError(f"invalid name {name!r}: use {ACCOUNT_NAME_RULE}")
    return name


class Accounts:
    """The registry file ``accounts.sqlite`` (mode 0600).

    Parameters
    ----------
    path
        The SQLite file; created with its tables on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            with suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            with closing(sqlite3.connect(self.path, timeout=10)) as db:
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                with db:
                    yield db
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot use the accounts registry ({exc})") from None

    def _taken(self, db: sqlite3.Connection, name: str) -> bool:
        query = "SELECT 1 FROM people WHERE name = ? UNION SELECT 1 FROM sites WHERE name = ?"
        return db.execute(query, (name, name)).fetchone() is not None

    def add_person(self, name: str, role: str, password_hash: str) -> None:
        """Register a person with ``role`` (a key of :data:`~usreview.hub.roles.PERSON_ROLES`).

        Raises
        ------
        AccountError
            If the name is invalid or taken, or the role unknown.
        """
        check_name(name)
        if role not in PERSON_ROLES:
            raise AccountError(f"unknown role {role!r}: use one of {', '.join(PERSON_ROLES)}")
        with self._connect() as db:
            if self._taken(db, name):
                raise AccountError(f"{name!r} already exists")
            db.execute(
                "INSERT INTO people VALUES (?, ?, ?, ?)", (name, role, password_hash, time.time())
            )

    def remove_person(self, name: str) -> bool:
        """Forget a person (they can no longer log in); return whether there was one."""
        if not self.path.exists():
            return False
        with self._connect() as db:
            return db.execute("DELETE FROM people WHERE name = ?", (name,)).rowcount == 1

    def set_password_hash(self, name: str, password_hash: str) -> bool:
        """Replace a person's password hash; return whether ``name`` is a person."""
        if not self.path.exists():
            return False
        with self._connect() as db:
            query = "UPDATE people SET password_hash = ? WHERE name = ?"
            return db.execute(query, (password_hash, name)).rowcount == 1

    def add_site(self, name: str, public_key: Path, key_id: str) -> None:
        """Register a site, its public key file (in the state directory) and key id.

        Raises
        ------
        AccountError
            If the name is invalid or taken.
        """
        check_name(name)
        with self._connect() as db:
            if self._taken(db, name):
                raise AccountError(f"{name!r} already exists")
            db.execute(
                "INSERT INTO sites VALUES (?, ?, ?, ?)",
                (name, str(public_key), key_id, time.time()),
            )

    def set_site_key(self, name: str, key_id: str) -> None:
        """Record the new key id of a registered site (after a key rotation).

        Raises
        ------
        AccountError
            If ``name`` is not a registered site.
        """
        with self._connect() as db:
            changed = db.execute("UPDATE sites SET key_id = ? WHERE name = ?", (key_id, name))
            if changed.rowcount != 1:
                raise AccountError(f"{name!r} is not a registered site: add it first")

    def sites(self) -> dict[str, tuple[str, float]]:
        """Every registered site: its current key id and when it was registered (epoch s)."""
        if not self.path.exists():
            return {}
        with self._connect() as db:
            rows = db.execute("SELECT name, key_id, created FROM sites ORDER BY name")
            return {str(name): (str(key_id), float(created)) for name, key_id, created in rows}

    def remove_site(self, name: str) -> None:
        """Forget a site (used to undo a registration whose token could not be issued)."""
        with self._connect() as db:
            db.execute("DELETE FROM sites WHERE name = ?", (name,))

    def password_hash(self, name: str) -> str | None:
        """Return a person's stored password hash, ``None`` for sites and unknown names."""
        if not self.path.exists():
            return None
        with self._connect() as db:
            row = db.execute("SELECT password_hash FROM people WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def is_person(self, name: str) -> bool:
        """Return whether ``name`` is a registered person (sites cannot log in)."""
        return self.password_hash(name) is not None

    def system_uid(self, name: str) -> int:
        """The system uid (and gid) under which ``name``'s server runs, allocated on first use.

        Each hub draws a random block of uids once, so that two hubs of one machine do not
        share them; in it, a name keeps its uid for ever (also after ``hub remove-user``,
        so that the same name finds its home again) and a uid is never given to another
        name.

        Raises
        ------
        AccountError
            If the hub's block of uids is used up.
        """
        check_name(name)
        with self._connect() as db:
            row = db.execute("SELECT base FROM uid_block").fetchone()
            if row is None:
                base = UID_BASE + secrets.randbelow(_UID_BLOCKS) * _UID_BLOCK
                db.execute("INSERT INTO uid_block VALUES (?)", (base,))
            else:
                base = int(row[0])
            row = db.execute("SELECT id FROM system_ids WHERE name = ?", (name,)).fetchone()
            if row is None:  # (INSERT OR IGNORE would use up a number at every call)
                row = (db.execute("INSERT INTO system_ids (name) VALUES (?)", (name,)).lastrowid,)
            number = int(row[0])
        if number >= _UID_BLOCK:
            raise AccountError(f"no system uid left for {name!r}: {_UID_BLOCK - 1} were given")
        return base + number

    def groups(self) -> dict[str, list[str]]:
        """Return every group (also empty ones) with its sorted members."""
        members: dict[str, list[str]] = {group: [] for group in GROUPS}
        if not self.path.exists():
            return members
        with self._connect() as db:
            for name, role in db.execute("SELECT name, role FROM people ORDER BY name"):
                members[PERSON_ROLES[role]].append(name)
            for (name,) in db.execute("SELECT name FROM sites ORDER BY name"):
                members[SITE_GROUP].append(name)
        return members

"""A key ring of trusted public keys, each active, retired or revoked.

Rotation with overlap: a new key is added ``ACTIVE`` while the old one becomes
``RETIRED``; retired keys still open envelopes (and their signatures still verify)
but nothing new is sealed to or with them. ``REVOKED`` keys are refused both ways.

:meth:`KeyRing.rotation` builds the ring of a rotated identity explicitly: its current
key ``ACTIVE`` and the keys it replaced ``RETIRED``.

A ring is saved as JSON (``{"format": "usreview-keyring", "version": 1, "keys": [...]}``,
each key a ``state`` and the text of its ``.pub`` file), written atomically.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from usreview.envelope.atomic import replace_file
from usreview.envelope.errors import (
    KeyFileError,
    RetiredKeyError,
    RevokedKeyError,
    UntrustedSenderError,
)
from usreview.envelope.keys import PublicKeys, key_id_hex, load_public_keys, parse_public_keys

__all__ = ["KeyRing", "KeyState", "TrustedKey"]

_FORMAT = "usreview-keyring"


class KeyState(enum.Enum):
    """State of a trusted key."""

    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class TrustedKey:
    """A public key and its state in a ring."""

    public: PublicKeys
    state: KeyState


class KeyRing:
    """Trusted public keys by key id.

    Parameters
    ----------
    keys
        Initial public keys, all ``ACTIVE``.
    """

    def __init__(self, keys: Iterable[PublicKeys] = ()) -> None:
        self._keys: dict[bytes, TrustedKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: PublicKeys, state: KeyState = KeyState.ACTIVE) -> None:
        """Trust ``key`` in ``state`` (replacing its previous state)."""
        self._keys[key.key_id] = TrustedKey(key, KeyState(state))

    @classmethod
    def rotation(cls, current: PublicKeys, retired: Iterable[PublicKeys] = ()) -> KeyRing:
        """The ring of a rotated identity: ``current`` active, the ``retired`` keys retired.

        Retired keys open envelopes (their signatures verify) but never seal; a retired
        key equal to ``current`` stays active.
        """
        ring = cls([current])
        for old in retired:
            if ring.get(old.key_id) is None:
                ring.add(old, KeyState.RETIRED)
        return ring

    def set_state(self, key_id: bytes, state: KeyState) -> None:
        """Change the state of a key already in the ring."""
        self._keys[key_id] = TrustedKey(self._keys[key_id].public, KeyState(state))

    def get(self, key_id: bytes) -> TrustedKey | None:
        """Return the ring's entry for ``key_id``, or None."""
        return self._keys.get(key_id)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def sender_for_opening(self, key_id: bytes) -> PublicKeys:
        """Return the sender key that may have signed an envelope (active or retired).

        Raises
        ------
        UntrustedSenderError, RevokedKeyError
        """
        entry = self._keys.get(key_id)
        if entry is None:
            raise UntrustedSenderError(
                f"sender key {key_id_hex(key_id)} is not trusted (not in the key ring; "
                "pass its .pub file with --trust)"
            )
        if entry.state is KeyState.REVOKED:
            raise RevokedKeyError(
                f"sender key {key_id_hex(key_id)} ({entry.public.name}) is revoked; "
                "envelopes signed with it are refused"
            )
        return entry.public

    def check_for_sealing(self, key: PublicKeys, role: str) -> None:
        """Refuse to seal with or to ``key`` when the ring has it retired or revoked.

        Keys absent from the ring are allowed (the caller chose them explicitly).
        """
        entry = self._keys.get(key.key_id)
        if entry is None or entry.state is KeyState.ACTIVE:
            return
        where = f"{role} key {key_id_hex(key.key_id)} ({key.name})"
        if entry.state is KeyState.REVOKED:
            raise RevokedKeyError(f"{where} is revoked; nothing can be sealed with it")
        raise RetiredKeyError(f"{where} is retired; seal with or to its active successor")

    @classmethod
    def from_files(cls, keyring: Path | None, trusted: Iterable[Path]) -> KeyRing:
        """Return the ring saved at ``keyring`` (if any) plus the ``.pub`` files ``trusted``.

        A ``.pub`` file adds its key as active, but never overrides a state from the ring
        (a key the ring revoked stays revoked).
        """
        ring = cls.load(keyring) if keyring is not None else cls()
        for path in trusted:
            key = load_public_keys(path)
            if ring.get(key.key_id) is None:
                ring.add(key)
        return ring

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a key ring file."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT or doc.get("version") != 1:
                raise ValueError("not a usreview key ring, version 1")
            ring = cls()
            for item in doc["keys"]:
                ring.add(parse_public_keys(item["public_key"], str(path)), KeyState(item["state"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"{path}: malformed key ring ({exc})") from None
        return ring

    def save(self, path: Path) -> None:
        """Write the ring to ``path`` atomically, replacing an older version."""
        doc = {
            "format": _FORMAT,
            "version": 1,
            "keys": [
                {"state": k.state.value, "name": k.public.name, "public_key": k.public.to_text()}
                for k in self._keys.values()
            ],
        }
        replace_file(Path(path), json.dumps(doc, indent=2).encode() + b"\n")

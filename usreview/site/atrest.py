"""Encryption at rest of the spool: its files and its journal's records (AES-256-GCM).

Optional, per ``site.toml``: ``folders.spool_key`` names a file holding the site's spool
key (64 hex digits, mode 0600; ``usreview site init --encrypt-spool`` writes
``keys/spool.key``). With it every instance is stored as::

    magic   8  b"USRSPL2\\0"
    key id  8  which spool key sealed it (see below)
    nonce  12  random
    sealed     AES-256-GCM of the DICOM bytes (16-byte tag at the end)

with the magic, the key id, the SOP Instance UID and the plaintext's SHA-256 (the file's
name) as associated data: a file cannot be altered or passed off under another name. The
spool file and the instance's journal record hold the same sealed bytes (one encryption
per instance). Files without a magic are read as plaintext (a spool from before the key),
still checked against the SHA-256 in their name.

Key ids and rotation
--------------------
A key's id is the first 8 bytes of HMAC-SHA256(key, ``b"usreview spool key id"``),
shown as 16 hex digits: it names the key without revealing it. ``folders.retired_spool_keys``
lists earlier spool keys, newest first: they only open. Instances are always sealed with
the current key; an instance names the key that sealed it, so opening one sealed with a
key that is not configured is told apart from a damaged one:

- key id of a configured key, and it does not open: altered or cut short
  (:class:`SpoolError`);
- key id of no configured key: :class:`SpoolKeyError`, the configuration is to fix
  (the instance is sound: keep it, list the key in ``folders.retired_spool_keys``).

Files and records sealed before key ids (``b"USRSPL1\\0"``, no key id, the magic and name
as associated data) still open: every configured key is tried, current first; when none
opens, that is a :class:`SpoolKeyError` too (with no key id, a wrong key cannot be told
from damage, and the instance is kept rather than set aside).

To rotate: write a new key file, point ``folders.spool_key`` at it and put the old one
first in ``folders.retired_spool_keys``; restart the gateway. Remove the old key from the
list once nothing sealed with it is left in the spool (its files, ``rejected/`` and the
journal).

The key protects against a lost or copied disk, not against someone who can read the
key file: keep it on another volume, or in a TPM-backed store, where that matters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from usreview.envelope.atomic import write_new_file
from usreview.site.config import SiteConfig
from usreview.site.errors import SiteConfigError, SpoolError, SpoolKeyError

__all__ = [
    "LEGACY_MAGIC",
    "MAGIC",
    "SpoolCipher",
    "generate_spool_key",
    "load_spool_cipher",
    "spool_key_id",
]

#: The magic of instances sealed with a key id (the current format).
MAGIC = b"USRSPL2\0"
#: The magic of instances sealed before key ids (still opened, never written).
LEGACY_MAGIC = b"USRSPL1\0"
_KEY_ID = 8
_NONCE = 12
_TAG = 16
_SETTING = "folders.spool_key"
_RETIRED = "folders.retired_spool_keys"


def spool_key_id(key: bytes) -> str:
    """The id of the spool key ``key`` (16 hex digits; reveals nothing of the key)."""
    return hmac.new(key, b"usreview spool key id", hashlib.sha256).digest()[:_KEY_ID].hex()


class SpoolCipher:
    """Seals instances with the site's spool key; opens them with it or a retired one.

    Parameters
    ----------
    key
        The current key, 32 bytes: every instance is sealed with it.
    retired
        Earlier keys (32 bytes each), newest first: only to open what they sealed.
    labels
        Where each key comes from (the current one first), for error messages; by
        default ``folders.spool_key`` and ``folders.retired_spool_keys[N]``.
    """

    def __init__(
        self,
        key: bytes,
        retired: Sequence[bytes] = (),
        *,
        labels: Sequence[str] | None = None,
    ) -> None:
        keys = [key, *retired]
        if any(len(k) != 32 for k in keys):
            raise ValueError("a spool key is 32 bytes")
        if labels is None:
            labels = [_SETTING, *(f"{_RETIRED}[{n}]" for n in range(len(retired)))]
        if len(labels) != len(keys):
            raise ValueError("one label per key")
        self._keys: dict[str, tuple[AESGCM, str]] = {}
        for k, label in zip(keys, labels, strict=True):
            self._keys.setdefault(spool_key_id(k), (AESGCM(k), label))
        #: The current key's id: the one :meth:`seal` writes.
        self.key_id = spool_key_id(key)
        self._aead = self._keys[self.key_id][0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys that open instances, the current one first."""
        return tuple(self._keys)

    def describe(self) -> str:
        """The configured keys with their ids, for messages (``ID (SETTING), ...``)."""
        return ", ".join(f"{key_id} ({label})" for key_id, (_, label) in self._keys.items())

    def knows(self, key_id: str) -> bool:
        """Whether ``key_id`` is the id of the current key or of a retired one."""
        return key_id in self._keys

    @staticmethod
    def _aad(magic: bytes, key_id: bytes, sop_instance_uid: str, sha256: str) -> bytes:
        return magic + key_id + f"{sop_instance_uid}_{sha256}".encode("ascii")

    @staticmethod
    def is_sealed(data: bytes | memoryview) -> bool:
        """Whether ``data`` starts like a sealed instance (either format)."""
        return bytes(data[: len(MAGIC)]) in (MAGIC, LEGACY_MAGIC)

    @staticmethod
    def sealed_key_id(data: bytes | memoryview) -> str | None:
        """The id of the key that sealed ``data``; None if it names none (legacy format)."""
        if bytes(data[: len(MAGIC)]) != MAGIC or len(data) < len(MAGIC) + _KEY_ID:
            return None
        return bytes(data[len(MAGIC) : len(MAGIC) + _KEY_ID]).hex()

    def seal(self, sop_instance_uid: str, sha256: str, data: bytes | memoryview) -> bytes:
        """The stored form of the instance ``data`` (UID and hex SHA-256 bound to it)."""
        nonce = secrets.token_bytes(_NONCE)
        key_id = bytes.fromhex(self.key_id)
        aad = self._aad(MAGIC, key_id, sop_instance_uid, sha256)
        return MAGIC + key_id + nonce + self._aead.encrypt(nonce, bytes(data), aad)

    def open(self, sop_instance_uid: str, sha256: str, stored: bytes) -> bytes:
        """The instance's bytes from its stored form (current key or a retired one).

        Raises
        ------
        SpoolKeyError
            Sealed with a key that is not configured (its id is in the message), or in
            the legacy format and no configured key opens it.
        SpoolError
            Not sealed, or sealed with a configured key and it does not open (altered,
            cut short or renamed).
        """
        key_id = self.sealed_key_id(stored)
        if key_id is None:
            return self._open_legacy(sop_instance_uid, sha256, stored)
        head = len(MAGIC) + _KEY_ID + _NONCE
        if len(stored) < head + _TAG:
            raise SpoolError(f"{sop_instance_uid}: not a sealed spool file (cut short)")
        if key_id not in self._keys:
            raise SpoolKeyError(
                f"{sop_instance_uid}: sealed with spool key {key_id}, which is not "
                f"configured, so it does not open (configured: {self.describe()}); "
                f"list that key file in {_RETIRED} in site.toml"
            )
        aead, label = self._keys[key_id]
        try:
            return aead.decrypt(
                stored[head - _NONCE : head],
                stored[head:],
                self._aad(MAGIC, bytes.fromhex(key_id), sop_instance_uid, sha256),
            )
        except InvalidTag:
            raise SpoolError(
                f"{sop_instance_uid}: the spool file does not open with the spool key "
                f"that sealed it, {key_id} ({label}): altered, cut short or renamed"
            ) from None

    def _open_legacy(self, sop_instance_uid: str, sha256: str, stored: bytes) -> bytes:
        head = len(LEGACY_MAGIC) + _NONCE
        if not stored.startswith(LEGACY_MAGIC) or len(stored) < head + _TAG:
            raise SpoolError(f"{sop_instance_uid}: not a sealed spool file")
        aad = self._aad(LEGACY_MAGIC, b"", sop_instance_uid, sha256)
        for aead, _ in self._keys.values():
            try:
                return aead.decrypt(stored[len(LEGACY_MAGIC) : head], stored[head:], aad)
            except InvalidTag:
                continue
        raise SpoolKeyError(
            f"{sop_instance_uid}: the spool file does not open with any configured spool "
            f"key ({self.describe()}): sealed with another key (list it in {_RETIRED} in "
            "site.toml), or altered (sealed before key ids, it cannot say which)"
        )


def generate_spool_key(path: Path) -> None:
    """Write a new random spool key to ``path`` (mode 0600); never overwrites.

    Raises
    ------
    SiteConfigError
        ``path`` exists.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_new_file(path, (secrets.token_bytes(32).hex() + "\n").encode(), mode=0o600)
    except FileExistsError:
        message = f"{_SETTING}: {path} exists; refusing to overwrite"
        raise SiteConfigError(message, _SETTING) from None


def load_spool_cipher(config: SiteConfig) -> SpoolCipher | None:
    """The site's spool cipher (None when ``folders.spool_key`` is empty).

    It seals with ``folders.spool_key`` and opens with it or any of
    ``folders.retired_spool_keys``.

    Raises
    ------
    SiteConfigError
        A key file is missing, readable by others, or not 64 hex digits (the message
        names its setting).
    """
    path = config.spool_key
    if path is None:
        return None
    key = _read_key(path, _SETTING)
    retired = [_read_key(p, f"{_RETIRED}[{n}]") for n, p in enumerate(config.retired_spool_keys)]
    labels = [
        f"{_SETTING} {path}",
        *(f"{_RETIRED}[{n}] {p}" for n, p in enumerate(config.retired_spool_keys)),
    ]
    return SpoolCipher(key, retired, labels=labels)


def _read_key(path: Path, setting: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise SiteConfigError(
            f"{setting}: {path} does not exist (the spool cannot be read without it)", setting
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteConfigError(f"{setting}: cannot read {path} ({exc})", setting) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SiteConfigError(
            f"{setting}: {path} is readable by other users; run: chmod 600 {path}", setting
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SiteConfigError(f"{setting}: {path} does not hold 64 hex digits", setting)
    return key

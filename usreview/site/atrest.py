"""Encryption at rest of the spool: its files and its journal's records (AES-256-GCM).

Optional, per ``site.toml``: ``folders.spool_key`` names a file holding the site's spool
key (64 hex digits, mode 0600; ``usreview site init --encrypt-spool`` writes
``keys/spool.key``). With it every instance is stored as::

    magic   8  b"USRSPL1\\0"
    nonce  12  random
    sealed     AES-256-GCM of the DICOM bytes (16-byte tag at the end)

with the magic, the SOP Instance UID and the plaintext's SHA-256 (the file's name) as
associated data: a file cannot be altered or passed off under another name. The spool
file and the instance's journal record hold the same sealed bytes (one encryption per
instance). Files without the magic are read as plaintext (a spool from before the key),
still checked against the SHA-256 in their name.

The key protects against a lost or copied disk, not against someone who can read the
key file: keep it on another volume, or in a TPM-backed store, where that matters.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from usreview.envelope.atomic import write_new_file
from usreview.site.config import SiteConfig
from usreview.site.errors import SiteConfigError, SpoolError

__all__ = ["MAGIC", "SpoolCipher", "generate_spool_key", "load_spool_cipher"]

MAGIC = b"USRSPL1\0"
_NONCE = 12
_TAG = 16
_SETTING = "folders.spool_key"


class SpoolCipher:
    """Seals and opens spooled instances with the site's spool key.

    Parameters
    ----------
    key
        32 bytes.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a spool key is 32 bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(sop_instance_uid: str, sha256: str) -> bytes:
        return MAGIC + f"{sop_instance_uid}_{sha256}".encode("ascii")

    @staticmethod
    def is_sealed(data: bytes | memoryview) -> bool:
        """Whether ``data`` starts like a sealed instance."""
        return bytes(data[: len(MAGIC)]) == MAGIC

    def seal(self, sop_instance_uid: str, sha256: str, data: bytes | memoryview) -> bytes:
        """The stored form of the instance ``data`` (UID and hex SHA-256 bound to it)."""
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, bytes(data), self._aad(sop_instance_uid, sha256))
        return MAGIC + nonce + sealed

    def open(self, sop_instance_uid: str, sha256: str, stored: bytes) -> bytes:
        """The instance's bytes from its stored form.

        Raises
        ------
        SpoolError
            Not sealed with this key for this UID and SHA-256 (altered, cut short,
            renamed, or another site's key).
        """
        head = len(MAGIC) + _NONCE
        if not self.is_sealed(stored) or len(stored) < head + _TAG:
            raise SpoolError(f"{sop_instance_uid}: not a sealed spool file")
        try:
            return self._aead.decrypt(
                stored[len(MAGIC) : head], stored[head:], self._aad(sop_instance_uid, sha256)
            )
        except InvalidTag:
            raise SpoolError(
                f"{sop_instance_uid}: the spool file does not open with the spool key "
                "(altered, cut short, or sealed with another key)"
            ) from None


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

    Raises
    ------
    SiteConfigError
        The key file is missing, readable by others, or not 64 hex digits.
    """
    path = config.spool_key
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise SiteConfigError(
            f"{_SETTING}: {path} does not exist (the spool cannot be read without it)", _SETTING
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteConfigError(f"{_SETTING}: cannot read {path} ({exc})", _SETTING) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SiteConfigError(
            f"{_SETTING}: {path} is readable by other users; run: chmod 600 {path}", _SETTING
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SiteConfigError(f"{_SETTING}: {path} does not hold 64 hex digits", _SETTING)
    return SpoolCipher(key)

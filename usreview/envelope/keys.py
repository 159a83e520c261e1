"""Identity keys of a site or the hub, and their files.

An identity is an X25519 key (to receive: HPKE) and an Ed25519 key (to sign). Its key id
is ``SHA-256("usreview-key-id/v1\\0" || x25519 public || ed25519 public)``, 32 bytes,
shown as hex. Both files are small UTF-8 text (format in ``docs/envelope.md``):

- ``NAME.pub`` carries both public keys; anyone may read it.
- ``NAME.key`` carries both private keys, optionally encrypted with a passphrase
  (scrypt n=2**15, r=8, p=1, then AES-256-GCM). It is created with mode 0600,
  atomically (temporary file, fsync, hard link to the final name), never overwritten,
  and refused on reading when group or others can read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from usreview.envelope.atomic import write_new_file
from usreview.envelope.errors import KeyFileError, PassphraseError

__all__ = [
    "PrivateKeys",
    "PublicKeys",
    "generate_keys",
    "key_id_hex",
    "load_private_keys",
    "load_public_keys",
    "parse_public_keys",
    "write_key_pair",
]

KEY_ID_SIZE = 32
_KEY_ID_DOMAIN = b"usreview-key-id/v1\0"
_PUB_MAGIC = "usreview-public-key v1"
_PRIV_MAGIC = "usreview-private-key v1"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def key_id_hex(key_id: bytes) -> str:
    """Return the short form of a key id used in messages (16 hex digits)."""
    return key_id.hex()[:16]


@dataclass(frozen=True)
class PublicKeys:
    """The public half of an identity: receive with ``x25519``, verify with ``ed25519``."""

    name: str
    x25519: x25519.X25519PublicKey = field(repr=False, compare=False)
    ed25519: ed25519.Ed25519PublicKey = field(repr=False, compare=False)
    key_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        raw = self.x25519.public_bytes_raw() + self.ed25519.public_bytes_raw()
        object.__setattr__(self, "key_id", hashlib.sha256(_KEY_ID_DOMAIN + raw).digest())

    def to_text(self) -> str:
        """Return the content of a ``.pub`` file."""
        b64 = base64.b64encode
        return (
            f"{_PUB_MAGIC}\nname: {self.name}\nkey-id: {self.key_id.hex()}\n"
            f"x25519: {b64(self.x25519.public_bytes_raw()).decode()}\n"
            f"ed25519: {b64(self.ed25519.public_bytes_raw()).decode()}\n"
        )


@dataclass(frozen=True)
class PrivateKeys:
    """Both private keys of an identity; ``public`` is its public half."""

    name: str
    x25519: x25519.X25519PrivateKey = field(repr=False)
    ed25519: ed25519.Ed25519PrivateKey = field(repr=False)
    public: PublicKeys = field(init=False)

    def __post_init__(self) -> None:
        pub = PublicKeys(self.name, self.x25519.public_key(), self.ed25519.public_key())
        object.__setattr__(self, "public", pub)

    @property
    def key_id(self) -> bytes:
        """The identity's key id (SHA-256 of both public keys)."""
        return self.public.key_id

    def to_text(self, passphrase: bytes | None = None) -> str:
        """Return the content of a ``.key`` file, encrypted when ``passphrase`` is given."""
        secret = self.x25519.private_bytes_raw() + self.ed25519.private_bytes_raw()
        lines = [_PRIV_MAGIC, f"name: {self.name}", f"key-id: {self.key_id.hex()}"]
        if passphrase:
            salt, nonce = os.urandom(16), os.urandom(12)
            kek = _scrypt(passphrase, salt)
            sealed = nonce + AESGCM(kek).encrypt(nonce, secret, _aad(self.key_id))
            lines.append("protection: scrypt-aes256gcm")
            lines.append(f"salt: {base64.b64encode(salt).decode()}")
            lines.append(f"secret: {base64.b64encode(sealed).decode()}")
        else:
            lines.append("protection: none")
            lines.append(f"secret: {base64.b64encode(secret).decode()}")
        return "\n".join(lines) + "\n"


def generate_keys(name: str) -> PrivateKeys:
    """Return a fresh identity named ``name`` (letters, digits, ``._-``; 1 to 64)."""
    if not _NAME.fullmatch(name):
        raise KeyFileError(
            f"invalid key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )
    return PrivateKeys(
        name, x25519.X25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    )


def write_key_pair(keys: PrivateKeys, directory: Path, passphrase: bytes | None = None) -> Path:
    """Write ``DIR/NAME.key`` (mode 0600) and ``DIR/NAME.pub``; return the ``.key`` path.

    ``DIR`` is created (mode 0700) when missing.

    Raises
    ------
    FileExistsError
        If either file exists; nothing is overwritten.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / f"{keys.name}.key"
    pub_path = directory / f"{keys.name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise FileExistsError(17, "refusing to overwrite an existing key file", str(path))
    write_new_file(key_path, keys.to_text(passphrase).encode(), mode=0o600)
    try:
        write_new_file(pub_path, keys.public.to_text().encode(), mode=0o644)
    except BaseException:
        key_path.unlink()
        raise
    return key_path


def parse_public_keys(text: str, source: str = "public key") -> PublicKeys:
    """Return the identity described by the content of a ``.pub`` file."""
    fields = _fields(text, _PUB_MAGIC, source)
    try:
        pub = PublicKeys(
            fields["name"],
            x25519.X25519PublicKey.from_public_bytes(
                base64.b64decode(fields["x25519"], validate=True)
            ),
            ed25519.Ed25519PublicKey.from_public_bytes(
                base64.b64decode(fields["ed25519"], validate=True)
            ),
        )
    except (KeyError, ValueError, binascii.Error) as exc:
        raise KeyFileError(f"{source}: malformed public key file ({exc})") from None
    _check_id(pub.key_id, fields, source)
    return pub


def load_public_keys(path: Path) -> PublicKeys:
    """Read a ``.pub`` file."""
    return parse_public_keys(_read_text(path), str(path))


def load_private_keys(path: Path, passphrase: bytes | None = None) -> PrivateKeys:
    """Read a ``.key`` file, decrypting it with ``passphrase`` when it is protected.

    Raises
    ------
    KeyFileError
        Malformed, not a private key file, or readable by group or others.
    PassphraseError
        Protected and ``passphrase`` is missing or wrong.
    """
    fields = _fields(_read_text(path), _PRIV_MAGIC, str(path))  # what it is, then its mode
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key file is accessible by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        key_id = bytes.fromhex(fields["key-id"])
        blob = base64.b64decode(fields["secret"], validate=True)
        protection = fields["protection"]
        if protection == "none":
            secret = blob
        elif protection == "scrypt-aes256gcm":
            if not passphrase:
                raise PassphraseError(
                    f"{path}: private key is passphrase-protected; set USREVIEW_KEY_PASSPHRASE "
                    "or pass --passphrase-file"
                )
            kek = _scrypt(passphrase, base64.b64decode(fields["salt"], validate=True))
            try:
                secret = AESGCM(kek).decrypt(blob[:12], blob[12:], _aad(key_id))
            except InvalidTag:
                raise PassphraseError(f"{path}: wrong passphrase for private key") from None
        else:
            raise KeyFileError(f"{path}: unknown key protection {protection!r}")
        if len(secret) != 64:
            raise ValueError("secret must be 64 bytes")
        keys = PrivateKeys(
            fields["name"],
            x25519.X25519PrivateKey.from_private_bytes(secret[:32]),
            ed25519.Ed25519PrivateKey.from_private_bytes(secret[32:]),
        )
    except (KeyError, ValueError, binascii.Error) as exc:
        raise KeyFileError(f"{path}: malformed private key file ({exc})") from None
    _check_id(keys.key_id, fields, str(path))
    return keys


def _scrypt(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)


def _aad(key_id: bytes) -> bytes:
    return b"usreview-private-key/v1\0" + key_id


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if len(data) > 16384:
        raise KeyFileError(f"{path}: too large to be a usreview key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a usreview key file (not text)") from None


def _fields(text: str, magic: str, source: str) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != magic:
        other = _PRIV_MAGIC if magic == _PUB_MAGIC else _PUB_MAGIC
        hint = f" (this is a {other.split()[0]} file)" if lines and lines[0] == other else ""
        raise KeyFileError(f"{source}: not a {magic.split()[0]} file{hint}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip():
            key, sep, value = line.partition(":")
            if not sep:
                raise KeyFileError(f"{source}: malformed line {line[:40]!r}")
            fields[key.strip()] = value.strip()
    return fields


def _check_id(key_id: bytes, fields: dict[str, str], source: str) -> None:
    if fields.get("key-id", "").lower() != key_id.hex():
        raise KeyFileError(f"{source}: key-id line does not match the keys in the file")

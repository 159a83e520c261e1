"""TLS for the public endpoint: the bind check and a self-signed demo certificate.

The proxy serves HTTPS. A self-signed certificate is generated into the state
directory for the demo and for tests (clients verify against ``tls.crt`` itself);
production deployments pass a certificate from their authority (``--tls-cert``,
``--tls-key``). Plain HTTP is allowed only on loopback: :func:`check_bind` refuses
anything else, as Orthanc refuses remote access without users.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from usreview.envelope.atomic import replace_file
from usreview.hub.errors import InsecureBindError

__all__ = [
    "EXPIRY_NOTICE_DAYS",
    "certificate_expiry",
    "check_bind",
    "ensure_certificate",
    "expiry_notice",
    "is_loopback",
]

_VALIDITY = dt.timedelta(days=397)
_RENEW_BEFORE = dt.timedelta(days=7)
#: ``usreview hub`` says so at start when its certificate expires within this many days.
EXPIRY_NOTICE_DAYS = 30


def is_loopback(ip: str) -> bool:
    """Return whether ``ip`` (an address or ``localhost``) only listens on this machine."""
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(ip: str, tls: bool) -> None:
    """Refuse a public endpoint beyond loopback without TLS.

    Raises
    ------
    InsecureBindError
        If ``ip`` is not a loopback address and ``tls`` is false.
    """
    if not tls and not is_loopback(ip):
        shown = ip or "all interfaces"
        raise InsecureBindError(
            f"refusing to serve {shown} without TLS: drop --no-tls (a self-signed "
            "certificate is generated), give --tls-cert/--tls-key, or use --ip 127.0.0.1"
        )


def ensure_certificate(
    cert: Path,
    key: Path,
    hosts: Sequence[str],
    *,
    successor: tuple[Path, Path] | None = None,
    now: dt.datetime | None = None,
) -> tuple[Path, Path, str | None]:
    """Return ``(cert, key, change)``, generating a self-signed pair when needed.

    A new pair replaces the old one when it is missing, does not name every one of
    ``hosts`` (addresses or DNS names) or expires within a week. With ``successor``
    (``(cert, key)`` paths), the next pair is made ahead: once the current one expires
    within :data:`EXPIRY_NOTICE_DAYS`, a successor is generated (the hub announces it to
    the sites, signed, see :mod:`usreview.hub.hubkeys`), and a week before expiry it
    becomes the current pair, so that the sites that fetched it never lose the hub.
    ``change`` says what was done: ``"new"``, ``"successor"``, ``"promoted"`` or ``None``.
    """
    moment = now or dt.datetime.now(dt.UTC)
    names = sorted({"localhost", "127.0.0.1", "::1", *(h for h in hosts if h)})
    if _usable(cert, key, names, moment):
        if successor is None or _expires(cert) - moment > dt.timedelta(days=EXPIRY_NOTICE_DAYS):
            return cert, key, None
        if _usable(*successor, names, moment):
            return cert, key, None
        _write_pair(*successor, *_self_signed(names, moment))
        return cert, key, "successor"
    if successor is not None and _usable(*successor, names, moment):
        _write_pair(cert, key, successor[0].read_bytes(), successor[1].read_bytes())
        for path in successor:
            path.unlink()
        return cert, key, "promoted"
    _write_pair(cert, key, *_self_signed(names, moment))
    for path in successor or ():  # made for other hosts: not to be announced
        path.unlink(missing_ok=True)
    return cert, key, "new"


def _write_pair(cert: Path, key: Path, cert_pem: bytes, key_pem: bytes) -> None:
    replace_file(key, key_pem, mode=0o600)
    replace_file(cert, cert_pem, mode=0o644)


def _self_signed(names: Sequence[str], now: dt.datetime) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``names``, valid from ``now``, and its key (PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usreview hub (self-signed)")])
    public = private.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _expires(cert: Path) -> dt.datetime:
    expires = certificate_expiry(cert)
    assert expires is not None  # checked usable
    return expires


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _usable(cert: Path, key: Path, names: Sequence[str], now: dt.datetime) -> bool:
    if not (cert.is_file() and key.is_file()):
        return False
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    present = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    present |= set(san.get_values_for_type(x509.DNSName))
    wanted = {str(_general_name(n).value) for n in names}
    expires = certificate.not_valid_after_utc
    return wanted <= present and expires - now > _RENEW_BEFORE


def expiry_notice(cert: Path, *, now: dt.datetime | None = None) -> str | None:
    """A sentence when the certificate in ``cert`` expires within
    :data:`EXPIRY_NOTICE_DAYS` days (sites pin it: they need the new one in time)."""
    expires = certificate_expiry(cert)
    if expires is None:
        return None
    left = expires - (now or dt.datetime.now(dt.UTC))
    if left > dt.timedelta(days=EXPIRY_NOTICE_DAYS):
        return None
    when = f"{expires:%Y-%m-%d}"
    said = f"expired on {when}" if left.total_seconds() < 0 else f"expires on {when}"
    return (
        f"the TLS certificate {cert} {said}: renew it, and give the sites the new one "
        "before (they pin it: hub.certificate in their site.toml)"
    )


def certificate_expiry(path: Path, *, latest: bool = False) -> dt.datetime | None:
    """When the first (``latest``: the last) of the PEM certificates in ``path`` (one, or
    a bundle) expires; ``None`` when the file cannot be read as certificates."""
    try:
        found = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return (max if latest else min)(c.not_valid_after_utc for c in found)

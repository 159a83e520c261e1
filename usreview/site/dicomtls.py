"""DICOM TLS on the gateway's port (PS3.15 Annex B, secure transport connection profiles).

Optional, per ``site.toml``: ``gateway.tls_certificate`` and ``gateway.tls_private_key``
turn it on (``usreview site init --dicom-tls`` generates a self-signed pair, which the
scanners are given to trust); ``gateway.tls_client_ca`` also makes every scanner show a
certificate signed by that CA. TLS 1.2 at least, with the ciphers of Python's default
context, which include the BCP 195 ones dcmtk's ``storescu +tls``/``+tla`` offers. The
handshake is done in the association's own thread (see :mod:`usreview.site.scp`), under
the association timeout, so a client that never finishes it holds up nobody else.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from usreview.site.config import SiteConfig
from usreview.site.errors import SiteConfigError

__all__ = ["create_certificate", "server_context"]


def create_certificate(cert: Path, key: Path, hosts: Sequence[str]) -> None:
    """Generate a self-signed certificate naming ``hosts`` (and loopback), and its key.

    The key is written with mode 0600.

    Raises
    ------
    SiteConfigError
        ``cert`` or ``key`` exists already.
    """
    for path, setting in ((cert, "gateway.tls_certificate"), (key, "gateway.tls_private_key")):
        if path.exists():
            raise SiteConfigError(f"{setting}: {path} exists; refusing to overwrite it", setting)
    from usreview.hub.tls import ensure_certificate  # the hub's self-signed pair, reused

    ensure_certificate(cert, key, list(hosts))


def server_context(config: SiteConfig) -> ssl.SSLContext | None:
    """The gateway's server-side TLS context (None when DICOM TLS is off).

    Raises
    ------
    SiteConfigError
        The certificate, key or client CA cannot be loaded (the setting is named).
    """
    if config.tls_certificate is None or config.tls_private_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_certificate, config.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise SiteConfigError(
            f"gateway.tls_certificate, gateway.tls_private_key: cannot use "
            f"{config.tls_certificate} with {config.tls_private_key} ({exc})",
            "gateway.tls_certificate",
        ) from None
    if config.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(config.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise SiteConfigError(
                f"gateway.tls_client_ca: cannot use {config.tls_client_ca} ({exc})",
                "gateway.tls_client_ca",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context

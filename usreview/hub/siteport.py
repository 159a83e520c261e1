"""The sites' port: the usreview service serves the sites' API itself, with TLS.

By default every request reaches the service through the hub's public endpoint, the
configurable-http-proxy. With ``usreview hub --site-port N`` the service also listens
on ``IP:N`` (the hub's address) with the hub's certificate, for sites only:

- Sites upload without the proxy's hop. The proxy spends about 3 ms of CPU per 300 KB
  upload relaying it; on a machine where the uploads keep every core busy, 60 sites
  upload 10-20% more instances per second this way, and the slowest uploads (p99) take
  a third less time (``python -m benchmarks hub_sites`` uses the sites' port;
  ``USREVIEW_BENCH_VIA_PROXY=1`` measures the proxy). One site's upload is stored about
  8 ms sooner (``python -m benchmarks site_latency``).
- Least privilege at the network level: only callers in the ``sites`` group are let
  in (anyone else gets 403 ``sites_only``, audited); people's logins, the hub's pages
  and the reviewers' dashboards are not served there. A firewall can open the port to
  the sites' networks alone and the public endpoint to the reviewers'.
- The peer address in the audit log is the connection's own (no proxy's
  ``X-Forwarded-For`` is trusted on this port).

The same URL paths as through the proxy (``/services/usreview/api/v1/...``), the same
token, the same pinned certificate: a site switches by changing ``hub.url`` in its
``site.toml`` to ``https://HOST:N``. TLS only (1.2 or later); the hub refuses
``--site-port`` with ``--no-tls``.

The hub passes the port to its managed service in ``$USREVIEW_SERVICE_SITE_PORT`` (JSON, see
:meth:`SitePort.to_env`); the service binds it before serving, one socket per service
process (``SO_REUSEPORT``), as it does its loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from usreview.hub.errors import HubConfigError

__all__ = ["SERVICE_SITE_PORT_ENV", "SitePort"]

#: The environment variable that carries the sites' port to the service.
SERVICE_SITE_PORT_ENV = "USREVIEW_SERVICE_SITE_PORT"


@dataclass(frozen=True)
class SitePort:
    """Where the service serves the sites, and the certificate it serves."""

    ip: str
    """The address to listen on (``""``: every interface)."""
    port: int
    cert: Path
    """The certificate chain (PEM) the sites have pinned."""
    key: Path
    """Its private key (PEM)."""

    def to_env(self) -> str:
        """The value of :data:`SERVICE_SITE_PORT_ENV` that :meth:`from_env` reads back."""
        return json.dumps(
            {"ip": self.ip, "port": self.port, "cert": str(self.cert), "key": str(self.key)}
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SitePort | None:
        """The sites' port the hub gave, or ``None`` (only the proxy's route).

        Raises
        ------
        HubConfigError
            If the variable is not what :meth:`to_env` writes.
        """
        text = environ.get(SERVICE_SITE_PORT_ENV)
        if not text:
            return None
        try:
            value = json.loads(text)
            port = int(value["port"])
            if not 0 < port < 65536:
                raise ValueError(f"port {port}")
            return cls(str(value["ip"]), port, Path(value["cert"]), Path(value["key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise HubConfigError(f"${SERVICE_SITE_PORT_ENV} is not a site port ({exc})") from None

    def tls_context(self) -> ssl.SSLContext:
        """A server context with the hub's certificate, TLS 1.2 or later.

        Raises
        ------
        HubConfigError
            If the certificate or key cannot be read or do not match.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise HubConfigError(
                f"the sites' port cannot serve {self.cert} with {self.key}: {exc}"
            ) from None
        return context

    def bind(self, *, reuse_port: bool = False) -> list[socket.socket]:
        """A listening socket on the port (non-blocking, for tornado).

        Raises
        ------
        HubConfigError
            If the port cannot be bound (in use, a privileged port, an unknown address).
        """
        try:
            if self.ip:
                family, _, _, _, address = socket.getaddrinfo(
                    self.ip, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )[0]
                dual = False
            else:  # every interface, IPv6 too where the machine has it
                dual = socket.has_dualstack_ipv6()
                family = socket.AF_INET6 if dual else socket.AF_INET
                address = ("", self.port)
            sock = socket.create_server(
                address, family=family, backlog=128, reuse_port=reuse_port, dualstack_ipv6=dual
            )
        except OSError as exc:
            where = f"{self.ip or '*'}:{self.port}"
            raise HubConfigError(
                f"cannot serve the sites on {where}: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)
        return [sock]

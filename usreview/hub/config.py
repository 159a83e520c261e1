"""All of the hub's JupyterHub configuration, set by one tested function.

``hub_config/jupyterhub_config.py`` is two lines that call :func:`configure`; the
``usreview hub`` command calls it too. What it sets:

- the public endpoint (``bind_url``) with TLS, served by the npm
  ``configurable-http-proxy`` found by :func:`usreview.hub.proxy.find_proxy`;
  the hub, the proxy's API and the usreview service on loopback ports (free ports
  picked at each start unless given; recorded in ``run.json``);
- optionally the sites' port (``site_port``), where the usreview service itself serves
  the sites' API with the same certificate, without the proxy
  (:mod:`usreview.hub.siteport`);
- the SQLite database, cookie secret and PID files in the state directory;
- the authenticator (:mod:`usreview.hub.auth`), the groups from the accounts
  registry, the roles and custom scopes of :mod:`usreview.hub.roles`;
- the hub-managed ``usreview`` service and the API-only ``usreview-admin`` service; the
  hub checks its managed services every :data:`SERVICE_POLL_SECONDS` and starts one that
  exited again (:func:`poll_services_every`);
- the hub-managed ``usreview-worker`` (:mod:`usreview.processing.worker`): it processes
  every stored instance and publishes the results to its site. A process of its own,
  not a thread of the service: a crashing or memory-hungry processor cannot take the
  HTTP API down or stall its event loop, JupyterHub starts it again when it exits, and
  its durable queue makes a restart lose nothing. It has no URL and no scopes;
- single-user servers for reviewers, trainees and scientists, with the Voila dashboards
  (:mod:`usreview.hub.dashboards`): reviewers land on the worklist. When the hub runs as
  root, each person's server runs under a system account of that person's own, which
  reaches its home and nothing else of the state directory
  (:mod:`usreview.hub.spawner`); the hub's files are then made with umask 077.

Production alternatives: run as another user, the hub cannot change accounts and every
server runs as the hub's own user, with no isolation between people. Spawners that
isolate people further: ``LocalProcessSpawner`` with one ``/etc/passwd`` user per
person, ``systemdspawner`` (resource limits, private /tmp), ``dockerspawner`` or
``kubespawner``; and single sign-on instead of hub passwords (see
:mod:`usreview.hub.auth`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usreview.hub.accounts import Accounts
from usreview.hub.api.settings import ServiceSettings, check_archive_version
from usreview.hub.dashboards import (
    NOTEBOOKS_ENV,
    SERVER_TOKEN_SCOPES,
    SERVICE_URL_ENV,
    notebooks_dir,
    prepare_server,
)
from usreview.hub.errors import HubConfigError
from usreview.hub.proxy import find_proxy
from usreview.hub.roles import ADMIN_SERVICE, CUSTOM_SCOPES, SERVICE, load_roles
from usreview.hub.siteport import SERVICE_SITE_PORT_ENV, SitePort
from usreview.hub.state import STATE_ENV, HubState, open_state, open_to_servers, state_from_env
from usreview.hub.supervisor import HUB_PID_ENV
from usreview.hub.tls import EXPIRY_NOTICE_DAYS, check_bind, ensure_certificate, expiry_notice

__all__ = [
    "IP_ENV",
    "PORT_ENV",
    "SITE_PORT_ENV",
    "WORKER_SERVICE",
    "Endpoints",
    "configure",
    "port_number",
]

IP_ENV = "USREVIEW_HUB_IP"
PORT_ENV = "USREVIEW_HUB_PORT"
#: The default of ``site_port`` (``--site-port``); unset: no sites' port.
SITE_PORT_ENV = "USREVIEW_HUB_SITE_PORT"
_DEFAULT_IP = "127.0.0.1"
_DEFAULT_PORT = 8000
_LOOPBACK = "127.0.0.1"
#: A host name's syntax (RFC 1123 labels separated by dots).
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
#: Name of the hub-managed processing worker (no URL, no scopes).
WORKER_SERVICE = "usreview-worker"
#: Seconds between JupyterHub's checks that each managed service still runs; one that has
#: exited is started again at the next check (JupyterHub's own interval is 30 s). A check
#: is one ``waitpid`` per service.
SERVICE_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Endpoints:
    """Where a configured hub listens."""

    public_url: str
    """The URL people and sites use (``https://IP:PORT/`` unless TLS is off)."""
    api_url: str
    """The hub's REST API on loopback (for the administration commands)."""
    tls_cert: Path | None
    """The certificate clients verify against, when TLS is on."""
    state: HubState
    site_url: str | None = None
    """The sites' port (``https://IP:SITE_PORT/``), when the hub has one."""
    notices: tuple[str, ...] = ()
    """What an administrator should know before the hub starts (a certificate expiring
    soon, or replaced: sites pin it)."""


def configure(
    c: Any,
    state: Path | None = None,
    ip: str | None = None,
    port: int | None = None,
    *,
    tls: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    hub_port: int | None = None,
    proxy_api_port: int | None = None,
    service_port: int | None = None,
    site_port: int | None = None,
) -> Endpoints:
    """Set everything on the JupyterHub config object ``c``; return the endpoints.

    Parameters
    ----------
    c
        The ``traitlets.config.Config`` of JupyterHub (``c`` in ``jupyterhub_config.py``).
    state
        The state directory (created and filled on first use); default
        ``$USREVIEW_STATE`` or ``./state``.
    ip, port
        The public endpoint; default ``$USREVIEW_HUB_IP`` / ``$USREVIEW_HUB_PORT``,
        else ``127.0.0.1`` and 8000. ``ip`` is an IP address, a host name or ``""``
        (every interface); without TLS only a loopback ``ip`` is accepted.
    tls
        Serve HTTPS (default). Without ``tls_cert``/``tls_key`` a self-signed
        certificate is generated into the state directory.
    tls_cert, tls_key
        A certificate and key from your authority (PEM), both or neither, and not
        without ``tls``; checked now (readable PEM files, the key the certificate's).
    hub_port, proxy_api_port, service_port
        Loopback ports of the hub's API, the proxy's API and the usreview service;
        default: free ports picked now.
    site_port
        The sites' port on ``ip`` (:mod:`usreview.hub.siteport`), TLS only; default
        ``$USREVIEW_HUB_SITE_PORT``, else none (sites go through the proxy).

    Raises
    ------
    HubConfigError
        If a setting cannot work (the message names it); subclasses
        :class:`~usreview.hub.errors.InsecureBindError` and
        :class:`~usreview.hub.errors.ProxyNotFoundError`.
    StateError
        If the state directory is unusable, or its ``service_config.json``.
    """
    # JupyterHub's spawners (its ORM, aiohttp) load here, not with the administration
    # commands that import this module.
    from usreview.hub.spawner import PersonalSpawner, check_runnable, isolates_people

    if ip is None:
        ip = os.environ.get(IP_ENV, _DEFAULT_IP)
    port = _port(port if port is not None else os.environ.get(PORT_ENV, _DEFAULT_PORT))
    if site_port is None and os.environ.get(SITE_PORT_ENV):
        site_port = _port(os.environ[SITE_PORT_ENV], "--site-port", SITE_PORT_ENV)
    elif site_port is not None:
        site_port = _port(site_port, "--site-port", SITE_PORT_ENV)
    if (tls_cert is None) != (tls_key is None):
        raise HubConfigError("give both --tls-cert and --tls-key, or neither")
    _check_ip(ip)
    check_bind(ip, tls)
    if tls_cert is not None and tls_key is not None:
        if not tls:
            raise HubConfigError("--no-tls serves no certificate: drop --tls-cert/--tls-key")
        _check_certificate(tls_cert, tls_key)
    if site_port is not None and not tls:
        raise HubConfigError("the sites' port serves TLS only: drop --no-tls or --site-port")
    if site_port == port:
        raise HubConfigError(f"--site-port {site_port} is the public port: pick another")
    proxy = find_proxy()
    hub_state = open_state(state if state is not None else state_from_env())
    # A bad service_config.json, or an archive of a newer usreview: say so now.
    check_archive_version(hub_state.root, ServiceSettings.from_state(hub_state.root))
    if isolates_people():  # :mod:`usreview.hub.spawner`: an account of their own per person
        check_runnable(hub_state.root, [notebooks_dir()])
        os.umask(0o077)  # what the hub and its services make stays theirs
    hub_port, proxy_api_port, service_port = (
        _port(p) if p is not None else _free_port()
        for p in (hub_port, proxy_api_port, service_port)
    )

    cert: Path | None = None
    key: Path | None = None
    notices: list[str] = []
    scheme = "http"
    if tls:
        scheme = "https"
        if tls_cert is not None and tls_key is not None:
            cert, key = tls_cert.absolute(), tls_key.absolute()
        else:
            hosts = [ip] if ip else [socket.gethostname()]
            had = hub_state.tls_cert.exists()
            cert, key, change = ensure_certificate(
                hub_state.tls_cert,
                hub_state.tls_key,
                hosts,
                successor=(hub_state.tls_next_cert, hub_state.tls_next_key),
            )
            notices += _certificate_change(cert, change if had else None)
        if not hub_state.tls_next_cert.exists():  # else the sites fetch the next one
            notice = expiry_notice(cert)
            if notice is not None:
                notices.append(notice)
        c.JupyterHub.ssl_cert = str(cert)
        c.JupyterHub.ssl_key = str(key)
    public_url = f"{scheme}://{_host(ip)}:{port}/"
    api_url = f"http://{_LOOPBACK}:{hub_port}/hub/api"
    site_url: str | None = None
    service_environment = _service_environment(hub_state.root)
    if site_port is not None and cert is not None and key is not None:
        sites = SitePort(ip, site_port, cert, key)
        for sock in sites.bind():  # in use: say so now, not from the service's log
            sock.close()
        sites.tls_context()  # an unreadable certificate or key: the same
        site_url = f"https://{_host(ip)}:{site_port}/"
        service_environment[SERVICE_SITE_PORT_ENV] = sites.to_env()

    # Endpoints, proxy, files.
    c.JupyterHub.bind_url = public_url
    c.JupyterHub.hub_bind_url = f"http://{_LOOPBACK}:{hub_port}"
    c.ConfigurableHTTPProxy.command = [str(proxy)]
    c.ConfigurableHTTPProxy.api_url = f"http://{_LOOPBACK}:{proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(hub_state.root / "proxy.pid")
    c.JupyterHub.pid_file = str(hub_state.root / "jupyterhub.pid")
    c.JupyterHub.db_url = f"sqlite:///{hub_state.jupyterhub_db}"
    c.JupyterHub.cookie_secret_file = str(hub_state.cookie_secret)
    c.JupyterHub.cookie_max_age_days = 1  # log people off after a day

    # Who may log in, and what each may do.
    c.JupyterHub.authenticator_class = "usreview.hub.auth.UsreviewAuthenticator"
    c.UsreviewAuthenticator.accounts_db = str(hub_state.accounts)
    c.JupyterHub.custom_scopes = {name: dict(spec) for name, spec in CUSTOM_SCOPES.items()}
    c.JupyterHub.load_roles = load_roles()
    c.JupyterHub.load_groups = {
        group: {"users": members}
        for group, members in Accounts(hub_state.accounts).groups().items()
    }

    # Services.
    poll_services_every(SERVICE_POLL_SECONDS)
    c.JupyterHub.services = [
        {
            "name": SERVICE,
            "url": f"http://{_LOOPBACK}:{service_port}",
            "command": [sys.executable, "-m", "usreview.hub.service"],
            "environment": service_environment,
            "cwd": str(hub_state.root),
            "display": True,
            "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": sorted(CUSTOM_SCOPES),
        },
        {"name": ADMIN_SERVICE, "api_token": hub_state.read_admin_token()},
        {
            "name": WORKER_SERVICE,
            "command": [sys.executable, "-m", "usreview.processing.worker"],
            "environment": _service_environment(hub_state.root),
            "cwd": str(hub_state.root),
        },
    ]

    # Single-user servers with the Voila dashboards (:mod:`usreview.hub.dashboards`).
    c.JupyterHub.spawner_class = PersonalSpawner
    c.PersonalSpawner.accounts_db = str(hub_state.accounts)
    c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
    c.Spawner.args = [
        "--ServerApp.terminals_enabled=False",
        "--VoilaConfiguration.show_tracebacks=False",
    ]
    c.Spawner.server_token_scopes = list(SERVER_TOKEN_SCOPES)
    c.Spawner.pre_spawn_hook = prepare_server
    c.Spawner.environment = {
        SERVICE_URL_ENV: f"http://{_LOOPBACK}:{service_port}/services/{SERVICE}/",
        NOTEBOOKS_ENV: str(notebooks_dir()),
    }
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    c.PersonalSpawner.home_dir_template = str(hub_state.homes / "{username}")

    hub_state.write_run_info(
        {
            "public_url": public_url,
            "api_url": api_url,
            "tls_cert": str(cert) if cert else None,
            "site_url": site_url,
        }
    )
    if isolates_people():
        open_to_servers(hub_state)  # last: after the certificate and run.json are made
    return Endpoints(public_url, api_url, cert, hub_state, site_url, tuple(notices))


def poll_services_every(seconds: float) -> None:
    """Make JupyterHub check its managed services' processes every ``seconds``.

    JupyterHub starts a managed service again when a check finds it exited, but checks
    every 30 s and has no setting for it (it builds the services' spawner without
    configuration): a crashed usreview service would leave the sites without an API for
    up to half a minute. The spawner class JupyterHub builds them from is replaced, in this
    process, by a subclass with a shorter ``poll_interval`` (a check is one ``waitpid``).
    ``tests/test_hub_service_processes.py`` checks that the hub starts a killed service
    again within seconds, so a JupyterHub release that renames the class is noticed.
    """
    from jupyterhub.services import service
    from traitlets import Float

    base: Any = service._ServiceSpawner
    if getattr(base, "usreview_poll_seconds", None) == seconds:
        return

    class PolledServiceSpawner(base):  # type: ignore[misc,valid-type]
        usreview_poll_seconds = seconds
        poll_interval = Float(seconds)  # JupyterHub's is whole seconds; it takes a float

    service._ServiceSpawner = PolledServiceSpawner


def port_number(value: object, given_by: str = "") -> int:
    """``value`` (a number or its text) as a TCP port, 1 to 65535: the one check of ports.

    Raises
    ------
    HubConfigError
        If it is not one; the message names ``given_by`` (an option, a variable) if given.
    """
    try:
        port = int(str(value))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        where = f" ({given_by})" if given_by else ""
        raise HubConfigError(f"invalid port {value!r}{where}: use 1 to 65535")
    return port


def _port(value: object, option: str = "--port", env: str = PORT_ENV) -> int:
    return port_number(value, f"{option} or ${env}")


def _check_ip(ip: str) -> None:
    """Refuse a public address that is neither an IP address nor a host name.

    ``""`` (every interface) and host names (``localhost``, the hub's name) are accepted,
    as the proxy and the sites' port bind them; a name is not resolved here (the network
    may come up after the configuration is made).
    """
    if ip and not _is_ip_address(ip) and _HOST_NAME.fullmatch(ip) is None:
        raise HubConfigError(
            f"invalid address {ip!r} (--ip or ${IP_ENV}): give an IP address or a host name"
        )


def _is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IP address (an IPv6 one may be in brackets)."""
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        return False
    return address.version == 6 or not bracketed


def _check_certificate(cert: Path, key: Path) -> None:
    """Refuse a ``--tls-cert``/``--tls-key`` pair the proxy could not serve.

    Each must be a readable PEM file (the certificate first in its chain, the key
    unencrypted), and the key must be the certificate's.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    def read(path: Path, option: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise HubConfigError(f"{option} {path}: {exc.strerror or exc}") from None

    try:
        certificate = x509.load_pem_x509_certificates(read(cert, "--tls-cert"))[0]
    except ValueError:
        raise HubConfigError(f"--tls-cert {cert} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(read(key, "--tls-key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: encrypted
        raise HubConfigError(f"--tls-key {key} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise HubConfigError(f"--tls-key {key} is not the key of --tls-cert {cert}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _host(ip: str) -> str:
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def _service_environment(state_root: Path) -> dict[str, str]:
    """What the services inherit: the state directory, the hub's pid (they stop when it
    dies, :func:`~usreview.hub.supervisor.die_with_hub`), the database URL when one is set."""
    environment = {STATE_ENV: str(state_root), HUB_PID_ENV: str(os.getpid())}
    database_url = os.environ.get("USREVIEW_DATABASE_URL")
    if database_url:
        environment["USREVIEW_DATABASE_URL"] = database_url
    return environment


def _certificate_change(cert: Path, change: str | None) -> list[str]:
    """What ``usreview hub`` says at start about its self-signed certificate's change."""
    if change == "new":
        return [
            f"a new self-signed TLS certificate replaced {cert} (the old one expired within a "
            "week or named other hosts): give the sites the new one, they pin it "
            "(hub.certificate in their site.toml)"
        ]
    if change == "successor":
        return [
            f"{cert} expires within {EXPIRY_NOTICE_DAYS} days: its successor "
            f"{cert.with_name('tls-next.crt')} is announced to the sites (signed with the "
            "hub's key); it replaces the certificate a week before expiry"
        ]
    if change == "promoted":
        return [f"{cert} was replaced by the successor announced to the sites"]
    return []

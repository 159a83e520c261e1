"""A site's configuration (``site.toml``): reading it, checking it, and creating it.

Relative paths in the file are relative to the file's folder, so a site folder can be
moved as a whole. Every problem is a :class:`SiteConfigError` that names the setting
(``gateway.port``, ``hub.url``, ...) and says what to write instead; a table or a setting
that is not one of those below (a typo: ``min_free_MB``, ``[result]``) is refused too,
naming it and the closest known name, rather than silently left at its default.

The file written by :func:`init_site`::

    [site]
    name = "clinic"
    private_key = "keys/clinic.key"
    retired_keys = []                # earlier private keys, newest first (key rotation)

    [hub]
    url = "https://hub.example.org"
    certificate = "hub.crt"          # pinned certificate (or its CA); "" = system CAs
    public_key = "hub.pub"           # the hub's envelope key: seal to it, verify with it
    token_file = "token"             # the site's API token (mode 0600)

    [gateway]
    ae_title = "USREVIEW"
    bind = "0.0.0.0"
    port = 11112
    allowed_calling_ae_titles = ["SCANNER1"]   # "*" allows any calling AE title
    tls_certificate = "dicom-tls.crt"  # DICOM TLS (both, or neither: plain DICOM)
    tls_private_key = "dicom-tls.key"
    tls_client_ca = ""                 # scanners must show a certificate of this CA

    [[pacs]]
    name = "pacs"
    ae_title = "PACS"
    host = "10.0.0.5"
    port = 104

    [folders]
    spool = "spool"
    spool_key = "keys/spool.key"       # spool encryption at rest ("" = plaintext)
    retired_spool_keys = []            # earlier spool keys, newest first: they only open
    outbox = "outbox"
    state = "state"

    [upload]
    backoff_initial = 0.5
    backoff_max = 60.0
    timeout = 60.0
    give_up_after_hours = 24.0         # an instance held back this long goes to rejected/

    [results]
    follow = true
    wait = 30.0
    outbox = true                      # false: PACS only (a result kept until every PACS took it)
    keep_days = 0                      # outbox files older, delivered to every PACS, go (0: never)
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from usreview._names import ACCOUNT_NAME, ACCOUNT_NAME_RULE
from usreview.envelope import (
    KeyTransitionError,
    PrivateKeys,
    PublicKeys,
    generate_keys,
    load_private_keys,
    load_public_keys,
    write_key_pair,
)
from usreview.envelope.atomic import write_new_file
from usreview.envelope.errors import KeyFileError
from usreview.envelope.keys import parse_public_keys
from usreview.site.errors import SiteConfigError

__all__ = [
    "ANY_AE_TITLE",
    "DEFAULT_AE_TITLE",
    "DEFAULT_PORT",
    "NewSite",
    "PacsDestination",
    "SiteConfig",
    "init_site",
    "load_config",
    "parse_pacs",
    "rotate_site_key",
    "rotate_spool_key",
]

#: MB the spool's disk keeps free by default (``gateway.min_free_mb``).
DEFAULT_MIN_FREE_MB = 1000
#: Hours an instance the hub refuses for now is tried again before it is given up
#: (``upload.give_up_after_hours``; 0: never).
DEFAULT_GIVE_UP_AFTER_HOURS = 24.0
#: The longest ``results.keep_days`` (a hundred years).
MAX_KEEP_DAYS = 36500

DEFAULT_AE_TITLE = "USREVIEW"
DEFAULT_PORT = 11112
#: The DICOM TLS certificate and key ``site init --dicom-tls`` writes in the site folder.
TLS_CERTIFICATE = "dicom-tls.crt"
TLS_KEY = "dicom-tls.key"
#: The spool key ``site init --encrypt-spool`` writes.
SPOOL_KEY = "keys/spool.key"
#: In ``gateway.allowed_calling_ae_titles``: any calling AE title may send.
ANY_AE_TITLE = "*"
_PASSPHRASE_ENV = "USREVIEW_KEY_PASSPHRASE"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable, no backslash
_PACS = re.compile(r"(?:(?P<name>[A-Za-z0-9_-]+)=)?(?P<ae>[^@]+)@(?P<host>[^:]+):(?P<port>\d+)")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
#: Every table of site.toml and its settings (``pacs`` is an array of tables).
_KNOWN: dict[str, frozenset[str]] = {
    "site": frozenset({"name", "private_key", "retired_keys"}),
    "hub": frozenset({"url", "certificate", "public_key", "token_file"}),
    "gateway": frozenset(
        {
            "ae_title",
            "bind",
            "port",
            "allowed_calling_ae_titles",
            "min_free_mb",
            "tls_certificate",
            "tls_private_key",
            "tls_client_ca",
        }
    ),
    "pacs": frozenset({"name", "ae_title", "host", "port"}),
    "folders": frozenset({"spool", "spool_key", "retired_spool_keys", "outbox", "state"}),
    "upload": frozenset({"backoff_initial", "backoff_max", "timeout", "give_up_after_hours"}),
    "results": frozenset({"follow", "wait", "outbox", "keep_days"}),
}
#: The ``site init`` option behind each setting it writes: its errors name the option.
_INIT_OPTIONS = {
    "site.name": "NAME",
    "hub.url": "--hub",
    "gateway.ae_title": "--ae-title",
    "gateway.port": "--port",
    "gateway.allowed_calling_ae_titles": "--allow-ae",
    "pacs": "--pacs",
}


@dataclass(frozen=True)
class PacsDestination:
    """A DICOM node that receives the site's results by C-STORE."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class SiteConfig:
    """A checked ``site.toml``; paths are absolute."""

    path: Path
    name: str
    private_key: Path
    retired_private_keys: tuple[Path, ...]
    hub_url: str
    hub_certificate: Path | None
    hub_public_key: Path
    token_file: Path
    ae_title: str
    bind: str
    port: int
    allowed_calling_ae_titles: tuple[str, ...]
    tls_certificate: Path | None
    tls_private_key: Path | None
    tls_client_ca: Path | None
    pacs: tuple[PacsDestination, ...]
    spool: Path
    spool_key: Path | None
    outbox: Path
    state: Path
    backoff_initial: float
    backoff_max: float
    timeout: float
    follow_results: bool
    results_wait: float
    #: Earlier spool keys, newest first (``folders.retired_spool_keys``): they open
    #: files and journal records sealed before a rotation, and seal nothing.
    retired_spool_keys: tuple[Path, ...] = ()
    #: Space the spool's disk keeps free (``gateway.min_free_mb``, in MB): an instance that
    #: would leave less is refused with 0xA700, which scanners keep and send again.
    min_free_bytes: int = DEFAULT_MIN_FREE_MB * 10**6
    #: Hours an instance held back (the hub refuses it for now, or its file cannot be
    #: read) is tried again before it is given up: moved to ``rejected/`` with the reason
    #: (``upload.give_up_after_hours``; 0: never).
    give_up_after_hours: float = DEFAULT_GIVE_UP_AFTER_HOURS
    #: Whether results are written into the outbox folder (``results.outbox``); False:
    #: PACS only, a DICOM result is kept (in the PACS queues) until every PACS took it,
    #: and a result no PACS takes (a JSON or text summary) is not kept.
    results_to_outbox: bool = True
    #: Days an outbox file is kept once its result reached every PACS
    #: (``results.keep_days``; 0: for ever).
    outbox_keep_days: float = 0.0

    @property
    def api_url(self) -> str:
        """The base URL of the hub's usreview API (ends with ``/``)."""
        return self.hub_url.rstrip("/") + "/services/usreview/api/v1/"

    def read_token(self) -> str:
        """The site's API token, from :attr:`token_file`.

        Raises
        ------
        SiteConfigError
            Missing, empty, or readable by group or others.
        """
        where = "hub.token_file"
        try:
            mode = self.token_file.stat().st_mode
            text = self.token_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SiteConfigError(
                f"{where}: {self.token_file} does not exist; write the API token that "
                "'usreview hub add-site' printed into it (chmod 600)",
                where,
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteConfigError(
                f"{where}: cannot read {self.token_file} ({exc})", where
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SiteConfigError(
                f"{where}: {self.token_file} is readable by other users; run: "
                f"chmod 600 {self.token_file}",
                where,
            )
        if not text or any(c.isspace() for c in text):
            raise SiteConfigError(f"{where}: {self.token_file} holds no single token", where)
        return text

    def load_private_keys(self) -> PrivateKeys:
        """The site's private keys (passphrase from ``$USREVIEW_KEY_PASSPHRASE``)."""
        return _load_private(self.private_key, "site.private_key")

    def load_retired_private_keys(self) -> tuple[PrivateKeys, ...]:
        """The site's earlier private keys (``site.retired_keys``), newest first.

        Results the hub sealed to an earlier key while a key rotation was under way
        open with them.

        Raises
        ------
        SiteConfigError
            A listed file is missing or unreadable (the message names its place in the
            list).
        """
        return tuple(
            _load_private(path, f"site.retired_keys[{n}]")
            for n, path in enumerate(self.retired_private_keys)
        )

    def load_hub_key(self) -> PublicKeys:
        """The hub's current public key as the site knows it: seal to it.

        The pinned one, or the newest the site followed since the hub rotated its key
        (:mod:`usreview.site.hubkeys`).
        """
        return self.load_hub_keys()[-1]

    def load_hub_keys(self) -> list[PublicKeys]:
        """Every hub key the site trusts, oldest first (receipts and results verify with
        any): the pinned ``hub.public_key``, then those followed since."""
        from usreview.site.hubkeys import followed_hub_keys

        try:
            return followed_hub_keys(self.load_pinned_hub_key(), self.state)
        except KeyTransitionError as exc:
            raise SiteConfigError(f"hub.public_key: {exc}", "hub.public_key") from None

    def load_pinned_hub_key(self) -> PublicKeys:
        """The hub's public key as configured (``hub.public_key``)."""
        where = "hub.public_key"
        try:
            return load_public_keys(self.hub_public_key)
        except FileNotFoundError:
            raise SiteConfigError(
                f"{where}: {self.hub_public_key} does not exist; save the hub's public key "
                "that 'usreview hub add-site' printed there",
                where,
            ) from None
        except KeyFileError as exc:
            raise SiteConfigError(f"{where}: {exc}", where) from None


@dataclass(frozen=True)
class NewSite:
    """What :func:`init_site` created."""

    config: Path
    public_key: Path
    key_id: str


class _Reader:
    """Typed access to the TOML document, naming the setting in every error."""

    def __init__(self, doc: Mapping[str, Any], source: Path) -> None:
        self.doc = doc
        self.source = source
        self.base = source.parent

    def _fail(self, key: str, message: str) -> SiteConfigError:
        return SiteConfigError(f"{self.source}: {key}: {message}", key)

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.doc.get(name, {})
        if not isinstance(value, Mapping):
            raise self._fail(name, "must be a table ([" + name + "])")
        return value

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        section, _, name = key.partition(".")
        value = self.section(section).get(name, default)
        if value is None:
            raise self._fail(key, "is missing")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"must be a {kind.__name__} (got {value!r})")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value: str = self.get(key, str, default)
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value: float = self.get(key, float, default)
        if not low <= value <= high:
            raise self._fail(key, f"must be from {low:g} to {high:g} (got {value:g})")
        return value

    def path(self, key: str, default: str | None = None) -> Path:
        value = self.text(key, default)
        if not value:
            raise self._fail(key, "must be a path")
        return (self.base / Path(value).expanduser()).resolve()

    def ae_title(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not _AE.fullmatch(value) or not value.strip():
            raise self._fail(key, f"invalid AE title {value!r}: 1 to 16 characters, no '\\'")
        return value.strip()


class _InitOptions(_Reader):
    """The settings ``site init`` is about to write; errors name the option, not the file."""

    def _fail(self, key: str, message: str) -> SiteConfigError:
        option = _INIT_OPTIONS.get(key.split("[")[0], key)
        return SiteConfigError(f"{option}: {message}", key)


def load_config(path: Path) -> SiteConfig:
    """Read and check ``site.toml``.

    Raises
    ------
    SiteConfigError
        The file is missing or not TOML, or a setting is invalid (the message names it).
    """
    path = Path(path).resolve()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteConfigError(
            f"{path} does not exist; create it with 'usreview site init'"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SiteConfigError(f"{path}: not a readable TOML file ({exc})") from None
    return _parse(_Reader(doc, path))


def _parse(r: _Reader) -> SiteConfig:
    """The checked settings of ``r``'s document (no file is read)."""
    _check_known(r)
    name = r.text("site.name")
    if not _NAME.fullmatch(name):
        raise r._fail("site.name", f"invalid site name {name!r}: lowercase letters, digits, _ -")
    hub_url = _check_url(r, r.text("hub.url"))
    cert = r.text("hub.certificate", "")
    allowed_raw = r.get("gateway.allowed_calling_ae_titles", list, [])
    allowed = tuple(
        ANY_AE_TITLE
        if item == ANY_AE_TITLE
        else r.ae_title(f"gateway.allowed_calling_ae_titles[{i}]", item)
        for i, item in enumerate(allowed_raw)
    )
    port = r.get("gateway.port", int, DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise r._fail("gateway.port", f"must be from 1 to 65535 (got {port})")
    initial = r.number("upload.backoff_initial", 0.5, 0.01, 3600)
    tls_cert, tls_key, tls_ca = (
        r.path(key) if r.text(key, "") else None
        for key in ("gateway.tls_certificate", "gateway.tls_private_key", "gateway.tls_client_ca")
    )
    if (tls_cert is None) != (tls_key is None):
        raise r._fail(
            "gateway.tls_private_key" if tls_key is None else "gateway.tls_certificate",
            "DICOM TLS needs both tls_certificate and tls_private_key (or neither)",
        )
    if tls_ca is not None and tls_cert is None:
        raise r._fail("gateway.tls_client_ca", "needs tls_certificate and tls_private_key")
    pacs = _pacs_list(r)
    to_outbox = _results_outbox(r, pacs)
    spool_key = r.path("folders.spool_key") if r.text("folders.spool_key", "") else None
    retired_spool_keys = _path_list(r, "folders.retired_spool_keys")
    if retired_spool_keys and spool_key is None:
        raise r._fail(
            "folders.retired_spool_keys",
            "needs folders.spool_key (the key that seals from now on; retired keys only open)",
        )
    return SiteConfig(
        path=r.source,
        name=name,
        private_key=r.path("site.private_key", f"keys/{name}.key"),
        retired_private_keys=_path_list(r, "site.retired_keys"),
        hub_url=hub_url,
        hub_certificate=r.path("hub.certificate") if cert else None,
        hub_public_key=r.path("hub.public_key", "hub.pub"),
        token_file=r.path("hub.token_file", "token"),
        ae_title=r.ae_title("gateway.ae_title", r.text("gateway.ae_title", DEFAULT_AE_TITLE)),
        bind=_check_bind(r, r.text("gateway.bind", "0.0.0.0")),
        port=port,
        allowed_calling_ae_titles=allowed,
        tls_certificate=tls_cert,
        tls_private_key=tls_key,
        tls_client_ca=tls_ca,
        pacs=pacs,
        spool=r.path("folders.spool", "spool"),
        spool_key=spool_key,
        retired_spool_keys=retired_spool_keys,
        outbox=r.path("folders.outbox", "outbox"),
        state=r.path("folders.state", "state"),
        backoff_initial=initial,
        backoff_max=r.number("upload.backoff_max", 60.0, initial, 86400),
        timeout=r.number("upload.timeout", 60.0, 1, 3600),
        follow_results=r.get("results.follow", bool, True),
        results_wait=r.number("results.wait", 30.0, 0, 60),
        min_free_bytes=int(r.number("gateway.min_free_mb", DEFAULT_MIN_FREE_MB, 0, 10**7) * 10**6),
        give_up_after_hours=r.number(
            "upload.give_up_after_hours", DEFAULT_GIVE_UP_AFTER_HOURS, 0, 24 * 365
        ),
        results_to_outbox=to_outbox,
        outbox_keep_days=r.number("results.keep_days", 0.0, 0, MAX_KEEP_DAYS),
    )


def _results_outbox(r: _Reader, pacs: tuple[PacsDestination, ...]) -> bool:
    """``results.outbox``: true, or false (PACS only) where a PACS is configured."""
    value = r.section("results").get("outbox", True)
    if not isinstance(value, bool):
        raise r._fail(
            "results.outbox",
            f"must be true or false (got {value!r}): whether results are written into the "
            "outbox folder (the folder itself is folders.outbox)",
        )
    if not value and not pacs:
        raise r._fail(
            "results.outbox",
            "false (PACS only) needs a [[pacs]]: no result would be delivered anywhere",
        )
    return value


def _closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` is most likely a typo of (case aside), or None."""
    known = list(known)
    by_case = {k.lower(): k for k in known}
    if name.lower() in by_case:
        return by_case[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(by_case), n=1, cutoff=0.6)
    return by_case[found[0]] if found else None


def _check_known(r: _Reader) -> None:
    """Refuse a table or a setting that site.toml does not have (a typo would otherwise
    leave the default in force, silently), naming it and the closest known name."""
    for table, value in r.doc.items():
        if table not in _KNOWN:
            guess = _closest(table, _KNOWN)
            kind = "table" if isinstance(value, Mapping | list) else "setting"
            raise r._fail(
                table,
                f"unknown {kind}"
                + (f"; did you mean [{guess}]?" if guess else f"; the tables: {_tables()}"),
            )
        items = value if isinstance(value, list) else [value]
        for n, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue  # the table's own reader names it
            where = f"{table}[{n}]" if isinstance(value, list) else table
            for key in item:
                if key not in _KNOWN[table]:
                    raise r._fail(f"{where}.{key}", _unknown_setting(table, key))


def _unknown_setting(table: str, key: str) -> str:
    """What to say of setting ``key`` that table ``table`` does not have."""
    guess = _closest(key, _KNOWN[table])
    if guess is not None:
        return f"unknown setting; did you mean {table}.{guess}?"
    elsewhere = [t for t, keys in _KNOWN.items() if key in keys]
    if elsewhere:
        return f"unknown setting in [{table}]; it belongs in [{elsewhere[0]}]"
    return f"unknown setting; [{table}] has: {', '.join(sorted(_KNOWN[table]))}"


def _tables() -> str:
    return ", ".join(f"[[{t}]]" if t == "pacs" else f"[{t}]" for t in _KNOWN)


def _check_bind(r: _Reader, value: str) -> str:
    """``gateway.bind``: an IP address, or a host name (resolved when the gateway starts)."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(value)
        return value
    labels = value.rstrip(".").split(".")
    numeric = all(label.isdigit() for label in labels)
    if numeric or len(value) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        raise r._fail(
            "gateway.bind",
            f"{value!r} is not an IP address or a host name (0.0.0.0: every interface; "
            "127.0.0.1: this machine only)",
        )
    return value


def _load_private(path: Path, where: str) -> PrivateKeys:
    """A private key file (passphrase from ``$USREVIEW_KEY_PASSPHRASE``).

    Raises
    ------
    SiteConfigError
        The file is missing, unreadable, malformed, readable by others or locked with
        another passphrase; the message names the setting ``where``.
    """
    value = os.environ.get(_PASSPHRASE_ENV)
    try:
        return load_private_keys(path, value.encode() if value else None)
    except FileNotFoundError:
        raise SiteConfigError(f"{where}: {path} does not exist", where) from None
    except PermissionError:
        raise SiteConfigError(
            f"{where}: {path} cannot be read (permission denied)", where
        ) from None
    except KeyFileError as exc:
        raise SiteConfigError(f"{where}: {exc}", where) from None


def _path_list(r: _Reader, key: str) -> tuple[Path, ...]:
    """A list of paths (``site.retired_keys``, ``folders.retired_spool_keys``)."""
    items = r.get(key, list, [])
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise r._fail(f"{key}[{n}]", f"must be a path (got {item!r})")
        out.append((r.base / Path(item).expanduser()).resolve())
    return tuple(out)


def _check_url(r: _Reader, url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed '[' of an IPv6 address
        raise r._fail("hub.url", f"not a URL: {url!r} ({exc})") from None
    try:
        port = parts.port
    except ValueError:  # not a number, or over 65535
        port = 0
    if port == 0:
        raise r._fail("hub.url", f"the port must be a number from 1 to 65535 (got {url!r})")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise r._fail("hub.url", f"must be an https:// URL (got {url!r})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise r._fail("hub.url", "plain http is allowed only on loopback; use https://")
    if parts.query or parts.fragment:
        raise r._fail("hub.url", "must have no query or fragment")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pacs_list(r: _Reader) -> tuple[PacsDestination, ...]:
    items = r.doc.get("pacs", [])
    if not isinstance(items, list):
        raise r._fail("pacs", "must be an array of tables ([[pacs]])")
    out: list[PacsDestination] = []
    for i, item in enumerate(items):
        key = f"pacs[{i}]"
        if not isinstance(item, Mapping):
            raise r._fail(key, "must be a table")
        port = item.get("port")
        host = item.get("host")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise r._fail(f"{key}.port", f"must be from 1 to 65535 (got {port!r})")
        if not isinstance(host, str) or not host:
            raise r._fail(f"{key}.host", "must be a host name or address")
        name = item.get("name", f"pacs{i + 1}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise r._fail(f"{key}.name", f"invalid name {name!r}: letters, digits, _ -")
        if name in {p.name for p in out}:
            raise r._fail(f"{key}.name", f"{name!r} is used twice; give each PACS its own name")
        ae = r.ae_title(f"{key}.ae_title", item.get("ae_title"))
        out.append(PacsDestination(name, ae, host, port))
    return tuple(out)


def parse_pacs(text: str) -> PacsDestination:
    """Parse ``[NAME=]AE@HOST:PORT`` (the ``--pacs`` option)."""
    match = _PACS.fullmatch(text)
    if not match or not 1 <= int(match["port"]) <= 65535 or not _AE.fullmatch(match["ae"]):
        raise SiteConfigError(f"--pacs {text!r}: expected [NAME=]AE_TITLE@HOST:PORT", "pacs")
    return PacsDestination(match["name"] or "pacs", match["ae"], match["host"], int(match["port"]))


def init_site(
    name: str,
    hub_url: str,
    directory: Path,
    *,
    hub_certificate: Path | None = None,
    hub_public_key: Path | None = None,
    token_file: Path | None = None,
    ae_title: str = DEFAULT_AE_TITLE,
    port: int = DEFAULT_PORT,
    allowed_calling_ae_titles: Sequence[str] = (),
    pacs: Sequence[PacsDestination] = (),
    dicom_tls_hosts: Sequence[str] | None = None,
    encrypt_spool: bool = False,
) -> NewSite:
    """Create a site folder: keys, ``site.toml``, copies of the hub's certificate and key.

    The private key is passphrase-protected when ``$USREVIEW_KEY_PASSPHRASE`` is set.
    With ``dicom_tls_hosts`` (host names or addresses scanners reach the gateway by; may
    be empty) the gateway's DICOM port speaks TLS with a self-signed certificate and key
    generated as ``DIR/dicom-tls.crt`` and ``DIR/dicom-tls.key`` (give the certificate to
    the scanners to trust). With ``encrypt_spool`` a random spool key is written to
    ``DIR/keys/spool.key`` and the spool is encrypted at rest (:mod:`usreview.site.atrest`).
    Every argument is checked before anything is written, nothing existing is
    overwritten, and a failure removes what this call created, so it can be run again.

    Raises
    ------
    SiteConfigError
        An invalid argument (the message names the ``site init`` option, ``setting`` the
        setting), or a file it would write exists.
    """
    if not ACCOUNT_NAME.fullmatch(name):  # the hub's rule: 'hub add-site NAME' must work
        raise SiteConfigError(
            f"invalid site name {name!r}: {ACCOUNT_NAME_RULE} (the name the hub registers)",
            "site.name",
        )
    directory = Path(directory)
    for folder in (directory, *directory.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise SiteConfigError(
                    f"--dir {directory}: {folder} is a file, not a folder", "site.dir"
                )
            break
    config = directory / "site.toml"
    token = str(Path(token_file).resolve()) if token_file is not None else "token"
    tls = dicom_tls_hosts is not None
    cert_rel = "hub.crt" if hub_certificate is not None else ""
    text = _render(
        name, hub_url, cert_rel, token, ae_title, port, allowed_calling_ae_titles, pacs, tls
    )
    if encrypt_spool:
        text = text.replace('spool_key = ""', f"spool_key = {_q(SPOOL_KEY)}")
    _parse(_InitOptions(tomllib.loads(text), config.resolve()))
    copies: dict[Path, bytes] = {}
    if hub_certificate is not None:
        copies[directory / cert_rel] = _hub_certificate(hub_certificate)
    if hub_public_key is not None:
        copies[directory / "hub.pub"] = _hub_public_key(hub_public_key)
    key = directory / "keys" / f"{name}.key"
    files = [*copies, key, key.with_suffix(".pub"), config]
    if tls:
        files += [directory / TLS_CERTIFICATE, directory / TLS_KEY]
    if encrypt_spool:
        files.append(directory / SPOOL_KEY)
    for path in files:
        if path.exists() or path.is_symlink():
            raise SiteConfigError(f"{path} exists; refusing to overwrite it (use another --dir)")
    keys_dir = key.parent
    new_dirs = [d for d in (*reversed(keys_dir.parents), keys_dir) if not d.exists()]
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, data in copies.items():
            write_new_file(path, data, mode=0o644)
        keys = generate_keys(name)
        passphrase = os.environ.get(_PASSPHRASE_ENV)
        write_key_pair(keys, keys_dir, passphrase.encode() if passphrase else None)
        if dicom_tls_hosts is not None:
            from usreview.site.dicomtls import create_certificate

            create_certificate(directory / TLS_CERTIFICATE, directory / TLS_KEY, dicom_tls_hosts)
        if encrypt_spool:
            from usreview.site.atrest import generate_spool_key

            generate_spool_key(directory / SPOOL_KEY)
        write_new_file(config, text.encode("utf-8"), mode=0o600)
    except BaseException:  # none of these files existed: remove them, then the new folders
        for path in files:
            path.unlink(missing_ok=True)
        for folder in reversed(new_dirs):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return NewSite(config, key.with_suffix(".pub"), keys.key_id.hex())


def rotate_site_key(config: SiteConfig, stamp: str) -> NewSite:
    """Generate the site's next key pair in ``keys/STAMP/`` and make ``site.toml`` use it.

    The old key files stay where they are and the old private key goes first in
    ``site.retired_keys``: results the hub sealed to it before it registered the new one
    still open (the results follower tries the retired keys after the current one).
    Give the new ``.pub`` to the hub's administrator, who runs ``usreview hub add-site
    NAME --public-key NEW.pub --rotate``; until then the hub refuses uploads sealed with
    the new key (403) and they wait in the spool. Remove an old key from the list once
    no result sealed to it can still arrive.

    Raises
    ------
    SiteConfigError
        ``keys/STAMP`` exists, or ``site.toml`` cannot be rewritten.
    """
    from usreview.envelope.atomic import replace_file

    keys = generate_keys(config.name)
    passphrase = os.environ.get(_PASSPHRASE_ENV)
    folder = config.path.parent / "keys" / stamp
    if folder.exists():
        raise SiteConfigError(f"site.private_key: {folder} exists", "site.private_key")
    key_path = write_key_pair(keys, folder, passphrase.encode() if passphrase else None)
    retired = (config.private_key, *config.retired_private_keys)
    lines = {
        "private_key": f"private_key = {_q(_relative(key_path, config.path.parent))}",
        "retired_keys": "retired_keys = ["
        + ", ".join(_q(_relative(p, config.path.parent)) for p in retired)
        + "]",
    }
    text = _replace_settings(config.path.read_text(encoding="utf-8"), "site", lines)
    try:  # checked before it replaces the file: a failure leaves site.toml as it was
        written = tomllib.loads(text)["site"]
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise SiteConfigError(f"{config.path}: cannot update [site] ({exc})", "site") from None
    if written.get("retired_keys") != [_relative(p, config.path.parent) for p in retired]:
        raise SiteConfigError(f"{config.path}: cannot update site.retired_keys", "site")
    replace_file(config.path, text.encode())
    os.chmod(config.path, 0o600)
    after = load_config(config.path)
    if (after.private_key, after.retired_private_keys) != (key_path.resolve(), retired):
        raise SiteConfigError(f"{config.path}: site.private_key was not updated", "site")
    return NewSite(config.path, key_path.with_suffix(".pub"), keys.key_id.hex())


def rotate_spool_key(config: SiteConfig, stamp: str) -> Path:
    """Write a new spool key ``keys/spool-STAMP.key`` and make ``site.toml`` seal with it.

    The previous ``folders.spool_key`` goes first in ``folders.retired_spool_keys``: the
    spool files and journal records it sealed still open (:mod:`usreview.site.atrest`).
    The gateway and its upload process read the keys when they start: restart the
    gateway. Remove the old key from the list once nothing it sealed is left in the
    spool (its files, ``rejected/``, and the journal, which a clean stop empties). On a
    site without a spool key, this turns encryption at rest on. Returns the new key file.

    Raises
    ------
    SiteConfigError
        The key file exists, or ``site.toml`` cannot be rewritten.
    """
    from usreview.envelope.atomic import replace_file
    from usreview.site.atrest import generate_spool_key

    key_path = config.path.parent / "keys" / f"spool-{stamp}.key"
    retired = (
        (config.spool_key, *config.retired_spool_keys)
        if config.spool_key is not None
        else config.retired_spool_keys
    )
    base = config.path.parent
    lines = {
        "spool_key": f"spool_key = {_q(_relative(key_path, base))}",
        "retired_spool_keys": "retired_spool_keys = ["
        + ", ".join(_q(_relative(p, base)) for p in retired)
        + "]",
    }
    text = _replace_settings(config.path.read_text(encoding="utf-8"), "folders", lines)
    try:  # checked before anything is written: a failure leaves the site as it was
        written = tomllib.loads(text)["folders"]
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise SiteConfigError(
            f"{config.path}: cannot update [folders] ({exc})", "folders.spool_key"
        ) from None
    if written.get("retired_spool_keys") != [_relative(p, base) for p in retired]:
        raise SiteConfigError(
            f"{config.path}: cannot update folders.retired_spool_keys", "folders.spool_key"
        )
    generate_spool_key(key_path)  # never overwrites
    replace_file(config.path, text.encode())
    os.chmod(config.path, 0o600)
    after = load_config(config.path)
    if (after.spool_key, after.retired_spool_keys) != (key_path.resolve(), retired):
        raise SiteConfigError(f"{config.path}: folders.spool_key was not updated", "folders")
    return key_path


def _replace_settings(text: str, table: str, lines: dict[str, str]) -> str:
    """``text`` with each ``key = ...`` of ``[table]`` replaced by ``lines[key]``.

    A setting missing from the table is added at its top (and a missing table at the
    end of the file); an array may span lines, up to its closing ``]``.
    """
    pattern = rf"(?ms)^\[{table}\][ \t]*(?:#[^\n]*)?$.*?(?=^[ \t]*\[|\Z)"
    section = re.search(pattern, text)
    if section is None:
        text = text.rstrip("\n") + f"\n\n[{table}]\n"
        section = re.search(pattern, text)
        assert section is not None
    body = section.group(0)
    for key, line in lines.items():
        setting = re.compile(rf"(?m)^{key}\s*=(?:\s*\[[^\]]*\][ \t]*(?:#.*)?|.*)$")
        if found := setting.search(body):
            body = body[: found.start()] + line + body[found.end() :]
        else:
            head, _, rest = body.partition("\n")
            body = f"{head}\n{line}\n{rest}"
    return text[: section.start()] + body + text[section.end() :]


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it (the site folder can move), else as is."""
    return (path.relative_to(base) if path.is_relative_to(base) else path).as_posix()


def _read_option(path: Path, option: str, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SiteConfigError(
            f"{option}: cannot read {path} ({exc.strerror or exc})", setting
        ) from None


def _hub_certificate(path: Path) -> bytes:
    """The contents of ``--hub-cert``, checked to be a PEM certificate and no private key."""
    data = _read_option(path, "--hub-cert", "hub.certificate")
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise SiteConfigError(
            f"--hub-cert: {path} is not a PEM certificate; give the hub's TLS certificate "
            "(or its CA), the file that starts with -----BEGIN CERTIFICATE-----",
            "hub.certificate",
        ) from None
    if b"PRIVATE KEY-----" in data:
        raise SiteConfigError(
            f"--hub-cert: {path} also holds a private key; give the certificate alone",
            "hub.certificate",
        )
    return data


def _hub_public_key(path: Path) -> bytes:
    """The contents of ``--hub-key``, checked to be a public key file."""
    data = _read_option(path, "--hub-key", "hub.public_key")
    try:
        parse_public_keys(data.decode("utf-8", "replace"), str(path))
    except KeyFileError as exc:
        raise SiteConfigError(
            f"--hub-key: {exc}; give the hub's public key (the .pub file "
            "'usreview hub add-site' printed), never its private key",
            "hub.public_key",
        ) from None
    return data


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _render(
    name: str,
    hub_url: str,
    cert: str,
    token: str,
    ae_title: str,
    port: int,
    allowed: Sequence[str],
    pacs: Sequence[PacsDestination],
    tls: bool,
) -> str:
    allowed_text = ", ".join(_q(a) for a in allowed)
    lines = [
        "# usreview site configuration (relative paths are relative to this file)",
        "",
        "[site]",
        f"name = {_q(name)}",
        f"private_key = {_q(f'keys/{name}.key')}",
        "# earlier private keys, newest first ('usreview site rotate-key' adds them):",
        "# results sealed to them while the hub switched keys still open",
        "retired_keys = []",
        "",
        "[hub]",
        f"url = {_q(hub_url)}",
        "# the hub's TLS certificate (or its CA), pinned; empty: the system's CAs",
        f"certificate = {_q(cert)}",
        "# the hub's envelope public key, printed by 'usreview hub add-site'",
        'public_key = "hub.pub"',
        "# the site's API token, printed once by 'usreview hub add-site' (chmod 600)",
        f"token_file = {_q(token)}",
        "",
        "[gateway]",
        f"ae_title = {_q(ae_title)}",
        'bind = "0.0.0.0"',
        f"port = {port}",
        '# AE titles of the scanners that may send; "*" allows any',
        f"allowed_calling_ae_titles = [{allowed_text}]",
        "# MB the spool's disk keeps free: an instance that would leave less is refused",
        "# (0xA700, out of resources), and the scanner keeps it",
        f"min_free_mb = {DEFAULT_MIN_FREE_MB}",
        "# DICOM TLS on the port: certificate and key (both empty: plain DICOM); with",
        "# tls_client_ca, scanners must show a certificate signed by that CA",
        f"tls_certificate = {_q(TLS_CERTIFICATE if tls else '')}",
        f"tls_private_key = {_q(TLS_KEY if tls else '')}",
        'tls_client_ca = ""',
        "",
    ]
    for dest in pacs:
        lines += [
            "[[pacs]]",
            f"name = {_q(dest.name)}",
            f"ae_title = {_q(dest.ae_title)}",
            f"host = {_q(dest.host)}",
            f"port = {dest.port}",
            "",
        ]
    lines += [
        "[folders]",
        'spool = "spool"',
        "# the spool's key: instances and journal encrypted at rest (empty: plaintext)",
        'spool_key = ""',
        "# earlier spool keys, newest first: what they sealed still opens (key rotation)",
        "retired_spool_keys = []",
        'outbox = "outbox"',
        'state = "state"',
        "",
        "[upload]",
        "backoff_initial = 0.5",
        "backoff_max = 60.0",
        "timeout = 60.0",
        "# hours an instance the hub refuses for now (too large, no decoder) is tried",
        "# again before it is given up: moved to spool/rejected/ with the reason (0: never)",
        f"give_up_after_hours = {DEFAULT_GIVE_UP_AFTER_HOURS}",
        "",
        "[results]",
        "follow = true",
        "wait = 30.0",
        "# write each result into the outbox folder; false: PACS only (a DICOM result is",
        "# kept until every PACS took it; a JSON or text summary, which no PACS takes, is not)",
        "outbox = true",
        "# days an outbox file is kept once its result reached every PACS (0: for ever)",
        "keep_days = 0",
        "",
    ]
    return "\n".join(lines)

"""configure() on a plain traitlets Config: roles as a table, login, TLS, state, passwords."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import jupyterhub.scopes as jupyterhub_scopes
import pytest
from traitlets.config import Config

from usreview.demo import free_port
from usreview.hub import roles
from usreview.hub.accounts import Accounts
from usreview.hub.config import SITE_PORT_ENV, configure
from usreview.hub.errors import (
    AccountError,
    HubConfigError,
    InsecureBindError,
    ProxyNotFoundError,
    StateError,
)
from usreview.hub.passwords import generate_password, hash_password, verify_password
from usreview.hub.proxy import PROXY_ENV, find_proxy
from usreview.hub.siteport import SERVICE_SITE_PORT_ENV, SitePort
from usreview.hub.tls import check_bind, ensure_certificate, is_loopback


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- roles and scopes as a table ------------------------------------------------------


def _granted(group: str, me: str) -> dict[str, Any]:
    """Parsed scopes of a member ``me`` of ``group`` (JupyterHub's own expansion)."""
    [role] = [r for r in roles.load_roles() if r.get("groups") == [group]]
    granted: set[str] = set()
    for scope in role["scopes"]:
        name, _, filter_ = scope.partition("!")
        filter_ = f"user={me}" if filter_ == "user" else filter_
        names = {name} if name.startswith("custom:") else jupyterhub_scopes._expand_scope(name)
        granted |= {f"{n}!{filter_}" if filter_ else n for n in names}
    parsed: dict[str, Any] = jupyterhub_scopes.parse_scopes(frozenset(granted))
    return parsed


def _allowed(parsed: dict[str, Any], scope: str, kind: str, target: str) -> bool:
    held = parsed.get(scope)
    if held is None:
        return False
    return bool(held is jupyterhub_scopes.Scope.ALL or target in held.get(kind, ()))


# (group, scope, kind, target: "me" = the member themself, allowed?)
TABLE = [
    ("sites", "access:services", "service", roles.SERVICE, True),
    ("sites", "custom:usreview:upload", "", "", True),
    ("sites", "start:servers", "user", "me", False),
    ("sites", "access:servers", "user", "me", False),
    ("sites", "read:users", "user", "me", False),
    ("sites", "tokens", "user", "me", False),
    ("sites", "list:users", "", "", False),
    ("sites", "custom:usreview:review", "", "", False),
    ("trainees", "start:servers", "user", "me", True),
    ("trainees", "access:servers", "user", "me", True),
    ("trainees", "tokens", "user", "me", True),
    ("trainees", "access:services", "service", roles.SERVICE, True),
    ("trainees", "start:servers", "user", "rev", False),
    ("trainees", "access:servers", "user", "rev", False),
    ("trainees", "read:users", "user", "rev", False),
    ("trainees", "read:servers", "user", "rev", False),
    ("trainees", "tokens", "user", "rev", False),
    ("trainees", "list:users", "", "", False),
    ("trainees", "shares", "user", "me", False),
    ("trainees", "custom:usreview:review", "", "", False),
    ("trainees", "custom:usreview:train", "", "", True),
    ("reviewers", "start:servers", "user", "me", True),
    ("reviewers", "custom:usreview:review", "", "", True),
    ("reviewers", "access:servers", "user", "other", False),
    ("scientists", "start:servers", "user", "me", True),
    ("scientists", "custom:usreview:research", "", "", True),
    ("scientists", "read:users", "user", "other", False),
    ("scientists", "custom:usreview:upload", "", "", False),
]


@pytest.mark.parametrize(("group", "scope", "kind", "target", "allowed"), TABLE)
def test_roles_table(group: str, scope: str, kind: str, target: str, allowed: bool) -> None:
    parsed = _granted(group, "me")
    if kind:
        assert _allowed(parsed, scope, kind, target) is allowed
    else:
        assert (parsed.get(scope) is jupyterhub_scopes.Scope.ALL) is allowed


def test_default_user_role_grants_nothing() -> None:
    [user_role] = [r for r in roles.load_roles() if r["name"] == "user"]
    assert user_role["scopes"] == []


def test_sites_reach_only_the_service() -> None:
    for scope in roles.SITE_TOKEN_SCOPES:
        assert scope.startswith("custom:usreview:") or scope == (
            f"access:services!service={roles.SERVICE}"
        )


def test_person_scopes_are_limited_to_themselves() -> None:
    for role in roles.load_roles():
        if role.get("groups") in (["reviewers"], ["trainees"], ["scientists"]):
            for scope in role["scopes"]:
                assert (
                    scope.endswith("!user")
                    or scope.startswith("custom:")
                    or scope == f"access:services!service={roles.SERVICE}"
                ), scope


def test_admin_service_cannot_make_admins_or_mint_tokens_for_people() -> None:
    [role] = [r for r in roles.load_roles() if r.get("services") == [roles.ADMIN_SERVICE]]
    parsed = jupyterhub_scopes.parse_scopes(frozenset(role["scopes"]))
    assert "admins" not in parsed["groups"]["group"]
    assert parsed["tokens"] == {"group": frozenset({"sites"})}
    assert "admin:groups" not in parsed and "admin:servers" not in parsed


def test_every_group_has_a_role_and_custom_scopes_exist() -> None:
    loaded = roles.load_roles()
    for group in roles.GROUPS:
        assert any(group in r.get("groups", []) for r in loaded), group
    used = {s.partition("!")[0] for r in loaded for s in r.get("scopes", [])}
    assert {s for s in used if s.startswith("custom:")} <= set(roles.CUSTOM_SCOPES)


# --- configure() ----------------------------------------------------------------------


def test_configure_sets_the_deployment(configured: tuple[Config, Path], fake_proxy: Path) -> None:
    c, state = configured
    hub = c.JupyterHub
    assert hub.bind_url == "https://127.0.0.1:18000/"
    assert hub.ssl_cert == str(state / "tls.crt") and hub.ssl_key == str(state / "tls.key")
    assert hub.db_url == f"sqlite:///{state / 'jupyterhub.sqlite'}"
    assert hub.cookie_secret_file == str(state / "cookie_secret")
    assert c.ConfigurableHTTPProxy.command == [str(fake_proxy)]
    assert Path(c.ConfigurableHTTPProxy.command[0]).is_absolute()
    assert hub.hub_bind_url.startswith("http://127.0.0.1:")
    assert hub.spawner_class.__name__ == "PersonalSpawner"
    services = {s["name"]: s for s in hub.services}
    usreview = services[roles.SERVICE]
    assert usreview["command"][1:] == ["-m", "usreview.hub.service"]
    assert usreview["url"].startswith("http://127.0.0.1:")
    assert services[roles.ADMIN_SERVICE]["api_token"] == (state / "admin-service.token").read_text()
    assert set(hub.custom_scopes) == set(roles.CUSTOM_SCOPES)
    assert set(hub.load_groups) == set(roles.GROUPS)


def test_no_open_authenticator(configured: tuple[Config, Path]) -> None:
    from usreview.hub.auth import UsreviewAuthenticator

    c, state = configured
    assert c.JupyterHub.authenticator_class == "usreview.hub.auth.UsreviewAuthenticator"
    assert "allow_all" not in c.Authenticator and "allow_all" not in c.UsreviewAuthenticator
    auth = UsreviewAuthenticator(config=c)
    assert auth.allow_all is False
    assert not auth.check_allowed("nobody")
    Accounts(state / "accounts.sqlite").add_person("rev", "reviewer", hash_password("right"))
    assert auth.check_allowed("rev")


def test_authenticator_checks_each_persons_password(configured: tuple[Config, Path]) -> None:
    from usreview.hub.auth import UsreviewAuthenticator

    c, state = configured
    accounts = Accounts(state / "accounts.sqlite")
    accounts.add_person("rev", "reviewer", hash_password("right"))
    accounts.add_site("clinic", state / "sites" / "clinic.pub", "00")
    auth = UsreviewAuthenticator(config=c)

    def login(name: str, password: str) -> str | None:
        result: str | None = asyncio.run(
            auth.authenticate(None, {"username": name, "password": password})
        )
        return result

    assert login("rev", "right") == "rev"
    assert login("REV", "right") == "rev"
    assert login("rev", "wrong") is None
    assert login("rev", "") is None
    assert login("clinic", "") is None
    assert login("ghost", "right") is None
    assert not auth.check_allowed("clinic")


def test_configure_reads_the_registry_into_groups(tmp_path: Path, fake_proxy: Path) -> None:
    state = tmp_path / "state"
    configure(Config(), state, "127.0.0.1", 18000)
    accounts = Accounts(state / "accounts.sqlite")
    accounts.add_person("rev", "reviewer", hash_password("x"))
    accounts.add_person("tina", "trainee", hash_password("x"))
    accounts.add_site("clinic", state / "sites" / "clinic.pub", "00")
    c = Config()
    configure(c, state, "127.0.0.1", 18000)
    groups = c.JupyterHub.load_groups
    assert groups["reviewers"] == {"users": ["rev"]}
    assert groups["trainees"] == {"users": ["tina"]}
    assert groups["sites"] == {"users": ["clinic"]}
    assert groups["admins"] == {"users": []}


def test_configure_from_the_environment(
    tmp_path: Path, fake_proxy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USREVIEW_STATE", str(tmp_path / "envstate"))
    monkeypatch.setenv("USREVIEW_HUB_PORT", "18123")
    c = Config()
    endpoints = configure(c)
    assert endpoints.state.root == tmp_path / "envstate"
    assert c.JupyterHub.bind_url == "https://127.0.0.1:18123/"


# --- the sites' port -----------------------------------------------------------------


def _service(c: Config, name: str = "usreview") -> dict[str, Any]:
    [service] = [s for s in c.JupyterHub.services if s["name"] == name]
    return dict(service)


def test_the_sites_port_is_given_to_the_service(
    tmp_path: Path, fake_proxy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv(SITE_PORT_ENV, str(port))
    c = Config()
    endpoints = configure(c, tmp_path / "state", "127.0.0.1", 18000)
    assert endpoints.site_url == f"https://127.0.0.1:{port}/"
    site = SitePort.from_env(_service(c)["environment"])
    cert, key = Path(c.JupyterHub.ssl_cert), Path(c.JupyterHub.ssl_key)
    assert site == SitePort("127.0.0.1", port, cert, key)
    assert site.tls_context().minimum_version >= ssl.TLSVersion.TLSv1_2
    assert SERVICE_SITE_PORT_ENV not in _service(c, "usreview-worker")["environment"]
    assert endpoints.state.read_run_info()["site_url"] == endpoints.site_url

    monkeypatch.delenv(SITE_PORT_ENV)
    c = Config()
    assert configure(c, tmp_path / "state", "127.0.0.1", 18000).site_url is None
    assert SERVICE_SITE_PORT_ENV not in _service(c)["environment"]


def test_the_sites_port_is_checked_before_the_start(tmp_path: Path, fake_proxy: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(HubConfigError, match="TLS only"):
        configure(Config(), state, "127.0.0.1", 18000, tls=False, site_port=free_port())
    assert not state.exists()
    with pytest.raises(HubConfigError, match="is the public port"):
        configure(Config(), state, "127.0.0.1", 18000, site_port=18000)
    with pytest.raises(HubConfigError, match=r"invalid port 0 \(--site-port"):
        configure(Config(), state, "127.0.0.1", 18000, site_port=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HubConfigError, match=f"cannot serve the sites on 127.0.0.1:{port}"):
            configure(Config(), state, "127.0.0.1", 18000, site_port=port)


def test_the_services_settings_are_checked_before_the_start(
    tmp_path: Path, fake_proxy: Path
) -> None:
    state = tmp_path / "state"
    configure(Config(), state, "127.0.0.1", 18000)
    settings = state / "service_config.json"
    settings.write_text('{"ServiceSettings": {"threads": 0}}')
    with pytest.raises(StateError, match=r"service_config\.json: invalid .*'threads'"):
        configure(Config(), state, "127.0.0.1", 18000)
    settings.write_text('{"ServiceSettings": {"threads": 8}}')
    configure(Config(), state, "127.0.0.1", 18000)


@pytest.mark.parametrize(
    "value", ["{", "[]", '{"ip": "", "port": 70000, "cert": "c", "key": "k"}', '{"ip": ""}']
)
def test_a_damaged_sites_port_variable_is_refused(value: str) -> None:
    assert SitePort.from_env({}) is None
    with pytest.raises(HubConfigError, match=SERVICE_SITE_PORT_ENV):
        SitePort.from_env({SERVICE_SITE_PORT_ENV: value})


# --- TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["0.0.0.0", "192.0.2.10", "", "::", "hub.example.org"])
def test_refuses_non_loopback_without_tls(tmp_path: Path, fake_proxy: Path, ip: str) -> None:
    with pytest.raises(InsecureBindError, match="without TLS"):
        configure(Config(), tmp_path / "state", ip, 18000, tls=False)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_plain_http_allowed_on_loopback(tmp_path: Path, fake_proxy: Path, ip: str) -> None:
    c = Config()
    configure(c, tmp_path / "state", ip, 18000, tls=False)
    assert c.JupyterHub.bind_url.startswith("http://")
    assert "ssl_cert" not in c.JupyterHub
    check_bind(ip, tls=False)
    assert is_loopback(ip)


def test_non_loopback_with_tls_gets_a_certificate_naming_it(
    tmp_path: Path, fake_proxy: Path
) -> None:
    from cryptography import x509

    c = Config()
    configure(c, tmp_path / "state", "192.0.2.10", 18443)
    cert = x509.load_pem_x509_certificate(Path(c.JupyterHub.ssl_cert).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.10" in {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert _mode(Path(c.JupyterHub.ssl_key)) == 0o600


def test_certificate_is_kept_then_renewed_for_a_new_host(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ensure_certificate(cert, key, ["127.0.0.1"])
    first = cert.read_bytes()
    ensure_certificate(cert, key, ["127.0.0.1"])
    assert cert.read_bytes() == first
    ensure_certificate(cert, key, ["hub.example.org"])
    assert cert.read_bytes() != first


def test_a_certificate_expiring_or_replaced_is_noticed_at_start(
    tmp_path: Path, fake_proxy: Path
) -> None:
    """Sites pin the hub's certificate: its administrator must hear of a change in time."""
    import datetime as dt

    from usreview.hub.tls import expiry_notice

    state = tmp_path / "state"
    assert configure(Config(), state, "127.0.0.1", 18443).notices == ()  # new: 397 days
    cert = state / "tls.crt"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=397 - 20)  # 20 days left then
    notice = expiry_notice(cert, now=soon)
    assert notice is not None and f"the TLS certificate {cert} expires on " in notice
    assert "give the sites the new one" in notice
    later = soon + dt.timedelta(days=30)
    assert "expired on" in str(expiry_notice(cert, now=later))
    assert expiry_notice(cert, now=soon - dt.timedelta(days=11)) is None  # 31 days left
    first = cert.read_bytes()
    endpoints = configure(Config(), state, "192.0.2.10", 18443)  # another host: a new one
    assert cert.read_bytes() != first
    (said,) = endpoints.notices
    assert said.startswith(f"a new self-signed TLS certificate replaced {cert}")
    assert configure(Config(), state, "192.0.2.10", 18443).notices == ()  # kept now


def test_tls_cert_and_key_go_together(tmp_path: Path, fake_proxy: Path) -> None:
    with pytest.raises(HubConfigError, match="--tls-key"):
        configure(Config(), tmp_path / "s", "127.0.0.1", 1, tls_cert=tmp_path / "c.pem")


def test_invalid_port(tmp_path: Path, fake_proxy: Path) -> None:
    with pytest.raises(HubConfigError, match="invalid port"):
        configure(Config(), tmp_path / "s", "127.0.0.1", 70000)


# --- proxy ----------------------------------------------------------------------------


def test_missing_proxy_names_the_make_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PROXY_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProxyNotFoundError, match="make test"):
        find_proxy(bundled=tmp_path / "missing")
    monkeypatch.setattr("usreview.hub.proxy._BUNDLED", tmp_path / "missing")
    with pytest.raises(ProxyNotFoundError, match="make demo"):
        configure(Config(), tmp_path / "state", "127.0.0.1", 18000)
    monkeypatch.setenv(PROXY_ENV, str(tmp_path / "nothing"))
    with pytest.raises(ProxyNotFoundError, match=PROXY_ENV):
        find_proxy()


# --- state ----------------------------------------------------------------------------


def test_state_is_generated_private(configured: tuple[Config, Path]) -> None:
    _, state = configured
    if os.geteuid() == 0:  # people's servers pass through to their homes, see nothing else
        assert _mode(state) == _mode(state / "users") == 0o711
        others = [p.name for p in state.iterdir() if p.name != "users" and _mode(p) & 0o077]
        assert others == [], others
    else:
        assert _mode(state) == 0o700
    for name in ("hub.key", "cookie_secret", "at-rest.key", "admin-service.token", "tls.key"):
        assert _mode(state / name) == 0o600, name
    assert (state / "hub.pub").read_text().startswith("usreview-public-key v1")
    assert len((state / "at-rest.key").read_bytes()) == 32
    assert len(bytes.fromhex((state / "cookie_secret").read_text())) == 32


def test_state_is_generated_once(tmp_path: Path, fake_proxy: Path) -> None:
    state = tmp_path / "state"
    configure(Config(), state, "127.0.0.1", 18000)
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    configure(Config(), state, "127.0.0.1", 18000)
    for name, data in before.items():
        if name != "run.json":
            assert (state / name).read_bytes() == data, name


def test_state_open_to_others_is_refused(tmp_path: Path, fake_proxy: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    with pytest.raises(StateError, match="chmod 700"):
        configure(Config(), state, "127.0.0.1", 18000)


def test_readable_secret_is_refused(configured: tuple[Config, Path], fake_proxy: Path) -> None:
    _, state = configured
    (state / "cookie_secret").chmod(0o644)
    with pytest.raises(StateError, match="cookie_secret"):
        configure(Config(), state, "127.0.0.1", 18000)


# --- passwords and accounts -----------------------------------------------------------


def test_password_hashing() -> None:
    password = generate_password()
    assert len(password) >= 22 and password != generate_password()
    stored = hash_password(password)
    assert password not in stored and stored.startswith("scrypt$")
    assert stored != hash_password(password)  # a fresh salt each time
    assert verify_password(password, stored)
    assert not verify_password(password + "x", stored)
    assert not verify_password(password, None)
    assert not verify_password(password, "garbage")
    assert not verify_password(password, "scrypt$1$1$1$!!$!!")


def test_accounts_refuse_bad_names_roles_and_duplicates(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "accounts.sqlite")
    accounts.add_person("rev", "reviewer", hash_password("x"))
    assert _mode(tmp_path / "accounts.sqlite") == 0o600
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_site("rev", tmp_path / "rev.pub", "00")
    with pytest.raises(AccountError, match="unknown role"):
        accounts.add_person("tina", "student", hash_password("x"))
    for bad in ("", "Rev", "a b", "../x", "1abc", "x" * 33):
        with pytest.raises(AccountError, match="invalid name"):
            accounts.add_person(bad, "reviewer", hash_password("x"))
    assert accounts.password_hash("rev") is not None
    assert accounts.password_hash("ghost") is None


def test_managed_services_are_checked_four_times_a_second() -> None:
    from jupyterhub.services import service

    from usreview.hub.config import SERVICE_POLL_SECONDS, poll_services_every

    poll_services_every(SERVICE_POLL_SECONDS)
    patched = service._ServiceSpawner
    poll_services_every(SERVICE_POLL_SECONDS)  # once is enough: no subclass of a subclass
    assert service._ServiceSpawner is patched
    assert service._ServiceSpawner().poll_interval == SERVICE_POLL_SECONDS == 0.25

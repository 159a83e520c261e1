"""What the ``usreview hub`` commands do; :mod:`usreview.cli` only parses and prints.

- :func:`run_hub` configures and runs JupyterHub in this process until SIGINT/SIGTERM.
- :func:`add_user` registers a person and returns their generated password.
- :func:`remove_user` offboards a person; :func:`reset_password` gives them a new password.
- :func:`add_site` registers a site and its envelope key, and returns its API token.
- :func:`reviewer_sites` restricts a reviewer to some sites (kept in the archive; the
  default is every site), or shows the restriction.

People are usable at once: their password is checked against the registry at every
login, and when the hub is running their group is set through its API (admins only
at the next start: the administration token cannot grant admin). At every start the
registry is loaded into the hub's groups again. Site tokens are minted by the
running hub (see :mod:`usreview.hub.admin` for why). Every change is one ``admin`` line
of the audit log (:func:`audit_admin`), naming the command; never a password or token.

A name that is not registered is a :class:`~usreview.hub.errors.HubError` (exit status 1, as
a job or conflict that does not exist), not an :class:`~usreview.hub.errors.AccountError`
(bad input, exit status 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from usreview.envelope import load_public_keys
from usreview.envelope.atomic import write_new_file
from usreview.hub.accounts import Accounts, check_name
from usreview.hub.admin import HubApi
from usreview.hub.config import Endpoints, configure
from usreview.hub.errors import AccountError, HubError, HubUnavailableError, StateError
from usreview.hub.passwords import generate_password, hash_password
from usreview.hub.roles import PERSON_ROLES, SITE_GROUP, SITE_TOKEN_SCOPES, group_for_role
from usreview.hub.state import HubState, existing_state, state_or_new

__all__ = [
    "NewPerson",
    "NewSite",
    "RemovedPerson",
    "RotatedHubKey",
    "RotatedSite",
    "SiteOverview",
    "SiteToken",
    "add_site",
    "add_user",
    "audit_admin",
    "list_sites",
    "next_certificate",
    "remove_user",
    "reset_password",
    "reviewer_sites",
    "rotate_hub_key",
    "rotate_site_key",
    "run_hub",
    "site_token",
]


@dataclass(frozen=True)
class NewPerson:
    """A registered person; ``password`` is shown once and stored only hashed."""

    name: str
    role: str
    password: str
    note: str
    new_state: bool = False
    """Whether the state directory was created for them (no hub there before)."""


@dataclass(frozen=True)
class NewSite:
    """A registered site: its API token (shown once) and the hub's public key."""

    name: str
    token: str
    site_public_key: Path
    hub_public_key: Path
    hub_url: str | None = None
    """The address the site sends to (its ``hub.url``): the sites' port when the hub has
    one, else the public endpoint."""

    @property
    def hub_public_key_text(self) -> str:
        """The hub's ``.pub`` file, for the site to seal studies to."""
        return self.hub_public_key.read_text()


def run_hub(
    state: Path,
    ip: str | None = None,
    port: int | None = None,
    *,
    tls: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    site_port: int | None = None,
) -> Endpoints:
    """Configure JupyterHub and run it in this process until it is stopped.

    Returns the endpoints it served. Raises what :func:`~usreview.hub.config.configure`
    raises, before anything starts.
    """
    from traitlets.config import Config

    config = Config()
    endpoints = configure(
        config, state, ip, port, tls=tls, tls_cert=tls_cert, tls_key=tls_key, site_port=site_port
    )

    for notice in endpoints.notices:
        print(f"usreview hub: warning: {notice}", file=sys.stderr, flush=True)
    if endpoints.site_url:  # JupyterHub announces its own address; this one is ours
        print(
            f"usreview hub: sites' port {endpoints.site_url} (the usreview service, TLS, "
            "sites only)",
            file=sys.stderr,
            flush=True,
        )

    from jupyterhub.app import JupyterHub  # slow to import: after the checks

    class Hub(JupyterHub):  # type: ignore[misc]
        """JupyterHub configured by configure() alone."""

        def load_config_file(self, *args: object, **kwargs: object) -> None:
            """Read no jupyterhub_config.py from the working directory."""

    hub = Hub.instance(config=config)
    try:
        Hub.launch_instance(argv=[])
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _clean_up_failed_start(hub)
        raise
    return endpoints


def _clean_up_failed_start(hub: Any) -> None:
    """Stop what a failed start of JupyterHub left running.

    When its start fails once the proxy is up (a managed service exits or never
    answers, ...), JupyterHub exits at once: the proxy it started would keep the public
    port, and the services that did start would keep running.
    """
    with contextlib.suppress(Exception):
        asyncio.run(hub.cleanup())  # the services, then the proxy and the pid files
    process = getattr(getattr(hub, "proxy", None), "proxy_process", None)
    if process is None:
        return  # it failed before starting the proxy
    with contextlib.suppress(OSError):
        process.terminate()  # again, in case cleanup failed before reaching it
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def add_user(state: Path, name: str, role: str, sites: Sequence[str] | None = None) -> NewPerson:
    """Register a person with ``role``; return their generated password.

    ``sites`` restricts a reviewer to those sites' studies (default: every site). A
    missing or empty ``state`` becomes a new hub's (:func:`~usreview.hub.state.state_or_new`;
    ``new_state`` says so).

    Raises
    ------
    AccountError
        If the name is invalid or taken, the role unknown, or ``sites`` given for
        another role than reviewer.
    NotAStateError
        If ``state`` holds files but no hub (nothing is created then).
    """
    check_name(name)
    if role not in PERSON_ROLES:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(PERSON_ROLES)}")
    if sites is not None and role != "reviewer":
        raise AccountError(f"--sites restricts reviewers only, not a {role}")
    hub_state, new_state = state_or_new(state)
    if Accounts(hub_state.accounts).is_person(name):
        raise AccountError(f"{name!r} already exists")
    if sites is not None:  # first: a failure leaves nobody with more access than asked
        _restrict(hub_state, name, sites, actor="usreview hub add-user")
    password = generate_password()
    accounts = Accounts(hub_state.accounts)
    accounts.add_person(name, role, hash_password(password))
    try:
        audit_admin(hub_state, "usreview hub add-user", f"users/{name}", "added", {"role": role})
    except BaseException:
        accounts.remove_person(name)  # not audited: not added
        raise
    group = group_for_role(role)
    note = f"{name} is in group {group!r}"
    if sites is not None:
        note += f", reading the studies of {', '.join(sorted(set(sites)))} only"
    if role == "admin":
        note += "; the hub gives admin rights at its next start"
        return NewPerson(name, role, password, note, new_state)
    api = _api(hub_state)
    if api is None:
        return NewPerson(name, role, password, note + " from the hub's next start", new_state)
    try:
        api.ensure_user(name)
        api.add_to_group(group, name)
    except HubUnavailableError as exc:
        note += f" from the hub's next start (the running hub was not updated: {exc})"
    return NewPerson(name, role, password, note, new_state)


@dataclass(frozen=True)
class RemovedPerson:
    """A person offboarded: ``note`` says what the hub did (running or stopped)."""

    name: str
    note: str


def remove_user(state: Path, name: str, *, delete_home: bool = False) -> RemovedPerson:
    """Offboard person ``name``: they can no longer log in, their tokens and server end.

    With the hub running, it deletes the user through its API (it stops their server and
    deletes their API tokens and memberships); with it stopped, the user is deleted from
    its database directly (as ``jupyterhub token`` writes it). Then the registry forgets
    them, so logins are refused. Their reports, the archive and the audit log keep their
    name. Their home (``STATE/users/NAME``: their notebooks, which may hold patient data)
    stays, and the note says so, unless ``delete_home``: then it is deleted once their
    server has stopped, also for a person removed before. Audited.

    Raises
    ------
    AccountError
        ``name`` is not a valid name.
    HubError
        ``name`` is not a registered person (nor, with ``delete_home``, one removed who
        left a home).
    HubUnavailableError
        The hub runs but does not answer (starting), or refused (a server still stopping):
        nothing changed, run it again.
    """
    check_name(name)
    hub_state = existing_state(state)
    accounts = Accounts(hub_state.accounts)
    home = hub_state.homes / name
    if delete_home and home.is_symlink():  # the homes' folder is root's: made by hand
        raise HubError(f"{home} is a link, not a home: look at it and remove it by hand")
    if not accounts.is_person(name):
        if delete_home and home.is_dir() and name not in accounts.sites():
            return RemovedPerson(
                name, _delete_home(hub_state, name, home, {"hub": "removed before"})
            )
        raise _not_a_person(accounts, name)
    api = _api(hub_state)
    if api is not None:
        api.timeout = 60  # the hub stops their server before answering
        api.request("DELETE", f"users/{quote(name)}", ok=(404,))
        how, note = "running", "the running hub stopped their server and deleted their tokens"
    else:
        pid = _hub_pid(hub_state)
        if pid is not None:
            raise HubUnavailableError(
                f"the hub (pid {pid}) runs but does not answer: wait until it has started "
                f"(or stop it), then run 'usreview hub remove-user {name}' again"
            )
        had = _delete_while_stopped(hub_state, name)
        how = "stopped"
        note = "deleted from the stopped hub's database with their API tokens" if had else ""
    accounts.remove_person(name)
    said = f"{name} can no longer log in" + (f"; {note}" if note else "")
    if not home.is_dir():
        audit_admin(hub_state, "usreview hub remove-user", f"users/{name}", "removed", {"hub": how})
        return RemovedPerson(name, said + "; their reports and audit lines stay")
    if delete_home:
        deleted = _delete_home(hub_state, name, home, {"hub": how})
        return RemovedPerson(name, f"{said}; {deleted}; their reports and audit lines stay")
    files, size = _tree_size(home)
    detail = {"hub": how, "home": "kept", "files": files, "bytes": size}
    audit_admin(hub_state, "usreview hub remove-user", f"users/{name}", "removed", detail)
    return RemovedPerson(
        name,
        f"{said}; their reports and audit lines stay; their home {home} stays "
        f"({files} files, {size / 1e6:.1f} MB: their notebooks may hold patient data): "
        f"'usreview hub remove-user {name} --delete-home' deletes it",
    )


def _delete_home(hub_state: HubState, name: str, home: Path, detail: dict[str, Any]) -> str:
    """Delete a removed person's ``home`` (never following a link out of it); audited."""
    files, size = _tree_size(home)
    shutil.rmtree(home)  # by file descriptor: a link inside is removed, not followed
    detail = {**detail, "home": "deleted", "files": files, "bytes": size}
    audit_admin(hub_state, "usreview hub remove-user", f"users/{name}", "removed", detail)
    return f"their home {home} is deleted ({files} files, {size / 1e6:.1f} MB)"


def _tree_size(folder: Path) -> tuple[int, int]:
    """Files (links included) under ``folder`` and their bytes, never following a link."""
    files = size = 0
    for _here, _folders, names, here_fd in os.fwalk(folder, follow_symlinks=False):
        for entry in names:
            info = os.stat(entry, dir_fd=here_fd, follow_symlinks=False)
            files, size = files + 1, size + info.st_size
    return files, size


def reset_password(state: Path, name: str) -> str:
    """Give person ``name`` a new generated password and return it (audited).

    Only its hash is kept; the old password stops working at once, running hub or not.

    Raises
    ------
    AccountError
        ``name`` is not a valid name.
    HubError
        ``name`` is not a registered person.
    """
    check_name(name)
    hub_state = existing_state(state)
    accounts = Accounts(hub_state.accounts)
    password = generate_password()
    if not accounts.set_password_hash(name, hash_password(password)):
        raise _not_a_person(accounts, name)
    audit_admin(hub_state, "usreview hub reset-password", f"users/{name}/password", "reset", {})
    return password


def _not_a_person(accounts: Accounts, name: str) -> HubError:
    if name in accounts.sites():
        return HubError(
            f"{name!r} is a site, not a person: 'usreview hub site-token {name} "
            "--revoke-only' withdraws it"
        )
    return HubError(f"{name!r} is not a registered person")


def _hub_pid(state: HubState) -> int | None:
    """The pid of the JupyterHub running on ``state`` (its pid file), ``None`` if none."""
    try:  # JupyterHub writes it before it opens its database, removes it when it stops
        pid = int((state.root / "jupyterhub.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left by a killed hub
    except PermissionError:
        pass  # another user's process: alive
    return pid


def _delete_while_stopped(state: HubState, name: str) -> bool:
    """Delete user ``name`` from a stopped hub's database (tokens, servers, memberships
    with it); return whether it was there."""
    if not state.jupyterhub_db.exists():
        return False  # the hub never started: nothing to delete
    from jupyterhub import orm
    from sqlalchemy.exc import SQLAlchemyError

    try:
        sessions = orm.new_session_factory(f"sqlite:///{state.jupyterhub_db}")
        try:
            with sessions() as db:
                user = orm.User.find(db, name)
                if user is not None:
                    db.delete(user)
                    db.commit()
                return user is not None
        finally:
            sessions.kw["bind"].dispose()
    except (SQLAlchemyError, orm.DatabaseSchemaMismatch) as exc:
        raise StateError(
            f"{state.jupyterhub_db}: cannot remove {name!r} from the hub's database ({exc})"
        ) from None


def add_site(state: Path, name: str, public_key: Path) -> NewSite:
    """Register a site and its envelope public key; return its new API token.

    The token can only reach the usreview service. Needs a running hub.

    Raises
    ------
    AccountError
        If the name is invalid or taken.
    HubUnavailableError
        If the hub is not running (nothing is registered then).
    EnvelopeError
        If ``public_key`` is not a usreview public key file.
    """
    check_name(name)
    keys = load_public_keys(public_key)
    hub_state = existing_state(state)
    api = _api(hub_state)
    if api is None:
        raise HubUnavailableError(
            f"no hub is running with state {hub_state.root}: start it with "
            f"'usreview hub --state {hub_state.root}', then add the site"
        )
    accounts = Accounts(hub_state.accounts)
    copy = hub_state.sites / f"{name}.pub"
    accounts.add_site(name, copy, keys.key_id.hex())
    try:
        if copy.exists():
            copy.unlink()  # left by an earlier failed attempt; the registry said no site
        write_new_file(copy, public_key.read_bytes(), mode=0o644)
        api.ensure_user(name)
        api.add_to_group(SITE_GROUP, name)
        token = api.new_token(name, SITE_TOKEN_SCOPES, note=f"usreview site {name}")
        audit_admin(hub_state, "usreview hub add-site", f"sites/{name}", "added",
                    {"key_id": keys.key_id.hex()})  # fmt: skip
    except BaseException:
        accounts.remove_site(name)
        raise
    info = hub_state.read_run_info()
    url = info.get("site_url") or info.get("public_url")
    return NewSite(name, token, copy, hub_state.hub_pub, url.rstrip("/") if url else None)


@dataclass(frozen=True)
class RotatedSite:
    """A site's new current key; the replaced one verifies uploads until ``accepted_until``."""

    name: str
    key_id: str
    replaced_key_id: str
    accepted_until: float


def rotate_site_key(
    state: Path, name: str, public_key: Path, grace_seconds: float | None = None
) -> RotatedSite:
    """Make ``public_key`` the current key of the registered site ``name`` (audited).

    Results are sealed to it from now on; the replaced key still verifies the site's
    uploads for ``grace_seconds`` (default
    :data:`~usreview.hub.api.sitekeys.DEFAULT_GRACE_SECONDS`) and opens what is stored.
    The site's token is unchanged. Works with the hub running or stopped.

    Raises
    ------
    HubError
        ``name`` is not a registered site.
    AccountError
        An invalid name, or the key is one the site already had.
    EnvelopeError
        ``public_key`` is not a usreview public key file.
    """
    from usreview.hub.api.sitekeys import DEFAULT_GRACE_SECONDS, SiteKeyFiles

    check_name(name)
    keys = load_public_keys(public_key)
    hub_state = existing_state(state)
    if name not in Accounts(hub_state.accounts).sites():
        raise HubError(f"{name!r} is not a registered site: add it first")
    grace = DEFAULT_GRACE_SECONDS if grace_seconds is None else grace_seconds
    replaced = SiteKeyFiles(hub_state.sites).rotate(name, keys, grace)
    Accounts(hub_state.accounts).set_site_key(name, keys.key_id.hex())
    rotated = RotatedSite(
        name, keys.key_id.hex(), replaced.public.key_id.hex(), replaced.accepted_until
    )
    audit_admin(hub_state, "usreview hub add-site", f"sites/{name}/key", "rotated",
                {"key_id": rotated.key_id, "replaced_key_id": rotated.replaced_key_id,
                 "grace_seconds": grace})  # fmt: skip
    return rotated


@dataclass(frozen=True)
class RotatedHubKey:
    """The hub's new current key and the one it replaced (both as 64 hex digits)."""

    key_id: str
    replaced_key_id: str
    public_key: Path
    """``hub.pub``, now the new key's."""
    earlier_keys: int
    """How many keys the hub keeps for opening what was sealed to them."""
    revoked: int = 0
    """How many of them the sites stop trusting (``revoke``)."""


def rotate_hub_key(state: Path, *, revoke: bool = False) -> RotatedHubKey:
    """Give the hub a new envelope key (audited); see :mod:`usreview.hub.hubkeys`.

    The hub may be running: its processes take the new key at their next request or job.
    Sites adopt it by themselves; uploads sealed to the earlier keys are still taken, and
    the archive's envelopes still open. With ``revoke`` (a key believed stolen), the
    sites stop trusting every earlier key.

    Raises
    ------
    StateError
        No hub state, its keys cannot be read or written, or another rotation or a
        backup is running.
    """
    from usreview.hub import hubkeys

    hub_state = existing_state(state)
    keys, step = hubkeys.rotate_hub_key(hub_state, revoke=revoke)
    rotated = RotatedHubKey(
        keys.current.key_id.hex(), step.previous_key_id.hex(), hub_state.hub_pub,
        len(keys.previous), len(keys.revoked),
    )  # fmt: skip
    detail: dict[str, object] = {
        "key_id": rotated.key_id,
        "replaced_key_id": rotated.replaced_key_id,
    }
    if revoke:
        detail["revoked"] = sorted(key_id.hex() for key_id in keys.revoked)
    command = "usreview hub rotate-key" + (" --revoke" if revoke else "")
    audit_admin(hub_state, command, "hub/key", "rotated", detail)
    return rotated


def next_certificate(state: Path, certificate: Path | None) -> Path | None:
    """Announce ``certificate`` (PEM) to the sites as the one the hub serves next, or
    withdraw the announcement (``None``); hub running or not, audited. Returns the
    announced file (``STATE/tls-next.crt``), ``None`` once withdrawn.

    For a hub whose certificate the sites pin and that comes from elsewhere
    (``--tls-cert``): the sites fetch it (signed with the hub's key) within hours, then
    the hub can be started with it. The hub's own self-signed certificate is announced
    by itself, a month ahead (:func:`usreview.hub.tls.ensure_certificate`).

    Raises
    ------
    StateError
        No hub state, or the file cannot be written.
    InputError
        ``certificate`` cannot be read as PEM certificates.
    """
    from cryptography import x509

    from usreview.envelope.atomic import replace_file
    from usreview.errors import InputError

    hub_state = existing_state(state)
    target = hub_state.tls_next_cert
    if certificate is None:
        existed = target.exists()
        target.unlink(missing_ok=True)
        hub_state.tls_next_key.unlink(missing_ok=True)
        if existed:
            audit_admin(hub_state, "usreview hub next-certificate", "hub/next-certificate",
                        "withdrawn", {})  # fmt: skip
        return None
    try:
        text = certificate.read_text()
        found = x509.load_pem_x509_certificates(text.encode())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not PEM certificates"
        raise InputError(f"{certificate}: {why}") from None
    expires = min(c.not_valid_after_utc for c in found)
    try:
        replace_file(target, text.encode(), mode=0o644)
    except OSError as exc:
        raise StateError(f"{target}: {exc.strerror or exc}") from None
    hub_state.tls_next_key.unlink(missing_ok=True)  # a successor the hub made: replaced
    audit_admin(hub_state, "usreview hub next-certificate", "hub/next-certificate",
                "announced", {"certificates": len(found),
                              "expires": expires.isoformat(timespec="seconds")})  # fmt: skip
    return target


@dataclass(frozen=True)
class SiteOverview:
    """A registered site as an administrator sees it (``usreview hub sites``)."""

    name: str
    key_id: str
    registered: datetime
    instances: int
    studies: int
    last_received: datetime | None
    open_conflicts: int


def list_sites(state: Path) -> list[SiteOverview]:
    """Every registered site with what the archive holds of it, by name (audited)."""
    from usreview.hub.api.settings import open_archive
    from usreview.hub.audit import AuditAction, AuditLog

    hub_state = existing_state(state)
    registered = Accounts(hub_state.accounts).sites()
    with open_archive(hub_state.root) as archive:
        activity = {a.site: a for a in archive.site_activity()}
    overview = []
    for name, (key_id, created) in registered.items():
        seen = activity.get(name)
        overview.append(
            SiteOverview(
                name=name,
                key_id=key_id,
                registered=datetime.fromtimestamp(created, UTC),
                instances=seen.instances if seen else 0,
                studies=seen.studies if seen else 0,
                last_received=seen.last_received if seen else None,
                open_conflicts=seen.open_conflicts if seen else 0,
            )
        )
    AuditLog(hub_state.audit_log, hub_state.audit_key.read_bytes()).record(
        "usreview hub sites", AuditAction.READ, "sites", outcome="listed",
        detail={"count": len(overview)},
    )  # fmt: skip
    return overview


@dataclass(frozen=True)
class SiteToken:
    """A site's API tokens revoked, and its new one (shown once) unless only revoked."""

    name: str
    revoked: int
    token: str | None


def site_token(state: Path, name: str, *, revoke_only: bool = False) -> SiteToken:
    """Revoke every API token of site ``name`` and issue a new one (audited).

    For a token that leaked or a site machine replaced; ``revoke_only`` issues none (a
    site withdrawn). The service refuses the revoked tokens within its 5 s cache. The
    old tokens are revoked first, so a failure after that leaves no old token working.
    Needs a running hub.

    Raises
    ------
    AccountError
        ``name`` is not a valid name.
    HubError
        ``name`` is not a registered site.
    HubUnavailableError
        The hub is not running, or refused a request.
    """
    check_name(name)
    hub_state = existing_state(state)
    if name not in Accounts(hub_state.accounts).groups()[SITE_GROUP]:
        raise HubError(f"{name!r} is not a registered site")
    api = _api(hub_state)
    if api is None:
        raise HubUnavailableError(
            f"no hub is running with state {hub_state.root}: start it with "
            f"'usreview hub --state {hub_state.root}', then run this again"
        )
    user = f"users/{quote(name)}/tokens"
    listed = api.request("GET", user)
    tokens = listed.get("api_tokens", []) if isinstance(listed, dict) else []
    for token in tokens:
        api.request("DELETE", f"{user}/{quote(str(token['id']))}", ok=(404,))
    new = None
    if not revoke_only:
        new = api.new_token(name, SITE_TOKEN_SCOPES, note=f"usreview site {name}")
    audit_admin(hub_state, "usreview hub site-token", f"sites/{name}/token",
                "revoked" if revoke_only else "renewed", {"revoked": len(tokens)})  # fmt: skip
    return SiteToken(name, len(tokens), new)


def reviewer_sites(
    state: Path, name: str, sites: Sequence[str] | None = None, *, every: bool = False
) -> frozenset[str] | None:
    """Restrict reviewer ``name`` to ``sites``, or to none (``every``); return their sites.

    Without ``sites`` or ``every`` only shows them (``None``: every site). A change is
    audited and applies in the running service within 5 seconds.

    Raises
    ------
    HubError
        ``name`` is not a registered reviewer or administrator.
    AccountError
        A name is invalid, or ``sites`` is empty.
    """
    check_name(name)
    hub_state = existing_state(state)
    groups = Accounts(hub_state.accounts).groups()
    if name not in groups["reviewers"] and name not in groups["admins"]:
        raise HubError(f"{name!r} is not a registered reviewer")
    if sites is None and not every:
        from usreview.hub.api.settings import open_archive  # the API: slow to import

        with open_archive(hub_state.root) as archive:
            return archive.review.reviewer(name).sites
    return _restrict(hub_state, name, None if every else sites)


def _restrict(
    state: HubState,
    name: str,
    sites: Sequence[str] | None,
    actor: str = "usreview hub reviewer-sites",
) -> frozenset[str] | None:
    from usreview.hub.api.settings import open_archive

    for site in sites or ():
        check_name(site)
    if sites is not None and not sites:
        raise AccountError("give at least one site, or every site")
    with open_archive(state.root) as archive:
        reviewer = archive.review.restrict(name, sites, actor=actor)
    chosen = None if reviewer.sites is None else sorted(reviewer.sites)
    audit_admin(state, actor, f"reviewers/{name}/sites", "changed", {"sites": chosen})
    return reviewer.sites


def audit_admin(
    state: HubState, actor: str, resource: str, outcome: str, detail: dict[str, Any]
) -> None:
    """Append one ``admin`` line to the audit log: ``actor`` is the command that made the
    change (``usreview hub add-user``). Never put a password or token in ``detail``.

    Raises
    ------
    AuditError
        The audit log cannot be written.
    """
    from usreview.hub.audit import AuditAction, AuditLog

    AuditLog(state.audit_log, state.audit_key.read_bytes()).record(
        actor, AuditAction.ADMIN, resource, outcome=outcome, detail=detail
    )


def _api(state: HubState) -> HubApi | None:
    if not state.run_info.exists():
        return None
    api_url = state.read_run_info().get("api_url")
    if not isinstance(api_url, str):
        return None
    api = HubApi(api_url, state.read_admin_token(), timeout=10)
    try:
        answer = api.request("GET", "", auth=False)  # is a JupyterHub there?
    except HubUnavailableError:
        return None
    return api if isinstance(answer, dict) and "version" in answer else None

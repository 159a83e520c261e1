"""What the ``usreview hub`` commands do; :mod:`usreview.cli` only parses and prints.

- :func:`run_hub` configures and runs JupyterHub in this process until SIGINT/SIGTERM.
- :func:`add_user` registers a person and returns their generated password.
- :func:`add_site` registers a site and its envelope key, and returns its API token.

People are usable at once: their password is checked against the registry at every
login, and when the hub is running their group is set through its API (admins only
at the next start: the administration token cannot grant admin). At every start the
registry is loaded into the hub's groups again. Site tokens are minted by the
running hub (see :mod:`usreview.hub.admin` for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from usreview.envelope import load_public_keys
from usreview.envelope.atomic import write_new_file
from usreview.hub.accounts import Accounts, check_name
from usreview.hub.admin import HubApi
from usreview.hub.config import Endpoints, configure
from usreview.hub.errors import AccountError, HubUnavailableError
from usreview.hub.passwords import generate_password, hash_password
from usreview.hub.roles import PERSON_ROLES, SITE_GROUP, SITE_TOKEN_SCOPES, group_for_role
from usreview.hub.state import HubState, open_state

__all__ = ["NewPerson", "NewSite", "add_site", "add_user", "run_hub"]


@dataclass(frozen=True)
class NewPerson:
    """A registered person; ``password`` is shown once and stored only hashed."""

    name: str
    role: str
    password: str
    note: str


@dataclass(frozen=True)
class NewSite:
    """A registered site: its API token (shown once) and the hub's public key."""

    name: str
    token: str
    site_public_key: Path
    hub_public_key: Path

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
) -> Endpoints:
    """Configure JupyterHub and run it in this process until it is stopped.

    Returns the endpoints it served. Raises what :func:`~usreview.hub.config.configure`
    raises, before anything starts.
    """
    from traitlets.config import Config

    config = Config()
    endpoints = configure(config, state, ip, port, tls=tls, tls_cert=tls_cert, tls_key=tls_key)

    from jupyterhub.app import JupyterHub  # slow to import: after the checks

    class Hub(JupyterHub):  # type: ignore[misc]
        """JupyterHub configured by configure() alone."""

        def load_config_file(self, *args: object, **kwargs: object) -> None:
            """Read no jupyterhub_config.py from the working directory."""

    Hub.instance(config=config)
    Hub.launch_instance(argv=[])
    return endpoints


def add_user(state: Path, name: str, role: str) -> NewPerson:
    """Register a person with ``role``; return their generated password.

    Raises
    ------
    AccountError
        If the name is invalid or taken, or the role unknown.
    """
    check_name(name)
    if role not in PERSON_ROLES:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(PERSON_ROLES)}")
    hub_state = open_state(state)
    password = generate_password()
    Accounts(hub_state.accounts).add_person(name, role, hash_password(password))
    group = group_for_role(role)
    note = f"{name} is in group {group!r}"
    if role == "admin":
        note += "; the hub gives admin rights at its next start"
        return NewPerson(name, role, password, note)
    api = _api(hub_state)
    if api is None:
        return NewPerson(name, role, password, note + " from the hub's next start")
    try:
        api.ensure_user(name)
        api.add_to_group(group, name)
    except HubUnavailableError as exc:
        note += f" from the hub's next start (the running hub was not updated: {exc})"
    return NewPerson(name, role, password, note)


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
    hub_state = open_state(state)
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
    except BaseException:
        accounts.remove_site(name)
        raise
    return NewSite(name, token, copy, hub_state.hub_pub)


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

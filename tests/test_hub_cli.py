"""The ``usreview hub`` commands without a running hub: one line per error, secrets shown once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import usreview.hub
from tests.hub_api_support import admin_audit
from usreview.cli import main
from usreview.hub.accounts import Accounts
from usreview.hub.passwords import verify_password
from usreview.hub.proxy import PROXY_ENV


def _logs_in(state: Path, name: str, password: str) -> bool:
    """Whether the hub's authenticator lets ``name`` in with ``password``."""
    from usreview.hub.auth import UsreviewAuthenticator

    auth = UsreviewAuthenticator(accounts_db=str(state / "accounts.sqlite"))
    data = {"username": name, "password": password}
    return asyncio.run(auth.authenticate(None, data)) == name and auth.check_allowed(name)


def test_hub_exports() -> None:
    assert set(usreview.hub.__all__) == {"Endpoints", "configure"}


def test_add_user_prints_the_password_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["hub", "--state", str(state), "add-user", "rev", "--role", "reviewer"]) == 0
    out, err = capsys.readouterr()
    password = re.search(r"shown once: (\S+)", out)
    assert password, out
    assert "next start" in err
    stored = Accounts(state / "accounts.sqlite").password_hash("rev")
    assert verify_password(password.group(1), stored)
    for path in state.rglob("*"):
        if path.is_file():
            assert password.group(1).encode() not in path.read_bytes(), path


def test_add_user_twice_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["hub", "add-user", "rev", "--role", "trainee", "--state", str(tmp_path / "s")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err == "usreview: error: 'rev' already exists\n"


def test_add_site_needs_a_running_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "clinic", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state").root  # a hub that is not running
    args = ["hub", "add-site", "clinic", "--public-key", str(tmp_path / "clinic.pub")]
    assert main([*args, "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usreview: error: no hub is running") and err.count("\n") == 1
    assert Accounts(state / "accounts.sqlite").groups()["sites"] == []


def test_hub_refuses_plain_http_beyond_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROXY_ENV, "/bin/true")
    args = ["hub", "--state", str(tmp_path / "s"), "--ip", "0.0.0.0", "--no-tls"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("usreview: error: refusing to serve 0.0.0.0 without TLS")
    assert not (tmp_path / "s").exists()


def test_a_site_key_rotates_with_the_hub_stopped_and_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    from usreview.envelope import load_public_keys
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state")
    for name in ("old", "new"):
        assert main(["keys", "new", "clinic", "--dir", str(tmp_path / name)]) == 0
    old, new = (load_public_keys(tmp_path / n / "clinic.pub") for n in ("old", "new"))
    (state.sites / "clinic.pub").write_text(old.to_text())  # as 'add-site' registered it
    Accounts(state.accounts).add_site("clinic", state.sites / "clinic.pub", old.key_id.hex())
    capsys.readouterr()
    base = ["hub", "--state", str(state.root), "add-site", "clinic", "--public-key"]
    assert main([*base, str(tmp_path / "new" / "clinic.pub"), "--grace", "1d"]) == 2
    assert capsys.readouterr().err == "usreview: error: --grace goes with --rotate\n"
    args = [*base, str(tmp_path / "new" / "clinic.pub"), "--rotate", "--grace", "2h"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert new.key_id.hex()[:16] in out and old.key_id.hex()[:16] in out
    assert load_public_keys(state.sites / "clinic.pub").key_id == new.key_id
    history = json.loads((state.sites / "clinic.previous.json").read_text())["keys"]
    assert history[0]["key_id"] == old.key_id.hex()
    assert history[0]["accepted_until"] - history[0]["replaced_at"] == 2 * 3600
    assert main(args) == 2  # the same key again
    err = capsys.readouterr().err
    assert "current or an earlier key" in err and err.count("\n") == 1
    assert main([*base, str(tmp_path / "old" / "clinic.pub"), "--rotate"]) == 2  # an old key
    capsys.readouterr()
    unknown = ["hub", "--state", str(state.root), "add-site", "other", "--rotate"]
    assert main([*unknown, "--public-key", str(tmp_path / "old" / "clinic.pub")]) == 1
    assert "'other' is not a registered site" in capsys.readouterr().err
    lines = [json.loads(x) for x in state.audit_log.read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["rotated"]
    assert lines[0]["detail"]["grace_seconds"] == 2 * 3600


#: An administration command naming what does not exist, and what it says.
NOT_FOUND = [
    (["site-token", "nowhere"], "'nowhere' is not a registered site"),
    (["site-token", "nowhere", "--revoke-only"], "'nowhere' is not a registered site"),
    (["add-site", "nowhere", "--rotate", "--public-key", "KEY"], "'nowhere' is not a registered"),
    (["reviewer-sites", "nobody"], "'nobody' is not a registered reviewer"),
    (["reviewer-sites", "nobody", "--all"], "'nobody' is not a registered reviewer"),
    (["remove-user", "nobody"], "'nobody' is not a registered person"),
    (["reset-password", "nobody"], "'nobody' is not a registered person"),
    (["jobs", "--retry", "7"], "no job 7"),
    (["jobs", "--reprocess", "7"], "no job 7"),
    (["conflicts", "--export", "7", "--to", "out/conflicts"], "no conflict 7"),
    (["conflicts", "--resolve", "7", "--note", "none"], "no conflict 7"),
]


@pytest.mark.parametrize(("action", "says"), NOT_FOUND)
def test_what_does_not_exist_is_a_failure_exit_1(
    action: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No such site, reviewer, job or conflict: exit status 1 and one line, as any failure
    (2 is for bad input: an invalid name)."""
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state").root
    assert main(["keys", "new", "nowhere", "--dir", str(tmp_path)]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    action = [str(tmp_path / "nowhere.pub") if a == "KEY" else a for a in action]
    assert main(["hub", *action, "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usreview: error: ") and err.count("\n") == 1, err
    assert says in err, err
    assert not (tmp_path / "out").exists()  # an export of nothing makes no folder
    named = ("site-token", "add-site", "reviewer-sites", "remove-user", "reset-password")
    if action[0] in named:  # an invalid name: bad input
        assert main(["hub", action[0], "No.Such", *action[2:], "--state", str(state)]) == 2
        assert "invalid name 'No.Such'" in capsys.readouterr().err


#: The administration commands that need an existing hub's state.
ADMIN_ACTIONS = [
    ["conflicts"],
    ["sites"],
    ["site-token", "clinic"],
    ["jobs"],
    ["audit", "--verify"],
    ["reviewer-sites", "rev"],
    ["remove-user", "rev"],
    ["reset-password", "rev"],
    ["worker"],
]


@pytest.mark.parametrize("action", ADMIN_ACTIONS)
def test_administration_refuses_a_state_that_is_not_a_hubs(
    action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "mistyped"
    assert main(["hub", *action, "--state", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"usreview: error: no hub state in {missing}") and err.count("\n") == 1
    assert not missing.exists()  # no new hub made by accident


@pytest.mark.parametrize("lost", ["at-rest.key", "audit.key"])
def test_a_lost_key_that_stored_data_depends_on_is_never_made_again(
    lost: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state")
    (state.root / lost).unlink()
    assert main(["hub", "sites", "--state", str(state.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"usreview: error: {state.root / lost} is missing: restore it")
    assert err.count("\n") == 1
    assert not (state.root / lost).exists()


def test_the_worker_refuses_seconds_that_are_not_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state")
    for option in ("--lease", "--poll", "--task-timeout"):
        for value in ("nan", "inf", "0"):
            args = ["hub", "worker", "--state", str(state.root), option, value]
            assert main(args) == 2, (option, value)
            assert "--lease, --poll and --task-timeout > 0" in capsys.readouterr().err


def test_options_that_would_be_ignored_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.hub.state import open_state

    state = str(open_state(tmp_path / "state").root)
    for both in (["--failed", "--outdated"], ["--failed", "--backfill"]):
        with pytest.raises(SystemExit) as usage:
            main(["hub", "jobs", *both, "--state", state])
        assert usage.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert main(["hub", "conflicts", "--to", str(tmp_path), "--state", state]) == 2
    assert capsys.readouterr().err == "usreview: error: --to goes with --export ID\n"


def test_add_user_says_when_it_creates_a_hub_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("USREVIEW_STATE", raising=False)
    monkeypatch.chdir(tmp_path)  # no --state and no ./state: ./state is made
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    for state, given in ((Path.cwd() / "state", []), (empty, ["--state", str(empty)])):
        assert main(["hub", "add-user", "rev", "--role", "reviewer", *given]) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"created a new hub state in {state}; if you meant"), err
        assert (state / "hub.key").is_file()
        assert main(["hub", "add-user", "tra", "--role", "trainee", *given]) == 0
        assert "created" not in capsys.readouterr().err  # the same hub: nothing to say


def test_add_user_refuses_a_folder_that_is_not_a_hubs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "clinic"
    (site / "spool").mkdir(mode=0o700, parents=True)
    site.chmod(0o700)
    (site / "site.toml").write_text("[hub]\n")
    assert main(["hub", "add-user", "rev", "--role", "reviewer", "--state", str(site)]) == 2
    assert capsys.readouterr().err == (
        f"usreview: error: {site} is not a hub state (it holds site.toml, spool): give the "
        "hub's --state (or set $USREVIEW_STATE), or a new or empty folder for a new hub\n"
    )
    assert sorted(p.name for p in site.iterdir()) == ["site.toml", "spool"]  # no keys made


@pytest.mark.parametrize(
    "action",
    [
        *ADMIN_ACTIONS,
        ["add-user", "rev", "--role", "reviewer"],
        ["add-site", "clinic", "--rotate", "--public-key", "KEY"],
    ],
)
def test_every_command_says_a_hubs_key_is_lost(
    action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.envelope import generate_keys, write_key_pair
    from usreview.hub.state import open_state

    site_key = write_key_pair(generate_keys("clinic"), tmp_path / "keys").with_suffix(".pub")
    action = [str(site_key) if a == "KEY" else a for a in action]
    state = open_state(tmp_path / "state")
    state.hub_key.unlink()
    assert main(["hub", *action, "--state", str(state.root)]) == 1
    assert capsys.readouterr().err == (
        f"usreview: error: {state.hub_pub} exists without {state.hub_key}: restore both\n"
    )
    state.hub_pub.unlink()  # both lost: what the hub made after them is still there
    assert main(["hub", *action, "--state", str(state.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"usreview: error: {state.hub_key} is missing from a hub's state")
    assert err.endswith("restore hub.key and hub.pub from the hub's backup\n")
    assert err.count("\n") == 1
    assert not state.hub_key.exists() and not state.hub_pub.exists()  # no new hub made


def test_add_site_help_says_when_a_running_hub_is_needed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["hub", "add-site", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Registering needs a running hub (it issues the token)" in text
    assert "--rotate works with the hub running or stopped" in text


def test_options_of_running_the_hub_are_refused_with_an_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.hub.state import open_state

    state = str(open_state(tmp_path / "state").root)
    args = ["hub", "--ip", "nonsense", "--no-tls", "--tls-cert", "x", "sites", "--state", state]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "usreview: error: --ip, --tls-cert and --no-tls are options of running the hub, "
        "not of 'hub sites': drop them\n"
    )
    assert main(["hub", "--state", state, "--site-port", "8443", "jobs"]) == 2
    assert capsys.readouterr().err == (
        "usreview: error: --site-port is an option of running the hub, not of 'hub jobs': drop it\n"
    )
    for option in ("--port", "--site-port"):
        with pytest.raises(SystemExit) as usage:
            main(["hub", option, "99999", "sites", "--state", state])
        assert usage.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: invalid port '99999': use 1 to 65535" in err


def test_the_hub_checks_its_address_and_certificate_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.hub.tls import ensure_certificate

    monkeypatch.setenv(PROXY_ENV, str(tmp_path / "no-proxy"))  # past the checks: refused
    cert, key, _ = ensure_certificate(tmp_path / "a.crt", tmp_path / "a.key", ["127.0.0.1"])
    other_cert, other_key, _ = ensure_certificate(tmp_path / "b.crt", tmp_path / "b.key", [])
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    missing = tmp_path / "missing.pem"
    state = tmp_path / "state"
    cases = [
        (["--ip", "not an ip!"], "invalid address 'not an ip!' (--ip or $USREVIEW_HUB_IP)"),
        (["--tls-cert", missing, "--tls-key", key], f"--tls-cert {missing}: No such file"),
        (["--tls-cert", cert, "--tls-key", missing], f"--tls-key {missing}: No such file"),
        (["--tls-cert", junk, "--tls-key", key], f"--tls-cert {junk} is not a PEM certificate"),
        (["--tls-cert", cert, "--tls-key", cert], f"--tls-key {cert} is not an unencrypted PEM"),
        (["--tls-cert", cert, "--tls-key", other_key], f"--tls-key {other_key} is not the key"),
        (["--tls-cert", cert, "--tls-key", key, "--no-tls"], "--no-tls serves no certificate"),
    ]
    for options, refusal in cases:
        assert main(["hub", "--state", str(state), *map(str, options)]) == 1, options
        err = capsys.readouterr().err
        assert err.startswith(f"usreview: error: {refusal}") and err.count("\n") == 1, err
        assert not state.exists()
    assert other_cert.exists()


def test_add_user_is_audited_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    shown = []
    for name, role in (("rev", "reviewer"), ("ada", "admin")):
        assert main(["hub", "add-user", name, "--role", role, "--state", str(state)]) == 0
        shown.append(re.findall(r"shown once: (\S+)", capsys.readouterr().out)[0])
    assert main(["hub", "add-user", "bob", "--role", "reviewer", "--sites", "north",
                 "--state", str(state)]) == 0  # fmt: skip
    shown.append(re.findall(r"shown once: (\S+)", capsys.readouterr().out)[0])
    assert admin_audit(state) == [
        ("usreview hub add-user", "users/rev", "added", {"role": "reviewer"}),
        ("usreview hub add-user", "users/ada", "added", {"role": "admin"}),
        ("usreview hub add-user", "reviewers/bob/sites", "changed", {"sites": ["north"]}),
        ("usreview hub add-user", "users/bob", "added", {"role": "reviewer"}),
    ]
    assert main(["hub", "audit", "--verify", "--state", str(state)]) == 0
    assert "4 lines, chain intact" in capsys.readouterr().out
    log = (state / "audit.log").read_text()
    assert not [password for password in shown if password in log]


def test_reset_password_replaces_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["hub", "add-user", "rev", "--role", "reviewer", "--state", str(state)]) == 0
    old = re.findall(r"shown once: (\S+)", capsys.readouterr().out)[0]
    assert _logs_in(state, "rev", old)
    assert main(["hub", "reset-password", "rev", "--state", str(state)]) == 0
    out, err = capsys.readouterr()
    new = re.findall(r"new password for rev, shown once: (\S+)", out)[0]
    assert err == "the old password no longer works\n"
    assert not _logs_in(state, "rev", old)
    assert _logs_in(state, "rev", new)
    assert verify_password(new, Accounts(state / "accounts.sqlite").password_hash("rev"))
    assert admin_audit(state)[-1] == (
        "usreview hub reset-password",
        "users/rev/password",
        "reset",
        {},
    )
    for path in state.rglob("*"):
        if path.is_file():
            assert new.encode() not in path.read_bytes(), path
    for name, says in (("nobody", "'nobody' is not a registered person"),
                       ("clinic", "'clinic' is a site, not a person")):  # fmt: skip
        if name == "clinic":
            Accounts(state / "accounts.sqlite").add_site("clinic", state / "c.pub", "00")
        assert main(["hub", "reset-password", name, "--state", str(state)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"usreview: error: {says}") and err.count("\n") == 1, err
    assert main(["hub", "reset-password", "No.Such", "--state", str(state)]) == 2
    assert len(admin_audit(state)) == 2  # nothing for a refusal
    assert _logs_in(state, "rev", new)


_SEED_HUB_DATABASE = """
import sys
from jupyterhub import orm

sessions = orm.new_session_factory(f"sqlite:///{sys.argv[1]}")
with sessions() as db:
    group = orm.Group(name="reviewers")
    db.add_all([group, orm.OAuthClient(identifier="jupyterhub")])  # as the hub makes them
    for name in sys.argv[2:]:
        user = orm.User(name=name)
        db.add(user)
        group.users.append(user)
        db.commit()
        user.new_api_token(note="theirs")
"""


def _hub_database_with(state: Path, *names: str) -> None:
    """JupyterHub's database of a stopped hub that knew ``names``, each with an API token.

    Made in another process: creating it runs JupyterHub's alembic, which sets up logging.
    """
    database = str(state / "jupyterhub.sqlite")
    command = [sys.executable, "-c", _SEED_HUB_DATABASE, database, *names]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _hub_users(state: Path) -> dict[str, list[str]]:
    """Each user of JupyterHub's database and the notes of their API tokens."""
    from jupyterhub import orm

    sessions = orm.new_session_factory(f"sqlite:///{state / 'jupyterhub.sqlite'}")
    with sessions() as db:
        found = {u.name: [t.note for t in u.api_tokens] for u in db.query(orm.User)}
        assert [u.name for u in orm.Group.find(db, "reviewers").users] == sorted(found)
    sessions.kw["bind"].dispose()
    return found


def test_remove_user_with_the_hub_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The person cannot log in, and the hub's database forgets them and their tokens."""
    state = tmp_path / "state"
    passwords = {}
    for name in ("rev", "stay"):
        assert main(["hub", "add-user", name, "--role", "reviewer", "--state", str(state)]) == 0
        passwords[name] = re.findall(r"shown once: (\S+)", capsys.readouterr().out)[0]
    _hub_database_with(state, "rev", "stay")
    (state / "jupyterhub.pid").write_text(str(os.getpid()))  # a hub that does not answer yet
    assert main(["hub", "remove-user", "rev", "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert f"the hub (pid {os.getpid()}) runs but does not answer" in err, err
    assert err.count("\n") == 1
    assert _logs_in(state, "rev", passwords["rev"])  # nothing changed
    (state / "jupyterhub.pid").unlink()  # stopped

    assert main(["hub", "remove-user", "rev", "--state", str(state)]) == 0
    assert capsys.readouterr().out == (
        "rev can no longer log in; deleted from the stopped hub's database with their API "
        "tokens; their reports and audit lines stay\n"
    )
    assert not _logs_in(state, "rev", passwords["rev"])
    assert not verify_password(
        passwords["rev"], Accounts(state / "accounts.sqlite").password_hash("rev")
    )
    assert _logs_in(state, "stay", passwords["stay"])
    assert _hub_users(state) == {"stay": ["theirs"]}
    assert admin_audit(state)[-1] == (
        "usreview hub remove-user",
        "users/rev",
        "removed",
        {"hub": "stopped"},
    )
    assert main(["hub", "remove-user", "rev", "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err == "usreview: error: 'rev' is not a registered person\n"
    assert main(["hub", "remove-user", "No.Such", "--state", str(state)]) == 2
    assert "invalid name 'No.Such'" in capsys.readouterr().err
    assert len(admin_audit(state)) == 3  # two added, one removed


def test_a_removed_persons_home_stays_until_deleted_and_links_are_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    for name in ("rev", "sci"):
        assert main(["hub", "add-user", name, "--role", "reviewer", "--state", str(state)]) == 0
    capsys.readouterr()
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not theirs")
    homes = {}
    for name in ("rev", "sci"):  # as their servers left them
        home = homes[name] = state / "users" / name
        (home / "usreview").mkdir(parents=True)
        (home / "usreview" / "notes.ipynb").write_bytes(b"x" * 1500)
        (home / "study.png").write_bytes(b"y" * 500)
        (home / "link").symlink_to(outside)

    assert main(["hub", "remove-user", "rev", "--state", str(state)]) == 0
    said = capsys.readouterr().out
    assert said == (
        f"rev can no longer log in; their reports and audit lines stay; their home "
        f"{homes['rev']} stays (3 files, 0.0 MB: their notebooks may hold patient data): "
        "'usreview hub remove-user rev --delete-home' deletes it\n"
    )
    assert (homes["rev"] / "usreview" / "notes.ipynb").exists()
    assert admin_audit(state)[-1][2:] == (
        "removed",
        {"hub": "stopped", "home": "kept", "files": 3, "bytes": 2000 + len(str(outside))},
    )
    # Removed before: --delete-home deletes what they left.
    assert main(["hub", "remove-user", "rev", "--delete-home", "--state", str(state)]) == 0
    assert capsys.readouterr().out == f"their home {homes['rev']} is deleted (3 files, 0.0 MB)\n"
    assert not homes["rev"].exists() and outside.read_text() == "not theirs"
    assert admin_audit(state)[-1][3]["home"] == "deleted"
    # Removed with their home at once.
    assert main(["hub", "remove-user", "sci", "--delete-home", "--state", str(state)]) == 0
    assert capsys.readouterr().out == (
        f"sci can no longer log in; their home {homes['sci']} is deleted (3 files, 0.0 MB); "
        "their reports and audit lines stay\n"
    )
    assert not homes["sci"].exists() and outside.exists()
    assert admin_audit(state)[-1] == (
        "usreview hub remove-user",
        "users/sci",
        "removed",
        {"hub": "stopped", "home": "deleted", "files": 3, "bytes": 2000 + len(str(outside))},
    )
    # Nothing left: the name is unknown again.
    assert main(["hub", "remove-user", "sci", "--delete-home", "--state", str(state)]) == 1
    assert capsys.readouterr().err == "usreview: error: 'sci' is not a registered person\n"
    # A home that is a link (made by hand) is not followed: refused, nothing deleted.
    (state / "users" / "sci").symlink_to(tmp_path, target_is_directory=True)
    assert main(["hub", "remove-user", "sci", "--delete-home", "--state", str(state)]) == 1
    assert "is a link, not a home" in capsys.readouterr().err
    assert outside.exists()


def test_remove_user_before_the_hubs_first_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["hub", "add-user", "rev", "--role", "admin", "--state", str(state)]) == 0
    password = re.findall(r"shown once: (\S+)", capsys.readouterr().out)[0]
    assert main(["hub", "remove-user", "rev", "--state", str(state)]) == 0
    assert capsys.readouterr().out.startswith("rev can no longer log in; their reports")
    assert not _logs_in(state, "rev", password)
    assert not (state / "jupyterhub.sqlite").exists()
    assert Accounts(state / "accounts.sqlite").groups()["admins"] == []


def test_audit_verify_against_a_backup_finds_lines_cut_from_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, dest = tmp_path / "state", tmp_path / "backup"
    assert main(["hub", "add-user", "rev", "--role", "reviewer", "--state", str(state)]) == 0
    assert main(["hub", "backup", str(dest), "--state", str(state)]) == 0  # 2 lines
    assert main(["hub", "add-user", "ann", "--role", "reviewer", "--state", str(state)]) == 0
    capsys.readouterr()
    log = state / "audit.log"
    verify = ["hub", "audit", "--verify", "--state", str(state)]
    assert main([*verify, "--against", str(dest)]) == 0
    assert capsys.readouterr().out == (
        f"audit log {log}: 3 lines, chain intact, extends {dest / 'audit.log'} (its 2 lines)\n"
    )
    # Cut the last two lines (the backup's own and the one after): the chain still holds.
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:1]))
    assert main(verify) == 0
    assert capsys.readouterr().out == f"audit log {log}: 1 lines, chain intact\n"
    assert main([*verify, "--against", str(dest / "audit.log")]) == 1
    assert capsys.readouterr().err == (
        f"usreview: error: audit log {log} does not verify at line 2: the log ends at line 1 "
        "but the earlier copy holds 2: lines were cut from its end (1 lines before it hold)\n"
    )
    # Rewritten from line 2 on (another backup line, as a restore of another copy would):
    # the chain holds, but line 2 is not the copy's.
    assert main(["hub", "add-user", "bob", "--role", "reviewer", "--state", str(state)]) == 0
    capsys.readouterr()
    assert main([*verify, "--against", str(dest)]) == 1
    assert "at line 2: not the line the earlier copy ends with" in capsys.readouterr().err
    assert main(["hub", "audit", "--tail", "1", "--against", str(dest), "--state", str(state)]) == 2
    assert "--against is checked by --verify" in capsys.readouterr().err
    (tmp_path / "empty.log").write_bytes(b"")
    assert main([*verify, "--against", str(tmp_path / "empty.log")]) == 1
    assert "does not end with an audit line" in capsys.readouterr().err


def test_hub_backup_copies_the_state_and_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, dest = tmp_path / "state", tmp_path / "backups" / "monday"
    assert main(["hub", "add-user", "rev", "--role", "reviewer", "--state", str(state)]) == 0
    capsys.readouterr()
    assert main(["hub", "backup", str(dest), "--state", str(state)]) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"backed up {state} to {dest}: ") and said.err == ""
    assert dest.stat().st_mode & 0o777 == 0o700
    backed_up = [line for line in (dest / "audit.log").read_text().splitlines() if line]
    assert '"outcome":"backup"' in backed_up[-1]  # the copy holds its own line
    assert main(["hub", "audit", "--verify", "--state", str(dest)]) == 0
    capsys.readouterr()
    assert main(["hub", "backup", str(dest), "--state", str(state)]) == 1
    assert capsys.readouterr().err == (
        f"usreview: error: {dest} exists: give a new folder for the backup\n"
    )

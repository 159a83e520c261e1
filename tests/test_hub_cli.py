"""The ``usreview hub`` commands without a running hub: one line per error, secrets shown once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import usreview.hub
from usreview.cli import main
from usreview.hub.accounts import Accounts
from usreview.hub.passwords import verify_password
from usreview.hub.proxy import PROXY_ENV


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
    import json

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
    assert main([*unknown, "--public-key", str(tmp_path / "old" / "clinic.pub")]) == 2
    assert "has no key to rotate" in capsys.readouterr().err
    lines = [json.loads(x) for x in state.audit_log.read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["rotated"]
    assert lines[0]["detail"]["grace_seconds"] == 2 * 3600


@pytest.mark.parametrize(
    "action",
    [
        ["conflicts"],
        ["sites"],
        ["site-token", "clinic"],
        ["jobs"],
        ["audit", "--verify"],
        ["reviewer-sites", "rev"],
        ["worker"],
    ],
)
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

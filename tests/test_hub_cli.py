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
    state = tmp_path / "state"
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

"""Each person's server under an account of their own: uids, homes, shipping, checks.

The end-to-end check (a kernel of a reviewer's real server reads nothing of the hub) is
in ``tests/test_review_dashboards.py``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from usreview.hub.accounts import UID_BASE, Accounts
from usreview.hub.errors import AccountError, HubConfigError, HubError, StateError
from usreview.hub.spawner import check_runnable, prepare_home, ship_as, unreachable
from usreview.hub.state import open_state, open_to_servers

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can change accounts")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_each_person_keeps_a_uid_of_their_own(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "accounts.sqlite")
    alice, bob = accounts.system_uid("alice"), accounts.system_uid("bob")
    assert alice != bob
    assert UID_BASE < alice < 2**31 and UID_BASE < bob < 2**31
    assert bob == alice + 1  # one block per hub
    again = Accounts(tmp_path / "accounts.sqlite")  # another process, a restart
    assert (again.system_uid("bob"), again.system_uid("alice")) == (bob, alice)
    assert again.system_uid("carol") == bob + 1  # never another's
    with pytest.raises(AccountError):
        accounts.system_uid("../etc")


@as_root
def test_a_home_is_made_for_its_person_alone(tmp_path: Path) -> None:
    uid = Accounts(tmp_path / "accounts.sqlite").system_uid("alice")
    home = tmp_path / "state" / "users" / "alice"
    prepare_home(home, uid)
    info = home.stat()
    assert (info.st_uid, info.st_gid, _mode(home)) == (uid, uid, 0o700)
    homes = home.parent.stat()
    assert (homes.st_uid, _mode(home.parent)) == (0, 0o711)  # only root adds or renames


@as_root
def test_a_home_of_the_hubs_own_user_is_handed_over_without_following_links(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "hub.key"
    secret.write_text("secret")
    secret.chmod(0o600)
    home = tmp_path / "users" / "alice"
    (home / "usreview").mkdir(parents=True)
    (home / "usreview" / "mine.ipynb").write_text("{}")
    (home / "link").symlink_to(secret)
    (home / "folder-link").symlink_to(tmp_path)

    prepare_home(home, 1 << 25)

    for path in (home, home / "usreview", home / "usreview" / "mine.ipynb", home / "link"):
        assert os.lstat(path).st_uid == 1 << 25, path
    assert secret.stat().st_uid == 0 and tmp_path.stat().st_uid == 0  # links not followed


@as_root
def test_a_file_in_place_of_a_home_is_refused(tmp_path: Path) -> None:
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "alice").symlink_to(tmp_path)
    with pytest.raises(HubError, match="not a folder"):
        prepare_home(tmp_path / "users" / "alice", 1 << 25)
    assert tmp_path.stat().st_uid == 0


@as_root
def test_dashboards_are_copied_by_the_person_and_cannot_be_made_to_write_elsewhere(
    tmp_path: Path,
) -> None:
    source = tmp_path / "notebooks"
    source.mkdir()
    (source / "worklist.ipynb").write_text('{"v": 1}')
    secret = tmp_path / "hub.key"
    secret.write_text("secret")
    secret.chmod(0o600)
    home = tmp_path / "users" / "alice"
    uid = 1 << 25
    prepare_home(home, uid)
    target = home / "usreview"
    os.makedirs(target)
    os.chown(target, uid, uid)
    (target / "worklist.ipynb").symlink_to(secret)  # as she could plant it
    os.chown(target / "worklist.ipynb", uid, uid, follow_symlinks=False)

    asyncio.run(ship_as(uid, source, target))

    assert secret.read_text() == "secret"
    assert (target / "worklist.ipynb").read_text() == '{"v": 1}'
    assert (target / "worklist.ipynb").stat().st_uid == uid
    assert _mode(target / "worklist.ipynb") & 0o077 == 0


@as_root
def test_a_copy_the_person_cannot_make_fails_with_its_reason(tmp_path: Path) -> None:
    source = tmp_path / "private"
    source.mkdir(mode=0o700)
    source.chmod(0o700)
    (source / "worklist.ipynb").write_text("{}")
    home = tmp_path / "users" / "alice"
    prepare_home(home, 1 << 25)
    with pytest.raises(HubError, match=r"could not copy the dashboards.*Permission"):
        asyncio.run(ship_as(1 << 25, source, home / "usreview"))


def test_a_folder_others_cannot_pass_is_named(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert unreachable(private / "state" / "users") == private
    assert unreachable(tmp_path / "elsewhere") is None
    with pytest.raises(HubConfigError, match=f"cannot pass {private} \\(mode 0700\\)"):
        check_runnable(private / "state")
    check_runnable(tmp_path / "state")  # this Python, its package and tmp_path: passable


def test_the_state_opens_a_path_to_the_homes_and_nothing_else(tmp_path: Path) -> None:
    state = open_state(tmp_path / "state")
    (state.root / "jupyterhub.sqlite").write_text("")
    (state.root / "jupyterhub.sqlite").chmod(0o644)
    (state.root / "archive").mkdir(mode=0o755)
    (state.root / "archive").chmod(0o755)

    open_to_servers(state)

    assert _mode(state.root) == _mode(state.homes) == 0o711
    assert _mode(state.root / "jupyterhub.sqlite") == 0o600
    assert _mode(state.root / "archive") == 0o700
    open_state(state.root)  # a state passable by others is still the hub's
    state.root.chmod(0o751)
    with pytest.raises(StateError, match="chmod 700"):
        open_state(state.root)

"""Each person's single-user server under a system account of their own.

When the hub runs as root, :class:`PersonalSpawner` starts each reviewer's, trainee's
and scientist's server (and so every kernel they run) under a uid and gid of that
person's own, allocated once by the accounts registry
(:meth:`~usreview.hub.accounts.Accounts.system_uid`) and without supplementary groups.
Such an account needs no entry in ``/etc/passwd``: the hub makes none. It owns its home,
``STATE/users/NAME`` (mode 0700), and can read nothing else of the state directory: the
directory and ``users/`` are 0711 (passed through, not listed) and every other entry
allows nothing to others (:func:`~usreview.hub.state.open_to_servers`). So a kernel
reaches the archive only through the usreview service, with the person's own token,
checked and audited like any other request, and never the hub's keys, JupyterHub's
database or another person's notebooks.

For that, each folder above the homes and the Python environment must be passable by
others; :func:`check_runnable` says which one is not when the hub starts. Run as another
user, the hub cannot change accounts: every server then runs as the hub's own user, as
JupyterHub's ``SimpleLocalProcessSpawner`` does; a deployment with patient data runs
the hub as root or uses a spawner that isolates people (see :mod:`usreview.hub.config`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode

from usreview.hub.accounts import Accounts
from usreview.hub.dashboards import DASHBOARD_FOLDER, notebooks_dir, ship_dashboards
from usreview.hub.errors import HubConfigError, HubError

__all__ = [
    "PersonalSpawner",
    "check_runnable",
    "isolates_people",
    "prepare_home",
    "unreachable",
]

_UMASK: Final = 0o077
_SHIP_TIMEOUT: Final = 60.0


def isolates_people() -> bool:
    """Whether servers run under accounts of their own: only root can change accounts."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unreachable(path: Path) -> Path | None:
    """The first folder from ``/`` down to ``path`` that others cannot pass, or ``None``."""
    path = Path(path).absolute()
    for folder in (*reversed(path.parents), path):
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            return None  # made later, by the hub, with the mode it needs
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return folder
    return None


def check_runnable(state: Path, environment: Iterable[Path] = ()) -> None:
    """Check that a person's account can run this Python and pass to the ``state`` folder.

    The state directory itself is made passable by
    :func:`~usreview.hub.state.open_to_servers`; the folders above it must be already.
    ``environment`` adds paths the servers read (the dashboards' folder); this Python's
    executable, prefixes and the usreview package are always checked.

    Raises
    ------
    HubConfigError
        Naming the first folder others cannot pass, and what to do.
    """
    package = Path(__file__).resolve().parents[1]
    needed = [
        Path(os.path.realpath(sys.executable)).parent,
        Path(sys.base_prefix),
        Path(sys.prefix),
        package,
        *environment,
    ]
    for path in needed:
        closed = unreachable(path)
        if closed is not None:
            raise HubConfigError(
                f"each person's server runs under a system account of its own, which "
                f"cannot pass {closed} (mode {stat.S_IMODE(closed.stat().st_mode):04o}) to "
                f"reach {path}: make the virtual environment again with a Python outside "
                f"private folders ('rm -rf .venv && make setup' uses /usr/bin/python3) and "
                f"keep the project where others may pass"
            )
    closed = unreachable(Path(state).absolute().parent)
    if closed is not None:
        raise HubConfigError(
            f"each person's server runs under a system account of its own, which cannot "
            f"pass {closed} (mode {stat.S_IMODE(closed.stat().st_mode):04o}) to reach its "
            f"home in {state}: run 'chmod o+x {closed}' or choose a --state under folders "
            f"others may pass (the state directory itself stays unreadable to them)"
        )


def prepare_home(home: Path, uid: int) -> None:
    """Make ``home`` a folder of ``uid``'s own (mode 0700) in a folder only root can change.

    A home another account owned (the hub's, before people had accounts of their own) is
    handed over whole, without following any link in it.

    Raises
    ------
    HubError
        If ``home`` exists and is not a folder.
    """
    homes = home.parent
    homes.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(homes, 0o711)  # root's: nobody else can add, rename or replace a home
    try:
        os.mkdir(home, 0o700)
        os.chown(home, uid, uid)
    except FileExistsError:
        pass
    info = os.lstat(home)
    if not stat.S_ISDIR(info.st_mode):
        raise HubError(f"{home} is not a folder: move it aside to give {home.name} a home")
    if info.st_uid != uid or info.st_gid != uid:
        _hand_over(home, uid)
    os.chmod(home, 0o700)  # a folder (checked above) in a folder only root changes


def _hand_over(home: Path, uid: int) -> None:
    """Give ``home`` and everything in it to ``uid``, never following a link."""
    for _folder, folders, files, folder_fd in os.fwalk(home, follow_symlinks=False):
        for name in (*folders, *files):
            os.chown(name, uid, uid, dir_fd=folder_fd, follow_symlinks=False)
    os.chown(home, uid, uid, follow_symlinks=False)


async def ship_as(uid: int, source: Path, target: Path) -> None:
    """Run :func:`~usreview.hub.dashboards.ship_dashboards` under ``uid``.

    Raises
    ------
    HubError
        If the copy failed; the message is its last line of error.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "usreview.hub.dashboards",
        str(source),
        str(target),
        user=uid,
        group=uid,
        extra_groups=[],
        umask=_UMASK,
        cwd=str(target.parent),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(target.parent)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, errors = await asyncio.wait_for(process.communicate(), _SHIP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HubError(
            f"copying the dashboards into {target} took over {_SHIP_TIMEOUT:.0f} s"
        ) from None
    if process.returncode:
        lines = errors.decode(errors="replace").strip().splitlines() or ["no message"]
        raise HubError(f"could not copy the dashboards into {target}: {lines[-1]}")


class PersonalSpawner(SimpleLocalProcessSpawner):  # type: ignore[misc]
    """JupyterHub's local-process spawner, with a home and (as root) an account per person.

    Its home is ``home_dir_template`` (``STATE/users/{username}``); before each start it
    receives the dashboards (:func:`~usreview.hub.dashboards.ship_dashboards`).
    """

    accounts_db = Unicode(
        "",
        config=True,
        help="The accounts registry (accounts.sqlite) that gives each person a system uid.",
    )

    async def start(self) -> Any:
        home = Path(self.home_dir)
        target = home / DASHBOARD_FOLDER
        if isolates_people() and self.accounts_db:
            uid = Accounts(Path(self.accounts_db)).system_uid(self.user.name)
            prepare_home(home, uid)
            await ship_as(uid, notebooks_dir(), target)
            self.popen_kwargs = {
                **self.popen_kwargs,  # type: ignore[has-type]
                "user": uid,
                "group": uid,
                "extra_groups": [],
                "umask": _UMASK,
            }
        else:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            home.chmod(0o700)  # each person's files are theirs alone
            ship_dashboards(notebooks_dir(), target)
        return await super().start()

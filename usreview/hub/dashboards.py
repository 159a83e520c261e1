"""The single-user servers of reviewers, trainees and scientists, with their dashboards.

Each person's server is a JupyterHub single-user Jupyter server with Voila. Before it
starts, :func:`prepare_server` (JupyterHub's ``pre_spawn_hook``) sets where the person
lands after logging in: reviewers on the worklist, trainees on their teaching cases
(``teaching.ipynb``), scientists on JupyterLab with the case library's starting notebook
(``research.ipynb``, :mod:`usreview.review.research`), the others on JupyterLab; the
servers of those who land on the worklist keep a warm kernel for it
(:mod:`usreview.hub.kernel_pool`, :data:`WARM_KERNELS_ARG`). The spawner
(:mod:`usreview.hub.spawner`) then copies the dashboards (the repository's
``notebooks/``, or ``$USREVIEW_NOTEBOOKS``) into ``HOME/usreview/`` with
:func:`ship_dashboards`, replacing the ones shipped before (notebooks a person saved
there under another name stay). The server's token (``$JUPYTERHUB_API_TOKEN``, which
the Voila kernels inherit) carries :data:`SERVER_TOKEN_SCOPES` — of which JupyterHub
grants only those the person holds — so the dashboards call the usreview service as that
person: the service checks and audits every read and write. The service's loopback URL
is ``$USREVIEW_SERVICE_URL``.

Terminals are off. Kernels still run code as the server's system account: one of the
person's own when the hub runs as root (:mod:`usreview.hub.spawner`), which can read
nothing of the hub's state but its own home.

``python -m usreview.hub.dashboards SOURCE TARGET`` runs :func:`ship_dashboards`: the
spawner runs it under the person's account, so that a link the person put in their
home cannot make the hub write elsewhere.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Final

from usreview.hub.roles import CUSTOM_SCOPES, SERVICE

__all__ = [
    "DASHBOARD_FOLDER",
    "NOTEBOOKS_ENV",
    "SERVER_TOKEN_SCOPES",
    "SERVICE_URL_ENV",
    "WARM_KERNELS_ARG",
    "landing_url",
    "notebooks_dir",
    "prepare_server",
    "ship_dashboards",
]

NOTEBOOKS_ENV: Final = "USREVIEW_NOTEBOOKS"
SERVICE_URL_ENV: Final = "USREVIEW_SERVICE_URL"
DASHBOARD_FOLDER: Final = "usreview"
"""The folder of each person's home that holds the dashboards (refreshed at each start)."""
#: The list, in :data:`DASHBOARD_FOLDER`, of the files the last start shipped there.
_SHIPPED: Final = ".shipped"

SERVER_TOKEN_SCOPES: Final = (
    "users:activity!user",  # JupyterHub's own server role
    "access:servers!server",
    f"access:services!service={SERVICE}",
    *sorted(name for name in CUSTOM_SCOPES if name != "custom:usreview:admin"),
)
"""Scopes asked for each server's token; JupyterHub keeps those the owner holds."""

_LANDING: Final = {
    "reviewers": f"/voila/render/{DASHBOARD_FOLDER}/worklist.ipynb",
    "admins": f"/voila/render/{DASHBOARD_FOLDER}/worklist.ipynb",
}
_DEFAULT_LANDING: Final = "/lab"
_TEACHING_LANDING: Final = f"/voila/render/{DASHBOARD_FOLDER}/teaching.ipynb"
_RESEARCH_LANDING: Final = f"/lab/tree/{DASHBOARD_FOLDER}/research.ipynb"
WARM_KERNELS_ARG: Final = (
    "--ServerApp.kernel_manager_class=usreview.hub.kernel_pool.WarmKernelManager"
)
"""Added to the servers of people who land on the worklist: it opens in a warm kernel."""


def notebooks_dir() -> Path:
    """Where the dashboards are: ``$USREVIEW_NOTEBOOKS``, else the repository's ``notebooks/``."""
    configured = os.environ.get(NOTEBOOKS_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "notebooks"


def landing_url(groups: list[str]) -> str:
    """The server URL a person of ``groups`` lands on after logging in."""
    for group, url in _LANDING.items():
        if group in groups:
            return url
    if "trainees" in groups:  # no warm kernel: that pool is the worklist's
        return _TEACHING_LANDING
    if "scientists" in groups:
        return _RESEARCH_LANDING
    return _DEFAULT_LANDING


def prepare_server(spawner: Any) -> None:
    """JupyterHub ``pre_spawn_hook``: set the landing page and the warm kernel."""
    groups = sorted(group.name for group in spawner.user.groups)
    spawner.default_url = landing_url(groups)
    args = [a for a in getattr(spawner, "args", None) or [] if a != WARM_KERNELS_ARG]
    if spawner.default_url in _LANDING.values():  # :mod:`usreview.hub.kernel_pool`
        args.append(WARM_KERNELS_ARG)
    spawner.args = args


def ship_dashboards(source: Path, target: Path) -> None:
    """Copy the dashboards of ``source`` into ``target``, replacing those shipped before.

    What the person saved there under other names stays: only files that an earlier start
    shipped (listed in :data:`_SHIPPED`) and that are no longer shipped are removed. A
    link in the place of a shipped file is replaced by the file, never written through.
    """
    os.listdir(source)  # unreadable: say so (rglob would find nothing)
    shipped = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*")
        if path.is_file()
        and not any(
            part.startswith(".") or part == "__pycache__" for part in path.relative_to(source).parts
        )
    )
    target.mkdir(mode=0o700, exist_ok=True)
    listed = target / _SHIPPED
    before = set(listed.read_text().splitlines()) if listed.is_file() else set()
    for name in before - set(shipped):
        stale = target / name
        if stale.resolve().is_relative_to(target.resolve()):
            stale.unlink(missing_ok=True)
    for name in [*shipped, _SHIPPED]:
        if (target / name).is_symlink():
            (target / name).unlink()
    for name in shipped:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    listed.write_text("".join(f"{name}\n" for name in shipped))


if __name__ == "__main__":  # the spawner's call, under the person's own account
    ship_dashboards(Path(sys.argv[1]), Path(sys.argv[2]))

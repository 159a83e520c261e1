"""The single-user servers' set-up: landing pages, dashboards copied home, token scopes."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import browser_support
from usreview.hub.config import configure
from usreview.hub.dashboards import (
    DASHBOARD_FOLDER,
    SERVER_TOKEN_SCOPES,
    SERVICE_URL_ENV,
    WARM_KERNELS_ARG,
    landing_url,
    notebooks_dir,
    prepare_server,
    ship_dashboards,
)


def _spawner(name: str, groups: list[str]) -> SimpleNamespace:
    user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
    return SimpleNamespace(user=user, default_url="", args=["--a=1"])


def test_reviewers_land_on_the_worklist_scientists_on_their_notebook_in_jupyterlab() -> None:
    assert landing_url(["reviewers"]).endswith(f"/{DASHBOARD_FOLDER}/worklist.ipynb")
    assert landing_url(["reviewers"]).startswith("/voila/render/")
    assert landing_url(["trainees"]).endswith(f"/{DASHBOARD_FOLDER}/teaching.ipynb")
    assert landing_url(["scientists"]) == f"/lab/tree/{DASHBOARD_FOLDER}/research.ipynb"
    assert landing_url([]) == "/lab"


def test_the_repository_notebooks_are_the_dashboards() -> None:
    names = {p.name for p in notebooks_dir().glob("*.ipynb")}
    assert {"worklist.ipynb", "study.ipynb", "teaching.ipynb", "research.ipynb"} <= names


def test_shipping_refreshes_the_dashboards_and_keeps_what_people_saved(
    tmp_path: Path,
) -> None:
    source = tmp_path / "notebooks"
    source.mkdir()
    (source / "worklist.ipynb").write_text("{}")
    (source / ".hidden").write_text("x")
    copied = tmp_path / "homes" / "rita" / DASHBOARD_FOLDER
    stale = copied / "old.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    ship_dashboards(source, copied)

    assert sorted(p.name for p in copied.iterdir() if p.name != ".shipped") == [
        "old.ipynb",  # not shipped by an earlier start: perhaps hers
        "worklist.ipynb",
    ]

    # Her own notebook saved beside the dashboards stays; a shipped one is refreshed, and
    # one no longer shipped goes.
    (copied / "my-analysis.ipynb").write_text('{"mine": 1}')
    (copied / "worklist.ipynb").write_text('{"edited": 1}')
    (source / "worklist.ipynb").write_text('{"v": 2}')
    (source / "research.ipynb").write_text("{}")
    ship_dashboards(source, copied)
    assert (copied / "my-analysis.ipynb").read_text() == '{"mine": 1}'
    assert (copied / "worklist.ipynb").read_text() == '{"v": 2}'
    (source / "research.ipynb").unlink()
    ship_dashboards(source, copied)
    assert sorted(p.name for p in copied.iterdir() if p.name != ".shipped") == [
        "my-analysis.ipynb",
        "old.ipynb",
        "worklist.ipynb",
    ]


def test_a_link_in_place_of_a_dashboard_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    source = tmp_path / "notebooks"
    source.mkdir()
    (source / "worklist.ipynb").write_text('{"v": 1}')
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not a dashboard")
    copied = tmp_path / "home" / DASHBOARD_FOLDER
    copied.mkdir(parents=True)
    (copied / "worklist.ipynb").symlink_to(elsewhere)
    (copied / ".shipped").symlink_to(elsewhere)

    ship_dashboards(source, copied)

    assert elsewhere.read_text() == "not a dashboard"
    assert not (copied / "worklist.ipynb").is_symlink()
    assert (copied / "worklist.ipynb").read_text() == '{"v": 1}'
    assert (copied / ".shipped").read_text() == "worklist.ipynb\n"


def test_dashboards_under_a_hidden_folder_are_still_shipped(tmp_path: Path) -> None:
    source = tmp_path / ".config" / "notebooks"
    source.mkdir(parents=True)
    (source / "worklist.ipynb").write_text("{}")
    ship_dashboards(source, tmp_path / "home")
    assert (tmp_path / "home" / "worklist.ipynb").is_file()


def test_server_tokens_reach_the_service_but_never_administer_it() -> None:
    assert "access:services!service=usreview" in SERVER_TOKEN_SCOPES
    assert "custom:usreview:review" in SERVER_TOKEN_SCOPES
    assert "custom:usreview:admin" not in SERVER_TOKEN_SCOPES
    assert not any(s.startswith(("tokens", "admin", "servers")) for s in SERVER_TOKEN_SCOPES)


def test_configure_wires_the_servers(tmp_path: Path) -> None:
    from traitlets.config import Config

    from usreview.hub.spawner import PersonalSpawner

    c = Config()
    configure(c, tmp_path / "state", "127.0.0.1", 8443, service_port=10123)
    assert c.JupyterHub.spawner_class is PersonalSpawner
    assert c.PersonalSpawner.accounts_db == str(tmp_path / "state" / "accounts.sqlite")
    assert c.PersonalSpawner.home_dir_template == str(tmp_path / "state" / "users" / "{username}")
    assert "--ServerApp.allow_root=True" not in c.Spawner.args  # no server runs as root
    assert c.Spawner.pre_spawn_hook is prepare_server
    assert list(c.Spawner.server_token_scopes) == list(SERVER_TOKEN_SCOPES)
    assert c.Spawner.environment[SERVICE_URL_ENV] == "http://127.0.0.1:10123/services/usreview/"
    assert "--ServerApp.terminals_enabled=False" in c.Spawner.args


def test_only_servers_landing_on_the_worklist_keep_a_warm_kernel() -> None:
    rita = _spawner("rita", ["reviewers"])
    prepare_server(rita)
    prepare_server(rita)  # every start: added once
    assert rita.args == ["--a=1", WARM_KERNELS_ARG]
    rita.user.groups = [SimpleNamespace(name="trainees")]  # no longer a reviewer
    prepare_server(rita)
    assert rita.args == ["--a=1"]
    tess = _spawner("tess", ["trainees"])
    prepare_server(tess)
    assert tess.args == ["--a=1"]


# A cell that says when it ran, in which kernel, and what it sees of its request.
_PROBE = (
    "import os, time\n"
    'print(f"ran-at={time.time():.3f} pid={os.getpid()} '
    "preheat={os.environ.get('VOILA_PREHEAT')} query={os.environ.get('QUERY_STRING', '-')} "
    "mark={os.environ.get('USREVIEW_TEST_MARK')}\")"
)


def _page(url: str, token: str) -> tuple[float, dict[str, str]]:
    began = time.time()
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        text = answer.read().decode()
    found = re.search(r"ran-at=(\S+) pid=(\S+) preheat=(\S+) query=(\S*) mark=(\S+)", text)
    assert found, text[-2000:]
    keys = ("ran_at", "pid", "preheat", "query", "mark")
    return began, dict(zip(keys, found.groups(), strict=True))


@pytest.mark.slow
def test_the_worklist_page_gets_a_kernel_that_ran_it_before_the_request(tmp_path: Path) -> None:
    """A real Jupyter server with Voila's extension and :class:`WarmKernelManager`."""
    root = tmp_path / "home"
    root.mkdir()
    browser_support.write_notebook(root / "warm.ipynb", [_PROBE])
    browser_support.write_notebook(root / "study.ipynb", [_PROBE])
    state = tmp_path / "state"
    server = browser_support.VoilaServer(root)
    server.log_path = tmp_path / "server.log"
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "IPYTHONDIR": str(state / "ipython"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "USREVIEW_TEST_MARK": "owner",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={server.port}",
        "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True", WARM_KERNELS_ARG,
        "--WarmKernelManager.pooled_notebooks=warm.ipynb", "--WarmKernelManager.fill_delay=0",
    ]  # fmt: skip
    with open(server.log_path, "wb") as log:
        server.process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def warm_kernels() -> int:
            return server.log().count("has run its notebook")

        deadline = time.monotonic() + 90
        while warm_kernels() < 1:
            assert server.process.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        began, first = _page(f"{server.url('warm.ipynb')}?study=1.2.3", token)
        assert float(first["ran_at"]) < began  # rendered before it was asked for
        assert first["preheat"] == "True" and first["mark"] == "owner"  # the server's env
        assert first["query"] == "-"  # nothing of the request: pool only what needs none
        assert "Using pre-heated kernel" in server.log()
        while warm_kernels() < 2:  # the replacement, for the next page
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        began, second = _page(server.url("warm.ipynb"), token)
        assert float(second["ran_at"]) < began and second["pid"] != first["pid"]

        began, study = _page(f"{server.url('study.ipynb')}?study=1.2.3", token)
        assert float(study["ran_at"]) > began  # not pooled: its own kernel, with the request
        assert study["preheat"] == "False" and study["query"] == "study=1.2.3"
        try:  # the server's own authentication still guards the warm page
            with urllib.request.urlopen(server.url("warm.ipynb"), timeout=30) as answer:
                landed, text = answer.url, answer.read().decode()
        except urllib.error.HTTPError as refused:
            landed, text = f"refused {refused.code}", ""
        assert "/login" in landed or landed == "refused 403", landed
        assert "ran-at=" not in text
    finally:
        server.stop()

"""The single-user servers' set-up: landing pages, dashboards copied home, token scopes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from usreview.hub.config import configure
from usreview.hub.dashboards import (
    DASHBOARD_FOLDER,
    NOTEBOOKS_ENV,
    SERVER_TOKEN_SCOPES,
    SERVICE_URL_ENV,
    landing_url,
    notebooks_dir,
    prepare_server,
)


def _spawner(home_template: str, name: str, groups: list[str]) -> SimpleNamespace:
    user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
    return SimpleNamespace(user=user, home_dir_template=home_template, default_url="")


def test_reviewers_land_on_the_worklist_others_on_jupyterlab() -> None:
    assert landing_url(["reviewers"]).endswith(f"/{DASHBOARD_FOLDER}/worklist.ipynb")
    assert landing_url(["reviewers"]).startswith("/voila/render/")
    assert landing_url(["trainees"]) == "/lab"
    assert landing_url(["scientists"]) == "/lab"


def test_the_repository_notebooks_are_the_dashboards() -> None:
    names = {p.name for p in notebooks_dir().glob("*.ipynb")}
    assert {"worklist.ipynb", "study.ipynb"} <= names


def test_prepare_server_copies_the_dashboards_and_replaces_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "notebooks"
    source.mkdir()
    (source / "worklist.ipynb").write_text("{}")
    (source / ".hidden").write_text("x")
    monkeypatch.setenv(NOTEBOOKS_ENV, str(source))
    spawner = _spawner(str(tmp_path / "homes" / "{username}"), "rita", ["reviewers"])
    stale = tmp_path / "homes" / "rita" / DASHBOARD_FOLDER / "old.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    prepare_server(spawner)

    copied = tmp_path / "homes" / "rita" / DASHBOARD_FOLDER
    assert sorted(p.name for p in copied.iterdir()) == ["worklist.ipynb"]
    assert spawner.default_url == landing_url(["reviewers"])
    assert (tmp_path / "homes" / "rita").stat().st_mode & 0o777 == 0o700


def test_server_tokens_reach_the_service_but_never_administer_it() -> None:
    assert "access:services!service=usreview" in SERVER_TOKEN_SCOPES
    assert "custom:usreview:review" in SERVER_TOKEN_SCOPES
    assert "custom:usreview:admin" not in SERVER_TOKEN_SCOPES
    assert not any(s.startswith(("tokens", "admin", "servers")) for s in SERVER_TOKEN_SCOPES)


def test_configure_wires_the_servers(tmp_path: Path) -> None:
    from traitlets.config import Config

    c = Config()
    configure(c, tmp_path / "state", "127.0.0.1", 8443, service_port=10123)
    assert c.Spawner.pre_spawn_hook is prepare_server
    assert list(c.Spawner.server_token_scopes) == list(SERVER_TOKEN_SCOPES)
    assert c.Spawner.environment[SERVICE_URL_ENV] == "http://127.0.0.1:10123/services/usreview/"
    assert "--ServerApp.terminals_enabled=False" in c.Spawner.args

"""Fixtures of the hub configuration tests: ``configure`` run on a fresh state, with an
executable in place of ``configurable-http-proxy`` (the configuration only checks that one
is found; the tests that start the hub run the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from usreview.hub.config import configure
from usreview.hub.proxy import PROXY_ENV


@pytest.fixture
def fake_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proxy = tmp_path / "bin" / "configurable-http-proxy"
    proxy.parent.mkdir()
    proxy.write_text("#!/bin/sh\nexit 0\n")
    proxy.chmod(0o755)
    monkeypatch.setenv(PROXY_ENV, str(proxy))
    return proxy


@pytest.fixture
def configured(tmp_path: Path, fake_proxy: Path) -> tuple[Config, Path]:
    c = Config()
    state = tmp_path / "state"
    configure(c, state, "127.0.0.1", 18000)
    return c, state

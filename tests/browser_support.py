"""Real headless chromium and a real Voila server on a free loopback port, for browser tests.

Use it from a test module::

    from tests import browser_support

    chromium = browser_support.chromium           # a module-scoped fixture
    voila = browser_support.voila                 # a module-scoped Voila on a temp folder

    def test_x(chromium, voila):
        browser_support.write_notebook(voila.root / "x.ipynb", ["import ...", "widget"])
        page = chromium.new_page()
        browser_support.open_dashboard(page, voila.url("x.ipynb"), ".my-widget")

Chromium is Debian's (``/usr/bin/chromium``, override with ``USREVIEW_CHROMIUM``), driven by
Playwright without ``playwright install``. Voila serves a folder, so notebooks written after
start are rendered too; each page runs in its own kernel. :func:`running_voila` is the same
server as a context manager, for harnesses (JupyterHub tests) that manage their own scope.
Chromium is launched by :func:`benchmarks._support.launched_chromium`, which the review
benchmark uses too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks._support import CHROMIUM, free_port, launched_chromium

VOILA_START_TIMEOUT = 60.0
#: Time for a dashboard's kernel to start and its widgets to render.
DASHBOARD_TIMEOUT_MS = 90_000


def chromium_missing_reason() -> str | None:
    """Why chromium cannot run here, or ``None`` when it can."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (
            f"chromium not found at {CHROMIUM} (apt-get install chromium, or set USREVIEW_CHROMIUM)"
        )
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless chromium for the module (skipped only when the executable is absent)."""
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    with launched_chromium() as browser:
        yield browser


def write_notebook(path: Path, cells: Sequence[str]) -> Path:
    """Write a notebook of code ``cells`` (no outputs) for the python3 kernel."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{index}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for index, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1))
    return path


@dataclass
class VoilaServer:
    """A standalone ``voila`` serving the notebooks of ``root`` on a free loopback port."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        """The dashboard URL of ``notebook`` (relative to :attr:`root`)."""
        return f"{self.base}/voila/render/{notebook}"

    def log(self) -> str:
        """What the server printed so far."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = VOILA_START_TIMEOUT) -> VoilaServer:
        """Start the server and wait until it answers; raise with its log if it does not."""
        state = self.root.parent / f".voila-{self.port}"
        state.mkdir(exist_ok=True)
        self.log_path = state / "voila.log"
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(state / "config"),
            "IPYTHONDIR": str(state / "ipython"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "JUPYTER_DATA_DIR": str(state / "data"),
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable,
            "-m",
            "voila",
            "--no-browser",
            f"--port={self.port}",
            "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.show_tracebacks=True",
            str(self.root),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its kernels share its process group
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"voila exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base}/", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except urllib.error.HTTPError as answer:  # it answers: it is up
                if answer.code < 500:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"voila did not answer within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server and the kernels it started (its own process group)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        group = os.getpgid(process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            process.wait(timeout=10)
        # kernels that outlived the server (same group, started by it)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


@contextmanager
def running_voila(root: Path, timeout: float = VOILA_START_TIMEOUT) -> Iterator[VoilaServer]:
    """A :class:`VoilaServer` on ``root`` for the duration of the block."""
    server = VoilaServer(root).start(timeout)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def voila(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoilaServer]:
    """One Voila server for the module, serving a fresh folder (write notebooks into it)."""
    root = tmp_path_factory.mktemp("voila") / "notebooks"
    root.mkdir()
    with running_voila(root) as server:
        yield server


def open_dashboard(
    page: Any, url: str, selector: str, timeout_ms: int = DASHBOARD_TIMEOUT_MS
) -> Any:
    """Navigate to a Voila dashboard and wait for ``selector``; return its element handle.

    On timeout the error names the page's console errors and any traceback Voila showed.
    """
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    try:
        return page.wait_for_selector(selector, timeout=timeout_ms)
    except Exception as exc:
        shown = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(
            f"{selector} did not appear on {url}: {exc}\nconsole errors: {errors}\noutputs: {shown}"
        ) from None


def click_pixel(
    page: Any,
    canvas: Any,
    x: float,
    y: float,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    origin: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Click image pixel ``(x, y)`` (centre convention) of a canvas drawn at ``offset``."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    width, height = canvas.evaluate("c => [c.width, c.height]")
    sx, sy = box["width"] / width, box["height"] / height
    cx = box["x"] + (offset[0] + x - origin[0] + 0.5) * sx
    cy = box["y"] + (offset[1] + y - origin[1] + 0.5) * sy
    page.mouse.click(cx, cy)

"""``usreview demo --exit``: the whole system once, checked from its summary and its folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usreview.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_the_system_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "usreview.cli", "demo", "--out", str(out), "--exit"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())

    # Every instance sent was acknowledged by the hub's signed receipt, and every one with
    # measurements came back, processed by the hub's worker, in its own site's outbox.
    measured = {"pw", "cw", "mmode", "volume"}
    assert [site["name"] for site in summary["sites"]] == ["clinic-a", "clinic-b", "clinic-c"]
    kinds = {kind for site in summary["sites"] for kind in site["kinds"]}
    assert kinds == {"bmode", "cine", "mmode", "pw", "cw", "color", "volume"}
    for site in summary["sites"]:
        assert site["instances_sent"] == len(site["kinds"])
        assert site["acknowledged"] == site["instances_sent"]
        assert site["results_received"] == len(measured & set(site["kinds"]))
        outbox = out / "sites" / site["name"] / "outbox"
        delivered = sorted(outbox.glob("*/*-summary.json"))
        assert [str(p) for p in delivered] == sorted(site["outbox"])
        assert len(list(outbox.glob("*/*-sr.dcm"))) == len(delivered)
        for path in delivered:
            assert json.loads(path.read_text())["quantities"]
        # Every result counted, by kind: the filtered images too.
        files = [p for p in outbox.glob("*/*") if p.is_file()]
        assert sum(site["outbox_files"].values()) == len(files)
        assert site["outbox_files"].get("summary", 0) == len(delivered)
        images = len(list(outbox.glob("*/*-derived-image.dcm")))
        assert site["outbox_files"].get("derived-image", 0) == images
        if {"bmode", "cine"} <= set(site["kinds"]):
            assert images >= 2  # the filtered still and the filtered cine

    pw = [m for m in summary["measurements"] if m["kind"] == "pw"]
    assert len(pw) == 1
    psv = pw[0]["quantities"]["peak_systolic_velocity"]
    truth = json.loads(next((out / "studies" / "clinic-a" / "pw").glob("*.truth.json")).read_text())
    assert psv["unit"] == "cm/s"
    assert psv["value"] == pytest.approx(truth["psv_cm_s"], rel=0.05)

    # The printed summary names the hub, the reviewer and the figures.
    assert summary["hub"]["url"] in done.stdout
    # The clinics send to the hub's sites' port.
    assert summary["hub"]["sites_url"] != summary["hub"]["url"]
    assert summary["hub"]["sites_url"] in done.stdout
    site_toml = (out / "sites" / "clinic-a" / "site.toml").read_text()
    assert f'url = "{summary["hub"]["sites_url"]}"' in site_toml
    assert "reviewer / " in done.stdout  # the password, shown once
    assert "clinic-a pw: PSV" in done.stdout
    assert "processed images" in done.stdout  # the results column names what came back
    assert "demo: hub receipt" in done.stderr
    # Nothing of it is left running.
    assert json.loads((out / "run.json").read_text())["children"] == []
    ours = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(out).encode() in _read(p)]
    assert ours == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_ports_handed_out_for_later_listeners_are_distinct() -> None:
    from usreview.demo import free_port

    handed: set[int] = set()
    ports = [free_port(besides=handed) for _ in range(50)]
    assert len(set(ports)) == 50 and handed == set(ports)
    # Without a set of its own, a caller still never gets a port handed out before.
    alone = [free_port() for _ in range(50)]
    assert len(set(alone)) == 50


@pytest.mark.parametrize(
    ("signum", "status", "says"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_signal_before_the_summary_stops_the_demo_as_it_stops_every_command(
    signum: int,
    status: int,
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM is Ctrl-C with exit status 143 (130 for Ctrl-C); what the demo started is
    stopped either way."""
    from usreview.demo import run

    def signalled(self: run._Demo, exit_after_summary: bool) -> int:  # while a step runs
        os.kill(os.getpid(), signum)
        time.sleep(30)
        raise AssertionError("the signal did not stop the demo")

    stopped: list[Path] = []
    monkeypatch.setattr(run._Demo, "run", signalled)
    monkeypatch.setattr(run._Demo, "stop", lambda self: stopped.append(self.out))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == status
    assert capsys.readouterr().err == f"usreview: error: {says}\n"
    assert stopped == [(tmp_path / "demo").resolve()]
    assert signal.getsignal(signal.SIGTERM) == before

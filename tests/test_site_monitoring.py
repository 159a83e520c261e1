"""Watching a site: errors grouped in the status file, the scanners refused, why the upload
process ended, and ``usreview site status --check`` for monitoring (Nagios exit statuses).

Real gateway processes with dcmtk's storescu as the scanner; the hub is down (a closed
port), so what the scanner sends stays in the spool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.site_helpers import (
    USREVIEW,
    alive,
    copies,
    offline_site,
    start_gateway,
    storescu,
    wait_until,
)
from usreview.site import format_status, load_config, read_status
from usreview.site import status as site_status
from usreview.site.status import StatusBook

if shutil.which("storescu") is None:
    pytest.fail("dcmtk's storescu is missing: apt-get install dcmtk", pytrace=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sim")
    result = subprocess.run(
        [*USREVIEW, "simulate", "bmode", "--out", str(folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return Path(result.stdout.split()[0])


def check(config: Path, *extra: str) -> tuple[int, str]:
    """``site status --check``: its exit status and its one line."""
    done = subprocess.run(
        [*USREVIEW, "site", "status", "--config", str(config), "--check", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.count("\n") == 1 and not done.stderr, done.stdout + done.stderr
    return done.returncode, done.stdout.strip()


def status_text(config: Path) -> str:
    return format_status(read_status(load_config(config)))


def test_repeated_errors_are_grouped_and_push_out_no_other(tmp_path: Path) -> None:
    # Before: one entry per try in a list of 20, so an instance refused every few
    # minutes pushed every other error (here the results follower's) out of it.
    book = StatusBook(tmp_path)
    book.error("results", "the results follower cannot start: DatabaseError: not a database")
    for n in range(30):
        book.error(
            "upload",
            f"1.2.826.0.1.{n}: the hub refused (413 too_large): {500 + n} MB; kept in the "
            f"spool (next try of it in {n}.5 s)",
            key="refused 413 too_large",
        )
    for n in range(25):  # the same outage, other addresses and delays
        book.error("upload", f"PUT https://10.0.0.{n}:8000/x: refused (next try in {n}.1 s)")
    errors = json.loads((tmp_path / "status.json").read_text())["errors"]
    assert [(e["where"], e["count"]) for e in errors] == [
        ("results", 1),
        ("upload", 30),
        ("upload", 25),
    ]
    assert errors[1]["message"].startswith("1.2.826.0.1.29: ")  # the latest one
    assert errors[1]["first"] <= errors[1]["at"]
    kept = site_status.MAX_ERRORS
    for n in range(kept + 5):  # distinct errors: the last MAX_ERRORS are kept
        book.error("pacs", f"PACS{'x' * n} refused")
    assert len(json.loads((tmp_path / "status.json").read_text())["errors"]) == kept


@pytest.mark.slow
def test_check_says_in_one_line_what_is_wrong(tmp_path: Path, image: Path) -> None:
    # Before: 'site status' always exited 0, and --check did not exist.
    config, port = offline_site(tmp_path)
    code, line = check(config)
    assert code == 2 and line.startswith("CRITICAL: site clinic: the gateway is not running")
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        gateway.upload_process()
        code, line = check(config)
        assert code == 0 and line.startswith("OK: site clinic: 0 instance(s) in the spool"), line
        assert line.endswith("| spool=0 held=0 given_up=0 oldest_waiting=0s")
        # A scanner the allow-list does not name: its association is rejected.
        assert not storescu(port, [image], calling="INTRUDER").succeeded
        wait_until(lambda: check(config)[0] == 1, timeout=10)
        code, line = check(config)
        assert line.startswith("WARNING: site clinic: a scanner was refused ")
        assert "calling AE title 'INTRUDER' is not in gateway.allowed_calling_ae_titles" in line
        assert "scanners      1 refused, last " in status_text(config)
        # An instance the hub (down) does not take: critical once it waited --max-age.
        sent = copies(image, 1, tmp_path / "exam")
        assert storescu(port, sent).succeeded == sent
        time.sleep(2.5)
        code, line = check(config, "--max-age", "2s")
        assert code == 2 and "an instance has waited " in line, line
        assert check(config, "--max-age", "1h")[0] == 1  # the refusal only
    finally:
        gateway.stop()
    assert check(config)[0] == 2


@pytest.mark.slow
def test_a_scanner_refused_for_want_of_space_is_critical(tmp_path: Path, image: Path) -> None:
    # Before: the refusals were only logged; nothing in the status said the scanner
    # kept its images.
    config, port = offline_site(tmp_path)
    free_mb = shutil.disk_usage(tmp_path).free // 10**6
    if free_mb + 1000 > 10**7:
        pytest.skip("more free space than gateway.min_free_mb can ask for")
    text = config.read_text().replace("min_free_mb = 1000", f"min_free_mb = {free_mb + 1000}")
    config.write_text(text)
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        run = storescu(port, [image])
        assert not run.succeeded and "Refused: OutOfResources" in run.output, run.output[-2000:]
        wait_until(lambda: check(config)[0] == 2, timeout=10)
        code, line = check(config)
        assert code == 2 and "a scanner was refused" in line, line
        assert "0xA700, out of resources" in line
        assert "gateway.min_free_mb" in line
        refusals = read_status(load_config(config)).gateway["scanner_refusals"]
        assert refusals["count"] == 1 and refusals["calling_ae_title"] == "SCANNER"
    finally:
        gateway.stop()


@pytest.mark.slow
def test_why_the_upload_process_ended_is_in_the_status(tmp_path: Path) -> None:
    # Before: "the upload process ended (exit status 1); restarting it", and no reason.
    config, port = offline_site(tmp_path, "--encrypt-spool")
    key = config.parent / "keys" / "spool.key"
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        first = gateway.upload_process()
        key.rename(key.with_name("away.key"))  # as a volume unmounted under the gateway
        os.kill(first, signal.SIGKILL)

        def reason() -> str:
            process = read_status(load_config(config)).gateway.get("upload_process", {})
            return str(process.get("last_exit", {}).get("reason", ""))

        wait_until(lambda: reason().startswith("exit status 1: "), timeout=30)
        assert reason().startswith(
            f"exit status 1: SiteConfigError: folders.spool_key: {key} does not exist"
        ), reason()
        shown = status_text(config)
        assert (
            f"the upload process ended (exit status 1: SiteConfigError: folders.spool_key: {key}"
            in shown
        )
        assert "the upload process ended (killed by SIGKILL)" in shown
        assert f"upload process: SiteConfigError: folders.spool_key: {key}" in shown  # its own
        code, line = check(config)
        assert code == 2 and "the upload process " in line and "folders.spool_key" in line
        key.with_name("away.key").rename(key)  # back: the next restart works

        def healthy() -> bool:
            process = read_status(load_config(config)).gateway["upload_process"]
            running = process["state"] == "running" and time.time() - process["since"] > 3
            return running and alive(process["pid"])

        wait_until(healthy, timeout=90)
    finally:
        gateway.stop()

"""The per-study journal (``STATE/studies.jsonl``): reading what a crash cut short, and
keeping its size bounded (studies quiet for the retention period are dropped)."""

from __future__ import annotations

import multiprocessing
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from usreview.site.studies import (
    STUDIES_FILE,
    InstanceHeader,
    StudyLog,
    format_study_reports,
    read_journal,
    study_reports,
)

DAY = 86400.0


def test_the_journal_drops_studies_quiet_for_the_retention_and_skips_a_cut_line(
    tmp_path: Path,
) -> None:
    now = [1_000_000_000.0]
    log = StudyLog(tmp_path, retention=30 * DAY, clock=lambda: now[0])
    header = InstanceHeader("1.2.3", "ACC-1", "US ABDOMEN")
    log.acknowledged("1.2.3.1", "1.2.3", header, spooled_at=now[0] - 5)
    log.rejected("1.2.3.2", header, "not ultrasound", spooled_at=now[0] - 4)
    log.result(7, "report", "1.2.3", tmp_path / "outbox" / "1.2.3" / "00000007-report.dcm", ["p"])
    log.pacs(7, "1.2.3", "p", "C-STORE answered 0xA900")
    now[0] += 20 * DAY
    log.acknowledged("1.2.4.1", "1.2.4", InstanceHeader(), spooled_at=now[0])
    log.close()
    path = tmp_path / STUDIES_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with path.open("ab") as f:
        f.write(b'{"e": "ack", "sop": "1.2')  # a line a crash cut short
    assert len(read_journal(tmp_path)) == 5

    [rep] = study_reports(tmp_path, accession="ACC-1", pacs_failed={"p": {7: "0xA900"}})
    doc = rep.to_dict()
    assert doc["instances"]["acknowledged"] == 1 and doc["instances"]["rejected"] == 1
    assert doc["results"]["pacs"] == {
        "p": {"delivered": 0, "pending": 0, "failed": 1, "unknown": 0}
    }
    shown = format_study_reports([rep], "accession ACC-1")
    assert "2 received, 1 acknowledged by the hub, 0 waiting, 1 rejected" in shown
    assert "rejected 1.2.3.2: not ultrasound" in shown
    assert "result 7 failed at PACS p: 0xA900" in shown
    # Moved back by 'site pacs --retry-failed': pending again, not failed.
    [again] = study_reports(tmp_path, study="1.2.3", pacs_pending={"p": {7}}, pacs_failed={})
    assert again.results[7]["pacs"] == {"p": {"state": "pending"}}
    # In no queue and no delivery recorded (a crash lost the line, or the file left the
    # outbox): said so, not "pending" for ever.
    [gone] = study_reports(tmp_path, study="1.2.3", pacs_pending={"p": set()}, pacs_failed={})
    assert gone.results[7]["pacs"]["p"]["state"] == "unknown"
    assert "result 7 unknown at PACS p: in no queue" in format_study_reports([gone], "study")

    now[0] += 15 * DAY  # 35 days after the first study, 15 after the second
    StudyLog(tmp_path, retention=30 * DAY, clock=lambda: now[0]).close()
    assert {entry["study"] for entry in read_journal(tmp_path)} == {"1.2.4"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert study_reports(tmp_path, study="1.2.3") == []


def test_the_journal_stays_below_its_size(tmp_path: Path) -> None:
    log = StudyLog(tmp_path, max_bytes=20_000)
    for n in range(400):
        log.acknowledged(f"1.2.{n}.1", f"1.2.{n}", InstanceHeader(), spooled_at=None)
    log.close()
    assert (tmp_path / STUDIES_FILE).stat().st_size <= 20_000
    studies = [entry["study"] for entry in read_journal(tmp_path)]
    assert studies[-1] == "1.2.399"  # the oldest went first


def test_an_entry_appended_after_close_is_written_and_leaves_no_open_file(
    tmp_path: Path,
) -> None:
    """An upload thread finishing after the worker closed the journal (its join timed out)."""
    import os

    log = StudyLog(tmp_path)
    log.close()
    fds = set(os.listdir("/proc/self/fd"))
    log.acknowledged("1.2.3.1", "1.2.3", InstanceHeader("1.2.3"), spooled_at=1.0)
    assert [entry["sop"] for entry in read_journal(tmp_path)] == ["1.2.3.1"]
    assert set(os.listdir("/proc/self/fd")) <= fds  # nothing left open (nor unsynced)


def test_an_appender_reopens_the_journal_another_process_compacted(tmp_path: Path) -> None:
    """Two logs on one folder, as the gateway and ``site push``: the second's descriptor
    points to the file the first replaced, and its next line must reach the new one."""
    now = [1_000_000_000.0]
    gateway = StudyLog(tmp_path, clock=lambda: now[0])
    push = StudyLog(tmp_path, clock=lambda: now[0])
    gateway.acknowledged("1.2.3.1", "1.2.3", InstanceHeader(), spooled_at=None)
    push.acknowledged("1.2.4.1", "1.2.4", InstanceHeader(), spooled_at=None)
    now[0] += 31 * DAY  # the gateway's next line compacts (a day passed): 1.2.3 and 1.2.4 go
    gateway.acknowledged("1.2.5.1", "1.2.5", InstanceHeader(), spooled_at=None)
    push.acknowledged("1.2.6.1", "1.2.6", InstanceHeader(), spooled_at=None)
    gateway.acknowledged("1.2.7.1", "1.2.7", InstanceHeader(), spooled_at=None)
    push.close()
    gateway.close()
    assert [entry["sop"] for entry in read_journal(tmp_path)] == ["1.2.5.1", "1.2.6.1", "1.2.7.1"]
    assert stat.S_IMODE((tmp_path / "studies.lock").stat().st_mode) == 0o600


def test_a_line_appended_while_another_process_compacts_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another log appends between a compaction's read and its replace: it waits for the
    replace, then writes into the new file."""
    import usreview.site.studies as studies

    now = [1_000_000_000.0]
    gateway = StudyLog(tmp_path, clock=lambda: now[0])
    push = StudyLog(tmp_path, clock=lambda: now[0])
    gateway.acknowledged("1.2.3.1", "1.2.3", InstanceHeader(), spooled_at=None)
    push.acknowledged("1.2.4.1", "1.2.4", InstanceHeader(), spooled_at=None)
    now[0] += 31 * DAY
    replace = studies.replace_file
    threads: list[threading.Thread] = []
    waited: list[bool] = []

    def replace_while_pushing(path: Path, data: bytes, **kwargs: Any) -> None:
        if not threads:  # the gateway's compaction (not the push log's own, after)
            append = threading.Thread(
                target=push.acknowledged,
                args=("1.2.6.1", "1.2.6", InstanceHeader()),
                kwargs={"spooled_at": None},
            )
            threads.append(append)
            append.start()
            append.join(0.3)  # it waits for the lock (without one: written now, then lost)
            waited.append(append.is_alive())
        replace(path, data, **kwargs)

    monkeypatch.setattr(studies, "replace_file", replace_while_pushing)
    gateway.acknowledged("1.2.5.1", "1.2.5", InstanceHeader(), spooled_at=None)  # compacts
    threads[0].join(5)
    push.close()
    gateway.close()
    assert waited == [True]
    assert [entry["sop"] for entry in read_journal(tmp_path)] == ["1.2.5.1", "1.2.6.1"]


def _append_lines(state: str, prefix: str, count: int) -> None:
    log = StudyLog(Path(state))
    for n in range(count):
        log.acknowledged(f"{prefix}.{n}", prefix, InstanceHeader(), spooled_at=None)
    log.close()


def test_two_processes_append_and_compact_without_losing_a_line(tmp_path: Path) -> None:
    """A real second process appends while this one keeps compacting (a study 40 days
    old is dropped each time, so every compaction replaces the file)."""
    context = multiprocessing.get_context("spawn")
    other = context.Process(target=_append_lines, args=(str(tmp_path), "1.2.9", 400))
    other.start()
    stale = StudyLog(tmp_path, clock=lambda: time.time() - 40 * DAY)
    compactions = 0
    while other.is_alive() or compactions < 3:
        stale.acknowledged(f"1.2.1.{compactions}", "1.2.1", InstanceHeader(), spooled_at=None)
        StudyLog(tmp_path).close()  # compacts: 1.2.1 goes
        compactions += 1
    other.join(30)
    stale.close()
    assert other.exitcode == 0
    sops = [entry["sop"] for entry in read_journal(tmp_path)]
    assert sops == [f"1.2.9.{n}" for n in range(400)]

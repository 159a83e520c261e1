"""The audit log's segments: rotation keeps one chain across files, and verify walks it.

Writers in several processes while the log rotates: ``test_hub_audit.py``.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from usreview.hub import audit
from usreview.hub.audit import AuditLog, log_files, rotate, segments_before, tail, verify

KEY = bytes(range(32))


def _fill(log: AuditLog, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        log.record(f"site-{n % 3}", "write", f"instance/1.2.{n}")


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for f in log_files(path) for line in f.read_text().splitlines()]


def test_rotation_closes_a_read_only_segment_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY)
    _fill(log, 10)
    segment = rotate(path, KEY, "admin-x")
    assert segment == tmp_path / "audit" / "audit-000000000001-000000000010.log"
    assert stat.S_IMODE(segment.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "audit").stat().st_mode) == 0o700
    assert len(segment.read_text().splitlines()) == 10
    (first,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert (first["seq"], first["actor"], first["outcome"]) == (11, "admin-x", "rotated")
    assert first["detail"] == {"segment": f"audit/{segment.name}", "lines": 10}
    _fill(log, 5, start=10)  # the same writer goes on in the new file
    second = rotate(path, KEY, "admin-x")
    assert second == tmp_path / "audit" / "audit-000000000011-000000000016.log"
    _fill(log, 2, start=15)
    walked: list[tuple[int, int, int]] = []
    report = verify(path, KEY, progress=lambda *done: walked.append(done))
    assert (report.ok, report.lines, report.files) == (True, 19, 3)
    assert walked == [(1, 3, 10), (2, 3, 16), (3, 3, 19)]  # file by file
    assert [x["seq"] for x in _lines(path)] == list(range(1, 20))
    last = [json.loads(x) for x in tail(path, 4)]  # across the files, in order
    assert [x["seq"] for x in last] == [16, 17, 18, 19]
    assert last[1]["outcome"] == "rotated"
    assert [json.loads(x)["seq"] for x in tail(path, 40)] == list(range(1, 20))
    assert rotate(tmp_path / "none.log", KEY, "admin-x") is None  # no log, nothing to close
    # Emptied (lines 17-19 cut, as from any log's end): nothing to close, and the next
    # line continues from the last segment's.
    path.write_bytes(b"")
    assert rotate(path, KEY, "admin-x") is None
    assert log.record("site-x", "read", "study/1")["seq"] == 17
    assert verify(path, KEY).ok and verify(path, KEY).lines == 17


def _three_files(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY)
    for _ in range(2):
        _fill(log, 4)
        rotate(path, KEY, "admin-x")
    _fill(log, 2)
    return path


def test_a_missing_or_altered_segment_is_found(tmp_path: Path) -> None:
    path = _three_files(tmp_path)
    first, second, current = log_files(path)
    assert current == path and verify(path, KEY).ok

    second.chmod(0o600)
    lines = second.read_text().splitlines()
    record = json.loads(lines[1])
    record["actor"] = "someone-else"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    second.write_text("".join(x + "\n" for x in lines))
    report = verify(path, KEY)
    assert (report.ok, report.first_bad_line, report.file) == (False, 6, second)
    assert report.reason == "line altered (hash mismatch)"

    second.unlink()  # a segment lost between two others
    report = verify(path, KEY)
    assert (report.ok, report.first_bad_line, report.file, report.lines) == (False, 5, path, 4)
    assert report.reason.startswith(f"does not continue {first.name}: a segment between them")

    first.unlink()  # the oldest ones lost: the log starts late
    report = verify(path, KEY)
    assert (report.ok, report.first_bad_line, report.file) == (False, 1, path)
    assert report.reason == "the log starts at line 10: the segments before it are missing"


def test_an_earlier_copy_is_found_in_the_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY)
    _fill(log, 6)
    last = json.loads(path.read_text().splitlines()[-1])
    rotate(path, KEY, "admin-x")
    _fill(log, 3)
    assert verify(path, KEY, anchor=(6, str(last["hash"]))).ok
    report = verify(path, KEY, anchor=(6, "0" * 64))
    assert (report.ok, report.first_bad_line) == (False, 6)
    assert report.file == log_files(path)[0]


def test_a_writer_waiting_for_the_lock_appends_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, other = AuditLog(path, KEY), AuditLog(path, KEY)
    _fill(log, 3)
    _fill(other, 1, start=3)  # "other" remembers the old file as it left it
    fd = audit._open_locked(path)  # a rotation under way holds the old file's lock
    try:
        waiting = threading.Thread(target=other.record, args=("late", "read", "study/9"))
        waiting.start()
        time.sleep(0.2)
        assert waiting.is_alive()  # blocked on the old file's lock
        audit._rotate_locked(path, KEY, "admin-x", audit._tail(path))
    finally:
        os.close(fd)
    waiting.join(10)
    assert not waiting.is_alive()
    current = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["seq"], x["actor"]) for x in current] == [(5, "admin-x"), (6, "late")]
    assert verify(path, KEY).ok


def test_a_line_appended_just_after_a_rotation_is_not_taken_for_the_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rotating writer holds the old file's lock, not the new one's: once the new file
    # has the name, another process may append to it before the rotation returns. The
    # writer must not then take that line's bytes for its own and chain past it (a CI run
    # found the chain broken at the third line of a segment that way).
    path = tmp_path / "audit.log"
    rotating = AuditLog(path, KEY, segment_bytes=1500)
    other = AuditLog(path, KEY)
    (tmp_path / "audit").mkdir(mode=0o700)  # so the parent is synced only after the rename
    fsync_directory = audit.fsync_directory
    cut_in: list[int] = []

    def other_appends_once_named(folder: Path) -> None:
        fsync_directory(folder)
        if folder == path.parent and not cut_in:  # the new file has just got the name
            cut_in.append(int(other.record("other", "read", "study/2")["seq"]))

    monkeypatch.setattr(audit, "fsync_directory", other_appends_once_named)
    while not cut_in:
        rotating.record("site-a", "write", "instance/1.2.3")
    monkeypatch.setattr(audit, "fsync_directory", fsync_directory)
    after = rotating.record("site-a", "write", "instance/1.2.4")
    assert after["seq"] == cut_in[0] + 1
    current = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["actor"] for x in current] == ["usreview", "other", "site-a"]
    report = verify(path, KEY)
    assert (report.ok, report.lines, report.files) == (True, after["seq"], 2)


def test_a_rotation_cut_short_is_redone(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY)
    _fill(log, 5)
    # Cut after the link, before the new file replaced the name (and a stray new file).
    (tmp_path / "audit").mkdir(mode=0o700)
    os.link(path, tmp_path / "audit" / "audit-000000000001-000000000005.log")
    (tmp_path / ".audit.log.4242.new").write_text("{}\n")
    assert log_files(path) == [path]  # the link is still the current file: no segment
    _fill(log, 2, start=5)
    assert verify(path, KEY).ok
    segment = rotate(path, KEY, "admin-x")
    assert segment is not None and segment.name == "audit-000000000001-000000000007.log"
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == [segment.name]
    assert not (tmp_path / ".audit.log.4242.new").exists()
    assert verify(path, KEY).ok and verify(path, KEY).lines == 8


def test_the_log_rotates_itself_past_its_size_and_a_failed_rotation_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, KEY, segment_bytes=1200)
    _fill(log, 20)
    files = log_files(path)
    assert len(files) >= 3 and all(f.stat().st_size >= 1200 for f in files[:-1])
    assert verify(path, KEY).ok

    blocked = tmp_path / "blocked.log"  # its segments' folder cannot be made: a file
    (tmp_path / "blocked").write_text("in the way")
    log = AuditLog(blocked, KEY, segment_bytes=600)
    _fill(log, 10)  # every line recorded all the same, in the one file
    assert log_files(blocked) == [blocked] and verify(blocked, KEY).lines == 10
    (tmp_path / "blocked").unlink()
    _fill(log, 1)
    assert log_files(blocked) == [blocked]  # not tried again yet
    monkeypatch.setattr(audit, "ROTATE_RETRY_SECONDS", 0.0)
    log._rotate_after = 0.0
    _fill(log, 1)
    assert len(log_files(blocked)) == 2 and verify(blocked, KEY).lines == 13


def test_the_cli_rotates_and_verifies_the_segments_and_a_backup_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state")
    log = AuditLog(state.audit_log, state.audit_key.read_bytes())
    _fill(log, 5)
    assert main(["hub", "audit", "--rotate", "--state", str(state.root)]) == 0
    segment = state.root / "audit" / "audit-000000000001-000000000005.log"
    assert capsys.readouterr().out == f"audit log: closed as {segment}; {state.audit_log} goes on\n"
    _fill(log, 2)
    assert main(["hub", "audit", "--verify", "--state", str(state.root)]) == 0
    assert capsys.readouterr().out.endswith(": 8 lines in 2 files, chain intact\n")
    assert main(["hub", "audit", "--tail", "3", "--state", str(state.root)]) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [6, 7, 8]

    dest = tmp_path / "copy"
    assert main(["hub", "backup", str(dest), "--state", str(state.root)]) == 0
    assert (dest / "audit" / segment.name).read_bytes() == segment.read_bytes()
    capsys.readouterr()
    assert main(["hub", "audit", "--verify", "--state", str(dest)]) == 0
    assert "9 lines in 2 files, chain intact" in capsys.readouterr().out  # + the backup's

    segment.chmod(0o600)
    segment.write_text("".join(segment.read_text().splitlines(keepends=True)[1:]))
    assert main(["hub", "audit", "--verify", "--state", str(state.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"does not verify at line 1 (in {segment}): the log starts at line 2" in err


def test_a_copy_of_the_current_file_goes_with_the_segments_closed_before_it(
    tmp_path: Path,
) -> None:
    """What ``hub backup`` copies: a rotation after the copy made a segment holding the
    copy's lines, which must not go with it (the chain would not continue)."""
    path = _three_files(tmp_path)
    first, second, _ = log_files(path)
    copy = tmp_path / "copy.log"
    copy.write_bytes(path.read_bytes())
    assert segments_before(path, copy) == [first, second]
    rotate(path, KEY, "admin-x")  # after the copy
    third = log_files(path)[2]
    assert segments_before(path, copy) == [first, second]  # not the third: the copy's lines
    folder = tmp_path / "backup"
    (folder / "audit").mkdir(parents=True)
    for segment in segments_before(path, copy):
        (folder / "audit" / segment.name).write_bytes(segment.read_bytes())
    (folder / "audit.log").write_bytes(copy.read_bytes())
    assert verify(folder / "audit.log", KEY).ok
    (folder / "audit" / third.name).write_bytes(third.read_bytes())  # with it: broken
    assert not verify(folder / "audit.log", KEY).ok
    empty = tmp_path / "empty.log"
    empty.touch()
    assert segments_before(path, empty) == [first, second, third]

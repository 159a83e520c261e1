"""The hash-chained audit log: appends, verification, tampering, concurrent writers."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import resource
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from usreview.hub.audit import AuditAction, AuditError, AuditLog, log_files, verify

KEY = bytes(range(32))


def _fill(path: Path, count: int) -> AuditLog:
    log = AuditLog(path, KEY)
    for n in range(count):
        log.record(f"site-{n % 3}", AuditAction.WRITE, f"instance/1.2.{n}", detail={"bytes": n})
    return log


def test_appends_chain_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = _fill(path, 10)
    denial = log.record("site-b", "denial", "study/1.2.3", outcome="denied")
    assert denial["seq"] == 11 and denial["action"] == "denial"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = verify(path, KEY)
    assert (report.ok, report.lines) == (True, 11)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 12))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(lines))


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("attack", ["alter", "delete", "swap", "insert", "truncate", "wrong_key"])
def test_tampering_is_found_at_its_line(tmp_path: Path, attack: str) -> None:
    path = tmp_path / "audit.log"
    _fill(path, 8)
    lines = path.read_text().splitlines()
    key = KEY
    if attack == "alter":
        record = json.loads(lines[4])
        record["actor"] = "someone-else"
        lines[4] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        expected = 5
    elif attack == "delete":
        del lines[4]
        expected = 5
    elif attack == "swap":
        lines[3], lines[4] = lines[4], lines[3]
        expected = 4
    elif attack == "insert":
        forged = AuditLog(tmp_path / "other.log", b"x" * 32).record("mallory", "read", "study/9")
        lines.insert(2, json.dumps(forged))
        expected = 3
    elif attack == "truncate":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
        expected = 8
    else:
        key = b"y" * 32
        expected = 1
    _rewrite(path, lines)
    report = verify(path, key)
    assert not report.ok
    assert report.first_bad_line == expected
    assert report.lines == expected - 1


def _writer(path: str, worker: int, segment_bytes: int | None) -> None:
    log = AuditLog(Path(path), KEY, segment_bytes=segment_bytes)
    for n in range(40):
        log.record(f"worker-{worker}", "read", f"r/{n}")


@pytest.mark.parametrize("segment_bytes", [None, 3000])  # 3000: rotated every dozen lines
def test_concurrent_writers_keep_one_chain(tmp_path: Path, segment_bytes: int | None) -> None:
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_writer, args=(str(path), w, segment_bytes)) for w in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    report = verify(path, KEY)
    lines = [json.loads(x) for f in log_files(path) for x in f.read_text().splitlines()]
    rotations = [x for x in lines if x["outcome"] == "rotated"]
    assert report.ok and report.lines == len(lines) == 160 + len(rotations)
    assert report.files == len(rotations) + 1 >= (1 if segment_bytes is None else 5)
    written = sorted((str(x["actor"]), str(x["resource"])) for x in lines if x not in rotations)
    assert written == sorted((f"worker-{w}", f"r/{n}") for w in range(4) for n in range(40))
    for segment in log_files(path)[:-1]:  # each closed once it had reached the size
        assert segment_bytes is not None and segment.stat().st_size >= segment_bytes


def test_short_key_and_damaged_tail_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="32 bytes"):
        AuditLog(tmp_path / "a.log", b"short")
    path = tmp_path / "a.log"
    _fill(path, 2)
    with open(path, "a") as fp:
        fp.write('{"seq": 3, "ha')
    with pytest.raises(AuditError, match="damaged line"):
        AuditLog(path, KEY).record("x", "read", "y")
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "b.log", KEY).record("x", "bogus-action", "y")


def test_cli_verifies_the_state_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from usreview.cli import main
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state")
    log = AuditLog(state.audit_log, state.audit_key.read_bytes())
    for n in range(5):
        log.record("site-a", "write", f"instance/{n}")
    assert main(["hub", "audit", "--verify", "--state", str(state.root)]) == 0
    assert "5 lines, chain intact" in capsys.readouterr().out
    lines = state.audit_log.read_text().splitlines()
    del lines[2]
    state.audit_log.write_text("".join(line + "\n" for line in lines))
    assert main(["hub", "audit", "--verify", "--state", str(state.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not verify at line 3" in err

    # --tail shows a damaged log as its bytes are, the last line's missing newline added.
    with open(state.audit_log, "ab") as damaged:
        damaged.write(b'{"seq": 9, "actor": "\xff\xfe"}')
    assert main(["hub", "audit", "--tail", "2", "--state", str(state.root)]) == 0
    shown = capsys.readouterr().out
    assert shown == lines[-1] + "\n" + '{"seq": 9, "actor": "\\xff\\xfe"}\n'
    for wrong in (["--tail", "-5"], ["--tail", "0"]):
        with pytest.raises(SystemExit) as usage:
            main(["hub", "audit", *wrong, "--state", str(state.root)])
        assert usage.value.code == 2 and "invalid count" in capsys.readouterr().err
    assert main(["hub", "audit", "--state", str(state.root)]) == 2  # nothing asked
    asked = "usreview: error: give --verify, --tail N, --rotate, or several\n"
    assert capsys.readouterr().err == asked


def test_threads_share_fsyncs_and_each_gets_its_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = _fill(path, 2)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        fsyncs.append(fd)
        time.sleep(0.02)  # a slow disk: lines pile up behind the fsync in progress
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    lines: dict[int, dict[str, object]] = {}
    start = threading.Barrier(30)

    def run(n: int) -> None:
        start.wait()
        if n == 13:
            with pytest.raises(TypeError):  # not JSON: this event fails, alone
                log.record("site-x", "write", "r/13", detail={"bad": object()})
            return
        lines[n] = log.record(f"site-{n}", "write", f"r/{n}", detail={"n": n})

    threads = [threading.Thread(target=run, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(lines) == 29 and len(fsyncs) < 29
    assert sorted(int(line["seq"]) for line in lines.values()) == list(range(3, 32))
    assert all(line["resource"] == f"r/{n}" for n, line in lines.items())
    report = verify(path, KEY)
    assert (report.ok, report.lines) == (True, 31)


def test_another_writer_between_appends_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ours, theirs = AuditLog(path, KEY), AuditLog(path, KEY)  # as two processes
    ours.record("a", "read", "r/1")
    theirs.record("b", "read", "r/2")
    assert ours.record("a", "read", "r/3")["seq"] == 3  # the tail was read again
    path.rename(tmp_path / "rotated.log")  # a new file under the name
    assert ours.record("a", "read", "r/4")["seq"] == 1
    assert verify(path, KEY).ok and verify(tmp_path / "rotated.log", KEY).lines == 3


def test_refusals_beyond_the_allowance_are_counted_then_drained() -> None:
    from usreview.hub.audit import RefusalLimiter

    now = [100.0]
    limiter = RefusalLimiter(3, 60.0, clock=lambda: now[0])  # refills one per second
    outcomes = [limiter.admit("ip:10.0.0.9") for _ in range(10)]
    assert outcomes == [0, 0, 0] + [None] * 7
    assert limiter.admit("sitea") == 0  # another caller has its own allowance
    assert limiter.drain() == {}  # nothing refilled yet: the flood may go on
    now[0] += 1.0
    assert limiter.admit("ip:10.0.0.9") == 7  # the next line carries the count
    for _ in range(5):
        assert limiter.admit("ip:10.0.0.9") is None
    now[0] += 1.5
    assert limiter.drain() == {"ip:10.0.0.9": 5}  # it went quiet: one summary line
    assert limiter.drain() == {}
    now[0] += 10
    limiter.drain()
    assert limiter.admit("ip:10.0.0.9") == 0  # full again, nothing left to report


def test_the_refusal_limiter_is_bounded_and_keeps_counts_of_forgotten_callers() -> None:
    from usreview.hub.audit import RefusalLimiter

    limiter = RefusalLimiter(1, 0.0, max_callers=3, clock=lambda: 0.0)
    for caller in ("a", "b", "c"):
        limiter.admit(caller)
        limiter.admit(caller)  # counted
    limiter.admit("d")  # "a" is forgotten, its count kept
    assert len(limiter._callers) == 3
    assert limiter.drain() == {"a": 1, "b": 1, "c": 1}  # no refill: drained as they are
    with pytest.raises(ValueError):
        RefusalLimiter(0)


def test_unchanged_re_reads_are_counted_until_quiet_or_old_then_drained() -> None:
    from usreview.hub.audit import RereadCounter

    now = [1_800_000_000.0]
    counter = RereadCounter(quiet=30.0, span=300.0, clock=lambda: now[0])
    for _ in range(6):  # an open study page: a re-read every 5 s
        counter.count("rev", "studies/1.2.3")
        now[0] += 5.0
    counter.count("rev", "studies")
    counter.count("rev2", "studies/1.2.3")  # another reviewer: a count of their own
    assert counter.drain() == []  # all still open
    now[0] += 26.0  # the study page left 31 s ago; the worklist and rev2's 26 s ago
    (page,) = counter.drain()
    assert (page.actor, page.resource, page.count) == ("rev", "studies/1.2.3", 6)
    assert page.detail() == {
        "count": 6,
        "from": "2027-01-15T08:00:00.000000Z",
        "to": "2027-01-15T08:00:25.000000Z",
    }
    assert counter.drain() == []
    # A page left open shows every span, however often it asks (rev2 left meanwhile).
    for _ in range(61):
        counter.count("rev", "studies")
        now[0] += 5.0
    assert [(r.actor, r.resource, r.count) for r in counter.drain()] == [
        ("rev", "studies", 62),
        ("rev2", "studies/1.2.3", 1),
    ]
    # Stopping hands over every count; nothing is counted twice.
    counter.count("rev", "studies")
    assert [(r.resource, r.count) for r in counter.drain(everything=True)] == [("studies", 1)]
    assert counter.drain(everything=True) == []


def test_the_reread_counter_is_bounded_and_hands_over_what_it_makes_room_from() -> None:
    from usreview.hub.audit import RereadCounter

    counter = RereadCounter(max_keys=2, clock=lambda: 0.0)
    for name in ("a", "b", "c"):
        counter.count("rev", name)
        counter.count("rev", name)
    assert len(counter._counts) == 2
    assert [(r.resource, r.count) for r in counter.drain()] == [("a", 2)]
    with pytest.raises(ValueError):
        RereadCounter(quiet=0)


def test_a_caller_cannot_make_a_line_that_stops_other_writers(tmp_path: Path) -> None:
    """A request path of tens of kilobytes (anonymous: its denial is recorded) is cut and
    digested; and a line longer than a read block (a large detail) does not stop another
    process's writer, which finds its start however far back it is."""
    path = tmp_path / "audit.log"
    ours, theirs = AuditLog(path, KEY), AuditLog(path, KEY)  # as two processes
    sent = "services/usreview/api/v1/" + "\u00e9" * 30_000
    line = ours.record("anonymous", AuditAction.DENIAL, sent, outcome="denied")
    assert len(line["resource"]) < 600 and line["resource"].startswith(sent[:200])
    assert "30025 characters, sha256 " in line["resource"]
    assert len(path.read_bytes().splitlines()[-1]) < 2_000
    ours.record("worker", AuditAction.READ, "instances/1.2.3", detail={"note": "\\" * 150_000})
    assert len(path.read_bytes().splitlines()[-1]) > 200_000  # escaped: longer than a block
    assert theirs.record("site-a", AuditAction.WRITE, "instances/1.2.4")["seq"] == 3
    assert verify(path, KEY).ok and verify(path, KEY).lines == 3


def _record_past_a_size_limit(path: Path, limit: int) -> str:
    """In a child process: record one line with files limited to ``limit`` bytes (a disk
    that fills in the middle of the line)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        AuditLog(path, KEY).record("worker", AuditAction.READ, "instances/" + "9" * 300)
    except AuditError as exc:
        return str(exc)
    return "recorded"


def test_a_line_the_disk_cut_short_is_taken_back(tmp_path: Path) -> None:
    """A write that fails half-way leaves no part of a line: the next append, once there is
    space again, succeeds (it found a damaged last line, and the service answered 503 to
    every request until the log was edited by hand)."""
    path = tmp_path / "audit.log"
    _fill(path, 3)
    before = path.read_bytes()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        said = pool.apply(_record_past_a_size_limit, (path, len(before) + 100))
    assert said.startswith("cannot write the audit log"), said
    assert path.read_bytes() == before  # the 100 bytes that fitted were taken back
    assert AuditLog(path, KEY).record("site-a", AuditAction.WRITE, "instances/1.2.9")["seq"] == 4
    assert verify(path, KEY).ok and verify(path, KEY).lines == 4


def test_last_lines_are_read_from_the_end_whatever_their_length(tmp_path: Path) -> None:
    """``hub audit --tail N`` reads the log's end, not the whole file (a log of years)."""
    from usreview.hub.audit import last_lines

    path = tmp_path / "audit.log"
    path.write_bytes(b"")
    assert last_lines(path, 3) == []
    lines = [b"a" * 10, b"b" * 200_000, b"c", b"d" * 70_000, b"\xff damaged"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    for count in range(1, 7):
        assert last_lines(path, count) == lines[-count:], count
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    assert last_lines(path, 2) == lines[-2:]

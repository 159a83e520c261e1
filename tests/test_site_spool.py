"""The gateway's spool: durable writes, acknowledgement by hash, rejection, crash leftovers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usreview.site import Spool, SpoolError
from usreview.site.spool import REJECTED


def test_put_names_the_file_by_uid_and_hash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    seen = []
    spool.add_listener(seen.append)
    item = spool.put("1.2.3.4", b"hello")
    assert item.path.name == f"1.2.3.4_{hashlib.sha256(b'hello').hexdigest()}.dcm"
    assert item.path.read_bytes() == b"hello"
    assert item.path.stat().st_mode & 0o077 == 0
    assert seen == [item]
    assert [p.sop_instance_uid for p in spool.pending()] == ["1.2.3.4"]
    assert spool.depth() == (1, 5)


def test_same_bytes_twice_is_one_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put("1.2.3", b"abc")
    spool.put("1.2.3", b"abc")
    spool.put("1.2.3", b"abd")  # same UID, other bytes: kept apart, the hub decides
    assert len(spool.pending()) == 2


def test_pending_is_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(5):
        item = spool.put(f"1.2.{i}", bytes([i]))
        os.utime(item.path, (1000 + (5 - i), 1000 + (5 - i)))
    assert [p.sop_instance_uid for p in spool.pending()] == [f"1.2.{i}" for i in range(4, -1, -1)]


def test_acknowledge_needs_the_right_hash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    item = spool.put("1.2.3", b"abc")
    assert not spool.acknowledge(item, hashlib.sha256(b"other").hexdigest())
    assert item.path.exists()
    assert spool.acknowledge(item, hashlib.sha256(b"abc").hexdigest())
    assert not item.path.exists()
    assert spool.pending() == []


def test_reject_keeps_the_instance_and_the_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    item = spool.put("1.2.3", b"abc")
    moved = spool.reject(item, "the hub refused (422 rejected_instance): not ultrasound")
    assert moved.parent.name == REJECTED and moved.read_bytes() == b"abc"
    assert spool.pending() == []
    (note,) = spool.rejected()
    assert note["sop_instance_uid"] == "1.2.3" and "not ultrasound" in str(note["reason"])


@pytest.mark.parametrize("uid", ["", "1.2.x", "../etc", "1." * 40 + "1", "1..2"])
def test_invalid_uids_are_refused(tmp_path: Path, uid: str) -> None:
    with pytest.raises(SpoolError, match="invalid SOP Instance UID"):
        Spool(tmp_path / "spool").put(uid, b"x")


def test_temporary_leftovers_are_removed_by_the_writer_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool" / ".0001.dcm.abc.part").write_bytes(b"half")
    Spool(tmp_path / "spool")  # a reader (status, the upload process) leaves them alone
    assert (tmp_path / "spool" / ".0001.dcm.abc.part").exists()
    assert spool.remove_leftovers() == 1
    assert not (tmp_path / "spool" / ".0001.dcm.abc.part").exists()


def test_write_failure_is_a_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    shutil.rmtree(tmp_path / "spool")
    (tmp_path / "spool").write_bytes(b"")  # the folder is gone: every write fails
    with pytest.raises(SpoolError, match=r"cannot spool 1\.2\.3"):
        spool.put("1.2.3", b"abc")


_WRITER = """
import sys
from usreview.site import Spool
spool = Spool(sys.argv[1])
if sys.argv[2] == "journal":
    spool.open_journal()
data = bytes(200_000)
for i in range(100000):
    spool.put(f"1.2.{i}", data + i.to_bytes(4, "big"))
    print(i, flush=True)
"""


@pytest.mark.parametrize("way", ["direct", "journal"])
def test_kill_9_while_writing_loses_no_acknowledged_instance(tmp_path: Path, way: str) -> None:
    # Each printed number is an instance put() returned for (a C-STORE success).
    for _ in range(3):
        root = tmp_path / f"spool{_}"
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), way], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            acknowledged = []
            deadline = time.monotonic() + 0.3 + 0.2 * _
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line:
                    acknowledged.append(int(line))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            acknowledged += [int(line) for line in proc.stdout.read().split()]
        spool = Spool(root)
        spool.remove_leftovers()
        if way == "journal":  # as the gateway starts: the journal replayed, then retired
            spool.open_journal()
            spool.close_journal()
        found = {item.sop_instance_uid for item in spool.pending()}
        assert acknowledged and {f"1.2.{i}" for i in acknowledged} <= found
        for item in spool.pending():  # nothing half-written under a final name
            assert hashlib.sha256(item.path.read_bytes()).hexdigest() == item.sha256
        assert not list(root.glob(".*.part"))


def test_item_looks_up_one_spooled_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    item = spool.put("1.2.3", b"abc")
    found = spool.item(item.path.name)
    assert found is not None and (found.sop_instance_uid, found.sha256) == ("1.2.3", item.sha256)
    assert found.size == 3
    assert spool.item("not-a-spool-name.dcm") is None
    spool.acknowledge(item, item.sha256)
    assert spool.item(item.path.name) is None

"""Backing up a running hub's state, and restoring an index older than the objects."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from usreview.hub.api.app import recover_shared_state
from usreview.hub.api.settings import DATABASE_URL_ENV, open_archive
from usreview.hub.audit import AuditAction, AuditLog, verify
from usreview.hub.backup import BackupError, backup_state
from usreview.hub.state import HubState, open_state
from usreview.store import Archive, InstanceMetadata

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def meta(n: int) -> InstanceMetadata:
    """Metadata of instance ``n`` (one study per ten instances)."""
    return InstanceMetadata(
        sop_instance_uid=f"1.2.826.0.1.{n}",
        study_instance_uid=f"1.2.826.0.2.{n // 10}",
        series_instance_uid=f"1.2.826.0.3.{n // 10}",
        sop_class_uid=US_IMAGE,
        kinds=["bmode"],
        plaintext_sha256=hashlib.sha256(f"plaintext {n}".encode()).hexdigest(),
        size=1000 + n,
    )


def envelope(n: int) -> bytes:
    return f"envelope {n} ".encode() + os.urandom(4096)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubState:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    return open_state(tmp_path / "state")


def _restore(backup: Path, state_root: Path) -> None:
    """What the README says: copy the folder back (``cp -a``) while the hub is stopped."""
    shutil.copytree(backup, state_root, symlinks=True)


def test_a_backup_taken_during_uploads_holds_every_indexed_object(
    state: HubState, tmp_path: Path
) -> None:
    archive = open_archive(state.root)
    audit = AuditLog(state.audit_log, state.audit_key.read_bytes())
    stored: list[int] = []
    stop = threading.Event()

    def upload() -> None:  # a site sending while the backup runs
        n = 0
        while not stop.is_set():
            archive.put("site-a", envelope(n), meta(n))
            audit.record("site-a", AuditAction.WRITE, f"instance/{meta(n).sop_instance_uid}")
            stored.append(n)
            n += 1

    writer = threading.Thread(target=upload)
    writer.start()
    during: list[int] = []

    def progress(done: int, total: int, copied: int) -> None:
        assert 0 < done <= total and copied > 0
        during.append(len(stored))
        time.sleep(0.002)  # long enough for uploads between the index and the objects

    try:
        while len(stored) < 20:
            time.sleep(0.01)
        report = backup_state(state.root, tmp_path / "backup", progress=progress)
    finally:
        stop.set()
        writer.join()
        archive.close()
    assert during[-1] > during[0]  # uploads went on while the files were copied
    backup = tmp_path / "backup"
    assert report.destination == backup and report.complete
    assert "archive/index.sqlite3" in report.databases
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    for key in ("hub.key", "at-rest.key", "audit.key", "cookie_secret", "admin-service.token"):
        assert stat.S_IMODE((backup / key).stat().st_mode) == 0o600
    left = [p.name for p in backup.rglob("*") if p.name.endswith(("-wal", "-shm", ".part"))]
    assert left == []

    with Archive.open(None, backup / "archive") as copy:
        check = copy.fsck()
        assert check.clean, check  # every indexed instance's object is there, unchanged
        assert check.checked >= 20
        for n in range(check.checked):
            assert copy.read_envelope("site-a", meta(n).sop_instance_uid)
    assert verify(backup / "audit.log", state.audit_key.read_bytes()).ok


def test_restoring_an_older_index_holds_the_newer_envelopes(
    state: HubState, tmp_path: Path
) -> None:
    with open_archive(state.root) as archive:
        for n in range(3):
            archive.put("site-a", envelope(n), meta(n))
    backup_state(state.root, tmp_path / "backup")
    with open_archive(state.root) as archive:  # acknowledged after the backup
        newer = [archive.put("site-a", envelope(n), meta(n)).record for n in range(3, 6)]

    # The index comes back from the backup, the objects from a newer copy.
    restored = tmp_path / "restored"
    _restore(tmp_path / "backup", restored)
    shutil.rmtree(restored / "archive" / "objects")
    shutil.copytree(state.root / "archive" / "objects", restored / "archive" / "objects")
    os.close(recover_shared_state(restored))  # what the service does when it starts

    for record in newer:  # moved aside, never deleted: the site holds a receipt
        held = restored / "archive" / "orphans" / record.object_key
        assert hashlib.sha256(held.read_bytes()).hexdigest() == record.envelope_sha256
        assert not (restored / "archive" / record.object_key).exists()
        assert stat.S_IMODE(held.parent.stat().st_mode) == 0o700
    started = json.loads((restored / "audit.log").read_text().splitlines()[-1])
    assert started["outcome"] == "started" and started["detail"]["orphans_held"] == 3
    with open_archive(restored) as archive:
        check = archive.fsck()
        assert check.clean and check.checked == 3 and check.orphans == ()


def test_a_postgresql_index_is_named_for_pg_dump(
    state: HubState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://hub:secret@db.example/usreview")
    report = backup_state(state.root, tmp_path / "backup")
    assert not report.complete
    (said,) = report.not_copied
    assert "pg_dump" in said and DATABASE_URL_ENV in said and "database_url" in said
    assert "hub:***@db.example/usreview" in said and "secret" not in said


def test_the_destination_must_be_new_and_outside_the_state(state: HubState, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BackupError, match="exists"):
        backup_state(state.root, tmp_path / "taken")
    with pytest.raises(BackupError, match="inside the state"):
        backup_state(state.root, state.root / "backup")
    with pytest.raises(BackupError, match="no hub state"):
        backup_state(tmp_path / "taken", tmp_path / "backup")
    assert not (tmp_path / "backup").exists()
    assert not (tmp_path / ".backup.partial").exists()


def test_no_key_rotation_runs_while_a_backup_copies(state: HubState, tmp_path: Path) -> None:
    """A backup copies the hub's keys and their transitions as one: a rotation meanwhile
    is refused (it says why) and one made afterwards is not in the copy."""
    from usreview.hub.commands import rotate_hub_key
    from usreview.hub.errors import StateError
    from usreview.hub.hubkeys import load_hub_keys

    refused: list[str] = []

    def progress(done: int, total: int, copied: int) -> None:
        if not refused:
            with pytest.raises(StateError, match="a key rotation or a backup") as caught:
                rotate_hub_key(state.root)
            refused.append(str(caught.value))

    before = load_hub_keys(state).current.key_id
    backup_state(state.root, tmp_path / "backup", progress=progress)
    assert refused and "try again once it has ended" in refused[0]
    copied = load_hub_keys(HubState(tmp_path / "backup"))
    assert copied.current.key_id == before and copied.transitions == ()
    assert not (tmp_path / "backup" / "hub-keys.lock").exists()  # only lives beside a hub
    rotate_hub_key(state.root)  # once the backup has ended
    assert load_hub_keys(state).current.key_id != before

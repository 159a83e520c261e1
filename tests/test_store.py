"""The durable archive, on SQLite and on a real PostgreSQL server started for the session."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pytest

import usreview.store
import usreview.store.database
import usreview.store.errors
import usreview.store.schema
from tests.conftest import write_us
from tests.store_support import T0, US_IMAGE, Clock, envelope, in_processes_at_once, meta
from usreview._sqlite import begin_immediate
from usreview.dicom import ImageKind, read
from usreview.errors import InputError, UsreviewError
from usreview.store import (
    TRANSITIONS,
    Archive,
    ConflictError,
    CorruptObjectError,
    InstanceMetadata,
    InvalidMetadataError,
    InvalidTransitionError,
    NotFoundError,
    Reviewer,
    SiteActivity,
    StorageError,
    StudyStatus,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path, clock: Clock) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=clock) as opened:
        yield opened


def object_files(root: Path, area: str = "objects") -> list[Path]:
    return sorted(p for p in (root / area).rglob("*") if p.is_file())


# -- storing -----------------------------------------------------------------------------


def test_put_stores_envelope_and_rows(archive: Archive, tmp_path: Path) -> None:
    data = envelope(1)
    path = tmp_path / "in.env"
    path.write_bytes(data)
    result = archive.put("site-a", path, meta(1))
    record = result.record
    assert not result.duplicate
    assert record.site == "site-a"
    assert record.sop_instance_uid == "1.2.826.0.1.1"
    assert record.study_instance_uid == "1.2.826.0.2.1"
    assert record.series_instance_uid == "1.2.826.0.3.1.1"
    assert record.kinds == (ImageKind.BMODE, ImageKind.COLOR_FLOW)
    assert record.size == 1001
    assert record.envelope_size == len(data)
    assert record.envelope_sha256 == hashlib.sha256(data).hexdigest()
    assert record.object_key == f"objects/{record.envelope_sha256[:2]}/{record.envelope_sha256}"
    assert record.received_at == T0 + timedelta(seconds=1)
    assert (archive.root / record.object_key).read_bytes() == data
    assert archive.read_envelope("site-a", record.sop_instance_uid) == data
    assert archive.get("site-a", record.sop_instance_uid) == record
    assert object_files(archive.root) == [archive.root / record.object_key]
    assert list((archive.root / "tmp").iterdir()) == []
    study = archive.study("site-a", "1.2.826.0.2.1")
    assert (study.status, study.series, study.instances) == (StudyStatus.RECEIVED, 1, 1)
    assert [r.sop_instance_uid for r in archive.receipts("site-a")] == ["1.2.826.0.1.1"]


def test_same_plaintext_again_is_a_duplicate(archive: Archive) -> None:
    first = archive.put("site-a", envelope(1), meta(1))
    again = archive.put("site-a", envelope(1), meta(1))  # re-sealed: other envelope bytes
    assert again.duplicate
    assert again.record == first.record
    assert len(object_files(archive.root)) == 1
    assert len(archive.list_instances("site-a")) == 1
    assert archive.list_conflicts() == []


def test_different_bytes_under_a_stored_uid_are_kept_aside(archive: Archive) -> None:
    original = envelope(1)
    archive.put("site-a", original, meta(1))
    other = envelope(1)
    with pytest.raises(ConflictError, match="different content") as caught:
        archive.put("site-a", other, meta(1, content="b"))
    assert caught.value.sop_instance_uid == "1.2.826.0.1.1"
    assert "nothing was overwritten" in str(caught.value)
    assert archive.read_envelope("site-a", "1.2.826.0.1.1") == original
    [conflict] = archive.list_conflicts()
    assert conflict.id == caught.value.conflict_id
    assert conflict.site == "site-a"
    assert conflict.plaintext_sha256 == meta(1, content="b").plaintext_sha256
    assert (archive.root / conflict.object_key).read_bytes() == other
    assert conflict.object_key.startswith("conflicts/")
    assert len(object_files(archive.root, "conflicts")) == 1
    assert len(archive.list_instances("site-a")) == 1
    resolved = archive.resolve_conflict(conflict.id, "scanner re-used UIDs; kept original")
    assert resolved.resolution == "scanner re-used UIDs; kept original"
    assert resolved.resolved_at is not None
    assert archive.list_conflicts() == []
    assert len(archive.list_conflicts(unresolved_only=False)) == 1
    with pytest.raises(NotFoundError):
        archive.resolve_conflict(conflict.id + 100, "x")


def test_site_activity_counts_each_site(archive: Archive) -> None:
    assert archive.site_activity() == []
    archive.put("site-a", envelope(1), meta(1, study=1))
    archive.put("site-a", envelope(2), meta(2, study=1))
    last_a = archive.put("site-a", envelope(3), meta(3, study=2)).record.received_at
    last_b = archive.put("site-b", envelope(4), meta(4, study=3)).record.received_at
    with pytest.raises(ConflictError):
        archive.put("site-b", envelope(4), meta(4, study=3, content="b"))
    with pytest.raises(ConflictError):  # a site whose only upload was refused
        archive.put("site-c", envelope(1), meta(1, study=1))
    activity = {a.site: a for a in archive.site_activity()}
    assert activity["site-a"] == SiteActivity("site-a", 3, 2, last_a, 0)
    assert activity["site-b"] == SiteActivity("site-b", 1, 1, last_b, 1)
    assert activity["site-c"] == SiteActivity("site-c", 0, 0, None, 1)
    assert last_a.tzinfo is not None and activity["site-a"].last_received == last_a
    for conflict in archive.list_conflicts():
        archive.resolve_conflict(conflict.id, "checked")
    assert [a.open_conflicts for a in archive.site_activity()] == [0, 0, 0]


def test_uids_of_another_site_conflict_without_saying_whose(archive: Archive) -> None:
    archive.put("site-a", envelope(1), meta(1))
    with pytest.raises(ConflictError) as same_uid:
        archive.put("site-b", envelope(1), meta(1))  # even the same plaintext
    with pytest.raises(ConflictError) as same_study:
        archive.put("site-b", envelope(2), meta(2, study=1, series=9))
    for caught in (same_uid, same_study):
        assert "site-a" not in str(caught.value)
        assert "already in use" in str(caught.value)
    reasons = [c.reason for c in archive.list_conflicts()]
    assert reasons == [
        "SOP Instance UID already stored by site site-a",
        "Study Instance UID belongs to site site-a",
    ]
    assert archive.receipts("site-b") == []
    assert archive.list_studies("site-b") == []


def test_series_of_another_study_conflicts(archive: Archive) -> None:
    archive.put("site-a", envelope(1), meta(1, study=1, series=1))
    bad = InstanceMetadata(
        sop_instance_uid="1.2.826.0.1.2",
        study_instance_uid="1.2.826.0.2.2",
        series_instance_uid="1.2.826.0.3.1.1",
        sop_class_uid=US_IMAGE,
        kinds=[],
        plaintext_sha256="0" * 64,
        size=0,
    )
    with pytest.raises(ConflictError, match="series belongs to another study"):
        archive.put("site-a", envelope(2), bad)
    assert [s.study_instance_uid for s in archive.list_studies("site-a")] == ["1.2.826.0.2.1"]


def test_disk_failure_acknowledges_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match=r"disk failed.*nothing was acknowledged"):
        archive.put("site-a", envelope(1), meta(1))
    monkeypatch.undo()
    assert archive.receipts("site-a") == []
    assert list((archive.root / "tmp").iterdir()) == []
    assert object_files(archive.root) == []
    assert not archive.put("site-a", envelope(1), meta(1)).duplicate  # sent again: stored


def test_a_database_failure_names_no_patient_data(
    archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """The error, its chained causes and the archive's log carry no values of the row."""
    import traceback

    failing = {
        "sqlite": [
            "CREATE TRIGGER fail BEFORE INSERT ON studies "
            "BEGIN INSERT INTO simulated_failure VALUES (1); END"
        ],
        "postgresql": [
            "CREATE FUNCTION fail() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'simulated_failure'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER fail BEFORE INSERT ON studies FOR EACH ROW EXECUTE FUNCTION fail()",
        ],
    }[archive._engine.dialect.name]
    with archive._engine.begin() as connection:
        for statement in failing:
            connection.exec_driver_sql(statement)
    identified = dataclasses.replace(
        meta(1),
        patient_name="DOE^JANE",
        patient_id="MRN-778899",
        patient_birth_date="1961-02-03",
        accession_number="ACC123",
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError, match=r"database failed.*simulated_failure") as raised:
        archive.put("site-a", envelope(1), identified)
    logged = "\n".join(traceback.format_exception(raised.value)) + caplog.text
    assert "INSERT INTO studies" in logged  # the statement that failed is there
    for value in ("DOE^JANE", "MRN-778899", "1961-02-03", "ACC123"):
        assert value not in logged
    assert archive.receipts("site-a") == []


def test_concurrent_puts_of_one_uid_store_it_once(archive: Archive) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        try:
            results.append(archive.put("site-a", envelope(1), meta(1)).duplicate)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False, True, True, True]
    assert len(archive.list_instances("site-a")) == 1
    report = archive.recover()  # the losers' objects were orphans
    assert len(report.orphans) <= 3
    assert report.clean
    assert len(object_files(archive.root)) == 1


def _open_and_close(url: str | None, root: Path) -> None:
    Archive.open(url, root).close()


def test_processes_that_open_a_new_archive_together_all_succeed(
    db_url: str | None, tmp_path: Path
) -> None:
    # The hub's service processes and its processing worker start together on a fresh
    # state: each creates the index (SQLite's switch to WAL, the tables) at once.
    for attempt in range(8):
        root = tmp_path / f"archive-{attempt}"
        assert in_processes_at_once(_open_and_close, 4, db_url, root) == [0, 0, 0, 0]
        with Archive.open(db_url, root) as archive:
            assert not archive.put("site-a", envelope(1), meta(1)).duplicate
            if db_url is not None:  # the next attempt starts from an empty database again
                with archive._engine.begin() as connection:
                    usreview.store.schema.Base.metadata.drop_all(connection)


# -- per-site isolation ------------------------------------------------------------------


def test_a_site_never_sees_another_sites_records(archive: Archive) -> None:
    a = archive.put("site-a", envelope(1), meta(1, study=1)).record
    b = archive.put("site-b", envelope(2), meta(2, study=2)).record
    with pytest.raises(NotFoundError) as other:
        archive.get("site-a", b.sop_instance_uid)
    with pytest.raises(NotFoundError) as missing:
        archive.get("site-a", "1.2.3.999")
    assert str(other.value).replace(b.sop_instance_uid, "X") == str(missing.value).replace(
        "1.2.3.999", "X"
    )
    for call in (
        lambda: archive.open_envelope("site-a", b.sop_instance_uid),
        lambda: archive.read_envelope("site-a", b.sop_instance_uid),
        lambda: archive.study("site-a", b.study_instance_uid),
        lambda: archive.history("site-a", b.study_instance_uid),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert archive.list_instances("site-a") == [a]
    assert archive.list_instances("site-b") == [b]
    assert archive.list_instances("site-a", study_instance_uid=b.study_instance_uid) == []
    assert [s.site for s in archive.list_studies("site-a")] == ["site-a"]
    assert [r.sop_instance_uid for r in archive.receipts("site-b")] == [b.sop_instance_uid]
    assert archive.list_instances(Reviewer("dr-x")) == [a, b]
    assert archive.list_instances(Reviewer("dr-y", frozenset({"site-b"}))) == [b]
    assert len(archive.list_studies(Reviewer("dr-x"))) == 2
    with pytest.raises(NotFoundError):
        archive.get(Reviewer("dr-y", frozenset({"site-b"})), a.sop_instance_uid)
    assert archive.get(Reviewer("dr-x"), a.sop_instance_uid) == a
    with archive.open_envelope(Reviewer("dr-x"), b.sop_instance_uid) as f:
        assert f.read().startswith(b"envelope 2 ")


def test_receipts_filter_by_uids_and_time(archive: Archive, clock: Clock) -> None:
    for n in range(1, 6):
        archive.put("site-a", envelope(n), meta(n))
    archive.put("site-b", envelope(9), meta(9, study=9))
    receipts = archive.receipts("site-a")
    assert [r.sop_instance_uid for r in receipts] == [f"1.2.826.0.1.{n}" for n in range(1, 6)]
    assert receipts[0].plaintext_sha256 == meta(1).plaintext_sha256
    assert receipts[0].size == 1001
    assert receipts[0].study_instance_uid == "1.2.826.0.2.1"
    asked = ["1.2.826.0.1.2", "1.2.826.0.1.4", "1.2.826.0.1.77", "1.2.826.0.1.9"]
    assert [r.sop_instance_uid for r in archive.receipts("site-a", sop_instance_uids=asked)] == [
        "1.2.826.0.1.2",
        "1.2.826.0.1.4",
    ]
    since = receipts[3].received_at
    assert len(archive.receipts("site-a", since=since)) == 2
    many = [f"1.2.826.0.1.{n}" for n in range(1, 1200)]
    assert len(archive.receipts("site-a", sop_instance_uids=many)) == 5


# -- status ------------------------------------------------------------------------------


def test_status_moves_with_timestamps_and_history(archive: Archive) -> None:
    archive.put("site-a", envelope(1), meta(1))
    uid = "1.2.826.0.2.1"
    processed = archive.set_status(uid, StudyStatus.PROCESSED, actor="pipeline")
    assert processed.status is StudyStatus.PROCESSED
    assert processed.status_changed_at == T0 + timedelta(seconds=2)
    with pytest.raises(InvalidTransitionError, match="from processed to delivered"):
        archive.set_status(uid, StudyStatus.DELIVERED)
    with pytest.raises(InvalidTransitionError, match="is processed, not received"):
        archive.set_status(uid, StudyStatus.IN_REVIEW, expected=StudyStatus.RECEIVED)
    archive.set_status(uid, StudyStatus.IN_REVIEW, expected=StudyStatus.PROCESSED)
    archive.put("site-a", envelope(2), meta(2))  # in review: a new instance does not reset
    assert archive.study("site-a", uid).status is StudyStatus.IN_REVIEW
    archive.set_status(uid, StudyStatus.PUBLISHED, actor="dr-x")
    archive.set_status(uid, StudyStatus.DELIVERED)
    archive.put("site-a", envelope(3), meta(3))  # delivered: new instances reopen it
    assert archive.study("site-a", uid).status is StudyStatus.RECEIVED
    archive.set_status(uid, StudyStatus.FAILED, reason="doppler_indices: no spectrum")
    failed = archive.study(Reviewer("dr-x"), uid)
    assert failed.reason == "doppler_indices: no spectrum"
    assert failed.instances == 3
    history = archive.history("site-a", uid)
    assert [(h.previous, h.status) for h in history] == [
        (None, StudyStatus.RECEIVED),
        (StudyStatus.RECEIVED, StudyStatus.PROCESSED),
        (StudyStatus.PROCESSED, StudyStatus.IN_REVIEW),
        (StudyStatus.IN_REVIEW, StudyStatus.PUBLISHED),
        (StudyStatus.PUBLISHED, StudyStatus.DELIVERED),
        (StudyStatus.DELIVERED, StudyStatus.RECEIVED),
        (StudyStatus.RECEIVED, StudyStatus.FAILED),
    ]
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert history[1].actor == "pipeline"
    assert history[5].reason == "new instance"
    assert all(h.at.tzinfo is UTC for h in history)
    assert [s.study_instance_uid for s in archive.list_studies("site-a", status="failed")] == [uid]
    assert archive.list_studies("site-a", status=StudyStatus.RECEIVED) == []
    with pytest.raises(NotFoundError):
        archive.set_status("1.2.3.4", StudyStatus.PROCESSED)


def test_transition_table() -> None:
    assert set(TRANSITIONS) == set(StudyStatus)
    for status, allowed in TRANSITIONS.items():
        assert status not in allowed
    assert StudyStatus.FAILED not in TRANSITIONS[StudyStatus.DELIVERED]
    assert TRANSITIONS[StudyStatus.FAILED] == {StudyStatus.RECEIVED, StudyStatus.IN_REVIEW}
    assert [s.value for s in StudyStatus] == [
        "received",
        "processed",
        "in_review",
        "published",
        "delivered",
        "failed",
    ]


# -- recovery ----------------------------------------------------------------------------


def test_recover_holds_orphans_and_removes_temp_files(archive: Archive) -> None:
    kept = archive.put("site-a", envelope(1), meta(1)).record
    orphan_data = b"written, then the process died before the commit"
    sha = hashlib.sha256(orphan_data).hexdigest()
    (archive.root / "objects" / sha[:2]).mkdir(exist_ok=True)
    (archive.root / "objects" / sha[:2] / sha).write_bytes(orphan_data)
    (archive.root / "tmp" / "put-x.part").write_bytes(b"half")
    (archive.root / "objects" / "README").write_text("not an object")
    report = archive.recover()
    assert report.temp_files_removed == 1
    assert report.orphans == (f"objects/{sha[:2]}/{sha}",)
    assert report.clean
    assert report.checked == 1
    assert set(object_files(archive.root)) == {
        archive.root / "objects" / "README",
        archive.root / kept.object_key,
    }
    # The orphan is held, not deleted: it may be an acknowledged envelope whose row is gone.
    held = archive.root / "orphans" / "objects" / sha[:2] / sha
    assert held.read_bytes() == orphan_data
    assert held.parent.stat().st_mode & 0o777 == 0o700
    assert not (archive.root / "tmp" / "put-x.part").exists()
    assert archive.recover().orphans == ()
    assert held.exists() and archive.fsck().clean


def test_fsck_reports_missing_and_corrupt_objects(archive: Archive) -> None:
    one = archive.put("site-a", envelope(1), meta(1)).record
    two = archive.put("site-a", envelope(2), meta(2)).record
    assert archive.fsck().clean
    (archive.root / one.object_key).write_bytes(b"bit rot")
    (archive.root / two.object_key).unlink()
    report = archive.fsck()
    assert (report.missing, report.corrupt, report.checked) == (
        (two.sop_instance_uid,),
        (one.sop_instance_uid,),
        2,
    )
    assert archive.recover().missing == (two.sop_instance_uid,)
    with pytest.raises(CorruptObjectError, match="changed on disk"):
        archive.read_envelope("site-a", one.sop_instance_uid)
    with pytest.raises(CorruptObjectError, match="missing"):
        archive.read_envelope("site-a", two.sop_instance_uid)


def test_reopening_keeps_everything(db_url: str | None, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    with Archive.open(db_url, root) as first:
        stored = first.put("site-a", envelope(1), meta(1)).record
    with Archive.open(db_url, root) as second:
        assert second.recover().clean
        assert second.get("site-a", stored.sop_instance_uid) == stored
        assert second.put("site-a", envelope(1), meta(1)).duplicate


# -- SQLite and validation ---------------------------------------------------------------


def test_sqlite_runs_wal_with_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    with Archive.open(None, tmp_path) as archive, archive._engine.connect() as conn:
        pragmas = [
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys")
        ]
    assert pragmas == ["wal", 2, 1]
    assert (tmp_path / "index.sqlite3").is_file()


@contextlib.contextmanager
def _write_lock_held(path: Path, seconds: float) -> Iterator[threading.Event]:
    """Another connection holds ``path``'s write lock for ``seconds``.

    The event is set just before the holder's COMMIT frees the lock: a writer that got the
    lock finds it set. (Set after the COMMIT, it could still be unset: the waiting writer
    may take the lock and check before the holder's thread runs again.)
    """
    taken, released = threading.Event(), threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        released.set()
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    try:
        yield released
    finally:
        holder.join()


def test_a_writer_waits_for_another_writer_and_then_writes(tmp_path: Path) -> None:
    with Archive.open(None, tmp_path) as archive:
        with _write_lock_held(tmp_path / "index.sqlite3", 0.5) as released:
            assert not archive.put("site-a", envelope(1), meta(1)).duplicate
            assert released.is_set()  # it could only commit once the lock was free
        assert archive.get("site-a", meta(1).sop_instance_uid).size == meta(1).size


def test_a_writer_kept_waiting_past_the_timeout_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usreview.store.database, "BUSY_TIMEOUT_S", 0.3)
    with Archive.open(None, tmp_path) as archive:
        with _write_lock_held(tmp_path / "index.sqlite3", 2.0):
            started = time.monotonic()
            with pytest.raises(StorageError, match="database is locked"):
                archive.put("site-a", envelope(1), meta(1))
            assert time.monotonic() - started >= 0.3
        assert not archive.put("site-a", envelope(1), meta(1)).duplicate  # nothing was kept


def test_begin_immediate_gives_the_connection_its_busy_timeout_back(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = sqlite3.connect(path, timeout=5, isolation_level=None)
    with _write_lock_held(path, 0.3) as released:
        begin_immediate(db, 2.0)  # waits for the other writer, then holds the lock
        assert released.is_set()
    db.execute("COMMIT")
    assert db.execute("PRAGMA busy_timeout").fetchone() == (2000,)
    with _write_lock_held(path, 1.0), pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(db, 0.1)
    assert db.execute("PRAGMA busy_timeout").fetchone() == (100,)
    assert not db.in_transaction
    db.close()


def test_bad_urls_and_unreachable_databases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        Archive.open("mysql://x@y/z", tmp_path)
    with pytest.raises(ValueError, match="must be a file"):
        Archive.open("sqlite://", tmp_path)
    with pytest.raises(StorageError, match="opening the archive: the archive's database failed"):
        Archive.open(f"postgresql://nobody@/x?host={tmp_path}/nothing-here", tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sop_instance_uid", "1.2.abc", "sop_instance_uid must be a DICOM UID"),
        ("study_instance_uid", "1." * 40, "study_instance_uid must be a DICOM UID"),
        ("plaintext_sha256", "abc", "plaintext_sha256 must be 64"),
        ("size", -1, "size must be a non-negative integer"),
        ("kinds", ["xray"], "kinds must be image kinds"),
    ],
)
def test_metadata_is_validated(field: str, value: object, message: str) -> None:
    values: dict[str, object] = {
        "sop_instance_uid": "1.2.3",
        "study_instance_uid": "1.2.4",
        "series_instance_uid": "1.2.5",
        "sop_class_uid": US_IMAGE,
        "kinds": ["bmode"],
        "plaintext_sha256": "A" * 64,
        "size": 1,
        field: value,
    }
    with pytest.raises(InvalidMetadataError, match=message) as caught:
        InstanceMetadata(**values)  # type: ignore[arg-type]
    assert isinstance(caught.value, InputError)


def test_site_names_and_envelope_paths_are_validated(tmp_path: Path) -> None:
    with Archive.open(None, tmp_path) as archive:
        for bad in ("", "../etc", "a" * 65, "with space"):
            with pytest.raises(InvalidMetadataError, match="site must be"):
                archive.put(bad, b"x", meta(1))
        with pytest.raises(InvalidMetadataError, match="envelope: no such file"):
            archive.put("site-a", tmp_path / "missing.env", meta(1))
        with pytest.raises(InvalidMetadataError, match="site must be"):
            archive.receipts("../b")


def test_metadata_from_an_ultrasound_instance(tmp_path: Path) -> None:
    path = write_us(tmp_path / "us.dcm", np.zeros((1, 16, 16), np.uint8))
    data = path.read_bytes()
    instance = read(path)
    made = InstanceMetadata.from_instance(
        instance, plaintext_sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    assert made.sop_instance_uid == instance.sop_instance_uid
    assert made.study_instance_uid == instance.study_instance_uid
    assert made.series_instance_uid == instance.series_instance_uid
    assert made.sop_class_uid == US_IMAGE
    assert made.kinds == tuple(sorted(set(instance.kinds)))
    assert made.size == len(data)


def test_public_api_is_pinned() -> None:
    assert set(usreview.store.__all__) == {
        "TRANSITIONS",
        "Archive",
        "Caller",
        "ConflictError",
        "ConflictRecord",
        "CorruptObjectError",
        "InstanceMetadata",
        "InstanceRecord",
        "InvalidMetadataError",
        "InvalidTransitionError",
        "NotFoundError",
        "PutResult",
        "Receipt",
        "RecoveryReport",
        "ResultFeed",
        "ResultRecord",
        "Reviewer",
        "SchemaVersionError",
        "SiteActivity",
        "StatusChange",
        "StorageError",
        "StoreError",
        "StudyRecord",
        "StudyStatus",
    }
    for name in usreview.store.__all__:
        assert hasattr(usreview.store, name)
    for name in usreview.store.errors.__all__:
        error = getattr(usreview.store.errors, name)
        assert issubclass(error, UsreviewError)
        assert name in (usreview.store.__doc__ or "")
        assert name in (usreview.store.errors.__doc__ or "")

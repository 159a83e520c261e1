"""Teaching copies at rest: encrypted with the hub's at-rest key, durable, never half-written.

A de-identified copy of a simulated B-mode is recorded as a case of a stored study: on disk
it is AES-256-GCM ciphertext (no DICOM preamble, no header text), it reads back as the same
bytes, an altered, swapped or wrongly keyed file is refused, and a case whose recording fails
leaves neither rows nor files; the folder of a case whose recording a crash cut short (files
written, rows not committed) is moved aside (never deleted) when the service next opens its
context.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from tests.store_support import meta
from tests.teaching_support import teaching_case
from usreview.dicom import read
from usreview.hub.api.app import open_context
from usreview.hub.api.settings import ServiceSettings
from usreview.hub.api.teaching_cases import teaching_store
from usreview.hub.audit import AuditLog
from usreview.simulate import simulate
from usreview.store import (
    Archive,
    CorruptObjectError,
    InvalidMetadataError,
    NotFoundError,
    Reviewer,
)
from usreview.store.teaching import (
    MAGIC,
    TeachingCase,
    TeachingStore,
    remove_orphan_cases,
)

SITE = "site-a"
DR = Reviewer("dr-x")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive.open(None, tmp_path / "archive") as opened:
        for n in (1, 2):  # two studies to make cases of
            opened.put(SITE, f"envelope {n}".encode(), meta(n, study=n))
        yield opened


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [path] = simulate("bmode", tmp_path_factory.mktemp("bmode"), seed=4)
    return path


def test_a_copy_is_encrypted_at_rest_and_reads_back_the_same(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    key = secrets.token_bytes(32)
    study = "1.2.826.0.2.1"
    case = teaching_case(tmp_path / "case", source, study)
    plaintext = (tmp_path / "case" / f"{case.instances[0].sop_instance_uid}.dcm").read_bytes()
    store = TeachingStore(archive, key)
    recorded = store.add(DR, study, tmp_path / "case", case)
    assert not (tmp_path / "case").exists()  # the plaintext folder is gone
    [item] = recorded.instances
    files = [p for p in (archive.root / "teaching").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{item.sop_instance_uid}.sealed"]
    stored = files[0].read_bytes()
    assert stored.startswith(MAGIC) and stored[128:132] != b"DICM"
    with pytest.raises(InvalidDicomError):
        dcmread(files[0])
    assert len(stored) == len(plaintext) + len(MAGIC) + 12 + 16
    for text in (b"DICM", b"TEACHING-1", item.sop_instance_uid.encode(), b"ORIGINAL"):
        assert text not in stored, text
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700

    same, data = store.read_instance(case.case_uid, item.sop_instance_uid)
    assert same == item and data == plaintext
    assert dcmread(io.BytesIO(data)).PatientIdentityRemoved == "YES"
    assert TeachingStore(archive, key).case_of_study(DR, study) == recorded

    # Another key, an altered byte, or another instance's file under this name: refused.
    with pytest.raises(CorruptObjectError, match="at-rest key"):
        TeachingStore(archive, secrets.token_bytes(32)).read_instance(
            case.case_uid, item.sop_instance_uid
        )
    altered = bytearray(stored)
    altered[len(stored) // 2] ^= 1
    files[0].write_bytes(bytes(altered))
    with pytest.raises(CorruptObjectError, match="has changed"):
        store.read_instance(case.case_uid, item.sop_instance_uid)
    files[0].unlink()
    with pytest.raises(CorruptObjectError, match="missing"):
        store.read_instance(case.case_uid, item.sop_instance_uid)


def test_a_case_keeps_the_experts_measurements_takes_new_words_and_can_be_withdrawn(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    store = TeachingStore(archive, secrets.token_bytes(32))
    study = "1.2.826.0.2.1"
    depth = {"name": "distance", "value": 9.0, "unit": "mm", "origin": "reviewer",
             "decision": "accepted", "label": "Cyst depth"}  # fmt: skip
    case = replace(teaching_case(tmp_path / "case", source, study), measurements=(depth,))
    recorded = store.add(DR, study, tmp_path / "case", case)
    assert recorded.measurements == (depth,) and store.case(case.case_uid) == recorded
    amended = store.set_text(
        DR, study, exam_type="general", findings="septated cyst", impression="complex cyst",
        recommendations="follow-up", measurements=[{**depth, "value": 11.0}],
    )  # fmt: skip
    assert (amended.findings, amended.measurements[0]["value"]) == ("septated cyst", 11.0)
    assert amended.instances == recorded.instances  # the same copies
    with pytest.raises(NotFoundError):
        store.set_text(Reviewer("dr-y", frozenset({"elsewhere"})), study, exam_type=None,
                       findings="", impression="", recommendations="")  # fmt: skip
    with pytest.raises(NotFoundError):  # not a study this reviewer may see
        store.remove(Reviewer("dr-y", frozenset({"elsewhere"})), case.case_uid)
    before = store.library_mark()
    assert store.remove(DR, case.case_uid) == amended
    assert store.cases() == [] and store.library_mark() != before
    assert not (archive.root / "teaching" / case.case_uid).exists()
    with pytest.raises(NotFoundError):
        store.remove(DR, case.case_uid)
    assert store.case_of_study(DR, study) is None  # the study can be made a case again


def test_a_case_recorded_meanwhile_by_another_process_is_the_case(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    """Two service processes make the same study's case at once (each holds only its own
    lock): the second to record gets the first's case, and its own copies are removed."""
    key = secrets.token_bytes(32)
    first, second = TeachingStore(archive, key), TeachingStore(archive, key)
    study = "1.2.826.0.2.1"
    ours = teaching_case(tmp_path / "ours", source, study)
    theirs = teaching_case(tmp_path / "theirs", source, study)
    assert first.case_of_study(DR, study) is None and second.case_of_study(DR, study) is None
    won = first.add(DR, study, tmp_path / "ours", ours)
    lost = second.add(DR, study, tmp_path / "theirs", theirs)
    assert lost == won and lost.case_uid == ours.case_uid
    assert not (archive.root / "teaching" / theirs.case_uid).exists()
    assert [c.case_uid for c in second.cases()] == [ours.case_uid]


def test_a_failed_recording_leaves_no_file_and_no_case(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    store = TeachingStore(archive, secrets.token_bytes(32))
    case = teaching_case(tmp_path / "a", source, "1.2.826.0.2.2")
    # Not a study this archive holds: refused when the rows are committed, after the files.
    with pytest.raises(NotFoundError, match="no study"):
        store.add(DR, "1.2.826.0.2.99", tmp_path / "a", case)
    assert not [p for p in (archive.root / "teaching").rglob("*") if p.is_file()]
    assert store.cases() == []

    # A file that is not the one described is refused before anything is written.
    case = teaching_case(tmp_path / "b", source, "1.2.826.0.2.2")
    wrong = replace(case.instances[0], sha256="0" * 64)
    with pytest.raises(InvalidMetadataError, match="not the one described"):
        store.add(DR, "1.2.826.0.2.2", tmp_path / "b", replace(case, instances=(wrong,)))
    assert not list((archive.root / "teaching").rglob("*.sealed"))
    assert not [p for p in (archive.root / "teaching").rglob("*.part")]
    assert store.cases() == []


def test_the_key_must_be_32_bytes(archive: Archive) -> None:
    for key in (b"", os.urandom(16), os.urandom(33)):
        with pytest.raises(InvalidMetadataError, match="32 bytes"):
            TeachingStore(archive, key)


def _crash_before_commit(state: Path, study: str, folder: Path, case: TeachingCase) -> None:
    """In a child process: record ``case``, dying (as kill -9) once its files are written."""
    with Archive.open(None, state / "archive") as archive:
        store = TeachingStore(archive, (state / "at-rest.key").read_bytes())
        store._insert = lambda *args: os._exit(9)  # type: ignore[method-assign]
        store.add(DR, study, folder, case)


def test_the_service_moves_aside_at_start_the_folder_of_a_case_a_crash_left_uncommitted(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    context = open_context(state, ServiceSettings(parse_workers=1))
    try:
        assert remove_orphan_cases(context.archive) == ()  # no teaching folder yet
        for n in (1, 2):
            context.archive.put(SITE, f"envelope {n}".encode(), meta(n, study=n))
        kept = teaching_store(context).add(
            DR,
            "1.2.826.0.2.1",
            tmp_path / "a",
            teaching_case(tmp_path / "a", source, "1.2.826.0.2.1"),
        )
        lost = teaching_case(tmp_path / "b", source, "1.2.826.0.2.2")
        child = multiprocessing.get_context("fork").Process(
            target=_crash_before_commit, args=(state, "1.2.826.0.2.2", tmp_path / "b", lost)
        )
        child.start()
        child.join(60)
        assert child.exitcode == 9
    finally:
        context.close()
    teaching = state / "archive" / "teaching"
    assert list((teaching / lost.case_uid).glob("*.sealed"))  # the files, without rows
    (teaching / "2.25.7").mkdir()  # a crash right after the folder was made

    lost_files = {p.name: p.read_bytes() for p in (teaching / lost.case_uid).iterdir()}
    with caplog.at_level(logging.WARNING, logger="usreview.service"):
        context = open_context(state, ServiceSettings(parse_workers=1))
    try:
        assert sorted(p.name for p in teaching.iterdir()) == sorted([kept.case_uid, "orphans"])
        held = teaching / "orphans"
        assert sorted(p.name for p in held.iterdir()) == sorted([lost.case_uid, "2.25.7"])
        assert {p.name: p.read_bytes() for p in (held / lost.case_uid).iterdir()} == lost_files
        store = teaching_store(context)
        assert [c.case_uid for c in store.cases()] == [kept.case_uid]
        item, data = store.read_instance(kept.case_uid, kept.instances[0].sop_instance_uid)
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert store.case_of_study(DR, "1.2.826.0.2.2") is None
    finally:
        context.close()
    moved = sorted([lost.case_uid, "2.25.7"])
    assert any(", ".join(moved) in r.getMessage() for r in caplog.records)
    audit = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    started = [line["detail"] for line in audit if line["outcome"] == "started"]
    assert [d["teaching_orphans_held"] for d in started] == [[], moved]


def test_an_index_older_than_a_recorded_case_moves_its_folder_aside_durably(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    """The case's rows are gone (an index restored from an older backup), its encrypted
    files are not: they are held in ``teaching/orphans/`` (folders 0700), never deleted."""
    key = secrets.token_bytes(32)
    case = TeachingStore(archive, key).add(
        DR, "1.2.826.0.2.1", tmp_path / "a", teaching_case(tmp_path / "a", source, "1.2.826.0.2.1")
    )
    teaching = archive.root / "teaching"
    files = {p.name: p.read_bytes() for p in (teaching / case.case_uid).iterdir()}

    with Archive.open(f"sqlite:///{tmp_path / 'older.sqlite3'}", archive.root) as older:
        assert remove_orphan_cases(older) == (case.case_uid,)
        assert remove_orphan_cases(older) == ()  # held once; "orphans" is not a case
        assert sorted(p.name for p in teaching.iterdir()) == ["orphans"]
        held = teaching / "orphans" / case.case_uid
        assert {p.name: p.read_bytes() for p in held.iterdir()} == files
        for folder in (held, held.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        (teaching / case.case_uid).mkdir(mode=0o700)  # the same name left again
        (teaching / case.case_uid / "again.sealed").write_bytes(b"again")
        assert remove_orphan_cases(older) == (case.case_uid,)
    assert {p.name: p.read_bytes() for p in held.iterdir()} == files  # not replaced
    assert (held.parent / f"{case.case_uid}.2" / "again.sealed").read_bytes() == b"again"


def test_the_case_library_describes_each_copy_once_and_passes_over_a_damaged_one(
    archive: Archive, source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from usreview.hub.audit import AuditLog
    from usreview.processing.case_library import CaseLibrary
    from usreview.processing.similarity import VERSION, describe

    store = TeachingStore(archive, secrets.token_bytes(32))
    cases = {}
    for n, study in enumerate(("1.2.826.0.2.1", "1.2.826.0.2.2")):
        case = teaching_case(tmp_path / f"case{n}", source, study)
        cases[study] = store.add(DR, study, tmp_path / f"case{n}", case)
    now = [0.0]
    audit = AuditLog(tmp_path / "audit.log", secrets.token_bytes(32))
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    library = CaseLibrary(store, scratch, audit, "worker", clock=lambda: now[0])
    [first, second] = [cases[s].instances[0].sop_instance_uid for s in sorted(cases)]

    # An outdated descriptor is made again; a damaged copy is passed over, logged.
    store.set_descriptor(first, {"kind": "bmode", "version": "0", "vector": [1.0]})
    sealed = archive.root / "teaching" / cases["1.2.826.0.2.2"].case_uid / f"{second}.sealed"
    sealed.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, "usreview.worker"):
        assert [entry.sop_instance_uid for _, entry in library.entries()] == [first]
    assert "is passed over" in caplog.text and second in caplog.text
    expected = describe(read(source))
    assert expected is not None
    recorded = store.descriptors([first, second])
    assert list(recorded) == [first] and recorded[first]["version"] == VERSION
    np.testing.assert_allclose(recorded[first]["vector"], expected.vector, atol=1e-6)
    # The query's own study is left out.
    query = library.similar(expected, "1.2.826.0.2.1")
    assert query == []
    [match] = library.similar(expected, "1.2.826.0.2.9")
    assert match.entry.case_uid == cases["1.2.826.0.2.1"].case_uid and match.similarity > 0.999

    # Read again only when stale, and each copy is described once.
    assert len(audit.path.read_text().splitlines()) == 1  # the one copy described
    cached = library.entries()
    now[0] = 10.0
    assert library.entries() is cached
    now[0] = 100.0
    again = library.entries()
    assert again is not cached and again == cached
    assert len(audit.path.read_text().splitlines()) == 1
    # A case made meanwhile is read at once, not at the next refresh (it waited 30 s before).
    archive.put(SITE, b"envelope 3", meta(3, study=3))
    third = store.add(DR, "1.2.826.0.2.3", tmp_path / "case3", teaching_case(
        tmp_path / "case3", source, "1.2.826.0.2.3"
    ))  # fmt: skip
    now[0] = 101.0
    uids = [entry.sop_instance_uid for _, entry in library.entries()]
    assert uids == [first, third.instances[0].sop_instance_uid]
    assert len(audit.path.read_text().splitlines()) == 2  # the new copy, described once


def _library(
    archive: Archive, source: Path, folder: Path, studies: int, **options: Any
) -> tuple[TeachingStore, list[TeachingCase], Any]:
    """``studies`` cases of ``source`` (studies 1.2.826.0.2.1, .2, ...) and a case library."""
    from usreview.processing.case_library import CaseLibrary

    for n in range(3, studies + 1):  # the fixture holds studies 1 and 2
        archive.put(SITE, f"envelope {n}".encode(), meta(n, study=n))
    store = TeachingStore(archive, secrets.token_bytes(32))
    cases = []
    for n in range(1, studies + 1):
        study = f"1.2.826.0.2.{n}"
        cases.append(
            store.add(
                DR, study, folder / f"case{n}", teaching_case(folder / f"case{n}", source, study)
            )
        )
    scratch = folder / "scratch"
    scratch.mkdir(mode=0o700)
    audit = AuditLog(folder / "audit.log", secrets.token_bytes(32))
    return store, cases, CaseLibrary(store, scratch, audit, "worker", **options)


def _audited(library: Any) -> list[tuple[str, str]]:
    lines = library.audit.path.read_text().splitlines() if library.audit.path.exists() else []
    return [
        (json.loads(line)["resource"].rsplit("/", 1)[1], json.loads(line)["outcome"])
        for line in lines
    ]


def test_damaged_descriptor_records_are_made_again_not_raised(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    from sqlalchemy import text

    from usreview.processing.similarity import VERSION, describe

    store, cases, library = _library(archive, source, tmp_path, 4)
    expected = describe(read(source))
    assert expected is not None
    uids = [c.instances[0].sop_instance_uid for c in cases]
    size = len(expected.vector)
    # An integer no float holds; a vector 5 times too long (it ranked first, similarity
    # capped at 1.00); a vector of the opposite direction, too long (similarity -5).
    store.set_descriptor(uids[0], {"kind": "bmode", "version": VERSION, "vector": [10**400] * size})
    store.set_descriptor(
        uids[1], {"kind": "bmode", "version": VERSION, "vector": [5 * v for v in expected.vector]}
    )
    store.set_descriptor(
        uids[2], {"kind": "bmode", "version": VERSION, "vector": [-5 * v for v in expected.vector]}
    )
    # A record that is not even JSON: the cases still list (trainees and scientists never
    # read descriptors), and it is made again too.
    with archive._engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE teaching_instances SET descriptor = :damaged WHERE sop_instance_uid = :uid"
            ),
            {"damaged": '{"kind": "bm', "uid": uids[3]},
        )
    assert [c.case_uid for c in store.cases()] == [c.case_uid for c in reversed(cases)]
    matches = library.similar(expected, "1.2.826.0.2.9", limit=4)
    assert sorted(m.entry.sop_instance_uid for m in matches) == sorted(uids)
    assert all(m.similarity == pytest.approx(1.0, abs=1e-6) for m in matches)
    recorded = store.descriptors(uids)
    for uid in uids:  # made again from the copy, and recorded
        np.testing.assert_allclose(recorded[uid]["vector"], expected.vector, atol=1e-6)
    assert sorted(_audited(library)) == sorted((uid, "described") for uid in uids)


def test_archive_failures_are_tried_again_and_odd_errors_pass_over_one_copy(
    archive: Archive, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usreview.processing.case_library as case_library
    from usreview.processing.similarity import describe
    from usreview.store import StorageError

    now = [0.0]
    store, cases, library = _library(archive, source, tmp_path, 3, clock=lambda: now[0])
    first, second, third = (c.instances[0].sop_instance_uid for c in cases)
    expected = describe(read(source))
    assert expected is not None
    failing = {"read": {first}, "record": {second}}
    read_instance, set_descriptor = store.read_instance, store.set_descriptor

    def flaky_read(case_uid: str, uid: str) -> Any:
        if uid in failing["read"]:
            raise StorageError("reading a teaching copy: the archive's disk failed (I/O error)")
        return read_instance(case_uid, uid)

    def flaky_record(uid: str, descriptor: Any) -> None:
        if uid in failing["record"]:
            raise StorageError("recording a descriptor: the archive's database failed (locked)")
        set_descriptor(uid, descriptor)

    def out_of_memory(instance: Any) -> Any:
        if instance.sop_instance_uid == third:
            raise MemoryError("Unable to allocate 8.00 GiB")
        return describe(instance)

    monkeypatch.setattr(store, "read_instance", flaky_read)
    monkeypatch.setattr(store, "set_descriptor", flaky_record)
    monkeypatch.setattr(case_library, "describe", out_of_memory)
    # The disk fails for the first: left for later. The database fails for the second: it
    # is compared all the same. The third cannot be described: passed over, not raised.
    found = [m.entry.sop_instance_uid for m in library.similar(expected, "1.2.826.0.2.9")]
    assert found == [second]
    assert list(store.descriptors([first, second, third])) == []
    assert sorted(_audited(library)) == sorted(
        [(second, "described"), (third, "described"), (third, "not described")]
    )
    failing["read"].clear()
    now[0] = 100.0  # the next refresh
    found = [m.entry.sop_instance_uid for m in library.similar(expected, "1.2.826.0.2.9")]
    assert sorted(found) == sorted([first, second])
    assert list(store.descriptors([first, second, third])) == [first]


def test_an_instance_that_cannot_be_described_for_good_is_read_once_for_all_workers(
    archive: Archive, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usreview.processing.case_library as case_library
    from usreview.errors import CorruptPixelDataError
    from usreview.processing.case_library import CaseLibrary
    from usreview.processing.similarity import VERSION, Descriptor, describe

    now = [0.0]
    store, cases, library = _library(archive, source, tmp_path, 3, clock=lambda: now[0])
    uncompared, undecodable, still = (c.instances[0].sop_instance_uid for c in cases)
    expected = describe(read(source))
    assert expected is not None
    read_instance, reads = store.read_instance, []

    def counted(case_uid: str, uid: str) -> Any:
        reads.append(uid)
        return read_instance(case_uid, uid)

    def some_fail(instance: Any) -> Any:  # a kind that is not compared; pixels that do not decode
        if instance.sop_instance_uid == uncompared:
            return None
        if instance.sop_instance_uid == undecodable:
            raise CorruptPixelDataError("frame 0 cannot be decoded (JPEG Baseline): truncated")
        return describe(instance)

    monkeypatch.setattr(store, "read_instance", counted)
    monkeypatch.setattr(case_library, "describe", some_fail)
    found = library.similar(expected, "1.2.826.0.2.9")
    assert [m.entry.sop_instance_uid for m in found] == [still]
    assert sorted(reads) == sorted([uncompared, undecodable, still])
    audited = sorted(_audited(library))
    assert audited == sorted(
        [
            (uncompared, "described"),
            (uncompared, "not described"),
            (undecodable, "described"),
            (undecodable, "not described"),
            (still, "described"),
        ]
    )
    recorded = store.descriptors([uncompared, undecodable, still])
    assert recorded[uncompared] == {
        "version": VERSION,
        "compared": False,
        "reason": "no kind that is compared (bmode)",
    }
    assert recorded[undecodable] == {
        "version": VERSION,
        "compared": False,
        "reason": "frame 0 cannot be decoded (JPEG Baseline): truncated",
    }
    assert Descriptor.from_dict(recorded[uncompared]) is None
    assert Descriptor.from_dict(recorded[undecodable]) is None

    # The next refresh, and a worker restarted on the same archive: neither reads them again.
    now[0] = 100.0
    restarted = CaseLibrary(store, library.scratch, library.audit, "worker")
    assert library.similar(expected, "1.2.826.0.2.9") == found
    assert restarted.similar(expected, "1.2.826.0.2.9") == found
    assert [entry.sop_instance_uid for _, entry in restarted.entries()] == [still]
    assert len(reads) == 3 and sorted(_audited(restarted)) == audited


def test_a_transient_failure_records_no_marker_and_the_instance_is_read_again(
    archive: Archive, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usreview.processing.case_library as case_library
    from usreview.hub.errors import AuditError
    from usreview.processing.case_library import CaseLibrary
    from usreview.processing.similarity import VERSION, describe
    from usreview.store import StorageError

    now = [0.0]
    store, cases, library = _library(archive, source, tmp_path, 2, clock=lambda: now[0])
    uncompared, still = (c.instances[0].sop_instance_uid for c in cases)
    expected = describe(read(source))
    assert expected is not None
    read_instance, set_descriptor, audit = store.read_instance, store.set_descriptor, library.audit
    audit_record, reads = audit.record, [0]  # reads of the instance not compared
    failing = {"audit": True, "record": True}

    def counted(case_uid: str, uid: str) -> Any:
        reads[0] += uid == uncompared
        return read_instance(case_uid, uid)

    def flaky_record(uid: str, value: Any) -> None:
        if uid == uncompared and failing["record"]:
            raise StorageError("recording a descriptor: the archive's database failed (locked)")
        set_descriptor(uid, value)

    def flaky_audit(*args: Any, **kwargs: Any) -> Any:
        if failing["audit"]:
            raise AuditError("the audit log cannot be written: No space left on device")
        return audit_record(*args, **kwargs)

    monkeypatch.setattr(store, "read_instance", counted)
    monkeypatch.setattr(store, "set_descriptor", flaky_record)
    monkeypatch.setattr(audit, "record", flaky_audit)
    monkeypatch.setattr(
        case_library,
        "describe",
        lambda instance: None if instance.sop_instance_uid == uncompared else describe(instance),
    )
    # The audit log is unwritable: both are left for the next refresh, nothing recorded.
    assert library.similar(expected, "1.2.826.0.2.9") == []
    assert reads[0] == 1 and _audited(library) == []
    assert store.descriptors([uncompared, still]) == {}
    # The next refresh reads both; the database fails to record the marker: not kept.
    failing["audit"] = False
    now[0] = 100.0
    [match] = library.similar(expected, "1.2.826.0.2.9")
    assert match.entry.sop_instance_uid == still
    assert reads[0] == 2 and sorted(_audited(library)) == sorted(
        [(uncompared, "described"), (uncompared, "not described"), (still, "described")]
    )
    assert list(store.descriptors([uncompared, still])) == [still]
    # A restart reads it once more and records the marker; the next restart does not read it.
    failing["record"] = False
    for n in (1, 2):
        restarted = CaseLibrary(store, library.scratch, audit, f"worker-{n}")
        assert restarted.similar(expected, "1.2.826.0.2.9") == [match]
    assert reads[0] == 3 and sorted(_audited(library)) == sorted(
        [(uncompared, "described"), (uncompared, "not described")] * 2 + [(still, "described")]
    )
    assert store.descriptors([uncompared])[uncompared] == {
        "version": VERSION,
        "compared": False,
        "reason": "no kind that is compared (bmode)",
    }


def test_a_marker_of_another_version_or_damaged_is_read_again(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    from usreview.processing.similarity import VERSION, describe

    store, cases, library = _library(archive, source, tmp_path, 4)
    expected = describe(read(source))
    assert expected is not None
    uids = [c.instances[0].sop_instance_uid for c in cases]
    marker = {"version": VERSION, "compared": False, "reason": "no kind that is compared (ecg)"}
    store.set_descriptor(uids[0], {**marker, "version": "0"})  # an upgrade since
    store.set_descriptor(uids[1], {**marker, "compared": "no"})  # a wrong type
    store.set_descriptor(uids[2], {**marker, **expected.as_dict()})  # a marker and a descriptor
    store.set_descriptor(uids[3], marker)  # current: never read
    matches = library.similar(expected, "1.2.826.0.2.9", limit=4)
    assert sorted(m.entry.sop_instance_uid for m in matches) == sorted(uids[:3])
    assert sorted(_audited(library)) == sorted((uid, "described") for uid in uids[:3])
    recorded = store.descriptors(uids)
    for uid in uids[:3]:  # described again, and the descriptor recorded in place of the marker
        assert set(recorded[uid]) == {"kind", "version", "vector"}
        np.testing.assert_allclose(recorded[uid]["vector"], expected.vector, atol=1e-6)
    assert recorded[uids[3]] == marker


def test_each_read_describes_for_a_bounded_time(
    archive: Archive, source: Path, tmp_path: Path
) -> None:
    from usreview.processing.similarity import describe

    ticks = [0.0]

    def clock() -> float:  # each look at the clock is one second later
        ticks[0] += 1.0
        return ticks[0]

    _, cases, library = _library(
        archive, source, tmp_path, 5, clock=clock, describe_seconds=2.5, refresh_seconds=1e9
    )
    expected = describe(read(source))
    assert expected is not None
    # A large library (or an upgrade) is described over several reads, not in one that
    # keeps the worker from renewing its jobs' leases; what is described is compared.
    sizes = []
    for _ in range(4):
        matches = library.similar(expected, "1.2.826.0.2.9", limit=10)  # a case per instance
        sizes.append((len(matches), library.pending))
    assert sizes == [(2, 3), (4, 1), (5, 0), (5, 0)]
    described = [uid for uid, _ in _audited(library)]
    assert sorted(described) == sorted(c.instances[0].sop_instance_uid for c in cases)


def test_a_worker_looks_again_before_describing_what_another_described_meanwhile(
    archive: Archive, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.processing.case_library import CaseLibrary

    store, _, first = _library(archive, source, tmp_path, 4)
    scratch = tmp_path / "scratch2"
    scratch.mkdir(mode=0o700)
    audit = AuditLog(tmp_path / "audit2.log", secrets.token_bytes(32))
    second = CaseLibrary(store, scratch, audit, "worker-2")
    descriptors, calls = store.descriptors, [0]

    def slow(uids: Any) -> Any:  # the second's read of the library finds nothing ...
        calls[0] += 1
        found = descriptors(uids)
        if calls[0] == 1:
            first.entries()  # ... and meanwhile the first describes every copy
        return found

    monkeypatch.setattr(store, "descriptors", slow)
    assert len(second.entries()) == 4
    assert len(_audited(first)) == 4
    assert not audit.path.exists()  # described once, by the first


def test_the_research_notebook_runs_on_an_empty_case_library() -> None:
    from usreview.review.research import RUN_COLUMNS, case_table, run_on_cases

    class NoCases:  # a new hub: nobody has made a teaching case yet
        def teaching_cases(self) -> list[dict[str, Any]]:
            return []

    client: Any = NoCases()
    cases = case_table(client)
    assert len(cases) == 0
    # The notebook's selection keeps no row and, pandas being pandas, no column either; it
    # was refused as "the table has no column case_uid, sop_instance_uid".
    doppler = cases[cases["kinds"].map(lambda kinds: "pw_doppler" in kinds)]
    assert list(doppler.columns) == []
    runs = run_on_cases(client, doppler)
    assert len(runs) == 0 and list(runs.columns) == [*RUN_COLUMNS, "exam_type", "impression"]
    measured = runs[runs["quantity"].notna()]
    table = measured.pivot_table(
        index=["case_uid", "impression"], columns="quantity", values="value"
    )
    assert len(table) == 0

"""``usreview hub orphans``: the envelopes no index row names, listed and ingested again.

A real hub state, a site with a generated key, simulated instances sealed to the hub and
uploaded through the service's own ingest. An index restored from a backup older than
the objects leaves acknowledged envelopes without rows: the service's start holds them in
``archive/orphans/``, and ``--reingest`` stores them again as uploads (hub running),
clears a copy of what is stored, keeps a conflicting one aside as the service does for a
409, and leaves a damaged one held with its reason.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from usreview.cli import main
from usreview.envelope import PrivateKeys, generate_keys, load_public_keys, seal_file
from usreview.hub.accounts import Accounts
from usreview.hub.api.app import ServiceContext, open_context
from usreview.hub.api.plaintext import open_stored
from usreview.hub.api.settings import DATABASE_URL_ENV, ServiceSettings, open_archive
from usreview.hub.audit import verify
from usreview.hub.backup import backup_state
from usreview.hub.state import HubState, open_state
from usreview.ingest import ReplayedEnvelopeError
from usreview.simulate import simulate
from usreview.store import Archive, Reviewer
from usreview.store.orphans import recovery_lock

SITE = "clinic"
ADMIN = Reviewer("admin")


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three simulated B-mode instances (three studies)."""
    folder = tmp_path_factory.mktemp("instances")
    return [simulate("bmode", folder / str(seed), seed=seed)[0] for seed in (1, 2, 3)]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubState:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    return open_state(tmp_path / "state")


@pytest.fixture
def site(state: HubState) -> PrivateKeys:
    """The registered site's keys, as 'usreview hub add-site' leaves them."""
    keys = generate_keys(SITE)
    (state.sites / f"{SITE}.pub").write_text(keys.public.to_text())
    Accounts(state.accounts).add_site(SITE, state.sites / f"{SITE}.pub", keys.key_id.hex())
    return keys


_count = iter(range(10**6))


def sealed(state: HubState, dicom: Path, sender: PrivateKeys) -> bytes:
    """``dicom`` sealed by ``sender`` to the hub (a new envelope each time)."""
    out = state.root.parent / f"upload-{next(_count)}.env"
    seal_file(dicom, out, sender=sender, recipients=[load_public_keys(state.hub_pub)])
    return out.read_bytes()


class Service:
    """The service's context on a state (a running hub), started and stopped by a test."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.context: ServiceContext | None = None

    def start(self) -> ServiceContext:
        self.stop()
        self.context = open_context(self.state.root, ServiceSettings(parse_workers=1))
        return self.context

    def stop(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = None


@pytest.fixture
def service(state: HubState) -> Iterator[Service]:
    running = Service(state)
    yield running
    running.stop()


def hold(state: HubState, envelope: bytes) -> str:
    """Hold ``envelope`` in ``archive/orphans/`` as the service's recovery does; its key."""
    sha = hashlib.sha256(envelope).hexdigest()
    key = f"objects/{sha[:2]}/{sha}"
    path = state.root / "archive" / "orphans" / key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(envelope)
    return key


def held(state: HubState) -> list[str]:
    base = state.root / "archive" / "orphans"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def orphans(state: HubState, *more: str) -> list[str]:
    return ["hub", "orphans", *more, "--state", str(state.root)]


def admin_lines(state: HubState) -> list[dict[str, Any]]:
    assert verify(state.audit_log, state.audit_key.read_bytes()).ok
    lines = [json.loads(x) for x in state.audit_log.read_text().splitlines()]
    return [x for x in lines if x["action"] == "admin" and "orphans" in x["actor"]]


def uid_of(dicom: Path) -> str:
    return str(pydicom.dcmread(dicom, stop_before_pixels=True).SOPInstanceUID)


def test_an_orphan_from_an_older_index_is_ingested_again_while_the_hub_runs(
    state: HubState,
    site: PrivateKeys,
    instances: list[Path],
    service: Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    envelopes = [sealed(state, dicom, site) for dicom in instances[:2]]
    service.start().ingestor.ingest(SITE, envelopes[0])  # as the service's PUT does
    service.stop()
    backup_state(state.root, tmp_path / "backup")
    newer = service.start().ingestor.ingest(SITE, envelopes[1]).record  # after the backup
    service.stop()

    # The index comes back from the backup (stopped hub), the objects stay the newer ones.
    index = state.root / "archive" / "index.sqlite3"
    for leftover in state.root.glob("archive/index.sqlite3-*"):
        leftover.unlink()
    shutil.copyfile(tmp_path / "backup" / "archive" / "index.sqlite3", index)
    context = service.start()  # it holds the newer envelope; a running hub from here on
    assert held(state) == [newer.object_key]
    with pytest.raises(LookupError):
        context.archive.get(ADMIN, newer.sop_instance_uid)
    with pytest.raises(ReplayedEnvelopeError):  # its message id is in the replay cache:
        context.ingestor.ingest(SITE, envelopes[1])  # sending it again cannot bring it back
    capsys.readouterr()

    assert main(orphans(state)) == 0
    size = len(envelopes[1])
    assert capsys.readouterr().out == (
        f"{newer.object_key}\t{size}\t{SITE}\t{newer.sop_instance_uid}\n"
    )
    assert held(state) == [newer.object_key]  # listing changes nothing

    assert main(orphans(state, "--reingest")) == 0
    said = capsys.readouterr()
    assert said.out.splitlines() == [
        f"{newer.object_key}: stored: {newer.sop_instance_uid} from {SITE}, stored",
        "1 orphan envelope(s): 1 stored, 0 already stored, 0 kept aside as conflicts, 0 still held",
    ]
    assert said.err == ""
    assert held(state) == []

    # Listed and readable like an upload, with its receipt and its processing job.
    record = context.archive.get(ADMIN, newer.sop_instance_uid)
    assert (record.site, record.object_key) == (SITE, newer.object_key)
    assert context.archive.read_envelope(SITE, newer.sop_instance_uid) == envelopes[1]
    assert newer.sop_instance_uid in {r.sop_instance_uid for r in context.archive.receipts(SITE)}
    assert newer.sop_instance_uid in {j.sop_instance_uid for j in context.archive.jobs.list_jobs()}
    out = tmp_path / "read.dcm"
    open_stored(context.archive, ADMIN, record, out, hub_keys=context.ingestor.hub_keys,
                site_keys=context.site_keys)  # fmt: skip
    assert out.read_bytes() == instances[1].read_bytes()
    assert context.archive.fsck().clean
    [line] = admin_lines(state)
    assert (line["resource"], line["outcome"]) == (f"instances/{newer.sop_instance_uid}", "stored")
    assert line["detail"]["key"] == newer.object_key and line["detail"]["site"] == SITE

    assert main(orphans(state, "--reingest")) == 0  # nothing held: nothing to do
    assert capsys.readouterr().out.startswith("0 orphan envelope(s)")


def test_a_copy_of_what_is_stored_is_cleared_and_a_conflicting_one_kept_aside(
    state: HubState,
    site: PrivateKeys,
    instances: list[Path],
    service: Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = sealed(state, instances[0], site)
    stored = service.start().ingestor.ingest(SITE, first).record
    service.stop()  # the hub is stopped from here on
    uid = uid_of(instances[0])
    changed = tmp_path / "changed.dcm"
    dataset = pydicom.dcmread(instances[0])
    dataset.InstitutionName = "Another hospital"  # other content, the same SOP Instance UID
    dataset.save_as(changed, enforce_file_format=True)
    same = hold(state, sealed(state, instances[0], site))  # sealed again: other bytes
    other_envelope = sealed(state, changed, site)
    other = hold(state, other_envelope)
    capsys.readouterr()

    assert main(orphans(state, "--reingest")) == 0
    said = capsys.readouterr().out.splitlines()
    with open_archive(state.root) as archive:
        [conflict] = archive.list_conflicts()
        assert said[-1] == (
            "2 orphan envelope(s): 0 stored, 1 already stored, 1 kept aside as conflicts, "
            "0 still held"
        )
        assert f"{same}: duplicate: {uid} from {SITE}, already stored with the same content" in said
        assert f"{other}: conflict: {uid} from {SITE}, kept aside as conflict {conflict.id}" in (
            "\n".join(said)
        )
        assert held(state) == []
        # The stored instance is unchanged; the conflicting envelope is kept, as for a 409.
        assert archive.read_envelope(SITE, uid) == first
        assert archive.get(ADMIN, uid).object_key == stored.object_key
        assert (conflict.site, conflict.sop_instance_uid) == (SITE, uid)
        with archive.open_conflict(conflict.id) as kept:
            assert kept.read() == other_envelope
        assert archive.fsck().clean
    outcomes = {line["detail"]["key"]: line["outcome"] for line in admin_lines(state)}
    assert outcomes == {same: "duplicate", other: "conflict"}


#: The orphans of the next test that cannot be ingested again.
FAILING = ("tampered", "garbage", "stranger", "not_dicom")


def test_a_damaged_or_unknown_envelope_stays_held_with_its_reason(
    state: HubState,
    site: PrivateKeys,
    instances: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = sealed(state, instances[2], site)
    tampered = bytearray(sealed(state, instances[1], site))
    tampered[len(tampered) // 2] ^= 0x01
    stranger = sealed(state, instances[1], generate_keys("stranger"))
    (tmp_path / "notes.txt").write_text("an envelope that opens, holding no DICOM")
    not_dicom = sealed(state, tmp_path / "notes.txt", site)
    keys = {
        "good": hold(state, good),
        "tampered": hold(state, bytes(tampered)),
        "garbage": hold(state, b"not an envelope at all"),
        "stranger": hold(state, stranger),
        "not_dicom": hold(state, not_dicom),
    }
    contents = {
        k: (state.root / "archive" / "orphans" / key).read_bytes() for k, key in keys.items()
    }
    capsys.readouterr()

    assert main(orphans(state)) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    listed = {row[0]: row for row in rows}
    assert listed[keys["good"]][2:] == [SITE, uid_of(instances[2])]
    assert listed[keys["tampered"]][2:4] == [SITE, "-"]
    assert "altered" in listed[keys["tampered"]][4]
    assert listed[keys["garbage"]][2:] == ["-", "-", "envelope refused: not a usreview envelope "
                                           "(magic bytes missing)"]  # fmt: skip
    assert "no registered site has had" in listed[keys["stranger"]][4]
    assert listed[keys["not_dicom"]][2:4] == [SITE, "-"]
    assert "not DICOM" in listed[keys["not_dicom"]][4]

    assert main(orphans(state, "--reingest")) == 1
    said = capsys.readouterr()
    assert said.err == (
        "usreview: error: 4 orphan envelope(s) could not be ingested again and stay held: "
        "see why above, fix it and run this again\n"
    )
    lines = said.out.splitlines()
    assert f"{keys['good']}: stored: {uid_of(instances[2])} from {SITE}, stored" in lines
    for name in FAILING:
        [line] = [x for x in lines if x.startswith(keys[name])]
        assert ": kept: " in line and "stays held: " in line
    assert lines[-1].endswith("0 kept aside as conflicts, 4 still held")
    # The damaged ones stay, unchanged; nothing of them was stored.
    assert held(state) == sorted(keys[k] for k in FAILING)
    for name in FAILING:
        path = state.root / "archive" / "orphans" / keys[name]
        assert path.read_bytes() == contents[name]
    with open_archive(state.root) as archive:
        assert [r.sop_instance_uid for r in archive.list_instances(ADMIN)] == [uid_of(instances[2])]
        assert archive.list_conflicts() == []
    outcomes = {line["detail"]["key"]: line for line in admin_lines(state)}
    assert outcomes[keys["good"]]["outcome"] == "stored"
    for name in FAILING:
        assert outcomes[keys[name]]["outcome"] == "kept"
        assert outcomes[keys[name]]["resource"] == f"orphans/{keys[name]}"
        assert outcomes[keys[name]]["detail"]["reason"]
    assert not [p for p in (state.root / "quarantine").rglob("*") if p.is_file()]  # no plaintext


def test_recovery_waits_for_an_orphan_being_ingested_again(tmp_path: Path) -> None:
    """A service starting while an orphan is stored again must not move the object just
    written (its row not yet committed) back into ``orphans/``."""
    with Archive.open(None, tmp_path / "archive") as archive:
        finished = threading.Event()

        def start() -> None:
            archive.recover()
            finished.set()

        with recovery_lock(archive.root):
            starting = threading.Thread(target=start)
            starting.start()
            assert not finished.wait(0.5)
        assert finished.wait(10)
        starting.join()

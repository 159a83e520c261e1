"""Ingest end to end: a site seals a simulated instance to the hub, the hub stores it.

After every failure no plaintext remains in quarantine and nothing is stored.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

import usreview.ingest
from tests.conftest import write_us
from usreview.envelope import (
    ExpiredError,
    KeyRing,
    KeyState,
    NotARecipientError,
    PrivateKeys,
    ReplayCache,
    RevokedKeyError,
    TamperedError,
    UntrustedSenderError,
    generate_keys,
    seal_file,
)
from usreview.errors import InputError, UsreviewError
from usreview.ingest import (
    Ingestor,
    InvalidReceiptError,
    NotForHubError,
    ParsedInstance,
    RefusedEnvelopeError,
    RejectedInstanceError,
    RejectReason,
    ReplayedEnvelopeError,
    UnknownSiteError,
    WorkerPool,
    WrongSenderError,
    verify_receipt,
)
from usreview.ingest.receipts import SignedReceipt
from usreview.simulate import simulate
from usreview.store import Archive, ConflictError, InvalidMetadataError, Reviewer


@dataclass(frozen=True)
class Keys:
    hub: PrivateKeys
    a: PrivateKeys
    b: PrivateKeys


@dataclass
class Hub:
    archive: Archive
    ingestor: Ingestor
    quarantine: Path
    folder: Path

    def stored(self) -> list[str]:
        return [r.sop_instance_uid for r in self.archive.list_instances(Reviewer("admin"))]

    def assert_clean(self) -> None:
        """No plaintext in quarantine (not even a temporary file)."""
        assert sorted(p.name for p in self.quarantine.iterdir()) == []


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, timeout=30) as started:
        yield started


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(generate_keys("hub"), generate_keys("site-a"), generate_keys("site-b"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("study")
    return [simulate("bmode", folder / str(seed), seed=seed)[0] for seed in (1, 2)]


@pytest.fixture
def hub(tmp_path: Path, pool: WorkerPool, keys: Keys) -> Iterator[Hub]:
    with Archive.open(None, tmp_path / "archive") as archive:
        ingestor = Ingestor(
            archive,
            keys.hub,
            {"site-a": keys.a.public, "site-b": keys.b.public},
            ReplayCache(tmp_path / "replay.sqlite3"),
            pool,
            tmp_path / "quarantine",
        )
        yield Hub(archive, ingestor, tmp_path / "quarantine", tmp_path)


_count = iter(range(10**6))


def sealed(src: Path, sender: PrivateKeys, folder: Path, *to: PrivateKeys, **kw: float) -> Path:
    """Seal ``src`` from ``sender`` to ``to`` into a new file in ``folder``."""
    out = folder / f"upload-{next(_count)}.env"
    seal_file(src, out, sender=sender, recipients=[k.public for k in to], **kw)  # type: ignore[arg-type]
    return out


def test_a_sealed_instance_is_stored_with_a_signed_receipt(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    envelope = sealed(study[0], keys.a, hub.folder, keys.hub)
    result = hub.ingestor.ingest("site-a", envelope)
    uid = pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID
    assert not result.duplicate
    assert result.record.site == "site-a" and result.record.sop_instance_uid == uid
    assert result.record.kinds == result.parsed.kinds
    assert result.record.size == study[0].stat().st_size
    # The original envelope is what is stored (encrypted at rest), not the plaintext.
    assert hub.archive.read_envelope("site-a", uid) == envelope.read_bytes()
    assert hub.stored() == [uid]
    hub.assert_clean()
    body = verify_receipt(result.receipt.to_json(), keys.hub.public, site="site-a")
    assert body["kind"] == "instance"
    assert body["sop_instance_uid"] == uid
    assert body["plaintext_sha256"] == result.record.plaintext_sha256
    assert body["message_id"] == result.message_id.hex()
    assert body["hub_key_id"] == keys.hub.key_id.hex()
    assert body["stored_at"].endswith("Z")


def test_an_envelope_in_memory_is_stored_as_from_a_file(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    """The service hands small uploads over as bytes: same checks, same stored bytes."""
    data = sealed(study[1], keys.a, hub.folder, keys.hub).read_bytes()
    uid = pydicom.dcmread(study[1], stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(RefusedEnvelopeError):
        hub.ingestor.ingest("site-a", data[: len(data) // 2], expected_sop_instance_uid=uid)
    result = hub.ingestor.ingest("site-a", data, expected_sop_instance_uid=uid)
    assert not result.duplicate and result.record.sop_instance_uid == uid
    assert hub.archive.read_envelope("site-a", uid) == data
    again = hub.ingestor.ingest("site-a", bytearray(data))  # the same envelope again
    assert again.duplicate and again.record == result.record
    assert hub.stored() == [uid]
    hub.assert_clean()


class WatchedPool(WorkerPool):
    """The real pool, noting what each parse got and what the quarantine held meanwhile."""

    quarantine: Path
    seen: list[tuple[object, list[str]]]

    def parse(self, source: str | os.PathLike[str] | int) -> ParsedInstance:
        self.seen.append((source, sorted(p.name for p in self.quarantine.iterdir())))
        return super().parse(source)


def test_an_envelope_in_memory_is_opened_in_memory(
    tmp_path: Path, keys: Keys, study: list[Path]
) -> None:
    """A small upload's plaintext is a memory file passed to the worker, never on a disk."""
    envelopes = [sealed(path, keys.a, tmp_path, keys.hub) for path in study]
    with (
        Archive.open(None, tmp_path / "archive") as archive,
        WatchedPool(1, timeout=30) as pool,
    ):
        pool.quarantine, pool.seen = tmp_path / "quarantine", []
        ingestor = Ingestor(
            archive, keys.hub, {"site-a": keys.a.public}, None, pool, tmp_path / "quarantine"
        )
        in_memory = ingestor.ingest("site-a", envelopes[0].read_bytes())
        from_file = ingestor.ingest("site-a", envelopes[1])
    (memory, listed), (path, listed_too) = pool.seen
    assert isinstance(memory, int) and listed == []
    assert isinstance(path, Path) and path.parent == tmp_path / "quarantine"
    assert listed_too == [path.name]
    assert not path.exists()
    assert in_memory.record.plaintext_sha256 == hashlib.sha256(study[0].read_bytes()).hexdigest()
    assert from_file.record.plaintext_sha256 == hashlib.sha256(study[1].read_bytes()).hexdigest()
    assert in_memory.record.size == study[0].stat().st_size


def test_an_altered_receipt_does_not_verify(hub: Hub, keys: Keys, study: list[Path]) -> None:
    result = hub.ingestor.ingest("site-a", sealed(study[0], keys.a, hub.folder, keys.hub))
    wire = result.receipt.to_dict()
    for field, value in (("sop_instance_uid", "1.2.3"), ("site", "site-b"), ("size", 1)):
        altered = {**wire, "body": {**wire["body"], field: value}}
        with pytest.raises(InvalidReceiptError, match="altered"):
            verify_receipt(altered, keys.hub.public)
    flipped = bytearray(result.receipt.signature)
    flipped[0] ^= 1
    with pytest.raises(InvalidReceiptError, match="altered"):
        verify_receipt(SignedReceipt(result.receipt.body, bytes(flipped)), keys.hub.public)
    with pytest.raises(InvalidReceiptError, match="not the hub's key"):
        verify_receipt(result.receipt, keys.a.public)
    with pytest.raises(InvalidReceiptError, match="not 'site-b'"):
        verify_receipt(result.receipt, [keys.a.public, keys.hub.public], site="site-b")
    ring = KeyRing([keys.hub.public])
    assert verify_receipt(result.receipt, ring)["site"] == "site-a"
    ring.set_state(keys.hub.key_id, KeyState.REVOKED)
    with pytest.raises(InvalidReceiptError, match="revoked"):
        verify_receipt(result.receipt, ring)
    for junk in ("[]", "{}", '{"body": {}, "signature": "AA=="}', "not json"):
        with pytest.raises(InvalidReceiptError):
            verify_receipt(junk, keys.hub.public)


def test_the_same_envelope_again_is_a_duplicate_success(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    """A site re-sending after a lost acknowledgement gets its receipt, not 'replayed'."""
    envelope = sealed(study[0], keys.a, hub.folder, keys.hub)
    first = hub.ingestor.ingest("site-a", envelope)
    again = hub.ingestor.ingest("site-a", envelope)
    assert again.duplicate and not first.duplicate
    assert again.record == first.record
    assert (
        verify_receipt(again.receipt, keys.hub.public)["stored_at"]
        == (first.receipt.body["stored_at"])
    )
    resealed = hub.ingestor.ingest("site-a", sealed(study[0], keys.a, hub.folder, keys.hub))
    assert resealed.duplicate and resealed.record == first.record
    assert resealed.receipt.body["message_id"] != first.receipt.body["message_id"]
    assert len(hub.stored()) == 1 and len(list((hub.folder / "archive/objects").rglob("*/*"))) == 1
    hub.assert_clean()


def test_a_replayed_envelope_is_refused_once_its_instance_is_not_held(
    hub: Hub, keys: Keys, study: list[Path], pool: WorkerPool
) -> None:
    envelope = sealed(study[0], keys.a, hub.folder, keys.hub)
    hub.ingestor.ingest("site-a", envelope)
    with Archive.open(None, hub.folder / "emptied") as emptied:
        other = Ingestor(
            emptied,
            keys.hub,
            {"site-a": keys.a.public},
            hub.ingestor.replay_cache,
            pool,
            hub.quarantine,
        )
        with pytest.raises(ReplayedEnvelopeError, match="no longer held"):
            other.ingest("site-a", envelope)
        assert emptied.list_instances(Reviewer("admin")) == []
    hub.assert_clean()


def test_different_bytes_under_a_stored_uid_conflict(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    first = hub.ingestor.ingest("site-a", sealed(study[0], keys.a, hub.folder, keys.hub))
    ds = pydicom.dcmread(study[0])
    ds.PatientName = "OTHER^PATIENT"
    changed = hub.folder / "changed.dcm"
    ds.save_as(changed)
    with pytest.raises(ConflictError) as caught:
        hub.ingestor.ingest("site-a", sealed(changed, keys.a, hub.folder, keys.hub))
    assert caught.value.sop_instance_uid == first.record.sop_instance_uid
    assert hub.archive.get("site-a", first.record.sop_instance_uid) == first.record
    assert [c.id for c in hub.archive.list_conflicts()] == [caught.value.conflict_id]
    hub.assert_clean()


def test_an_envelope_from_another_site_is_refused(hub: Hub, keys: Keys, study: list[Path]) -> None:
    with pytest.raises(WrongSenderError, match="not signed by a key registered for site") as c:
        hub.ingestor.ingest("site-a", sealed(study[0], keys.b, hub.folder, keys.hub))
    assert isinstance(c.value.__cause__, UntrustedSenderError)
    assert isinstance(c.value, InputError)
    stranger = generate_keys("site-c")
    with pytest.raises(WrongSenderError):
        hub.ingestor.ingest("site-a", sealed(study[0], stranger, hub.folder, keys.hub))
    assert hub.stored() == []
    hub.assert_clean()


def test_an_envelope_not_addressed_to_the_hub_is_refused(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    with pytest.raises(NotForHubError, match="not addressed to the hub") as caught:
        hub.ingestor.ingest("site-a", sealed(study[0], keys.a, hub.folder, keys.b))
    assert isinstance(caught.value.__cause__, NotARecipientError)
    assert hub.stored() == []
    hub.assert_clean()


def test_altered_expired_and_unknown_are_refused_without_leftovers(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    envelope = sealed(study[0], keys.a, hub.folder, keys.hub)
    data = bytearray(envelope.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the ciphertext: found after plaintext was written
    envelope.write_bytes(bytes(data))
    with pytest.raises(RefusedEnvelopeError, match="altered") as caught:
        hub.ingestor.ingest("site-a", envelope)
    assert isinstance(caught.value.__cause__, TamperedError)
    hub.assert_clean()
    old = sealed(study[0], keys.a, hub.folder, keys.hub, now=time.time() - 10 * 86400)
    with pytest.raises(RefusedEnvelopeError, match="expired") as caught:
        hub.ingestor.ingest("site-a", old)
    assert isinstance(caught.value.__cause__, ExpiredError)
    with pytest.raises(RefusedEnvelopeError, match="not a usreview envelope"):
        hub.ingestor.ingest("site-a", study[0])
    with pytest.raises(UnknownSiteError, match="no key is registered for site 'site-z'"):
        hub.ingestor.ingest("site-z", sealed(study[0], keys.a, hub.folder, keys.hub))
    with pytest.raises(InvalidMetadataError, match="site must be"):
        hub.ingestor.ingest("../etc", sealed(study[0], keys.a, hub.folder, keys.hub))
    assert hub.stored() == []
    hub.assert_clean()


def test_a_sealed_non_ultrasound_instance_is_rejected(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    ct = write_us(hub.folder / "ct.dcm", np.zeros((1, 8, 8), np.uint8), sop_class=CTImageStorage)
    with pytest.raises(RejectedInstanceError, match="CT Image Storage") as caught:
        hub.ingestor.ingest("site-a", sealed(ct, keys.a, hub.folder, keys.hub))
    assert caught.value.reason is RejectReason.NOT_ULTRASOUND
    junk = hub.folder / "junk.dcm"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(RejectedInstanceError) as caught:
        hub.ingestor.ingest("site-a", sealed(junk, keys.a, hub.folder, keys.hub))
    assert caught.value.reason is RejectReason.NOT_DICOM
    assert hub.stored() == []
    hub.assert_clean()
    assert hub.ingestor.ingest("site-a", sealed(study[1], keys.a, hub.folder, keys.hub))


def test_site_keys_from_one_key_ring_honour_revocation(
    hub: Hub, keys: Keys, study: list[Path], pool: WorkerPool
) -> None:
    ring = KeyRing([keys.a.public, keys.b.public])
    ingestor = Ingestor(hub.archive, keys.hub, ring, None, pool, hub.quarantine)
    assert ingestor.ingest("site-b", sealed(study[0], keys.b, hub.folder, keys.hub))
    with pytest.raises(WrongSenderError):
        ingestor.ingest("site-b", sealed(study[1], keys.a, hub.folder, keys.hub))
    ring.set_state(keys.b.key_id, KeyState.REVOKED)
    with pytest.raises(RefusedEnvelopeError, match="revoked") as caught:
        ingestor.ingest("site-b", sealed(study[1], keys.b, hub.folder, keys.hub))
    assert isinstance(caught.value.__cause__, RevokedKeyError)
    hub.assert_clean()


def test_batch_receipt_lists_what_the_hub_holds_for_the_site(
    hub: Hub, keys: Keys, study: list[Path]
) -> None:
    uids = [
        hub.ingestor.ingest("site-a", sealed(p, keys.a, hub.folder, keys.hub)).record for p in study
    ]
    body = verify_receipt(hub.ingestor.batch_receipt("site-a"), keys.hub.public, site="site-a")
    assert body["kind"] == "batch" and body["count"] == 2
    assert {i["sop_instance_uid"] for i in body["instances"]} == {r.sop_instance_uid for r in uids}
    assert {i["plaintext_sha256"] for i in body["instances"]} == {r.plaintext_sha256 for r in uids}
    only = hub.ingestor.batch_receipt("site-a", sop_instance_uids=[uids[1].sop_instance_uid])
    assert [i["sop_instance_uid"] for i in only.body["instances"]] == [uids[1].sop_instance_uid]
    other = verify_receipt(hub.ingestor.batch_receipt("site-b"), keys.hub.public)
    assert other["count"] == 0 and other["instances"] == []


def test_leftover_plaintext_is_removed_when_an_ingestor_starts(
    hub: Hub, keys: Keys, pool: WorkerPool
) -> None:
    (hub.quarantine / "crashed.dcm").write_bytes(b"PHI")
    (hub.quarantine / ".x.dcm.abc.quarantine").write_bytes(b"PHI")
    Ingestor(hub.archive, keys.hub, {"site-a": keys.a.public}, None, pool, hub.quarantine)
    hub.assert_clean()
    assert hub.quarantine.stat().st_mode & 0o077 == 0


def test_public_api_is_pinned_and_errors_are_drawn() -> None:
    assert set(usreview.ingest.__all__) == {
        "DEFAULT_MEMORY_LIMIT",
        "IngestError",
        "IngestResult",
        "Ingestor",
        "InvalidReceiptError",
        "NotForHubError",
        "ParsedInstance",
        "RefusedEnvelopeError",
        "RejectReason",
        "RejectedInstanceError",
        "ReplayedEnvelopeError",
        "SignedReceipt",
        "SiteKeys",
        "UidMismatchError",
        "UnknownSiteError",
        "WorkerPool",
        "WorkerPoolError",
        "WrongSenderError",
        "sign_batch_receipt",
        "sign_instance_receipt",
        "verify_receipt",
    }
    for name in usreview.ingest.__all__:
        value = getattr(usreview.ingest, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, UsreviewError)
            assert name in (usreview.ingest.__doc__ or "")
    assert issubclass(usreview.ingest.RefusedEnvelopeError, InputError)
    assert issubclass(usreview.ingest.RejectedInstanceError, InputError)
    assert not issubclass(usreview.ingest.WorkerPoolError, InputError)

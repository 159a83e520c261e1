"""Results fetched late: the hub seals an expiring result again, the site opens it once.

A gateway offline for more than the 7 days an envelope is valid (clinic closed, broken
box) used to get every result it missed as expired, put aside for good. The hub now
seals such a result again when it is listed or fetched: same id and cursor, a fresh
validity window, the same content, audited ``resealed``. Clocks: results are published
with the hub's validity starting days ago (``publish_result(now=...)``), which is the
hub's and the site's clocks moved forward by as much.

The first tests call the hub's functions in process; the last ones start a real hub and
run ``usreview site pull`` as a site would.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.site_helpers import USREVIEW
from tests.site_hub_support import Hub, enroll, text_report
from usreview.envelope import (
    ExpiredError,
    KeyRing,
    PrivateKeys,
    generate_keys,
    load_private_keys,
    seal_file,
    unseal,
)
from usreview.envelope.format import read_header
from usreview.hub.api.publish import (
    FETCH_MARGIN,
    LIST_MARGIN,
    fresh_results,
    open_fresh_result,
    publish_result,
)
from usreview.hub.audit import AuditLog
from usreview.hub.hubkeys import load_hub_keys, rotate_hub_key
from usreview.hub.state import HubState, open_state
from usreview.site import load_config
from usreview.site.status import CURSOR_FILE
from usreview.store import Archive, ResultRecord

DAY = 24 * 3600
WEEK = 7 * DAY
STUDY = "1.2.826.0.9.1"
SITE = "clinic"


class HubParts:
    """A hub's state, archive and audit log, and one registered site's keys."""

    def __init__(self, root: Path) -> None:
        self.state: HubState = open_state(root / "state")
        self.site_keys = generate_keys(SITE)
        self.state.sites.mkdir(exist_ok=True)
        (self.state.sites / f"{SITE}.pub").write_text(self.site_keys.public.to_text())
        self.hub_keys = load_private_keys(self.state.hub_key)
        self.archive = Archive.open(None, self.state.root / "archive")
        self.audit = AuditLog(self.state.audit_log, self.state.audit_key.read_bytes())
        self.payload = root / "report.txt"
        self.payload.write_bytes(b"usreview report\nNo stenosis.\n")
        self.scratch = root / "quarantine"  # the service's
        self.scratch.mkdir(mode=0o700)

    def publish(self, age: float) -> ResultRecord:
        """Publish the payload to the site, sealed ``age`` seconds ago."""
        return publish_result(
            self.state,
            self.archive,
            STUDY,
            self.payload,
            sites=[SITE],
            audit=self.audit,
            now=time.time() - age,
        )

    def fetch(self, cursor: int, **kwargs: Any) -> tuple[ResultRecord, bytes]:
        record, stream = open_fresh_result(
            self.state,
            self.archive,
            SITE,
            cursor,
            hub_keys=load_hub_keys(self.state),
            audit=self.audit,
            scratch=self.scratch,
            **kwargs,
        )
        with stream:
            return record, stream.read()

    def listed(self, records: list[ResultRecord]) -> list[ResultRecord]:
        """``records`` as the feed lists them to the site (sealed again when due)."""
        return fresh_results(
            self.state,
            self.archive,
            SITE,
            records,
            hub_keys=load_hub_keys(self.state),
            audit=self.audit,
            scratch=self.scratch,
        )

    def opened(self, envelope: bytes, keys: PrivateKeys | None = None) -> bytes:
        """The envelope opened as the site opens it, by the clock."""
        out = io.BytesIO()
        unseal(
            io.BytesIO(envelope),
            out,
            recipient=keys or self.site_keys,
            keyring=KeyRing([self.hub_keys.public]),
        )
        return out.getvalue()

    def stored(self, cursor: int) -> bytes:
        return self.archive.results.read_result(SITE, cursor)

    def resealed(self) -> list[dict[str, Any]]:
        return _resealed(self.state.audit_log)


def _resealed(log: Path) -> list[dict[str, Any]]:
    if not log.exists():  # nothing audited yet
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("outcome") == "resealed"]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = HubParts(tmp_path)
    try:
        yield parts
    finally:
        parts.archive.close()


def test_an_expired_result_is_sealed_again_for_the_site_that_fetches_it(hub: HubParts) -> None:
    published = hub.publish(WEEK + DAY)  # the site fetches it 8 days after publication
    stale = hub.stored(published.cursor)
    with pytest.raises(ExpiredError):
        hub.opened(stale)

    record, envelope = hub.fetch(published.cursor)

    # The same result (id, cursor, metadata), a new envelope that opens, same content.
    assert record.cursor == published.cursor
    assert (record.study_instance_uid, record.kind, record.published_at) == (
        published.study_instance_uid,
        published.kind,
        published.published_at,
    )
    assert record.envelope_sha256 != published.envelope_sha256
    assert envelope == hub.stored(published.cursor)
    assert hub.opened(envelope) == hub.payload.read_bytes()
    header, _ = read_header(io.BytesIO(envelope))
    assert header.not_after - time.time() > WEEK - 60
    # The site sees exactly one result, the new envelope's.
    listed = hub.archive.results.results_since(SITE, 0)
    assert [(r.cursor, r.envelope_sha256) for r in listed] == [
        (published.cursor, record.envelope_sha256)
    ]
    # The old envelope is gone from disk; the reseal is audited once.
    assert not (hub.archive.results._objects.path(published.object_key)).exists()
    (event,) = hub.resealed()
    assert event["resource"] == f"results/{published.cursor}"
    assert event["action"] == "write" and event["detail"]["fetched_by"] == SITE
    assert event["detail"]["sites"] == [SITE] and "expired_at" in event["detail"]
    # The plaintext passed through the service's quarantine only, and is gone.
    assert list(hub.scratch.iterdir()) == []
    assert not [p for p in hub.state.root.iterdir() if p.name.startswith(".reseal")]
    # Fetched again: served as stored now, not sealed a second time.
    again, same = hub.fetch(published.cursor)
    assert (again.envelope_sha256, same) == (record.envelope_sha256, envelope)
    assert len(hub.resealed()) == 1


def test_a_result_not_near_expiry_is_served_as_stored(hub: HubParts) -> None:
    published = hub.publish(DAY)  # 6 days left
    stored = hub.stored(published.cursor)
    record, envelope = hub.fetch(published.cursor)
    assert record == published and envelope == stored
    assert hub.opened(envelope) == hub.payload.read_bytes()
    assert hub.listed([published]) == [published]
    assert hub.stored(published.cursor) == stored
    assert hub.resealed() == []


def test_the_listing_seals_again_within_a_day_and_the_fetch_serves_what_was_listed(
    hub: HubParts,
) -> None:
    assert FETCH_MARGIN < LIST_MARGIN
    left = (FETCH_MARGIN + LIST_MARGIN) / 2  # valid, but not for much longer
    published = hub.publish(WEEK - left)
    # Fetched alone it is still good enough: as stored.
    assert hub.fetch(published.cursor)[0] == published
    assert hub.resealed() == []
    # Listed, it is sealed again, and fetching then gives the envelope listed.
    (listed,) = hub.listed([published])
    assert listed.cursor == published.cursor
    assert listed.envelope_sha256 != published.envelope_sha256
    record, envelope = hub.fetch(published.cursor)
    assert record == listed and "expiring_at" in hub.resealed()[0]["detail"]
    assert hub.opened(envelope) == hub.payload.read_bytes()
    assert len(hub.resealed()) == 1


def test_a_rotated_site_key_gets_the_result_sealed_to_its_new_key(hub: HubParts) -> None:
    published = hub.publish(WEEK + DAY)
    new = generate_keys(SITE)
    (hub.state.sites / f"{SITE}.pub").write_text(new.public.to_text())
    _, envelope = hub.fetch(published.cursor)
    assert hub.opened(envelope, new) == hub.payload.read_bytes()


def test_a_result_sealed_before_a_hub_key_rotation_is_sealed_again_with_the_new_key(
    hub: HubParts,
) -> None:
    published = hub.publish(WEEK + DAY)
    rotate_hub_key(hub.state)  # the hub keeps the earlier key, which the result opens with
    rotated = load_private_keys(hub.state.hub_key)
    assert rotated.key_id != hub.hub_keys.key_id
    record, envelope = hub.fetch(published.cursor)
    assert record.envelope_sha256 != published.envelope_sha256
    header, _ = read_header(io.BytesIO(envelope))
    assert header.sender_id == rotated.key_id  # signed by the current key
    assert {r.key_id for r in header.recipients} == {
        hub.site_keys.key_id,
        rotated.key_id,  # sealed to the current key: it can be sealed again later
    }
    out = io.BytesIO()
    unseal(io.BytesIO(envelope), out, recipient=hub.site_keys, keyring=KeyRing([rotated.public]))
    assert out.getvalue() == hub.payload.read_bytes()
    assert len(hub.resealed()) == 1


@pytest.mark.parametrize("revoke", [False, True])
def test_a_result_signed_by_a_revoked_hub_key_is_sealed_again_however_fresh(
    hub: HubParts, revoke: bool
) -> None:
    published = hub.publish(DAY)  # six days left: fresh
    rotate_hub_key(hub.state, revoke=revoke)
    (listed,) = hub.listed([published])
    if not revoke:  # a routine rotation: the sites still trust the earlier key
        assert listed == published and hub.resealed() == []
        return
    rotated = load_private_keys(hub.state.hub_key)
    record, envelope = hub.fetch(published.cursor)
    assert record == listed != published  # listed sealed again, then fetched as listed
    assert read_header(io.BytesIO(envelope))[0].sender_id == rotated.key_id
    (event,) = hub.resealed()
    assert event["detail"]["revoked_key"] == hub.hub_keys.key_id.hex()
    assert "expiring_at" in event["detail"]  # when the revoked envelope would have expired


def test_an_expired_result_the_hub_cannot_open_is_served_as_stored(
    hub: HubParts, tmp_path: Path
) -> None:
    # Sealed to the site only (as before the hub was one of its own recipients).
    legacy = tmp_path / "legacy.env"
    seal_file(
        hub.payload,
        legacy,
        sender=hub.hub_keys,
        recipients=[hub.site_keys.public],
        now=time.time() - WEEK - DAY,
    )
    published = hub.archive.results.publish_result(
        legacy, sites=[SITE], study_instance_uid=STUDY, kind="report"
    )
    record, envelope = hub.fetch(published.cursor)
    assert record == published and envelope == legacy.read_bytes()
    assert hub.resealed() == []


def test_a_replacement_that_lost_the_race_leaves_the_winners_envelope(hub: HubParts) -> None:
    published = hub.publish(WEEK + DAY)
    feed = hub.archive.results
    winner, replaced = feed.replace_envelope(
        published.cursor, b"the winner", replaces=published.envelope_sha256
    )
    assert replaced and winner.cursor == published.cursor
    loser, replaced = feed.replace_envelope(
        published.cursor, b"the loser", replaces=published.envelope_sha256
    )
    assert not replaced and loser == winner
    assert feed.read_result(SITE, published.cursor) == b"the winner"
    assert sorted(feed._objects.keys("objects")) == [winner.object_key]


# -- with a real hub and a site's pull ---------------------------------------------------


@pytest.fixture(scope="module")
def real_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("hub")
    hub = Hub(root, {})
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def _publish_long_ago(hub: Hub, payload: Path, study: str, site: str) -> int:
    """Publish as the hub's stages do, the envelope's validity started 8 days ago."""
    state = open_state(hub.state)
    with Archive.open(None, state.root / "archive") as archive:
        return publish_result(
            state, archive, study, payload, sites=[site], kind="report", now=time.time() - 8 * DAY
        ).cursor


def _pull(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*USREVIEW, "site", "pull", "--config", str(config), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_a_site_offline_for_eight_days_gets_its_result_once(real_hub: Hub, tmp_path: Path) -> None:
    config, _ = enroll(real_hub, "closed", tmp_path / "site")
    study = generate_uid()
    report = text_report(tmp_path / "report.dcm", study)
    cursor = _publish_long_ago(real_hub, report, study, "closed")

    done = _pull(config)

    assert done.returncode == 0, done.stdout + done.stderr
    site = load_config(config)
    outbox = site.outbox / study
    assert [p.name for p in outbox.iterdir()] == [f"{cursor:08d}-report.dcm"]
    assert (outbox / f"{cursor:08d}-report.dcm").read_bytes() == report.read_bytes()
    assert pydicom.dcmread(outbox / f"{cursor:08d}-report.dcm").StudyInstanceUID == study
    assert not list((site.state / "refused").iterdir())
    again = _pull(config)
    assert again.returncode == 0 and "0 result(s)" in again.stdout, again.stdout
    assert [p.name for p in outbox.iterdir()] == [f"{cursor:08d}-report.dcm"]
    resealed = [
        e for e in _resealed(real_hub.state / "audit.log") if e["detail"]["fetched_by"] == "closed"
    ]
    assert [e["resource"] for e in resealed] == [f"results/{cursor}"]


@pytest.mark.slow
def test_retry_refused_fetches_an_expired_result_again_and_delivers_it(
    real_hub: Hub, tmp_path: Path
) -> None:
    config, _ = enroll(real_hub, "broken", tmp_path / "site")
    study = generate_uid()
    report = text_report(tmp_path / "report.dcm", study)
    cursor = _publish_long_ago(real_hub, report, study, "broken")
    # What a gateway that came back before the hub sealed results again left: the
    # expired envelope put aside with its feed item, the cursor past it.
    with Archive.open(None, real_hub.state / "archive") as archive:
        record = archive.results.get_result("broken", cursor)
        expired = archive.results.read_result("broken", cursor)
    site = load_config(config)
    refused = site.state / "refused"
    refused.mkdir(parents=True, exist_ok=True)
    (refused / f"{cursor:08d}.envelope").write_bytes(expired)
    item = {
        "id": cursor,
        "cursor": cursor,
        "study_instance_uid": study,
        "kind": "report",
        "supersedes": None,
        "sha256": record.envelope_sha256,
    }
    reason = "envelope expired at ...; ask the sender to seal it again"
    (refused / f"{cursor:08d}.json").write_text(json.dumps({"item": item, "reason": reason}))
    (site.state / CURSOR_FILE).write_text(json.dumps({"cursor": cursor}))

    done = _pull(config, "--retry-refused")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 refused result(s) delivered, 0 still refused" in done.stdout
    outbox = site.outbox / study
    assert [p.name for p in outbox.iterdir()] == [f"{cursor:08d}-report.dcm"]
    assert (outbox / f"{cursor:08d}-report.dcm").read_bytes() == report.read_bytes()
    assert not list(refused.iterdir())
    again = _pull(config, "--retry-refused")
    assert "0 refused result(s) delivered, 0 still refused; 0 result(s)" in again.stdout

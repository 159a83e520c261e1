"""The results follower against a hub's feed: what it delivers, what it refuses to.

The hub is a small standard-library HTTP server in the test's process that serves the
feed (``GET results``, ``GET results/{id}``) with envelopes sealed by a hub key the site
trusts, so a test chooses what the feed's unsigned fields say and what the signed payload
holds. The PACS are real DICOM peers: pynetdicom Storage SCPs on loopback ports, and a
socket that accepts associations and never answers (a hung PACS).
"""

from __future__ import annotations

import io
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.results_feed_support import FeedHub, Pacs
from tests.site_helpers import wait_until
from usreview.simulate import simulate
from usreview.site import SiteConfig, read_status
from usreview.site.config import PacsDestination
from usreview.site.cursor import CURSOR_BACKUP, ResultsCursorError
from usreview.site.pull import pull_results
from usreview.site.results import ResultFollower
from usreview.site.status import CURSOR_FILE, StatusBook
from usreview.site.studies import read_journal


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FeedHub]:
    running = FeedHub(tmp_path / "hub")
    try:
        yield running
    finally:
        running.stop()


class HungPacs:
    """A PACS that accepts connections and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def _destination(name: str, port: int) -> PacsDestination:
    return PacsDestination(name, "PACS", "127.0.0.1", port)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    [path] = simulate(
        "bmode", tmp_path_factory.mktemp("sim"), seed=3, rows=128, columns=128, inclusions=1
    )
    return pydicom.dcmread(path)


def _dicom(image: pydicom.Dataset, study: str) -> tuple[bytes, str]:
    """A derived image of ``study`` (a new SOP Instance UID): its bytes and that UID."""
    ds = image.copy()
    ds.StudyInstanceUID = study
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), uid


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("[!.]*") if p.is_file())


def _errors(config: SiteConfig) -> list[str]:
    return [str(e.get("message")) for e in read_status(config).recorded.get("errors", [])]


# -- a result whose feed entry names another study ----------------------------------------


def test_a_result_whose_payload_names_another_study_is_quarantined(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path
) -> None:
    """The feed's study is not signed: the payload's must agree, or the result is kept
    aside and reaches neither the outbox nor the PACS.

    Old code: the DICOM of study B listed under study A went into outbox/A/ and to the
    PACS, and so did the JSON summary naming B."""
    pacs = Pacs()
    try:
        config = hub.site(tmp_path / "site", [_destination("pacs", pacs.port)])
        study_a, study_b = generate_uid(), generate_uid()
        wrong_dicom, wrong_uid = _dicom(image, study_b)
        bad_image = hub.publish(wrong_dicom, study_a, "derived")
        summary = json.dumps({"study_instance_uid": study_b, "psv": 80}).encode()
        bad_summary = hub.publish(summary, study_a, "summary")
        # This site never sent study A: the hub may send results to a second site (the
        # referring clinic), so a result of a study the site did not send is delivered.
        right_dicom, right_uid = _dicom(image, study_a)
        good = hub.publish(right_dicom, study_a, "derived")
        text = f"usreview report, version 1\nStudy: {study_a}\n\nNormal.\n".encode()
        good_text = hub.publish(text, study_a, "report-summary")

        report = pull_results(config)

        assert [r for r, _ in report.delivered] == [bad_image, bad_summary, good, good_text]
        assert dict(report.delivered)[bad_image] is None
        assert _files(config.outbox / study_a) == [
            f"{good:08d}-derived.dcm",
            f"{good_text:08d}-report-summary.txt",
        ]
        assert not (config.outbox / study_b).exists()
        assert pacs.received == [right_uid] and wrong_uid not in pacs.received
        quarantine = config.state / "quarantine"
        assert _files(quarantine) == sorted(
            f"{r:08d}.{ext}" for r in (bad_image, bad_summary) for ext in ("envelope", "json")
        )
        note = json.loads((quarantine / f"{bad_image:08d}.json").read_text())
        assert note["item"]["study_instance_uid"] == study_a
        assert note["payload"] == {
            "form": "dicom",
            "study_instance_uid": study_b,
            "sop_instance_uid": wrong_uid,
        }
        assert study_b in note["reason"] and study_a in note["reason"]
        assert (quarantine / f"{bad_image:08d}.envelope").read_bytes() == hub.envelopes[bad_image]
        assert stat.S_IMODE((quarantine / f"{bad_image:08d}.envelope").stat().st_mode) == 0o600
        errors = _errors(config)
        assert any(f"result {bad_image} quarantined" in e for e in errors)
        assert any(f"result {bad_summary} quarantined" in e for e in errors)
        journal = [e["id"] for e in read_journal(config.state) if e["e"] == "result"]
        assert journal == [good, good_text]
        assert report.cursor == good_text  # the feed goes on past what was quarantined
    finally:
        pacs.stop()


# -- the cursor -----------------------------------------------------------------------


def test_a_damaged_cursor_delivers_nothing_until_it_is_set(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path
) -> None:
    """Old code: a cut cursor read as 0 and both results, sealed again by the hub since
    (new message ids), went to the outbox and the PACS again, without a word."""
    pacs = Pacs()
    try:
        config = hub.site(tmp_path / "site", [_destination("pacs", pacs.port)])
        study = generate_uid()
        first = hub.publish(_dicom(image, study)[0], study, "derived")
        second = hub.publish(_dicom(image, study)[0], study, "derived")
        assert pull_results(config).cursor == second
        cursor = config.state / CURSOR_FILE
        assert json.loads(cursor.read_text()) == {"cursor": second}
        assert len(pacs.received) == 2
        hub.reseal(first)  # a week later: the hub seals them again, under new message ids
        hub.reseal(second)

        cursor.write_bytes(b'{"curs')  # cut short
        with pytest.raises(ResultsCursorError) as damaged:
            pull_results(config)
        assert len(pacs.received) == 2
        backup = config.state / CURSOR_BACKUP  # written atomically before each cursor
        assert json.loads(backup.read_text()) == {"cursor": first}
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        message = str(damaged.value)
        assert f"{cursor} is damaged" in message
        assert f"--cursor {second}" in message and "stop the gateway" in message
        # The gateway's follower: nothing delivered, the reason in the status file.
        follower = ResultFollower(config, StatusBook(config.state))
        follower.start()
        time.sleep(1.0)
        follower.stop()
        assert any("results are not delivered" in e and "damaged" in e for e in _errors(config))
        fetched = list(hub.fetched)

        third = hub.publish(_dicom(image, study)[0], study, "derived")
        report = pull_results(config, cursor=second)  # site pull --cursor N
        assert [r for r, _ in report.delivered] == [third]
        assert hub.fetched[len(fetched) :] == [third]
        assert len(pacs.received) == 3  # each result once
        assert json.loads(cursor.read_text()) == {"cursor": third}
    finally:
        pacs.stop()


def test_a_missing_cursor_is_refused_where_results_were_delivered(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path
) -> None:
    """Old code: a missing cursor read as 0, and every result was delivered again."""
    config = hub.site(tmp_path / "site")
    study = generate_uid()
    hub.publish(_dicom(image, study)[0], study, "derived")
    last = hub.publish(b'{"psv": 80}', study, "summary")
    assert pull_results(config).cursor == last  # a new site: no cursor, nothing before
    for name in (CURSOR_FILE, CURSOR_BACKUP):
        (config.state / name).unlink(missing_ok=True)
    hub.reseal(1)
    hub.reseal(2)
    with pytest.raises(ResultsCursorError) as missing:
        pull_results(config)
    message = str(missing.value)
    assert "is missing, but results were delivered here before" in message
    assert "the per-study journal" in message and "the outbox" in message
    assert f"--cursor {last}" in message
    assert not (config.state / CURSOR_FILE).exists()


def test_a_damaged_replay_cache_stops_delivery_with_a_sentence(
    hub: FeedHub, tmp_path: Path
) -> None:
    """Old code: sqlite3's 'file is not a database' escaped as a traceback, and the
    gateway's upload process (uploads included) died with it and was started again in a
    loop."""
    from usreview.cli import main
    from usreview.site import SiteError

    config = hub.site(tmp_path / "site")
    study = generate_uid()
    hub.publish(b'{"psv": 80}', study, "summary")
    (config.state).mkdir(parents=True, exist_ok=True)
    (config.state / "replay.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(SiteError, match=r"replay\.sqlite \(the replay cache\) is damaged"):
        pull_results(config)
    assert not config.outbox.exists() or not list(config.outbox.iterdir())
    assert main(["site", "pull", "--config", str(config.path)]) == 1
    follower = ResultFollower(config, StatusBook(config.state))  # the gateway's: it starts
    follower.start()
    follower.stop()
    assert any("replay cache" in e for e in _errors(config))


# -- results that did not open ----------------------------------------------------------


def test_refused_results_are_tried_again_at_start_and_periodically(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result that expired before it was fetched is refused; once the hub has sealed it
    again, the running gateway's follower delivers it by itself.

    Old code: refused results were tried again only by 'site pull --retry-refused', which
    is refused while a gateway runs."""
    import usreview.site.results as results

    config = hub.site(tmp_path / "site")
    study = generate_uid()
    expired = hub.publish(b'{"psv": 80}', study, "summary", expired=True)
    assert pull_results(config).delivered == [(expired, None)]
    assert _files(config.state / "refused") == [f"{expired:08d}.envelope", f"{expired:08d}.json"]

    # The gateway starts: what it set aside is tried again at once.
    hub.reseal(expired)
    follower = ResultFollower(config, StatusBook(config.state))
    follower.start()
    try:
        wait_until(lambda: (config.outbox / study / f"{expired:08d}-summary.json").exists(), 10)
        wait_until(lambda: not list((config.state / "refused").iterdir()), 10)
    finally:
        follower.stop()

    # ... and periodically while it runs.
    monkeypatch.setattr(results, "REFUSED_RETRY_SECONDS", 0.5)
    follower = ResultFollower(config, StatusBook(config.state))
    follower.start()
    try:
        late = hub.publish(b'{"psv": 95}', study, "summary", expired=True)
        wait_until(lambda: (config.state / "refused" / f"{late:08d}.envelope").exists(), 10)
        hub.reseal(late)
        wait_until(lambda: (config.outbox / study / f"{late:08d}-summary.json").exists(), 10)
    finally:
        follower.stop()


# -- the PACS, apart from the feed ------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_hung_pacs_holds_up_neither_the_outbox_nor_another_pacs(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path
) -> None:
    """Old code: the PACS were sent to in the feed's thread, each association waiting 30 s
    for the hung one, so each result after the first reached the outbox (and the good PACS)
    30 s or more late."""
    hung, good = HungPacs(), Pacs()
    try:
        config = hub.site(
            tmp_path / "site", [_destination("hung", hung.port), _destination("good", good.port)]
        )
        follower = ResultFollower(config, StatusBook(config.state))
        follower.start()
        try:
            study = generate_uid()
            sent = [_dicom(image, study) for _ in range(3)]
            started = time.monotonic()
            ids = [hub.publish(data, study, "derived") for data, _ in sent]
            names = [f"{i:08d}-derived.dcm" for i in ids]
            wait_until(lambda: _files(config.outbox / study) == names, timeout=10)
            wait_until(lambda: sorted(good.received) == sorted(u for _, u in sent), 10)
            assert time.monotonic() - started < 10
            assert hung.connections  # the hung PACS was being tried meanwhile
            # the good PACS has the last one; its queue lets go of it just after
            wait_until(lambda: not follower.pacs.pending("good"), 10)
            pending = follower.pacs.pending()
            assert [p.result_id for p in pending] == ids
            assert {p.destination for p in pending} == {"hung"}
        finally:
            stopping = time.monotonic()
            follower.stop()
            assert time.monotonic() - stopping < 5  # the hung association is broken off
        assert [p.result_id for p in follower.pacs.pending()] == ids  # kept for later
    finally:
        hung.stop()
        good.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_delivery_outlives_the_outbox_file(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path
) -> None:
    """The audit's case: the PACS down, a result queued, its outbox files moved away (an
    EMR import job), the PACS up again: it gets the result.

    Old code: the queue held only a path into the outbox; the delivery was dropped
    (marker deleted) and 'site pacs' said 0 pending, 0 failed."""
    with socket.socket() as closed:  # where the PACS will listen: down for now
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = hub.site(tmp_path / "site", [_destination("pacs", port)])
    study = generate_uid()
    data, uid = _dicom(image, study)
    result = hub.publish(data, study, "derived")
    report = pull_results(config)
    assert report.pacs_pending == 1
    copy = config.state / "pacs" / "pacs" / f"{result:08d}.dcm"
    kept = copy.read_bytes() if copy.exists() else None
    mode = stat.S_IMODE(copy.stat().st_mode) if copy.exists() else None
    (config.outbox / study).rename(tmp_path / "emr")  # the EMR import takes the study's folder

    pacs = Pacs(port)
    try:
        follower = ResultFollower(config, StatusBook(config.state))
        assert follower.send_pending(force=True) == 0
        follower.client.close()
        assert pacs.received == [uid]
        assert kept == data and mode == 0o600  # the queue's own copy, private
        assert not copy.exists() and not list((config.state / "pacs" / "pacs").glob("*.json"))
        delivered = [e for e in read_journal(config.state) if e["e"] == "pacs"]
        assert [(e["id"], e["study"], e["ok"]) for e in delivered] == [(result, study, True)]
    finally:
        pacs.stop()

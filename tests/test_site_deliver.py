"""Delivering opened results: the outbox's names, and PACS that refuse or are down.

The PACS are real DICOM peers (pynetdicom Storage SCPs on loopback ports); no hub is needed
to deliver what a site has already opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import UltrasoundImageStorage

from tests.site_helpers import site_hub_never_asked
from usreview.simulate import simulate
from usreview.site import load_config, read_status
from usreview.site.config import PacsDestination
from usreview.site.deliver import FAILED, deliver_to_outbox
from usreview.site.results import ResultFollower
from usreview.site.status import StatusBook
from usreview.site.supersede import annotate

STUDY = "1.2.826.0.1.3680043.8.498.7"


@pytest.mark.parametrize("study", ["..", "../../escaped", "/tmp/abs", "a/b", "", "1.2.x"])
def test_a_study_name_that_is_not_a_uid_stays_inside_the_outbox(study: str, tmp_path: Path) -> None:
    outbox = tmp_path / "site" / "outbox"
    payload = tmp_path / "payload"
    payload.write_text('{"finding": "x"}')
    target = deliver_to_outbox(
        outbox, payload, result_id=7, study_instance_uid=study, kind="../summary"
    )
    assert target.resolve().is_relative_to(outbox.resolve())
    assert target.parent == outbox / "unknown-study"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [payload, target]


def test_a_summary_that_cannot_be_annotated_goes_as_it_came(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    first, second = tmp_path / "1.payload", tmp_path / "2.payload"
    first.write_text('{"finding": "first"}')
    deliver_to_outbox(outbox, first, result_id=1, study_instance_uid=STUDY, kind="summary")
    second.write_bytes(b'{"finding": "\\ud800"}')  # a lone surrogate: valid JSON, not UTF-8
    with pytest.raises(ValueError):
        annotate(second.read_bytes(), "json", 1, [])
    target = deliver_to_outbox(
        outbox, second, result_id=2, study_instance_uid=STUDY, kind="summary", supersedes=1
    )
    assert target.read_bytes() == second.read_bytes()
    assert not (outbox / STUDY / "00000001-summary.json").exists()  # moved aside all the same


class _Pacs:
    """A Storage SCP that answers every C-STORE with ``status`` (after the ``first``
    answers, one per C-STORE); what it took."""

    def __init__(self, status: int, first: tuple[int, ...] = ()) -> None:
        self.status = status
        self.first = list(first)
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(UltrasoundImageStorage)
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: Any) -> int:
        with self._lock:
            status = self.first.pop(0) if self.first else self.status
            if status == 0:
                self.received.append(str(event.request.AffectedSOPInstanceUID))
        return status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def peers() -> Iterator[dict[str, _Pacs]]:
    running = {"good": _Pacs(0x0000), "refusing": _Pacs(0xA900)}
    yield running
    for pacs in running.values():
        pacs.stop()


# pynetdicom 3.0.4 shuts down the socket of a refused connection before closing it; the
# shutdown fails (not connected) and the close is skipped, so the socket is closed when it
# is collected, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_that_refuses_or_is_down_holds_up_no_other(
    tmp_path: Path, peers: dict[str, _Pacs]
) -> None:
    import socket

    with socket.socket() as closed:  # a port where nothing listens: a PACS that is down
        closed.bind(("127.0.0.1", 0))
        down = closed.getsockname()[1]
    destinations = [
        PacsDestination("refusing", "PACS", "127.0.0.1", peers["refusing"].port),
        PacsDestination("down", "PACS", "127.0.0.1", down),
        PacsDestination("good", "PACS", "127.0.0.1", peers["good"].port),
    ]
    # A backoff longer than the test: the PACS that is down is not tried again in it,
    # however slow the machine (0.5 s, the default, was overrun under load).
    config = dataclasses.replace(
        load_config(site_hub_never_asked(tmp_path, pacs=destinations)),
        backoff_initial=60.0,
        backoff_max=120.0,
    )
    follower = ResultFollower(config, StatusBook(config.state))
    uids = []
    for n in range(3):
        [path] = simulate(
            "bmode", tmp_path / f"sim{n}", seed=n, rows=128, columns=128, inclusions=1
        )
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
        follower.pacs.enqueue(n + 1, path)

    left = follower.send_pending(force=True)
    assert sorted(peers["good"].received) == sorted(uids)  # every one, despite the others
    assert left == 3 and {p.destination for p in follower.pacs.pending()} == {"down"}
    aside = sorted((config.state / "pacs" / "refusing" / FAILED).glob("*.json"))
    assert [json.loads(p.read_text())["result"] for p in aside] == [1, 2, 3]
    assert "answered 0xA900" in json.loads(aside[0].read_text())["reason"]
    recorded = read_status(config).recorded["errors"]
    # Each time counted (the status file may keep repeats of an error as one entry).
    errors = [e["message"] for e in recorded for _ in range(e.get("count", 1))]
    assert sum("set aside" in e for e in errors) == 3
    assert sum("association refused or failed" in e for e in errors) == 1  # once: it waits

    assert follower.send_pending() == 3  # the one that is down waits for its backoff
    assert read_status(config).recorded["errors"] == recorded
    follower.client.close()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outbox_folders_are_listed_by_their_owner_and_group_only(
    tmp_path: Path, umask: int
) -> None:
    """Results are PHI: a study's folder is 0750 whatever the umask (0755 under 022, and
    under 077 a 0700 the group reading the outbox could not enter)."""
    payload = tmp_path / "payload"
    payload.write_text('{"finding": "x"}')
    previous = os.umask(umask)
    try:
        target = deliver_to_outbox(
            tmp_path / "shared" / "outbox", payload, result_id=1, study_instance_uid=STUDY,
            kind="summary",
        )  # fmt: skip
    finally:
        os.umask(previous)
    for folder in (target.parent, tmp_path / "shared" / "outbox", tmp_path / "shared"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, folder
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def _site_with(tmp_path: Path, pacs: dict[str, _Pacs]) -> Path:
    """A site (its hub never asked) whose PACS are ``pacs``; its site.toml."""
    return site_hub_never_asked(
        tmp_path,
        pacs=[PacsDestination(name, "PACS", "127.0.0.1", p.port) for name, p in pacs.items()],
    )


def _image(tmp_path: Path, n: int) -> tuple[Path, str]:
    [path] = simulate("bmode", tmp_path / f"sim{n}", seed=n, rows=128, columns=128, inclusions=1)
    return path, str(pydicom.dcmread(path).SOPInstanceUID)


def test_a_processing_failure_is_tried_again_a_few_times(tmp_path: Path) -> None:
    """0x0110 (processing failure) is often passing: tried again with the backoff, and set
    aside only after PROCESSING_FAILURE_TRIES answers."""
    from usreview.site.deliver import PROCESSING_FAILURE_TRIES

    once = _Pacs(0x0000, first=(0x0110,))
    always = _Pacs(0x0110)
    try:
        config = load_config(_site_with(tmp_path, {"once": once, "always": always}))
        follower = ResultFollower(config, StatusBook(config.state))
        path, uid = _image(tmp_path, 0)
        follower.pacs.enqueue(1, path)

        assert follower.send_pending(force=True) == 2  # both answered 0x0110: both wait
        assert not list((config.state / "pacs").glob(f"*/{FAILED}/*.json"))
        assert follower.send_pending(force=True) == 1
        assert once.received == [uid]
        for _ in range(PROCESSING_FAILURE_TRIES - 3):  # tries 3 and 4
            assert follower.send_pending(force=True) == 1
        assert follower.send_pending(force=True) == 0  # the fifth 0x0110: set aside
        [aside] = (config.state / "pacs" / "always" / FAILED).glob("*.json")
        reason = json.loads(aside.read_text())["reason"]
        assert "0x0110" in reason and f"{PROCESSING_FAILURE_TRIES} times" in reason
        follower.client.close()
    finally:
        once.stop()
        always.stop()


# pynetdicom 3.0.4: see test_a_pacs_that_refuses_or_is_down_holds_up_no_other.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_delivery_is_counted_and_retried_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.cli import main
    from usreview.site import format_status

    refusing, good = _Pacs(0xA900), _Pacs(0x0000)
    try:
        site = _site_with(tmp_path, {"refusing": refusing, "good": good})
        config = load_config(site)
        follower = ResultFollower(config, StatusBook(config.state))
        (first, uid1), (second, uid2) = _image(tmp_path, 1), _image(tmp_path, 2)
        follower.pacs.enqueue(1, first)
        follower.pacs.enqueue(2, second)
        assert follower.send_pending(force=True) == 0
        (config.state / "refused" / "00000007.envelope").write_bytes(b"not opened")

        status = read_status(config)
        assert status.pacs == {
            "good": {"pending": 0, "failed": 0},
            "refusing": {"pending": 0, "failed": 2},
        }
        assert status.results_refused == 1
        shown = format_status(status)
        assert "refused       1 result(s)" in shown
        assert "pacs refusing 0 pending, 2 failed" in shown and "--retry-failed refusing" in shown
        assert main(["site", "status", "--config", str(site), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["pacs"]["refusing"]["failed"] == 2 and doc["results_refused"] == 1

        assert main(["site", "pacs", "--config", str(site)]) == 0
        listed = capsys.readouterr().out
        assert "refusing\tresult 1\t" in listed and "answered 0xA900" in listed
        assert listed.endswith("0 delivery(ies) pending, 2 failed\n")
        assert main(["site", "pacs", "--config", str(site), "--retry-failed", "nowhere"]) == 2
        assert "no PACS named 'nowhere'" in capsys.readouterr().err

        refusing.status = 0x0000  # fixed at the PACS
        assert main(["site", "pacs", "--config", str(site), "--retry-failed", "refusing"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("2 failed delivery(ies) moved back into the queue (refusing);")
        markers = sorted((config.state / "pacs" / "refusing").glob("*.json"))
        assert [stat.S_IMODE(m.stat().st_mode) for m in markers] == [0o600, 0o600]
        assert read_status(config).pacs["refusing"] == {"pending": 2, "failed": 0}
        assert follower.send_pending(force=True) == 0
        assert sorted(refusing.received) == sorted([uid1, uid2])
        assert read_status(config).pacs["refusing"] == {"pending": 0, "failed": 0}
        assert main(["site", "pacs", "--config", str(site), "--retry-failed"]) == 0
        assert capsys.readouterr().out.startswith("0 failed delivery(ies) moved back")
        follower.client.close()
    finally:
        refusing.stop()
        good.stop()


def test_a_retry_of_failed_deliveries_never_interleaves_with_setting_one_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway sets a delivery aside (two steps) while `site pacs --retry-failed` runs:
    the delivery ends queued or set aside, never neither (both markers were lost)."""
    import usreview.site.deliver as deliver
    from usreview.site.config import PacsDestination
    from usreview.site.deliver import PacsQueue

    queue = PacsQueue(tmp_path / "pacs", (PacsDestination("pacs", "PACS", "127.0.0.1", 9),), "GW")
    payload = tmp_path / "result.dcm"
    payload.write_bytes(b"x")
    queue.enqueue(1, payload)
    [item] = queue.pending()
    real = deliver.replace_file
    retries: list[threading.Thread] = []

    def replace_then_retry(path: Path, data: bytes, **kwargs: object) -> None:
        real(path, data, **kwargs)  # type: ignore[arg-type]
        if path.parent.name == "failed" and not retries:  # between set_aside's two steps
            retries.append(threading.Thread(target=queue.retry_failed))
            retries[0].start()
            retries[0].join(0.5)  # it waits for the lock (it ran through before)

    monkeypatch.setattr(deliver, "replace_file", replace_then_retry)
    queue.set_aside(item, "0xC000")
    retries[0].join(10)
    assert [p.result_id for p in queue.pending()] == [1]  # moved back, once
    assert queue.failed() == []


# -- the queue's own copies --------------------------------------------------------------


@pytest.mark.parametrize("how", ["private", "group-readable", "other-filesystem"])
def test_the_queue_sends_its_own_copy_whatever_becomes_of_the_outbox_file(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox belongs to the clinic (an EMR import moves its files away): the queue
    keeps a private copy, a hard link of the opened result when it can.

    Old code: the queue kept only the file's path; the file gone, the delivery was dropped
    without a trace."""
    import usreview.site.deliver as deliver

    good = _Pacs(0x0000)
    try:
        config = load_config(_site_with(tmp_path, {"good": good}))
        follower = ResultFollower(config, StatusBook(config.state))
        source, uid = _image(tmp_path, 0)
        source.chmod(0o640 if how == "group-readable" else 0o600)
        if how == "other-filesystem":
            real_link = os.link

            def cross_device(src: object, dst: object) -> None:
                raise OSError(18, "Invalid cross-device link")  # EXDEV

            monkeypatch.setattr(deliver.os, "link", cross_device)
        follower.pacs.enqueue(1, source)
        if how == "other-filesystem":
            monkeypatch.setattr(deliver.os, "link", real_link)
        copy = config.state / "pacs" / "good" / "00000001.dcm"
        made = copy.exists() and (
            copy.read_bytes() == source.read_bytes(),
            stat.S_IMODE(copy.stat().st_mode),
            os.path.samefile(copy, source),
        )
        source.unlink()

        assert follower.send_pending(force=True) == 0
        assert good.received == [uid]
        assert made == (True, 0o600, how == "private")  # a hard link only when private
        assert not copy.exists()
        follower.client.close()
    finally:
        good.stop()


@pytest.mark.parametrize("marker", ["copy", "older"])
def test_a_delivery_whose_file_is_gone_is_set_aside_with_the_reason(
    tmp_path: Path, marker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing of ours removes a queued copy; if it is gone all the same (or, for a marker
    written before the queue kept copies, the outbox file it names), the delivery is set
    aside as failed with the reason, listed by 'site pacs', and the next one goes on.

    Old code: the marker was deleted, nothing was set aside ('0 pending, 0 failed')."""
    from usreview.cli import main

    good = _Pacs(0x0000)
    try:
        site = _site_with(tmp_path, {"good": good})
        config = load_config(site)
        follower = ResultFollower(config, StatusBook(config.state))
        (lost, _), (kept, uid) = _image(tmp_path, 1), _image(tmp_path, 2)
        folder = config.state / "pacs" / "good"
        if marker == "copy":
            follower.pacs.enqueue(1, lost)
            lost.unlink()
            (folder / "00000001.dcm").unlink(missing_ok=True)
        else:
            folder.mkdir(parents=True)
            (folder / "00000001.json").write_text(json.dumps({"result": 1, "path": str(lost)}))
            lost.unlink()
        follower.pacs.enqueue(2, kept)

        assert follower.send_pending(force=True) == 0
        assert good.received == [uid]
        [aside] = follower.pacs.failed()
        assert aside.result_id == 1 and "missing" in aside.reason
        assert read_status(config).pacs["good"] == {"pending": 0, "failed": 1}
        errors = [e["message"] for e in read_status(config).recorded["errors"]]
        assert any("missing" in e and "set aside in pacs/good/failed" in e for e in errors)
        assert main(["site", "pacs", "--config", str(site)]) == 0
        listed = capsys.readouterr().out
        assert "good\tresult 1\t" in listed and "missing" in listed
        assert listed.endswith("0 delivery(ies) pending, 1 failed\n")
        follower.client.close()
    finally:
        good.stop()


def test_a_crash_between_the_steps_of_a_move_loses_no_delivery(tmp_path: Path) -> None:
    """Moving a delivery into failed/ and back is several steps (note, copy, marker): a
    crash in between leaves the copy in either folder, where it is found and sent; copies
    no marker or note names (a crash in enqueue) are removed when the follower starts.

    Old code: markers named a file in the outbox; a marker without a 'path' (the new
    form) was not even listed."""
    good = _Pacs(0x0000)
    try:
        config = load_config(_site_with(tmp_path, {"good": good}))
        folder = config.state / "pacs" / "good"
        (first, uid1), (second, uid2) = _image(tmp_path, 3), _image(tmp_path, 4)
        follower = ResultFollower(config, StatusBook(config.state))
        follower.pacs.enqueue(1, first)
        follower.pacs.enqueue(2, second)
        follower.client.close()
        (folder / FAILED).mkdir()
        os.replace(folder / "00000001.dcm", folder / FAILED / "00000001.dcm")  # mid-move
        (folder / "00000002.json").unlink()  # enqueue cut before its marker
        (folder / ".00000003.dcm.abcd1234.link").write_bytes(b"partial")

        follower = ResultFollower(config, StatusBook(config.state))
        assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [
            ".lock",
            "00000001.dcm",
            "00000001.json",
        ]
        assert follower.send_pending(force=True) == 0
        assert good.received == [uid1] and uid2 not in good.received
        assert not [p for p in folder.rglob("*.dcm")]
        follower.client.close()
    finally:
        good.stop()

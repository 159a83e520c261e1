"""Delivering opened results: the outbox's names, and PACS that refuse or are down.

The PACS are real DICOM peers (pynetdicom Storage SCPs on loopback ports); no hub is needed
to deliver what a site has already opened.
"""

from __future__ import annotations

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

from usreview.envelope import generate_keys, write_key_pair
from usreview.simulate import simulate
from usreview.site import init_site, load_config, read_status
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
    """A Storage SCP that answers every C-STORE with ``status``; what it took."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(UltrasoundImageStorage)
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: Any) -> int:
        if self.status == 0:
            with self._lock:
                self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

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
    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    destinations = [
        PacsDestination("refusing", "PACS", "127.0.0.1", peers["refusing"].port),
        PacsDestination("down", "PACS", "127.0.0.1", down),
        PacsDestination("good", "PACS", "127.0.0.1", peers["good"].port),
    ]
    site = init_site(
        "clinic",
        "http://127.0.0.1:9",
        tmp_path / "site",
        hub_public_key=tmp_path / "hubkeys" / "hub.pub",
        pacs=destinations,
    )
    (tmp_path / "site" / "token").write_text("unused\n")
    (tmp_path / "site" / "token").chmod(0o600)
    config = load_config(site.config)
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
    errors = [e["message"] for e in read_status(config).recorded["errors"]]
    assert sum("set aside" in e for e in errors) == 3
    assert sum("association refused or failed" in e for e in errors) == 1  # once: it waits

    assert follower.send_pending() == 3  # the one that is down waits for its backoff
    assert len(read_status(config).recorded["errors"]) == len(errors)
    follower.client.close()


def test_outbox_folders_are_listed_by_their_owner_and_group_only(tmp_path: Path) -> None:
    """Results are PHI: a study's folder is 0750 whatever the umask lets through."""
    payload = tmp_path / "payload"
    payload.write_text('{"finding": "x"}')
    previous = os.umask(0o022)
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

"""Amendments in the outbox: superseded results move aside and the new summary says so."""

from __future__ import annotations

import json
from pathlib import Path

from usreview.site.config import PacsDestination
from usreview.site.deliver import PacsQueue, deliver_to_outbox
from usreview.site.errors import DeliveryError
from usreview.site.supersede import SUPERSEDED, superseded_files

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _deliver(
    outbox: Path,
    tmp_path: Path,
    result_id: int,
    data: bytes,
    *,
    kind: str = "summary",
    supersedes: int | None = None,
) -> Path:
    payload = tmp_path / f"{result_id}.payload"
    payload.write_bytes(data)
    return deliver_to_outbox(
        outbox,
        payload,
        result_id=result_id,
        study_instance_uid=STUDY,
        kind=kind,
        supersedes=supersedes,
    )


def test_a_text_amendment_moves_the_earlier_one_aside(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    first = _deliver(outbox, tmp_path, 7, b"version 1\n")
    other = _deliver(outbox, tmp_path, 8, b"another result\n", kind="note")
    second = _deliver(outbox, tmp_path, 12, b"version 2\n", supersedes=7)
    folder = outbox / STUDY
    assert not first.exists() and other.exists()
    assert sorted(p.name for p in (folder / SUPERSEDED).iterdir()) == [first.name]
    assert (folder / SUPERSEDED / first.name).read_bytes() == b"version 1\n"
    expected = f"Supersedes result 7: {SUPERSEDED}/{first.name}\n\nversion 2\n"
    assert second.read_text() == expected
    # Delivered again (after a crash): the same summary, nothing else moves.
    again = _deliver(outbox, tmp_path, 12, b"version 2\n", supersedes=7)
    assert again == second and again.read_text() == expected
    assert other.exists()


def test_a_json_summary_gains_a_supersedes_member(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    _deliver(outbox, tmp_path, 3, json.dumps({"psv": 80}).encode())
    doc = {"psv": 95.5, "unit": "cm/s"}
    target = _deliver(outbox, tmp_path, 4, json.dumps(doc).encode(), supersedes=3)
    written = json.loads(target.read_text())
    assert written.pop("supersedes") == {
        "result": 3,
        "files": [f"{SUPERSEDED}/00000003-summary.json"],
    }
    assert written == doc
    assert superseded_files(outbox / STUDY, 3) == [f"{SUPERSEDED}/00000003-summary.json"]


def test_superseding_a_result_not_delivered_here_says_so(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    target = _deliver(outbox, tmp_path, 9, b"version 2\n", supersedes=5)
    assert target.read_text().startswith(
        "Supersedes result 5: none of its files is in this outbox (not delivered here, "
        "or removed since)\n"
    )
    assert not (outbox / STUDY / SUPERSEDED).exists()


def test_a_superseded_result_still_pending_for_the_pacs_is_found_aside(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    first = _deliver(outbox, tmp_path, 1, b"\0" * 128 + b"DICM" + b"\0" * 16, kind="report")
    queue = PacsQueue(tmp_path / "pacs", (PacsDestination("pacs", "PACS", "127.0.0.1", 9),), "US")
    queue.enqueue(1, first)
    _deliver(outbox, tmp_path, 2, b"\0" * 128 + b"DICM" + b"\0" * 16, kind="report", supersedes=1)
    (pending,) = queue.pending()
    try:
        queue.send(pending)
    except DeliveryError as exc:  # looked for aside: not "left the outbox", the file is read
        assert "left the outbox" not in str(exc) and "not readable DICOM" in str(exc)
    assert queue.pending() == [pending]  # kept for the next try

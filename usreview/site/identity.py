"""Which study an opened result is about, read from its signed payload, and the
quarantine for a result whose payload and feed entry disagree.

The feed's items (``study_instance_uid``, ``kind``, ``supersedes``) are not signed; only
the envelope's payload is (by the hub). Before a result is delivered, the follower reads
the study the payload itself names (:func:`identify`):

- DICOM: its Study Instance UID and SOP Instance UID, both required to be UIDs;
- a JSON object with a top-level ``study_instance_uid`` (the hub's summaries);
- a text summary whose header block (the lines before the first blank one) has a
  ``Study: UID`` line (the hub's report summaries);
- anything else names no study (it is delivered under the feed's study, and never goes to
  a PACS: only DICOM does).

:meth:`PayloadIdentity.disagreement` compares it with the feed's study. A result that
disagrees, or DICOM whose UIDs cannot be read, is put in ``STATE/quarantine/`` by
:func:`quarantine` (the envelope as received, still sealed, and a note with the feed
item and the reason), never into the outbox nor to a PACS.

Whether this site sent the study is not checked: the hub sends a report's key images to a
second site (the referring clinic), which sent nothing of that study.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usreview.dicom.header import is_uid
from usreview.envelope.atomic import replace_file

__all__ = ["QUARANTINE", "PayloadIdentity", "identify", "quarantine"]

#: The state folder's subfolder for results whose payload contradicts their feed entry.
QUARANTINE = "quarantine"
_DICOM_TAGS = ["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"]
#: Only the start of a text summary is read for its ``Study:`` line.
_TEXT_HEAD = 4096


@dataclass(frozen=True)
class PayloadIdentity:
    """What a result's payload says it is."""

    #: ``dicom``, ``json``, ``text`` or ``other``.
    form: str
    #: The Study Instance UID the payload names (None: it names none).
    study: str | None = None
    #: A DICOM payload's SOP Instance UID.
    sop_instance_uid: str | None = None
    #: Why a DICOM payload's header could not be read (None: it was).
    unreadable: str | None = None

    @property
    def is_dicom(self) -> bool:
        """Whether the payload is DICOM (the PACS get it)."""
        return self.form == "dicom"

    def disagreement(self, feed_study: str) -> str | None:
        """Why the payload cannot be delivered as the feed's item says; None if it can.

        DICOM must name a Study Instance UID equal to the feed's and a SOP Instance UID;
        a summary that names a study must name the feed's.
        """
        if self.unreadable is not None:
            return f"its DICOM header cannot be read ({self.unreadable})"
        if self.is_dicom:
            if self.study is None or not is_uid(self.study):
                return f"its DICOM Study Instance UID is {self.study or 'missing'!r}, not a UID"
            if self.sop_instance_uid is None or not is_uid(self.sop_instance_uid):
                shown = self.sop_instance_uid or "missing"
                return f"its DICOM SOP Instance UID is {shown!r}, not a UID"
        if self.study is not None and self.study != feed_study:
            return (
                f"the feed names study {feed_study or '(none)'!r} but the signed "
                f"{self.form} names study {self.study!r}"
            )
        return None


def identify(payload: Path) -> PayloadIdentity:
    """Read which study (and, for DICOM, which instance) ``payload`` is about."""
    with open(payload, "rb") as f:
        head = f.read(_TEXT_HEAD)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return _dicom(payload)
    try:
        doc = json.loads(Path(payload).read_bytes())
    except (ValueError, UnicodeDecodeError):
        pass
    else:
        study = doc.get("study_instance_uid") if isinstance(doc, dict) else None
        return PayloadIdentity("json", str(study) if study is not None else None)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # binary, or a character cut at the end of the head
        if exc.start <= len(head) - 4:
            return PayloadIdentity("other")
        text = head[: exc.start].decode("utf-8")
    for line in text.split("\n\n", 1)[0].splitlines():
        if line.startswith("Study:"):
            return PayloadIdentity("text", line[len("Study:") :].strip())
    return PayloadIdentity("text")


def _dicom(payload: Path) -> PayloadIdentity:
    from pydicom import dcmread

    try:
        ds = dcmread(payload, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        study = ds.get("StudyInstanceUID")
        sop = ds.get("SOPInstanceUID")
    except Exception as exc:  # pydicom raises many kinds on a damaged header
        return PayloadIdentity("dicom", unreadable=f"{type(exc).__name__}: {exc}"[:200])
    return PayloadIdentity(
        "dicom",
        str(study).strip() if study is not None else None,
        str(sop).strip() if sop is not None else None,
    )


def quarantine(
    state: Path,
    result_id: int,
    envelope: bytes,
    item: Mapping[str, Any],
    reason: str,
    identity: PayloadIdentity,
) -> Path:
    """Keep a result that is not delivered in ``STATE/quarantine/``: ``ID.envelope`` (as
    received, sealed) and ``ID.json`` (the feed item, the reason, what the payload
    names), both 0600. Returns the note's path."""
    folder = Path(state) / QUARANTINE
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(folder / f"{result_id:08d}.envelope", envelope, mode=0o600)
    note = {
        "item": dict(item),
        "reason": reason,
        "payload": {
            "form": identity.form,
            "study_instance_uid": identity.study,
            "sop_instance_uid": identity.sop_instance_uid,
        },
        "at": time.time(),
    }
    path = folder / f"{result_id:08d}.json"
    replace_file(path, json.dumps(note, default=str).encode(), mode=0o600)
    return path

"""Newer automatic results supersede the older ones of the same instance.

An instance processed again (its job re-queued after a processor's version changed, see
``usreview hub jobs --reprocess``) gives new results; each replaces the current version of
the same *lineage* in the results feed, which marks the older one superseded
(:meth:`usreview.store.ResultFeed.publish_result`). The lineages of an instance are its
SR, its JSON summary, and the derived image of each processor and image name. A version's
idempotency key is its lineage, then ``PART`` for a first version or ``PART/after/CURSOR``
for one that supersedes result ``CURSOR`` (hashed when longer than the feed allows):

- SR: ``auto/UID/sr/SIGNATURE/SR_UID``; a superseding SR gets a new SOP Instance UID
  (derived from the task's and the predecessor's cursor) and a Predecessor Documents
  Sequence (0040,A360) naming the older SR, as highdicom's ``previous_versions`` writes it;
- summary: ``auto/UID/summary/SIGNATURE``; a superseding summary says what it supersedes
  under ``supersedes``: ``result`` (the older summary's cursor, as a site's outbox names
  it), ``sr_result``, ``sr_sop_instance_uid`` and ``signature`` of the older SR; and it
  names its own SR;
- derived image: ``auto/UID/derived-image/PROCESSOR/NAME/VERSION/IMAGE_UID``.

Planning is deterministic: a worker that dies halfway and runs the job again finds its
own versions already current (their keys match) and plans the same keys and bytes, so
nothing is published twice; processing with the same versions again publishes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid

from usreview.store import ResultFeed, ResultRecord

if TYPE_CHECKING:  # the executor loads the processors; planning needs none of them
    from usreview.processing.execution import DerivedOutput, Outputs

__all__ = [
    "Planned",
    "Publication",
    "Superseded",
    "amend_sr",
    "plan_documents",
    "plan_publication",
    "predecessor",
    "result_key",
]

_KEY_MAX = 200
History = Sequence[tuple[ResultRecord, str]]


@dataclass(frozen=True, slots=True)
class Planned:
    """One output to publish: its kind, bytes, key and the result it supersedes."""

    kind: str
    data: bytes
    key: str
    supersedes: int | None
    derived: DerivedOutput | None = None


@dataclass(frozen=True, slots=True)
class Superseded:
    """What a new SR and summary replace: the older versions' cursors and SR identity."""

    sr: int | None
    summary: int | None
    sr_sop_instance_uid: str | None
    signature: str | None

    def as_dict(self) -> dict[str, Any]:
        """The summary's ``supersedes`` object."""
        return {
            "sr_result": self.sr,
            "result": self.summary,
            "sr_sop_instance_uid": self.sr_sop_instance_uid,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class Publication:
    """Everything to publish for one instance, in order, and how to record its analysis.

    ``analysis_signature`` is the signature, followed by ``-after-CURSOR`` when the summary
    supersedes result ``CURSOR`` (so a newer analysis is recorded even when its versions
    were seen before, and the newest is the one reviewers see).
    """

    items: tuple[Planned, ...]
    summary: bytes | None
    analysis_signature: str
    superseded: Superseded | None


def result_key(prefix: str, part: str, after: int | None) -> str:
    """The idempotency key of a version: ``PREFIX/PART[/after/N]``, its tail hashed if long."""
    tail = part if after is None else f"{part}/after/{after}"
    if len(prefix) + 1 + len(tail) > _KEY_MAX:
        tail = hashlib.sha256(tail.encode()).hexdigest()[:40]
    return f"{prefix}/{tail}"


def _lineage(*parts: str) -> str:
    text = "/".join(parts)
    if len(text) <= 150:
        return text
    return "/".join((*parts[:3], hashlib.sha256(text.encode()).hexdigest()[:32]))


def predecessor(
    history: History, key_for: Callable[[int | None], str]
) -> tuple[ResultRecord, str] | None:
    """The version a new one supersedes: the current one, or its predecessor if it is ours.

    ``history`` is the lineage oldest first (:meth:`ResultFeed.keyed_results`);
    ``key_for(cursor)`` the key our version has when it supersedes ``cursor``.
    """
    current = [(record, key) for record, key in history if record.superseded_by is None]
    if not current:
        return None
    record, key = current[-1]
    if key != key_for(record.supersedes):
        return record, key
    earlier = [found for found in history if found[0].cursor == record.supersedes]
    return earlier[0] if earlier else None


def _sr_uid(task_uid: str, after: int | None) -> str:
    if after is None:
        return task_uid
    return str(generate_uid(entropy_srcs=[task_uid, "supersedes", str(after)]))


def _parse_sr_key(prefix: str, key: str) -> tuple[str | None, str | None]:
    """Signature and SR SOP Instance UID of an SR version's key (``None`` if hashed)."""
    parts = key[len(prefix) + 1 :].split("/")
    if len(parts) >= 2 and parts[1].replace(".", "").isdigit():
        return parts[0], parts[1]
    return None, None


def amend_sr(data: bytes, sop_instance_uid: str, predecessor: Dataset | None) -> bytes:
    """The SR ``data`` with a new SOP Instance UID and, if given, its Predecessor Document.

    ``predecessor`` holds the older SR's StudyInstanceUID, SeriesInstanceUID, SOPClassUID
    and SOPInstanceUID.
    """
    document = dcmread(io.BytesIO(data))
    document.SOPInstanceUID = sop_instance_uid
    document.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    if predecessor is not None:
        instance = Dataset()
        instance.ReferencedSOPClassUID = predecessor.SOPClassUID
        instance.ReferencedSOPInstanceUID = predecessor.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = predecessor.SeriesInstanceUID
        series.ReferencedSOPSequence = DicomSequence([instance])
        item = Dataset()
        item.StudyInstanceUID = predecessor.StudyInstanceUID
        item.ReferencedSeriesSequence = DicomSequence([series])
        document.PredecessorDocumentsSequence = DicomSequence([item])
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def plan_publication(feed: ResultFeed, outputs: Outputs) -> Publication:
    """Keys, predecessors and final bytes of ``outputs``, given what the feed holds."""
    uid = outputs.sop_instance_uid
    plan = plan_documents(feed, f"auto/{uid}", outputs.signature, outputs.sr, outputs.summary)
    items = list(plan.items)
    for image in outputs.derived:
        prefix = _lineage("auto", uid, "derived-image", f"{image.processor}/{image.name}")
        part = f"{image.version}/{image.sop_instance_uid}"

        def image_key(after: int | None, prefix: str = prefix, part: str = part) -> str:
            return result_key(prefix, part, after)

        found = predecessor(feed.keyed_results(prefix + "/"), image_key)
        after = None if found is None else found[0].cursor
        items.append(Planned("derived-image", image.data, image_key(after), after, image))
    return Publication(tuple(items), plan.summary, plan.analysis_signature, plan.superseded)


def plan_documents(
    feed: ResultFeed, base: str, signature: str, sr: bytes | None, summary: bytes | None
) -> Publication:
    """An SR and its JSON summary under lineages ``BASE/sr`` and ``BASE/summary``.

    ``signature`` (at most 16 characters) names what made them; a superseding summary gets
    ``supersedes`` and, with an SR, the SR's new ``sr_sop_instance_uid``.
    """
    items: list[Planned] = []
    superseded = Superseded(None, None, None, None)
    sr_uid: str | None = None
    if sr is not None:
        planned, superseded, sr_uid = _sr_item(feed, f"{base}/sr", signature, sr)
        items.append(planned)
    analysis_signature = signature
    if summary is not None:
        prefix = f"{base}/summary"

        def summary_key(after: int | None) -> str:
            return result_key(prefix, signature, after)

        earlier = predecessor(feed.keyed_results(prefix + "/"), summary_key)
        if earlier is not None:
            after = earlier[0].cursor
            analysis_signature = f"{signature}-after-{after}"[:64]
            superseded = Superseded(
                superseded.sr, after, superseded.sr_sop_instance_uid, superseded.signature
            )
        if superseded.sr is not None or superseded.summary is not None:
            document = json.loads(summary)
            if sr_uid is not None:
                document["sr_sop_instance_uid"] = sr_uid
            document["supersedes"] = superseded.as_dict()
            summary = json.dumps(document, indent=1, sort_keys=True, default=str).encode()
        items.append(
            Planned("summary", summary, summary_key(superseded.summary), superseded.summary)
        )
    changed = superseded.sr is not None or superseded.summary is not None
    return Publication(tuple(items), summary, analysis_signature, superseded if changed else None)


def _sr_item(
    feed: ResultFeed, prefix: str, signature: str, data: bytes
) -> tuple[Planned, Superseded, str]:
    """The SR to publish (amended when it supersedes one), what it supersedes, its UID."""
    task = dcmread(io.BytesIO(data))
    task_uid = str(task.SOPInstanceUID)

    def sr_key(after: int | None) -> str:
        return result_key(prefix, f"{signature}/{_sr_uid(task_uid, after)}", after)

    earlier = predecessor(feed.keyed_results(prefix + "/"), sr_key)
    if earlier is None:
        return Planned("sr", data, sr_key(None), None), Superseded(None, None, None, None), task_uid
    after = earlier[0].cursor
    old_signature, old_uid = _parse_sr_key(prefix, earlier[1])
    reference = None
    if old_uid is not None:
        reference = Dataset()
        reference.StudyInstanceUID = task.StudyInstanceUID
        reference.SeriesInstanceUID = task.SeriesInstanceUID
        reference.SOPClassUID = task.SOPClassUID
        reference.SOPInstanceUID = old_uid
    sr_uid = _sr_uid(task_uid, after)
    amended = amend_sr(data, sr_uid, reference)
    return (
        Planned("sr", amended, sr_key(after), after),
        Superseded(after, None, old_uid, old_signature),
        sr_uid,
    )

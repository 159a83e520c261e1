"""The per-study journal: what became of each instance and result of a study, at the site.

``STATE/studies.jsonl`` (mode 0600) answers "did exam X reach the hub, and are its results
back, and at the PACS?" (``usreview site status --study UID`` or ``--accession N``). One
JSON object per line, appended by the processes that upload and deliver (the gateway's
upload process, ``site pull``, and ``site push``, which may run beside a gateway), never by
the scanners' C-STORE path:

- ``{"e": "ack", "sop", "study", "acc", "desc", "spooled", "at", "dup"}``: the hub's
  verified receipt named the instance (``study`` from the receipt; the accession number
  and study description from the header the uploader has in memory: identifying, hence
  0600; never the patient's name, ID or birth date);
- ``{"e": "rejected", "sop", "study", "acc", "desc", "spooled", "at", "reason"}``: moved
  to the spool's ``rejected/``;
- ``{"e": "result", "id", "kind", "study", "file", "pacs": [NAME...], "at"}``: a result
  delivered into the outbox (and queued for those PACS); ``file`` is null at a PACS-only
  site (``results.outbox = false``);
- ``{"e": "pacs", "id", "study", "pacs", "ok", "at"[, "reason"]}``: a PACS took it, or it
  was set aside in ``pacs/NAME/failed/``.

Lines are written at once (``O_APPEND``) and synced at most every half second, and at
:meth:`StudyLog.flush`; a line cut short by a crash is skipped when read. The journal is
compacted when it is opened, once a day and when it grows past 64 MiB: the studies with
nothing recorded for :data:`RETENTION` (30 days) are dropped, written atomically. Writers
in several processes take turns: each append and each compaction (read, filter, replace)
holds an ``flock`` on ``STATE/studies.lock`` (0600), so no line is written between a
compaction's read and its replace, and an appender whose file another process replaced
meanwhile opens the new one before writing.
:func:`study_reports` reads it together with the spool (instances still waiting), and the
PACS queues (deliveries pending or set aside), which outrank what the journal says.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usreview.envelope.atomic import replace_file

__all__ = [
    "RETENTION",
    "STUDIES_FILE",
    "InstanceHeader",
    "StudyLog",
    "StudyReport",
    "format_study_reports",
    "instance_header",
    "read_journal",
    "study_reports",
]

STUDIES_FILE = "studies.jsonl"
_LOCK_FILE = "studies.lock"
#: Studies with nothing recorded for this long (seconds) are dropped at compaction.
RETENTION = 30 * 86400.0
#: Compact when the file grows past this many bytes.
MAX_BYTES = 64 << 20
_COMPACT_EVERY = 86400.0
_SYNC_INTERVAL = 0.5


@dataclass(frozen=True)
class InstanceHeader:
    """What the journal keeps of an instance's header (never the patient's name, ID or
    birth date)."""

    study_instance_uid: str | None = None
    accession_number: str | None = None
    study_description: str | None = None


_HEADER_TAGS = ["StudyInstanceUID", "AccessionNumber", "StudyDescription"]


def instance_header(source: bytes | Path) -> InstanceHeader:
    """Study UID, accession number and study description of a DICOM file's header
    (tolerant: whatever cannot be read is ``None``)."""
    import pydicom

    try:
        fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception:  # whatever a damaged header raises: only the journal's detail is lost
        return InstanceHeader()

    def text(name: str) -> str | None:
        value = str(ds.get(name, "") or "").strip()
        return value[:128] or None

    return InstanceHeader(
        text("StudyInstanceUID"), text("AccessionNumber"), text("StudyDescription")
    )


class StudyLog:
    """Append-only journal of ``STATE/studies.jsonl``; safe for threads and processes.

    Parameters
    ----------
    state
        The site's state folder.
    retention
        Seconds a study is kept after its last event.
    max_bytes
        Size past which the file is compacted.
    clock
        Unix time (tests pass their own).
    """

    def __init__(
        self,
        state: Path,
        *,
        retention: float = RETENTION,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state) / STUDIES_FILE
        self._lock_path = Path(state) / _LOCK_FILE
        self.retention = retention
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._closed = False
        self._dirty = False
        self._synced = 0.0
        self._compacted = 0.0
        # A full disk or a read-only folder: the journal is a record, never a reason to stop.
        with self._lock, contextlib.suppress(OSError):
            # 'site push' at a site whose gateway never ran: no state folder yet.
            Path(state).mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._file_lock():
                self._compact()

    # -- events ------------------------------------------------------------------------

    def acknowledged(
        self,
        sop_instance_uid: str,
        study: str | None,
        header: InstanceHeader,
        *,
        spooled_at: float | None,
        duplicate: bool = False,
    ) -> None:
        """The hub's verified receipt named the instance (``study``: the receipt's)."""
        self._instance("ack", sop_instance_uid, study, header, spooled_at, dup=duplicate)

    def rejected(
        self,
        sop_instance_uid: str,
        header: InstanceHeader,
        reason: str,
        *,
        spooled_at: float | None,
    ) -> None:
        """The instance moved to the spool's ``rejected/``."""
        self._instance("rejected", sop_instance_uid, None, header, spooled_at, reason=reason)

    def result(
        self, result_id: int, kind: str, study: str, file: Path | None, pacs: Iterable[str] = ()
    ) -> None:
        """A result delivered into the outbox as ``file`` (None: not written there, at a
        PACS-only site) and queued for ``pacs``."""
        self._append(
            {
                "e": "result",
                "id": result_id,
                "kind": kind,
                "study": study,
                "file": str(file) if file is not None else None,
                "pacs": list(pacs),
            }
        )

    def pacs(self, result_id: int, study: str, pacs: str, reason: str | None = None) -> None:
        """A PACS took the result (``reason`` None), or it was set aside for ``reason``."""
        entry: dict[str, Any] = {
            "e": "pacs",
            "id": result_id,
            "study": study,
            "pacs": pacs,
            "ok": reason is None,
        }
        if reason is not None:
            entry["reason"] = reason
        self._append(entry)

    def _instance(
        self,
        event: str,
        uid: str,
        study: str | None,
        header: InstanceHeader,
        spooled_at: float | None,
        **extra: Any,
    ) -> None:
        self._append(
            {
                "e": event,
                "sop": uid,
                "study": study or header.study_instance_uid,
                "acc": header.accession_number,
                "desc": header.study_description,
                "spooled": spooled_at,
                **extra,
            }
        )

    # -- the file ----------------------------------------------------------------------

    def _append(self, entry: dict[str, Any]) -> None:
        now = self._clock()
        line = (json.dumps({**entry, "at": now}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                with self._file_lock():
                    self._write(line, now)
            except OSError:  # a full disk: the journal is a record, never a reason to stop
                return

    def _write(self, line: bytes, now: float) -> None:
        """Append ``line``. Holds ``self._lock`` and the file lock."""
        if self._closed:  # a thread finishing after close(): written, synced, closed
            fd = self._open()
            try:
                os.write(fd, line)
                os.fdatasync(fd)
            finally:
                os.close(fd)
                self._fd = None
            return
        fd = self._open()
        os.write(fd, line)
        self._dirty = True
        if now - self._compacted > _COMPACT_EVERY or os.fstat(fd).st_size > self.max_bytes:
            self._compact()
        elif time.monotonic() - self._synced > _SYNC_INTERVAL:
            self._sync()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Hold the ``flock`` on ``STATE/studies.lock`` (another process's log takes turns
        with this one). Taken after ``self._lock``, never before."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _open(self) -> int:
        """The journal's descriptor, opened again if another process replaced the file
        (compacted it) since. Holds both locks."""
        if self._fd is not None:
            try:
                named, mine = os.stat(self.path), os.fstat(self._fd)
                replaced = (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                replaced = True
            if replaced:  # what was written through it is in the replacement (read under lock)
                os.close(self._fd)
                self._fd = None
                self._dirty = False
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def _sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self._synced = time.monotonic()

    def flush(self) -> None:
        """Sync what was appended (the upload process calls it every second)."""
        with self._lock, contextlib.suppress(OSError):
            self._sync()

    def close(self) -> None:
        """Sync and close the file (an entry appended later is written and synced alone)."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._sync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _compact(self) -> None:
        """Drop the studies quiet for :attr:`retention` (then the oldest, past
        :attr:`max_bytes`); written atomically. Holds ``self._lock`` and the file lock,
        so no other process appends between the read and the replace."""
        now = self._clock()
        self._compacted = now
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError:
            return
        entries = _parse(data)
        last: dict[str, float] = {}
        for entry in entries:
            key = _study_key(entry)
            last[key] = max(last.get(key, 0.0), _at(entry))
        keep = {key for key, at in last.items() if now - at <= self.retention}
        kept = [entry for entry in entries if _study_key(entry) in keep]
        lines = [json.dumps(entry, separators=(",", ":")) + "\n" for entry in kept]
        size = sum(len(line) for line in lines)
        if size > self.max_bytes:  # still too big: the oldest studies go until half of it
            order = sorted(keep, key=lambda key: last[key])
            sizes: dict[str, int] = {}
            for entry, line in zip(kept, lines, strict=True):
                sizes[_study_key(entry)] = sizes.get(_study_key(entry), 0) + len(line)
            for key in order:
                if size <= self.max_bytes // 2:
                    break
                keep.discard(key)
                size -= sizes.get(key, 0)
            lines = [
                line for entry, line in zip(kept, lines, strict=True) if _study_key(entry) in keep
            ]
        text = "".join(lines).encode()
        if text == data:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        replace_file(self.path, text, mode=0o600)
        self._dirty = False


def _parse(data: bytes) -> list[dict[str, Any]]:
    entries = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("e"), str):
                entries.append(entry)
    return entries


def _at(entry: Mapping[str, Any]) -> float:
    at = entry.get("at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0


def _study_key(entry: Mapping[str, Any]) -> str:
    study = entry.get("study")
    return study if isinstance(study, str) and study else f"?{entry.get('sop', '')}"


def read_journal(state: Path) -> list[dict[str, Any]]:
    """Every readable entry of ``STATE/studies.jsonl``, oldest first (none if missing)."""
    try:
        return _parse((Path(state) / STUDIES_FILE).read_bytes())
    except OSError:
        return []


# -- reports ---------------------------------------------------------------------------


@dataclass
class StudyReport:
    """One study as ``site status --study`` shows it."""

    study_instance_uid: str
    accession_numbers: set[str] = field(default_factory=set)
    description: str | None = None
    #: SOP Instance UID -> "acknowledged", "waiting" or "rejected".
    instances: dict[str, str] = field(default_factory=dict)
    rejected_reasons: dict[str, str] = field(default_factory=dict)
    first_received: float | None = None
    last_acknowledged: float | None = None
    #: result id -> {"kind", "file", "at", "pacs": {NAME: {"state", "reason"?}}}
    results: dict[int, dict[str, Any]] = field(default_factory=dict)

    def count(self, state: str) -> int:
        """Instances in ``state``."""
        return sum(1 for value in self.instances.values() if value == state)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        kinds: dict[str, int] = {}
        pacs: dict[str, dict[str, int]] = {}
        for result in self.results.values():
            kinds[result["kind"]] = kinds.get(result["kind"], 0) + 1
            for name, where in result["pacs"].items():
                counts = pacs.setdefault(
                    name, {"delivered": 0, "pending": 0, "failed": 0, "unknown": 0}
                )
                counts[where["state"]] = counts.get(where["state"], 0) + 1
        return {
            "study_instance_uid": self.study_instance_uid,
            "accession_numbers": sorted(self.accession_numbers),
            "description": self.description,
            "instances": {
                "received": len(self.instances),
                "acknowledged": self.count("acknowledged"),
                "waiting": self.count("waiting"),
                "rejected": self.count("rejected"),
                "first_received": self.first_received,
                "last_acknowledged": self.last_acknowledged,
                "rejected_reasons": dict(sorted(self.rejected_reasons.items())),
            },
            "results": {
                "received": len(self.results),
                "by_kind": dict(sorted(kinds.items())),
                "pacs": dict(sorted(pacs.items())),
                "items": [
                    {"id": result_id, **result}
                    for result_id, result in sorted(self.results.items())
                ],
            },
        }


def study_reports(
    state: Path,
    *,
    study: str | None = None,
    accession: str | None = None,
    waiting: Iterable[tuple[str, InstanceHeader, float]] = (),
    pacs_pending: Mapping[str, set[int]] | None = None,
    pacs_failed: Mapping[str, Mapping[int, str]] | None = None,
) -> list[StudyReport]:
    """The studies named by ``study`` or ``accession``, from the journal.

    ``waiting``: the spool's instances ``(SOP UID, header, spooled at)``; ``pacs_pending``
    and ``pacs_failed``: per PACS, the result ids queued and set aside (with the reason),
    which outrank the journal.
    """
    entries = read_journal(state)
    reports: dict[str, StudyReport] = {}
    by_sop: dict[str, str] = {}  # SOP UID -> study, for instances waiting again

    def wanted(entry_study: str | None, acc: str | None) -> bool:
        if study is not None:
            return entry_study == study
        return accession is not None and acc == accession

    studies_of_accession: set[str] = set()
    for entry in entries:
        acc = entry.get("acc")
        if isinstance(entry.get("study"), str) and wanted(entry["study"], acc):
            studies_of_accession.add(entry["study"])
    waiting = list(waiting)
    for _, header, _ in waiting:
        if header.study_instance_uid and wanted(header.study_instance_uid, header.accession_number):
            studies_of_accession.add(header.study_instance_uid)

    def report(uid: str) -> StudyReport:
        return reports.setdefault(uid, StudyReport(uid))

    for entry in entries:
        uid = entry.get("study")
        if not isinstance(uid, str) or uid not in studies_of_accession:
            continue
        rep = report(uid)
        event = entry["e"]
        at = _at(entry)
        if event in ("ack", "rejected") and isinstance(entry.get("sop"), str):
            sop = entry["sop"]
            by_sop[sop] = uid
            _describe(rep, entry.get("acc"), entry.get("desc"))
            spooled = entry.get("spooled")
            if isinstance(spooled, int | float) and not isinstance(spooled, bool):
                rep.first_received = min(rep.first_received or spooled, spooled)
            if event == "ack":
                rep.instances[sop] = "acknowledged"
                rep.rejected_reasons.pop(sop, None)
                rep.last_acknowledged = max(rep.last_acknowledged or at, at)
            else:
                rep.instances[sop] = "rejected"
                rep.rejected_reasons[sop] = str(entry.get("reason", ""))
        elif event == "result" and isinstance(entry.get("id"), int):
            names = entry.get("pacs")
            names = names if isinstance(names, list) else []
            rep.results[entry["id"]] = {
                "kind": str(entry.get("kind", "result")),
                "file": entry.get("file"),
                "at": at,
                "pacs": {str(name): {"state": "pending"} for name in names},
            }
        elif event == "pacs" and isinstance(entry.get("id"), int):
            result = rep.results.get(entry["id"])
            if result is not None:
                state_ = "delivered" if entry.get("ok") else "failed"
                where: dict[str, Any] = {"state": state_}
                if not entry.get("ok"):
                    where["reason"] = str(entry.get("reason", ""))
                result["pacs"][str(entry.get("pacs"))] = where
    for sop, header, spooled in waiting:
        uid = by_sop.get(sop) or header.study_instance_uid
        if uid is None or uid not in studies_of_accession:
            continue
        rep = report(uid)
        _describe(rep, header.accession_number, header.study_description)
        rep.instances[sop] = "waiting"
        rep.rejected_reasons.pop(sop, None)
        rep.first_received = min(rep.first_received or spooled, spooled)
    for rep in reports.values():  # the queues' folders say what is pending or failed now
        for result_id, result in rep.results.items():
            for name in result["pacs"]:
                if result_id in (pacs_pending or {}).get(name, set()):
                    result["pacs"][name] = {"state": "pending"}
                elif result_id in (pacs_failed or {}).get(name, {}):
                    reason = (pacs_failed or {})[name][result_id]
                    result["pacs"][name] = {"state": "failed", "reason": reason}
                elif pacs_pending is not None and result["pacs"][name]["state"] != "delivered":
                    result["pacs"][name] = {  # in no queue, and no delivery recorded
                        "state": "unknown",
                        "reason": "in no queue: delivered without a record (a crash), or "
                        "its outbox file left before it was sent",
                    }
    return [reports[uid] for uid in sorted(reports)]


def _describe(rep: StudyReport, acc: Any, desc: Any) -> None:
    if isinstance(acc, str) and acc:
        rep.accession_numbers.add(acc)
    if isinstance(desc, str) and desc:
        rep.description = desc


def format_study_reports(reports: list[StudyReport], asked: str) -> str:
    """The readable blocks of ``site status --study/--accession``."""
    from usreview.site.status import local_time

    if not reports:
        return (
            f"no instance or result of {asked} recorded at this site "
            f"(the journal keeps {RETENTION / 86400:.0f} days)\n"
        )
    blocks = []
    for rep in reports:
        doc = rep.to_dict()
        inst = doc["instances"]
        res = doc["results"]
        accession = ", ".join(doc["accession_numbers"]) or "-"
        lines = [
            f"study         {rep.study_instance_uid}",
            f"accession     {accession}" + (f"  ({rep.description})" if rep.description else ""),
            f"instances     {inst['received']} received, {inst['acknowledged']} acknowledged "
            f"by the hub, {inst['waiting']} waiting, {inst['rejected']} rejected",
        ]
        if rep.first_received is not None:
            lines.append(f"  first received    {local_time(rep.first_received) or '?'}")
        if rep.last_acknowledged is not None:
            lines.append(f"  last acknowledged {local_time(rep.last_acknowledged) or '?'}")
        for sop, reason in sorted(rep.rejected_reasons.items()):
            lines.append(f"  rejected {sop}: {reason}")
        kinds = ", ".join(f"{n} {kind}" for kind, n in res["by_kind"].items())
        lines.append(f"results       {res['received']} received" + (f": {kinds}" if kinds else ""))
        for name, counts in res["pacs"].items():
            lines.append(
                f"  PACS {name}: {counts['delivered']} delivered, {counts['pending']} pending, "
                f"{counts['failed']} failed"
                + (f", {counts['unknown']} unknown" if counts.get("unknown") else "")
            )
        for item in res["items"]:
            for name, where in sorted(item["pacs"].items()):
                if where["state"] in ("failed", "unknown"):
                    lines.append(
                        f"  result {item['id']} {where['state']} at PACS {name}: {where['reason']}"
                    )
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)

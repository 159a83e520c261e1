"""Delivering an opened result: into the outbox folder, and by C-STORE to each PACS.

The outbox gets every result as ``OUTBOX/STUDY_UID/ID-KIND.EXT`` (``.dcm`` for DICOM,
``.json`` for a JSON summary, ``.txt`` for a readable summary, ``.bin`` otherwise),
written atomically (temporary file, fsync, rename, folder fsync): a file there is
complete. A result that supersedes an earlier one moves the earlier one's files to
``OUTBOX/STUDY_UID/superseded/`` and its summary says so (:mod:`usreview.site.supersede`).
A DICOM result also goes to each configured PACS. Sending to a PACS is retried until it
succeeds: before the first try a marker ``STATE/pacs/NAME/ID.json`` is written durably,
and it is removed only after the PACS answered success, so a PACS that is down (or a
gateway that is killed) delays a delivery but never loses it. A result the PACS refuses
for what it is (a failure status other than "out of resources" or "processing failure",
no presentation context for it) will not be taken later either: its marker moves to
``STATE/pacs/NAME/failed/`` with the reason, and the next results go on. "Processing
failure" (0x0110), which PACS often answer for a passing trouble, is retried with the
queue's backoff, :data:`PROCESSING_FAILURE_TRIES` times in all (counted in the marker)
before it is set aside. :meth:`PacsQueue.retry_failed` moves what was set aside back into
the queue (``usreview site pacs --retry-failed``). Delivering twice is harmless: same file
name, same SOP Instance UID at the PACS. The outbox folder of a study is its Study
Instance UID, or ``unknown-study`` for a name that is not a UID.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from usreview.dicom.header import is_uid
from usreview.envelope.atomic import fsync_directory, replace_file, replacing_file
from usreview.site.config import PacsDestination
from usreview.site.errors import DeliveryError
from usreview.site.supersede import SUPERSEDED, annotate, retire, superseded_files

__all__ = [
    "PROCESSING_FAILURE_TRIES",
    "FailedDelivery",
    "PacsQueue",
    "PendingDelivery",
    "copy_durably",
    "deliver_to_outbox",
    "is_dicom",
    "send_to_pacs",
]

_log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
#: Refused: out of resources (PS3.4 B.2.3): the PACS may take it later.
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
#: Processing failure (PS3.7 C.4.2): often a passing trouble at the PACS.
_PROCESSING_FAILURE = 0x0110
#: How many times in all a delivery answered 0x0110 is tried before it is set aside.
PROCESSING_FAILURE_TRIES = 5
#: Where a delivery the PACS will never take is set aside, in each destination's folder.
FAILED = "failed"


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` after the preamble)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _is_text(path: Path) -> bool:
    """UTF-8 text without control characters other than line breaks and tabs."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 32 and c not in "\n\r\t" for c in text)


def _make_folder(folder: Path) -> None:
    """``folder`` and its missing parents, mode 0750: the outbox's files (0640) are PHI,
    listed by their owner and group only, whatever the umask lets through."""
    missing = []
    for path in (folder, *folder.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir(mode=0o750, exist_ok=True)
        os.chmod(path, 0o750)  # mkdir's mode passes through the umask


def copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically and durably (replacing ``dst``)."""
    _make_folder(dst.parent)
    with replacing_file(dst, mode=0o640) as out, open(src, "rb") as fin:
        shutil.copyfileobj(fin, out, 1 << 20)


def deliver_to_outbox(
    outbox: Path,
    payload: Path,
    *,
    result_id: int,
    study_instance_uid: str,
    kind: str,
    supersedes: int | None = None,
) -> Path:
    """Copy an opened result into the outbox; return its path there.

    ``supersedes``: the id of the result this one replaces (an amendment); its files
    move to the study's ``superseded/`` folder and a JSON or text summary says so
    (:mod:`usreview.site.supersede`).

    Raises
    ------
    DeliveryError
        The outbox cannot be written.
    """
    if is_dicom(payload):
        ext = "dcm"
    elif _is_json(payload):
        ext = "json"
    else:
        ext = "txt" if _is_text(payload) else "bin"
    folder = outbox / (study_instance_uid if is_uid(study_instance_uid) else "unknown-study")
    target = folder / f"{result_id:08d}-{_SAFE.sub('_', kind)}.{ext}"
    try:
        if supersedes is None or ext not in ("json", "txt"):
            copy_durably(payload, target)
        else:
            files = superseded_files(folder, supersedes)
            original = payload.read_bytes()
            try:
                data = annotate(original, ext, supersedes, files)
            except ValueError:  # a summary that cannot be rewritten goes as it came
                data = original
            _make_folder(folder)
            replace_file(target, data, mode=0o640)
        if supersedes is not None:
            retire(folder, supersedes)
    except OSError as exc:
        raise DeliveryError(f"result {result_id}: cannot write {target}: {exc}") from None
    return target


def send_to_pacs(
    destination: PacsDestination, path: Path, *, calling_ae_title: str, timeout: float = 30.0
) -> None:
    """C-STORE the DICOM file ``path`` to ``destination``.

    Raises
    ------
    DeliveryError
        The file is not DICOM, the association fails, or the PACS answers a failure.
    """
    where = (
        f"PACS {destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    )
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    try:
        dataset = dcmread(path)
        sop_class = str(dataset.SOPClassUID)
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(sop_class, syntaxes)
    except Exception as exc:  # pydicom raises many kinds on a damaged file
        raise DeliveryError(
            f"{path.name} cannot go to {where}: not readable DICOM ({exc})", permanent=True
        ) from None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"{where}: association refused or failed")
    try:
        if not assoc.accepted_contexts:
            raise DeliveryError(
                f"{where} accepts no presentation context for {path.name} (SOP class {sop_class})",
                permanent=True,
            )
        status = assoc.send_c_store(dataset)
    except DeliveryError:
        raise
    except Exception as exc:  # encoding the dataset, or the association broke
        raise DeliveryError(f"{where}: C-STORE of {path.name} failed: {exc}") from None
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code not in _OK_STATUSES:
        shown = f"0x{code:04X}" if isinstance(code, int) else "no answer"
        message = f"{where}: C-STORE of {path.name} answered {shown}"
        if code == _PROCESSING_FAILURE:
            raise DeliveryError(f"{message} (processing failure)", tries=PROCESSING_FAILURE_TRIES)
        permanent = isinstance(code, int) and code not in _OUT_OF_RESOURCES
        raise DeliveryError(message, permanent=permanent)


@dataclass(frozen=True)
class PendingDelivery:
    """A result waiting to be sent to one PACS."""

    destination: str
    result_id: int
    path: Path
    marker: Path
    #: Failed tries counted so far (those that may succeed later but not forever).
    attempts: int = 0

    @property
    def study(self) -> str:
        """The study's outbox folder name (its Study Instance UID, or ``unknown-study``)."""
        folder = self.path.parent
        return folder.parent.name if folder.name == SUPERSEDED else folder.name


@dataclass(frozen=True)
class FailedDelivery:
    """A result set aside in ``NAME/failed/``: the PACS refused it."""

    destination: str
    result_id: int
    path: Path
    reason: str
    marker: Path


@contextlib.contextmanager
def _holding(folder: Path) -> Iterator[None]:
    """Hold the lock of one PACS's queue ``folder`` (``.lock`` in it): moving a delivery
    between the queue and ``failed/`` is two steps, which another process must not
    interleave (the gateway setting one aside while ``site pacs --retry-failed`` moves it
    back lost both markers)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class PacsQueue:
    """Durable markers of results still to send to each PACS, under ``STATE/pacs``.

    Parameters
    ----------
    root
        The folder holding one subfolder per destination.
    destinations
        The configured PACS.
    calling_ae_title
        The AE title the gateway calls the PACS with.
    """

    def __init__(
        self, root: Path, destinations: tuple[PacsDestination, ...], calling_ae_title: str
    ) -> None:
        self.root = Path(root)
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae_title = calling_ae_title

    def enqueue(self, result_id: int, path: Path) -> None:
        """Record durably that ``path`` must reach every PACS."""
        for name in self.destinations:
            folder = self.root / name
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            note = json.dumps({"result": result_id, "path": str(path)}).encode()
            replace_file(folder / f"{result_id:08d}.json", note, mode=0o600)

    def pending(self) -> list[PendingDelivery]:
        """Everything not yet delivered, oldest result first."""
        items = []
        for name in self.destinations:
            for marker in sorted((self.root / name).glob("*.json")):  # not failed/'s
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    doc = json.loads(marker.read_text())
                    attempts = doc.get("attempts", 0)
                    items.append(
                        PendingDelivery(
                            name,
                            int(doc["result"]),
                            Path(doc["path"]),
                            marker,
                            attempts if isinstance(attempts, int) else 0,
                        )
                    )
        return items

    def count_failure(self, item: PendingDelivery) -> int:
        """Count one more failed try of ``item`` in its marker (durably); return the count."""
        attempts = item.attempts + 1
        note = {"result": item.result_id, "path": str(item.path), "attempts": attempts}
        if item.marker.exists():
            replace_file(item.marker, json.dumps(note).encode(), mode=0o600)
        return attempts

    def failed(self, destination: str | None = None) -> list[FailedDelivery]:
        """The deliveries set aside in ``NAME/failed/`` (of one destination, or all)."""
        items = []
        names = [destination] if destination is not None else list(self.destinations)
        for name in names:
            for marker in sorted((self.root / name / FAILED).glob("*.json")):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    doc = json.loads(marker.read_text())
                    items.append(
                        FailedDelivery(
                            name,
                            int(doc["result"]),
                            Path(doc["path"]),
                            str(doc.get("reason", "")),
                            marker,
                        )
                    )
        return items

    def retry_failed(self, destination: str | None = None) -> list[FailedDelivery]:
        """Move the deliveries set aside (of one destination, or all) back into the queue.

        Each gets a fresh marker (written durably, as :meth:`enqueue` does, with no tries
        counted) before its note in ``failed/`` is removed, so an interruption leaves it
        queued, or in both places (sending twice is harmless). Returns those moved back.

        Raises
        ------
        DeliveryError
            ``destination`` is not a configured PACS.
        """
        if destination is not None and destination not in self.destinations:
            known = ", ".join(sorted(self.destinations)) or "none"
            raise DeliveryError(f"no PACS named {destination!r} in site.toml (configured: {known})")
        moved = []
        for item in self.failed(destination):
            note = json.dumps({"result": item.result_id, "path": str(item.path)}).encode()
            with _holding(item.marker.parent.parent):  # not while the gateway sets it aside
                if not item.marker.exists():
                    continue
                replace_file(item.marker.parent.parent / item.marker.name, note, mode=0o600)
                item.marker.unlink(missing_ok=True)
                fsync_directory(item.marker.parent)
            moved.append(item)
        return moved

    def send(self, item: PendingDelivery) -> None:
        """Send one pending delivery; remove its marker on success.

        Raises
        ------
        DeliveryError
            The PACS could not take it (the marker stays for the next try).
        """
        path = item.path
        if not path.exists():  # superseded meanwhile: the PACS still gets the earlier one
            path = path.parent / SUPERSEDED / path.name
        if not path.exists():
            item.marker.unlink(missing_ok=True)
            raise DeliveryError(
                f"result {item.result_id}: {item.path} left the outbox before it reached "
                f"PACS {item.destination}; it will not be sent"
            )
        send_to_pacs(
            self.destinations[item.destination], path, calling_ae_title=self.calling_ae_title
        )
        item.marker.unlink(missing_ok=True)
        _log.info("result %s delivered to PACS %s", item.result_id, item.destination)

    def set_aside(self, item: PendingDelivery, reason: str) -> Path:
        """Move a delivery the PACS will never take to ``NAME/failed/`` with ``reason``."""
        folder = item.marker.parent / FAILED
        folder.mkdir(mode=0o700, exist_ok=True)
        note = json.dumps({"result": item.result_id, "path": str(item.path), "reason": reason})
        aside = folder / item.marker.name
        with _holding(item.marker.parent):  # not while site pacs --retry-failed moves it back
            replace_file(aside, note.encode(), mode=0o600)
            item.marker.unlink(missing_ok=True)
        return aside

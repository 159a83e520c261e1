"""Delivering an opened result: into the outbox folder, and by C-STORE to each PACS.

The outbox gets every result as ``OUTBOX/STUDY_UID/ID-KIND.EXT`` (``.dcm`` for DICOM,
``.json`` for a JSON summary, ``.txt`` for a readable summary, ``.bin`` otherwise),
written atomically (temporary file, fsync, rename, folder fsync): a file there is
complete. A result that supersedes an earlier one moves the earlier one's files to
``OUTBOX/STUDY_UID/superseded/`` and its summary says so (:mod:`usreview.site.supersede`).
The outbox folder of a study is its Study Instance UID, or ``unknown-study`` for a name
that is not a UID.

A DICOM result also goes to each configured PACS, from the queue's own copy, never from
the outbox (which belongs to the clinic: an EMR import job may move its files away at any
time). :meth:`PacsQueue.enqueue` first puts the DICOM file into each destination's folder
as ``STATE/pacs/NAME/ID.dcm`` (mode 0600: a hard link of the opened result when it is
private to this user on the same filesystem, a durable copy otherwise), then writes the
marker ``STATE/pacs/NAME/ID.json`` durably; both are removed only after the PACS answered
success, so a PACS that is down (or a gateway that is killed) delays a delivery but never
loses it. A result the PACS refuses for what it is (a failure status other than "out of
resources" or "processing failure", no presentation context for it), and a delivery whose
file is missing (nothing of ours removes it), will not be taken later either: marker and
file move to ``STATE/pacs/NAME/failed/`` with the reason, and the next results go on.
"Processing failure" (0x0110), which PACS often answer for a passing trouble, is retried
with the queue's backoff, :data:`PROCESSING_FAILURE_TRIES` times in all (counted in the
marker) before it is set aside. :meth:`PacsQueue.retry_failed` moves what was set aside
back into the queue (``usreview site pacs --retry-failed``). Delivering twice is
harmless: same file name, same SOP Instance UID at the PACS.

A delivery's file is where its marker is (``NAME/ID.dcm``) or, while a move between the
queue and ``failed/`` is interrupted, in the other folder: it is looked for in both, so a
crash between the two steps of a move loses nothing. Markers written before the queue
kept copies (``{"result", "path"}`` naming the outbox file) are still sent from the outbox
file, or from its ``superseded/`` copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usreview.dicom.header import is_uid
from usreview.envelope.atomic import fsync_directory, replace_file, replacing_file
from usreview.site.config import PacsDestination
from usreview.site.errors import DeliveryError
from usreview.site.supersede import SUPERSEDED, annotate, retire, superseded_files

if TYPE_CHECKING:
    from pynetdicom.association import Association

__all__ = [
    "FAILED",
    "PACS_TIMEOUT",
    "PROCESSING_FAILURE_TRIES",
    "FailedDelivery",
    "PacsQueue",
    "PendingDelivery",
    "break_association",
    "copy_durably",
    "deliver_to_outbox",
    "is_dicom",
    "outbox_result_id",
    "place_copy",
    "send_to_pacs",
    "study_folder_name",
]

_log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: The name :func:`deliver_to_outbox` gives a result: ``ID-KIND.EXT``.
_OUTBOX_NAME = re.compile(r"(\d{8,})-[A-Za-z0-9._-]*\.(?:dcm|json|txt|bin)")
_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
#: Refused: out of resources (PS3.4 B.2.3): the PACS may take it later.
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
#: Processing failure (PS3.7 C.4.2): often a passing trouble at the PACS.
_PROCESSING_FAILURE = 0x0110
#: How many times in all a delivery answered 0x0110 is tried before it is set aside.
PROCESSING_FAILURE_TRIES = 5
#: Where a delivery the PACS will never take is set aside, in each destination's folder.
FAILED = "failed"
#: Seconds the PACS has to accept an association and answer each message.
PACS_TIMEOUT = 30.0
#: ``os.link`` errors that mean "no hard link here": the file is copied instead.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES)


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


def outbox_result_id(name: str) -> int | None:
    """The result id of an outbox file named ``name`` (``ID-KIND.EXT``); None for a name
    :func:`deliver_to_outbox` does not give (the clinic's own files, temporary files)."""
    match = _OUTBOX_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def study_folder_name(study_instance_uid: str) -> str:
    """The outbox folder of a study: its Study Instance UID, or ``unknown-study`` for a
    name that is not a UID."""
    return study_instance_uid if is_uid(study_instance_uid) else "unknown-study"


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
    folder = outbox / study_folder_name(study_instance_uid)
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
    destination: PacsDestination,
    path: Path,
    *,
    calling_ae_title: str,
    timeout: float = PACS_TIMEOUT,
    connected: Callable[[Association], None] | None = None,
) -> None:
    """C-STORE the DICOM file ``path`` to ``destination``.

    ``connected`` is called with the association as soon as its connection is open (before
    the PACS answers): :func:`break_association` from another thread then ends a PACS's
    silence at once instead of after ``timeout``.

    Raises
    ------
    DeliveryError
        The file is not DICOM, the association fails, or the PACS answers a failure.
    """
    # The DICOM network stack loads with the first delivery: the site's commands that read
    # the queue (status, pacs) start without it.
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

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
    handlers: list[Any] = []
    if connected is not None:
        handlers.append((evt.EVT_CONN_OPEN, lambda event: connected(event.assoc)))
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, evt_handlers=handlers
    )
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


def break_association(assoc: Association) -> None:
    """Shut the socket of ``assoc`` (any thread): a C-STORE or an association request that
    waits for a silent PACS ends at once, as a failed delivery (tried again later)."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class PendingDelivery:
    """A result waiting to be sent to one PACS."""

    destination: str
    result_id: int
    #: The queue's own copy of the DICOM file (``NAME/ID.dcm``); for a marker written
    #: before the queue kept copies, the outbox file it names.
    path: Path
    marker: Path
    #: Failed tries counted so far (those that may succeed later but not forever).
    attempts: int = 0
    #: The study's outbox folder name (its Study Instance UID, or ``unknown-study``).
    study: str = ""
    #: Where the result was delivered in the outbox (for people; never read to send).
    outbox: Path | None = None
    #: The result's SOP Instance UID, when known.
    sop_instance_uid: str | None = None
    #: False for a marker written before the queue kept copies (sent from the outbox).
    copied: bool = True

    def note(self, **extra: Any) -> bytes:
        """The marker's JSON (with ``extra`` members, e.g. ``reason``)."""
        doc: dict[str, Any] = {"result": self.result_id, "study": self.study}
        if self.copied:
            doc["file"] = self.path.name
        else:
            doc["path"] = str(self.path)
        if self.outbox is not None:
            doc["outbox"] = str(self.outbox)
        if self.sop_instance_uid is not None:
            doc["sop_instance_uid"] = self.sop_instance_uid
        doc.update(extra)
        return json.dumps(doc).encode()


@dataclass(frozen=True)
class FailedDelivery:
    """A result set aside in ``NAME/failed/``: the PACS refused it, or its file was gone."""

    destination: str
    result_id: int
    #: The copy kept beside the note (``NAME/failed/ID.dcm``), or the outbox file an
    #: older note names.
    path: Path
    reason: str
    marker: Path
    study: str = ""


def _study_of(path: Path) -> str:
    """An outbox file's study folder name (``superseded/`` looked through)."""
    folder = path.parent
    return folder.parent.name if folder.name == SUPERSEDED else folder.name


def _read_pending(destination: str, marker: Path) -> PendingDelivery:
    """The delivery a marker (or a note in ``failed/``) describes.

    Raises
    ------
    OSError, ValueError, KeyError, TypeError
        The marker cannot be read.
    """
    doc = json.loads(marker.read_text())
    attempts = doc.get("attempts", 0)
    outbox = doc.get("outbox")
    sop = doc.get("sop_instance_uid")
    if "file" in doc:
        path = marker.with_name(Path(str(doc["file"])).name)  # only ever beside the marker
        copied = True
        study = doc.get("study") or (_study_of(Path(outbox)) if isinstance(outbox, str) else "")
    else:  # written before the queue kept copies: the outbox file itself
        path = Path(doc["path"])
        copied = False
        study = doc.get("study") or _study_of(path)
    return PendingDelivery(
        destination,
        int(doc["result"]),
        path,
        marker,
        attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
        str(study),
        Path(outbox) if isinstance(outbox, str) else None,
        sop if isinstance(sop, str) else None,
        copied,
    )


@contextlib.contextmanager
def _holding(folder: Path) -> Iterator[None]:
    """Hold the lock of one PACS's queue ``folder`` (``.lock`` in it): moving a delivery
    between the queue and ``failed/`` is several steps, which another process must not
    interleave (the gateway setting one aside while ``site pacs --retry-failed`` moves it
    back lost both markers)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private(path: Path) -> bool:
    """Whether ``path`` is a regular file of this user that nobody else may read."""
    st = os.stat(path)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def place_copy(source: Path, target: Path) -> None:
    """Make ``target`` (mode 0600) hold the bytes of ``source``, durably, replacing it.

    A hard link when ``source`` is already private to this user (mode 0600, so the link
    is too) and on the same filesystem; a copy otherwise (another filesystem, a file the
    clinic's group may read, no hard links there).
    """
    if _private(source):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.link")
        try:
            _fsync_file(source)  # its bytes on disk before a durable name points at them
            os.link(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno not in _NO_LINK:
                raise
        else:
            fsync_directory(target.parent)
            return
    with replacing_file(target, mode=0o600) as out, open(source, "rb") as fin:
        shutil.copyfileobj(fin, out, 1 << 20)


class PacsQueue:
    """Durable markers of results still to send to each PACS, and their copies, under
    ``STATE/pacs``.

    Parameters
    ----------
    root
        The folder holding one subfolder per destination.
    destinations
        The configured PACS.
    calling_ae_title
        The AE title the gateway calls the PACS with.
    timeout
        Seconds a PACS has to accept an association and to answer each message.
    """

    def __init__(
        self,
        root: Path,
        destinations: tuple[PacsDestination, ...],
        calling_ae_title: str,
        *,
        timeout: float = PACS_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def enqueue(
        self,
        result_id: int,
        path: Path,
        *,
        study: str | None = None,
        sop_instance_uid: str | None = None,
        outbox: Path | None = None,
    ) -> None:
        """Record durably that the DICOM file ``path`` must reach every PACS.

        Each destination gets its own ``ID.dcm`` (:func:`place_copy`: ``path`` may go
        or change afterwards), then its marker. ``study`` (default: the name of
        ``path``'s outbox folder), ``sop_instance_uid`` and ``outbox`` (where the
        result was delivered) are recorded with it.

        Raises
        ------
        OSError
            A copy or a marker could not be written (what was written stays queued).
        """
        first: Path | None = None
        for name in self.destinations:
            folder = self.root / name
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = folder / f"{result_id:08d}.dcm"
            place_copy(first or path, target)
            first = first or target  # the others link to the first copy (0600, here)
            item = PendingDelivery(
                name,
                result_id,
                target,
                folder / f"{result_id:08d}.json",
                study=study if study is not None else _study_of(outbox or path),
                outbox=outbox,
                sop_instance_uid=sop_instance_uid,
            )
            replace_file(item.marker, item.note(), mode=0o600)

    def pending(self, destination: str | None = None) -> list[PendingDelivery]:
        """Everything not yet delivered (to one destination, or all), oldest result first."""
        items = []
        names = [destination] if destination is not None else list(self.destinations)
        for name in names:
            for marker in sorted((self.root / name).glob("[!.]*.json")):  # not failed/'s
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    items.append(_read_pending(name, marker))
        return items

    def held_results(self) -> set[int]:
        """The ids of the results something of which is left in a queue: pending, or set
        aside in ``failed/`` (a marker or a note, whether it can be read or not)."""
        ids: set[int] = set()
        for name in self.destinations:
            for pattern in ("[0-9]*.json", f"{FAILED}/[0-9]*.json"):
                for marker in (self.root / name).glob(pattern):
                    with contextlib.suppress(ValueError):
                        ids.add(int(marker.stem))
        return ids

    def holds(self, result_id: int) -> bool:
        """Whether a queue holds result ``result_id``: pending, or set aside in ``failed/``."""
        name = f"{int(result_id):08d}.json"
        return any(
            (self.root / dest / name).exists() or (self.root / dest / FAILED / name).exists()
            for dest in self.destinations
        )

    def source(self, item: PendingDelivery) -> Path | None:
        """The file to send for ``item``: its copy in the queue (or in ``failed/``, where
        an interrupted move left it); for an older marker, the outbox file (or its
        ``superseded/`` copy). None when there is none."""
        if item.copied:
            candidates = [item.path, item.path.parent / FAILED / item.path.name]
        else:
            candidates = [item.path, item.path.parent / SUPERSEDED / item.path.name]
        return next((p for p in candidates if p.is_file()), None)

    def count_failure(self, item: PendingDelivery) -> int:
        """Count one more failed try of ``item`` in its marker (durably); return the count."""
        attempts = item.attempts + 1
        with _holding(item.marker.parent):
            if item.marker.exists():
                replace_file(item.marker, item.note(attempts=attempts), mode=0o600)
        return attempts

    def failed(self, destination: str | None = None) -> list[FailedDelivery]:
        """The deliveries set aside in ``NAME/failed/`` (of one destination, or all)."""
        items = []
        names = [destination] if destination is not None else list(self.destinations)
        for name in names:
            for marker in sorted((self.root / name / FAILED).glob("[!.]*.json")):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    item = _read_pending(name, marker)
                    reason = json.loads(marker.read_text()).get("reason", "")
                    items.append(
                        FailedDelivery(
                            name, item.result_id, item.path, str(reason), marker, item.study
                        )
                    )
        return items

    def retry_failed(self, destination: str | None = None) -> list[FailedDelivery]:
        """Move the deliveries set aside (of one destination, or all) back into the queue.

        Each gets a fresh marker (written durably, as :meth:`enqueue` does, with no tries
        counted) and its copy moves back before its note in ``failed/`` is removed, so an
        interruption leaves it queued, or in both places (sending twice is harmless).
        Returns those moved back.

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
            folder = item.marker.parent.parent
            with _holding(folder):  # not while the gateway sets it aside
                if not item.marker.exists():
                    continue
                try:
                    aside = _read_pending(item.destination, item.marker)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                marker = folder / item.marker.name
                if aside.copied:
                    back = PendingDelivery(
                        aside.destination,
                        aside.result_id,
                        folder / aside.path.name,
                        marker,
                        study=aside.study,
                        outbox=aside.outbox,
                        sop_instance_uid=aside.sop_instance_uid,
                    )
                    replace_file(marker, back.note(), mode=0o600)
                    if aside.path.exists():
                        os.replace(aside.path, back.path)
                else:
                    replace_file(marker, aside.note(), mode=0o600)
                item.marker.unlink(missing_ok=True)
                fsync_directory(item.marker.parent)
                fsync_directory(folder)
            moved.append(item)
        return moved

    def send(
        self,
        item: PendingDelivery,
        *,
        connected: Callable[[Association], None] | None = None,
    ) -> None:
        """Send one pending delivery; remove its marker and copy on success.

        ``connected``: see :func:`send_to_pacs`.

        Raises
        ------
        DeliveryError
            The PACS could not take it (the marker stays for the next try), or its file
            is missing (``permanent``: to set aside, with the reason).
        """
        source = self.source(item)
        if source is None:
            where = item.path if item.copied else f"{item.path} (the outbox)"
            raise DeliveryError(
                f"result {item.result_id}: its DICOM file for PACS {item.destination} is "
                f"missing ({where}); not sent",
                permanent=True,
            )
        send_to_pacs(
            self.destinations[item.destination],
            source,
            calling_ae_title=self.calling_ae_title,
            timeout=self.timeout,
            connected=connected,
        )
        with _holding(item.marker.parent):
            item.marker.unlink(missing_ok=True)  # first: a crash leaves a copy, not a marker
            if item.copied:
                item.path.unlink(missing_ok=True)
                aside = item.path.parent / FAILED / item.path.name
                if not aside.with_suffix(".json").exists():  # an interrupted set_aside's
                    aside.unlink(missing_ok=True)
        _log.info("result %s delivered to PACS %s", item.result_id, item.destination)

    def set_aside(self, item: PendingDelivery, reason: str) -> Path:
        """Move a delivery the PACS will never take to ``NAME/failed/`` with ``reason``
        (its copy too, for :meth:`retry_failed`); return the note's path."""
        folder = item.marker.parent / FAILED
        folder.mkdir(mode=0o700, exist_ok=True)
        aside = folder / item.marker.name
        with _holding(item.marker.parent):  # not while site pacs --retry-failed moves it back
            if item.copied:
                kept = PendingDelivery(
                    item.destination,
                    item.result_id,
                    folder / item.path.name,
                    aside,
                    study=item.study,
                    outbox=item.outbox,
                    sop_instance_uid=item.sop_instance_uid,
                )
                replace_file(aside, kept.note(reason=reason), mode=0o600)
                if item.path.exists():
                    os.replace(item.path, kept.path)
            else:
                replace_file(aside, item.note(reason=reason), mode=0o600)
            item.marker.unlink(missing_ok=True)
            fsync_directory(folder)
            fsync_directory(item.marker.parent)
        return aside

    def remove_orphans(self) -> list[Path]:
        """Remove the copies no marker or note names, and temporary files, that a crash
        left (``enqueue`` writes the copy first); only for the one process that delivers,
        when it starts. Returns what was removed."""
        removed: list[Path] = []
        for name in self.destinations:
            folder = self.root / name
            if not folder.is_dir():
                continue
            with _holding(folder):
                for sub in (folder, folder / FAILED):
                    for path in sub.glob(".*"):
                        if path.name != ".lock" and path.is_file():
                            path.unlink(missing_ok=True)
                            removed.append(path)
                    for path in sub.glob("[!.]*.dcm"):
                        notes = (
                            folder / f"{path.stem}.json",
                            folder / FAILED / f"{path.stem}.json",
                        )
                        if not any(note.exists() for note in notes):
                            path.unlink(missing_ok=True)
                            removed.append(path)
        return removed

"""The gateway's DICOM Storage SCP: what a scanner sends to, as to a PACS.

Accepts Verification and every ultrasound storage SOP class, in every transfer syntax
whose pixel data the hub's reader decodes
(:func:`usreview.dicom.pixels.decodable_transfer_syntaxes`: native, JPEG, JPEG-LS,
JPEG 2000, HTJ2K, RLE, JPEG XL; not Deflated nor the video syntaxes, which a scanner must
then send in another), from the calling AE titles on the allow-list (others are rejected
at association: "calling AE title not recognised") calling the gateway's own AE title (a
scanner that calls another, its PACS's say, is rejected: "called AE title not
recognised"). Each instance is written to the durable
spool, as the bytes the scanner sent (never decoded) behind the File Meta Information
pynetdicom's ``Event.encoded_dataset()`` would write (encoded here directly: pydicom's
way cost half a millisecond of the scanner's wait per instance), before the C-STORE
success is answered; a spool failure answers 0xA700 (out of resources) so the scanner
keeps it.

Each association's reactor thread is woken by every DIMSE message (see
:class:`_PromptQueue`) instead of finding it at its next 1 ms poll.

Accepted sockets get ``TCP_NODELAY``: with Nagle's algorithm on, each small response
waits for the scanner's delayed ACK and an untuned scanner stalls at about 20
instances/s. pynetdicom sends each PDU with one ``send``. The scanner's own Nagle
algorithm is the other half: it holds an instance's data PDU until its C-STORE command
PDU is acknowledged, which a delayed ACK does 40 ms later, so small instances (under
one TCP segment, 64 KiB on loopback) stalled at 20 per second too. Plain sockets
therefore acknowledge at once (``TCP_QUICKACK``, re-armed after each response and read:
Linux drops it as soon as the connection looks interactive). TLS sockets keep the
kernel's default.

With an ``ssl_context`` (DICOM TLS, :mod:`usreview.site.dicomtls`) every association is
TLS. pynetdicom would do the handshake in its accepting thread, where one client that
connects and says nothing stops every other scanner; here it is done in the
association's own thread, within the ACSE timeout, and a failed one ends only that
connection.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import socket
import ssl
import struct
import threading
from collections.abc import Sequence
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
    register_uid,
)
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from usreview.dicom import ULTRASOUND_SOP_CLASSES
from usreview.dicom.header import is_uid
from usreview.dicom.pixels import decodable_transfer_syntaxes
from usreview.site.config import DEFAULT_MIN_FREE_MB
from usreview.site.errors import SiteConfigError, SpoolError
from usreview.site.spool import Spool

__all__ = [
    "MIN_FREE_BYTES",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "StorageSCP",
    "part10_header",
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
VERIFICATION = "1.2.840.10008.1.1"
_MAX_PDU = 1 << 20
#: Seconds an association's reactor waits for a DIMSE message before its other checks
#: (release, abort, timeouts): see :class:`_PromptQueue`.
_REACTOR_WAIT = 0.02
_log = logging.getLogger(__name__)
_PREAMBLE = bytes(128) + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian (UI padded with NUL, SH with space)."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a received data set.

    The same elements and bytes as pynetdicom's ``Event.encoded_dataset()`` (its
    implementation UID and version name), without building a pydicom dataset.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid
        The C-STORE request's Affected SOP Class and Instance UIDs.
    transfer_syntax_uid
        The presentation context's transfer syntax.

    Returns
    -------
    bytes
        What goes before the data set's bytes in a DICOM file.
    """
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\0\1"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
            _element(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii")),
            _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
        )
    )
    length = struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(elements))
    return _PREAMBLE + length + elements


def _register_storage_classes(sop_classes: Sequence[str]) -> None:
    """Teach pynetdicom the retired ultrasound classes (it aborts on unknown ones)."""
    for uid in sop_classes:
        if uid_to_service_class(uid) is not StorageServiceClass:
            name = ULTRASOUND_SOP_CLASSES.get(uid, uid)
            keyword = "".join(c for c in name.title() if c.isalnum()) or f"Storage{uid}"
            register_uid(uid, keyword, StorageServiceClass)


class _PromptQueue(queue.Queue[Any]):
    """An association's DIMSE message queue whose non-blocking ``get`` waits a little.

    pynetdicom's acceptor reactor sleeps 1 ms, then looks for a complete message without
    blocking: each C-STORE waited for that poll (half a millisecond on average, more on
    a busy machine) before its handler ran. With this queue the look waits up to
    ``_REACTOR_WAIT`` seconds and returns as soon as a message is put; the reactor's
    other checks (a release asked, an abort, which also puts a message, the idle timer)
    run at least that often.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            block, timeout = True, _REACTOR_WAIT
        return super().get(block, timeout)


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _QuickAckSocket(socket.socket):
    """An accepted socket that acknowledges what it receives without delay."""

    _rearm = True

    @classmethod
    def adopt(cls, sock: socket.socket) -> socket.socket:
        """``sock`` as a :class:`_QuickAckSocket` (unchanged where TCP_QUICKACK is unknown)."""
        if _TCP_QUICKACK is None:
            return sock
        quick = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        quick._arm()
        return quick

    def _arm(self) -> None:
        assert _TCP_QUICKACK is not None
        # Also sends an ACK the kernel was delaying. Closed meanwhile: reported by the
        # read or send.
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if self._rearm:  # the first read after a response: the next command's ACK
            self._rearm = False
            self._arm()
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        sent = super().send(data, flags)
        self._arm()
        self._rearm = True
        return sent


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's server with Nagle's algorithm off (and quick ACKs) on accepted sockets.

    With TLS, the socket is wrapped in the accepting thread but its handshake is done
    in the association's thread (:meth:`process_request_thread`).
    """

    #: Seconds a client has to complete the TLS handshake.
    handshake_timeout = 30.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:
            raise OSError("the server is closed")
        sock, address = listening.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        else:
            sock = _QuickAckSocket.adopt(sock)
        return sock, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            timeout = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(timeout)
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
                _log.warning("DICOM TLS handshake with %s failed: %s", client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


#: Free space the spool's disk keeps by default (an instance that would leave less is refused).
MIN_FREE_BYTES = DEFAULT_MIN_FREE_MB * 10**6


class StorageSCP:
    """A Storage SCP writing every received instance to ``spool``.

    Parameters
    ----------
    spool
        Where instances go before they are acknowledged.
    ae_title
        The gateway's AE title (what scanners call).
    allowed_calling_ae_titles
        Calling AE titles accepted; ``"*"`` in the list accepts any. Empty: refuse all.
    sop_classes
        Storage SOP classes accepted (default: the ultrasound ones).
    ssl_context
        DICOM TLS: every association is TLS with this server context (None: plain).
    min_free_bytes
        Space the spool's disk keeps free: an instance that would leave less is refused
        with 0xA700 (out of resources), which scanners keep and send again, before the
        disk is full and the outbox and state files beside the spool start failing too.
    """

    def __init__(
        self,
        spool: Spool,
        ae_title: str,
        allowed_calling_ae_titles: Sequence[str],
        *,
        sop_classes: Sequence[str] = tuple(ULTRASOUND_SOP_CLASSES),
        ssl_context: ssl.SSLContext | None = None,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        self.ssl_context = ssl_context
        self.ae = AE(ae_title=ae_title)
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        # Offer scanners PDUs of up to 1 MiB (pynetdicom's default is 16 KiB). pynetdicom
        # handles each PDU through two polling threads that sleep 1 ms between looks and
        # then wait for the GIL held by the uploader's threads, so a 300 KB instance in
        # ~20 PDUs paid that wait ~20 times; in one or a few it pays it once. The cost:
        # up to 1 MiB buffered per association.
        self.ae.maximum_pdu_size = _MAX_PDU
        if not allowed_calling_ae_titles:
            raise SiteConfigError(
                "gateway.allowed_calling_ae_titles is empty, so every scanner would be "
                'refused: list the scanners\' AE titles (or "*" to allow any)',
                "gateway.allowed_calling_ae_titles",
            )
        if "*" in allowed_calling_ae_titles:
            self.ae.require_calling_aet = []
        else:
            self.ae.require_calling_aet = list(allowed_calling_ae_titles)
        # A scanner aimed at another node (its PACS, say) on this port is refused, not
        # taken in silently: "called AE title not recognised".
        self.ae.require_called_aet = True
        _register_storage_classes(sop_classes)
        self.ae.add_supported_context(VERIFICATION)
        # Only what the hub's reader decodes: a scanner offering nothing else (an MPEG-4
        # cine, say) is refused at association and keeps the instance, instead of being
        # told it was stored and the hub refusing it later.
        syntaxes = decodable_transfer_syntaxes(ALL_TRANSFER_SYNTAXES)
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, syntaxes)
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.received = 0

    @property
    def port(self) -> int:
        """The port listened on (useful after binding port 0)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` in a background thread.

        Raises
        ------
        OSError
            The address cannot be bound.
        """
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = self.ae.make_server(
            (host, port),
            evt_handlers=handlers,
            server_class=_NoDelayServer,
            ssl_context=self.ssl_context,
        )
        self.ae._servers.append(server)  # as AE.start_server does: shutdown() removes it
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and close the associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.ae.shutdown()

    @staticmethod
    def _on_open(event: evt.Event) -> None:
        """Before the association's threads start: its reactor is woken by each message."""
        event.assoc.dimse.msg_queue = _PromptQueue()

    def _on_store(self, event: evt.Event) -> int:
        request: Any = event.request  # a C-STORE request
        try:
            uid = str(request.AffectedSOPInstanceUID)
            if not is_uid(uid):  # the scanner's error, not ours: retrying cannot help
                raise ValueError(f"the Affected SOP Instance UID {uid!r} is not a DICOM UID")
            header = part10_header(
                str(request.AffectedSOPClassUID), uid, str(event.context.transfer_syntax)
            )
            with request.DataSet.getbuffer() as received:
                data = header + received  # one copy, as encoded_dataset() makes
        except Exception as exc:  # a malformed request: refuse it, keep serving
            _log.warning("C-STORE refused: %s", exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            free = shutil.disk_usage(self.spool.root).free - len(data)
        except OSError:
            free = self.min_free_bytes  # cannot tell: the spool's own errors will say
        if free < self.min_free_bytes:
            _log.error(
                "C-STORE of %s refused: the spool's disk would have %d MB free, below the "
                "%d MB kept free; the scanner keeps the instance (free space, or let the "
                "uploads drain the spool)",
                uid,
                max(free, 0) // 10**6,
                self.min_free_bytes // 10**6,
            )
            return STATUS_OUT_OF_RESOURCES
        try:
            self.spool.put(uid, data)
        except SpoolError as exc:
            _log.error("C-STORE of %s not stored: %s", uid, exc)
            return STATUS_OUT_OF_RESOURCES
        self.received += 1
        return STATUS_SUCCESS

"""The gateway's DICOM Storage SCP: what a scanner sends to, as to a PACS.

Accepts Verification and every ultrasound storage SOP class, in every transfer syntax
pynetdicom knows, from the calling AE titles on the allow-list (others are rejected at
association: "calling AE title not recognised"). Each instance is written to the durable
spool, as the bytes the scanner sent (never decoded), before the C-STORE success is
answered; a spool failure answers 0xA700 (out of resources) so the scanner keeps it.

Accepted sockets get ``TCP_NODELAY``: with Nagle's algorithm on, each small response
waits for the scanner's delayed ACK and an untuned scanner stalls at about 20
instances/s. pynetdicom sends each PDU with one ``send``.

With an ``ssl_context`` (DICOM TLS, :mod:`usreview.site.dicomtls`) every association is
TLS. pynetdicom would do the handshake in its accepting thread, where one client that
connects and says nothing stops every other scanner; here it is done in the
association's own thread, within the ACSE timeout, and a failed one ends only that
connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt, register_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from usreview.dicom import ULTRASOUND_SOP_CLASSES
from usreview.site.errors import SiteConfigError, SpoolError
from usreview.site.spool import Spool

__all__ = ["STATUS_OUT_OF_RESOURCES", "STATUS_SUCCESS", "StorageSCP"]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
VERIFICATION = "1.2.840.10008.1.1"
_MAX_PDU = 1 << 20
_log = logging.getLogger(__name__)


def _register_storage_classes(sop_classes: Sequence[str]) -> None:
    """Teach pynetdicom the retired ultrasound classes (it aborts on unknown ones)."""
    for uid in sop_classes:
        if uid_to_service_class(uid) is not StorageServiceClass:
            name = ULTRASOUND_SOP_CLASSES.get(uid, uid)
            keyword = "".join(c for c in name.title() if c.isalnum()) or f"Storage{uid}"
            register_uid(uid, keyword, StorageServiceClass)


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's server with Nagle's algorithm off on every accepted socket.

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
    """

    def __init__(
        self,
        spool: Spool,
        ae_title: str,
        allowed_calling_ae_titles: Sequence[str],
        *,
        sop_classes: Sequence[str] = tuple(ULTRASOUND_SOP_CLASSES),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.spool = spool
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
        _register_storage_classes(sop_classes)
        self.ae.add_supported_context(VERIFICATION)
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
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
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store)]
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

    def _on_store(self, event: evt.Event) -> int:
        try:
            uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[union-attr]
            data = event.encoded_dataset()
        except Exception as exc:  # a malformed request: refuse it, keep serving
            _log.warning("C-STORE refused: %s", exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.spool.put(uid, data)
        except SpoolError as exc:
            _log.error("C-STORE of %s not stored: %s", uid, exc)
            return STATUS_OUT_OF_RESOURCES
        self.received += 1
        return STATUS_SUCCESS

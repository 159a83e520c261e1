"""``PUT /instances/{uid}``: a site uploads one sealed instance (and ``GET`` reads it).

A body of at most :data:`MEMORY_BODY_LIMIT` bytes (a typical single-frame instance) is
kept in memory and handed to the ingest as bytes; a larger one streams into a private
spool file (never whole in memory). So the event loop, which serves every connection,
never creates, writes or removes a file for a small upload: on a disk busy with the
archive's fsyncs those calls can block for milliseconds. Uploads are capped at
:attr:`~usreview.hub.api.settings.ServiceSettings.max_upload_bytes`: 413 as soon as the
declared length or the bytes received pass it.

A refusal before the body is read (401, 403, 411, 413, 415) is answered at once, keeping the
connection open, and the rest of the body is then read and thrown away (up to
:data:`DRAIN_LIMIT` bytes, then the connection is closed): closing with unread data makes
the kernel reset the connection, which loses the answer in a proxy (JupyterHub's answers
503) or in a client that sends the whole body before reading. Then
:meth:`usreview.ingest.Ingestor.ingest` runs in the thread pool (it blocks on the parsing
worker and the durable commit) with the path's UID as the one expected; the answer comes
after the commit and the audit line. The spool file is removed whatever happens (by the
worker thread, after the ingest).

Slow clients. A body that pauses for
:attr:`~usreview.hub.api.settings.ServiceSettings.body_idle_timeout` seconds, or that
averages less than ``min_upload_rate`` bytes/s once it has run that long, is answered 408
(``{"error": "timeout", "reason": "stalled" | "too_slow"}``, audited) and its connection
closed; a refused body that is being drained is cut the same way, without a second answer.
A timer per upload checks the progress a few times per timeout on the event loop, so a
slow client costs one idle connection, not a worker. The server's own limits (headers,
other requests' bodies, see :mod:`usreview.hub.service`) stay as a backstop: this
upload's whole-body limit is raised to what the slowest allowed rate needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from tornado.ioloop import IOLoop
from tornado.web import HTTPError, stream_request_body

from usreview.dicom.header import is_uid
from usreview.hub.api.base import SITE_UPLOAD, BaseHandler
from usreview.hub.api.errors import ApiError
from usreview.hub.api.handlers_review import send_instance
from usreview.hub.audit import AuditAction
from usreview.ingest import IngestResult

__all__ = ["DRAIN_LIMIT", "ENVELOPE_TYPES", "MEMORY_BODY_LIMIT", "InstanceHandler"]

#: Content types an upload may declare.
ENVELOPE_TYPES = ("application/vnd.usreview.envelope", "application/octet-stream")
#: Bytes of a refused upload read and discarded before the connection is closed.
DRAIN_LIMIT = 64 * 1024**2
#: Bodies up to this size are held in memory instead of a spool file.
MEMORY_BODY_LIMIT = 1024**2


@stream_request_body
class InstanceHandler(BaseHandler):
    """``PUT``: store a site's sealed instance; ``GET``: a reviewer reads it as DICOM."""

    audit_action = AuditAction.WRITE

    def initialize(self, hub_auth: Any = None, context: Any = None) -> None:
        """No spool file yet."""
        super().initialize(hub_auth, context)
        self._memory: list[bytes] | None = None
        self._spool: IO[bytes] | None = None
        self._spool_path: Path | None = None
        self._received = 0
        self._draining = False
        self._watch: Any = None  # the progress timer's handle
        self._last_data = self._body_started = 0.0

    async def prepare(self) -> None:
        """For an upload: check caller, content type and length, prepare for the body."""
        if self.request.method != "PUT":
            self.audit_action = AuditAction.READ
            await super().prepare()
            return
        settings = self.context.settings
        cap = settings.max_upload_bytes
        connection: Any = self.request.connection
        # Our own cap answers first (with 413); tornado's is a backstop past the drain.
        connection.set_max_body_size(cap + DRAIN_LIMIT)
        if settings.min_upload_rate:  # our timer answers first; tornado's is the backstop
            slowest = (cap + DRAIN_LIMIT) / settings.min_upload_rate
            connection.set_body_timeout(2 * settings.body_idle_timeout + slowest)
        try:
            await super().prepare()
            self._start_upload()
        except HTTPError as exc:
            if self.request.headers.get("Expect", "").lower() == "100-continue":
                raise  # nothing was sent yet: answer and close
            self._answer_now(exc)
        self._start_watch()

    # -- slow clients ----------------------------------------------------------------

    def _start_watch(self) -> None:
        loop = IOLoop.current()
        self._body_started = self._last_data = loop.time()
        self._watch = loop.call_later(self._tick, self._check_progress)

    @property
    def _tick(self) -> float:
        return min(1.0, self.context.settings.body_idle_timeout / 4)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            IOLoop.current().remove_timeout(self._watch)
            self._watch = None

    def _check_progress(self) -> None:
        """408 for a stalled or too slow body (see the module doc); else check again later."""
        self._watch = None
        if self._finished or self.request.connection is None:
            return
        settings = self.context.settings
        now = IOLoop.current().time()
        idle, running = now - self._last_data, now - self._body_started
        rate = settings.min_upload_rate
        if idle >= settings.body_idle_timeout:
            reason, message = "stalled", f"no bytes of the body for {idle:.0f} s"
        elif rate and running >= settings.body_idle_timeout and self._received < rate * running:
            reason = "too_slow"
            message = f"the body arrives at {self._received / running:.0f} bytes/s"
        else:
            self._watch = IOLoop.current().call_later(self._tick, self._check_progress)
            return
        if self._draining:  # the refusal was answered already: just hang up
            self.request.connection.close()  # type: ignore[attr-defined]
            return
        self._discard()
        problem = ApiError(
            408, "timeout", f"{message}: send the body without pausing", reason=reason
        )
        body = json.dumps(self.error_body(problem, 408))
        self.set_header("Connection", "close")  # the rest of the body is not read
        self.finish(body)

    def _start_upload(self) -> None:
        self.site(SITE_UPLOAD)
        headers = self.request.headers
        media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media not in ENVELOPE_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"send the envelope as {ENVELOPE_TYPES[0]} (got {media or 'no content type'})",
            )
        cap = self.context.settings.max_upload_bytes
        length = headers.get("Content-Length")
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        if length is None and not chunked:
            raise ApiError(411, "length_required", "send Content-Length (or a chunked body)")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(length) > cap:
                raise self._too_large(cap)
        if length is None or int(length) <= MEMORY_BODY_LIMIT:
            self._memory = []  # a chunked body moves to a file if it grows past the limit
        else:
            self._open_spool()

    def _open_spool(self) -> None:
        fd, name = tempfile.mkstemp(suffix=".upload", dir=self.context.spool)
        self._spool, self._spool_path = os.fdopen(fd, "wb"), Path(name)
        if self._memory is not None:
            self._spool.writelines(self._memory)
            self._memory = None

    def data_received(self, chunk: bytes) -> None:
        """Keep the chunk (memory or spool file); 413 once the cap is passed."""
        self._received += len(chunk)
        self._last_data = IOLoop.current().time()
        if self._draining:
            if self._received > DRAIN_LIMIT and self.request.connection is not None:
                self.request.connection.close()  # type: ignore[attr-defined]
            return
        if self._finished or (self._spool is None and self._memory is None):
            return
        cap = self.context.settings.max_upload_bytes
        if self._received > cap:
            self._answer_now(self._too_large(cap))
            self._received = 0
            return
        if self._memory is not None:
            self._memory.append(chunk)
            if self._received > MEMORY_BODY_LIMIT:
                self._open_spool()
        elif self._spool is not None:
            self._spool.write(chunk)

    def _answer_now(self, exc: HTTPError) -> None:
        """Send the refusal now; read and drop the rest of the body (see the module doc)."""
        self._discard()
        self._draining = True
        body = json.dumps(self.error_body(exc, exc.status_code)).encode()
        self.set_header("Content-Length", str(len(body)))
        # No "Connection: close": the proxy would close the client's connection as soon as
        # this (complete) answer has passed, while the client is still sending its body,
        # and the client would see a reset instead of the answer.
        self.write(body)
        self.flush()

    async def put(self, sop_instance_uid: str) -> None:
        """Ingest the spooled envelope; 201 stored, 200 already stored."""
        self._stop_watch()  # the whole body is here
        if self._draining:
            self.finish()  # the refusal was sent; the body is read
            return
        site = self.site(SITE_UPLOAD)
        if self._memory is None and (self._spool is None or self._spool_path is None):
            return
        if self._received == 0:
            raise ApiError(400, "bad_envelope", "the body is empty: send the sealed envelope")
        self.resource = f"instances/{sop_instance_uid}"
        if not is_uid(sop_instance_uid):
            raise ApiError(400, "bad_request", f"{sop_instance_uid!r} is not a DICOM UID")
        if self._memory is not None:
            body, self._memory = b"".join(self._memory), None
            result = await self.blocking(self._ingest, site, body, sop_instance_uid)
        else:
            result = await self._ingest_spooled(site, sop_instance_uid)
        record = result.record
        self.write_json(
            {
                "sop_instance_uid": record.sop_instance_uid,
                "study_instance_uid": record.study_instance_uid,
                "duplicate": result.duplicate,
                "receipt": result.receipt.to_dict(),
            },
            status=200 if result.duplicate else 201,
        )

    async def _ingest_spooled(self, site: str, uid: str) -> IngestResult:
        """Ingest the spool file in the thread pool, which then removes it."""
        assert self._spool is not None and self._spool_path is not None
        self._spool.close()
        path, self._spool, self._spool_path = self._spool_path, None, None  # ours now
        started = False

        def ingest_and_remove() -> IngestResult:
            nonlocal started
            started = True
            try:
                return self._ingest(site, path, uid)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        try:
            return await self.blocking(ingest_and_remove)
        finally:
            if not started:  # never ran (shutting down): remove it here
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _ingest(self, site: str, envelope: Path | bytes, uid: str) -> IngestResult:
        result = self.context.ingestor.ingest(site, envelope, expected_sop_instance_uid=uid)
        record = result.record
        self.audit_now(
            AuditAction.WRITE,
            "duplicate" if result.duplicate else "stored",
            {
                "study": record.study_instance_uid,
                "plaintext_sha256": record.plaintext_sha256,
                "size": record.size,
                "message_id": result.message_id.hex(),
            },
        )
        return result

    async def get(self, sop_instance_uid: str) -> None:
        """The instance as DICOM, for reviewers (audited as a read)."""
        await send_instance(self, sop_instance_uid)

    def on_connection_close(self) -> None:
        """The caller went away: drop what was spooled."""
        self._stop_watch()
        self._discard()
        super().on_connection_close()

    def on_finish(self) -> None:
        """Never leave a spool file behind."""
        self._stop_watch()
        self._discard()

    def _discard(self) -> None:
        self._memory = None
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.close()
        if self._spool_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._spool_path.unlink()
        self._spool = self._spool_path = None

    @staticmethod
    def _too_large(cap: int) -> ApiError:
        return ApiError(413, "too_large", f"an upload may be at most {cap} bytes")

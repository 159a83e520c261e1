"""The sites' results feed: ``GET /results`` (long-poll) and ``GET /results/{id}``.

A waiting request is woken at once by a result published in the service and within
``results_poll_seconds`` by one published by another process; a caller that goes away
stops its wait. Only non-empty answers are audited (an empty poll shows nothing);
fetching a result's envelope is audited as an export.

Both hand out results that a site can still open: a result listed whose envelope expires
within a day, or fetched within 12 hours of its expiry, is sealed again first (same id
and cursor, a new envelope and ``sha256``; audited ``resealed``), see
:mod:`usreview.hub.api.publish`.
"""

from __future__ import annotations

import asyncio
import contextlib

from usreview.hub.api.base import SITE_RESULTS, BaseHandler
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.api.publish import fresh_results, open_fresh_result
from usreview.hub.api.views import result_view
from usreview.hub.audit import AuditAction
from usreview.store import ResultRecord

__all__ = ["ResultHandler", "ResultsHandler"]

_CHUNK = 1024 * 1024
_MAX_LIMIT = 1000


class ResultsHandler(BaseHandler):
    """``GET /results?cursor=&wait=&limit=``: the site's results after ``cursor``."""

    def initialize(self, hub_auth: object = None, context: object = None) -> None:
        """No wait in progress yet."""
        super().initialize(hub_auth, context)  # type: ignore[arg-type]
        self._waiting: asyncio.Future[list[ResultRecord]] | None = None

    async def get(self) -> None:
        """Answer the results after ``cursor``, waiting up to ``wait`` seconds for one."""
        site = self.site(SITE_RESULTS)
        settings = self.context.settings
        cursor = int(self._number("cursor", 0, 0, 2**63 - 1, integer=True))
        limit = int(self._number("limit", 100, 1, _MAX_LIMIT, integer=True))
        wait = self._number("wait", 0.0, 0.0, settings.max_wait_seconds, integer=False)
        feed = self.context.archive.results
        self._waiting = asyncio.ensure_future(
            feed.wait_for_results_async(
                site,
                cursor,
                limit=limit,
                timeout=wait,
                poll=settings.results_poll_seconds,
            )
        )
        try:
            found = await self._waiting
        except asyncio.CancelledError:
            return  # the caller went away
        if found:
            context = self.context
            found = await self.blocking(
                fresh_results,
                context.state,
                context.archive,
                site,
                found,
                hub_keys=context.hub_keys,
                audit=context.audit,
                scratch=context.ingestor.quarantine_dir,
            )
            await self.audit(AuditAction.READ, detail={"results": [r.cursor for r in found]})
        self.write_json(
            {
                "results": [{**result_view(r), "superseded_by": r.superseded_by} for r in found],
                "cursor": found[-1].cursor if found else cursor,
            }
        )

    def on_connection_close(self) -> None:
        """Stop waiting for a caller that is gone."""
        if self._waiting is not None:
            self._waiting.cancel()
        super().on_connection_close()

    def _number(
        self, name: str, fallback: float, low: float, high: float | None, *, integer: bool
    ) -> float:
        text = self.get_query_argument(name, None)
        if text is None:
            return fallback
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        if value is None or value != value or value < low or (high is not None and value > high):
            limit = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
            kind = "an integer" if integer else "a number"
            raise ApiError(400, "bad_request", f"{name} must be {kind}, {limit}")
        return value


class ResultHandler(BaseHandler):
    """``GET /results/{id}``: one result's sealed envelope, for a site it is addressed to."""

    audit_action = AuditAction.EXPORT

    async def get(self, result_id: str) -> None:
        """Stream the envelope (sealed again first if it expires soon)."""
        site = self.site(SITE_RESULTS, hide=("result", result_id))
        if not (result_id.isascii() and result_id.isdigit()) or len(result_id) > 18:
            raise not_found("result", result_id)
        context = self.context
        record, stream = await self.blocking(
            open_fresh_result,
            context.state,
            context.archive,
            site,
            int(result_id),
            hub_keys=context.hub_keys,
            audit=context.audit,
            scratch=context.ingestor.quarantine_dir,
        )
        with contextlib.closing(stream):
            await self.audit(
                AuditAction.EXPORT,
                detail={"study": record.study_instance_uid, "kind": record.kind},
            )
            self.set_header("Content-Type", "application/vnd.usreview.envelope")
            self.set_header("Content-Length", str(record.envelope_size))
            self.set_header("ETag", f'"{record.envelope_sha256}"')
            while chunk := stream.read(_CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()

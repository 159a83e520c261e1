"""``usreview site pull``: deliver the pending results once, without a gateway.

Two processes may deliver a site's results: a gateway's upload process and a pull. They
must never both run, or one result could be delivered twice (into the outbox and, worse,
to the PACS). A pull therefore takes both locks of the state folder, in the gateway's
order: ``gateway.lock`` (held by a running gateway) and then ``uploader.lock`` (held by
the upload process, which outlives a killed gateway while it finishes its uploads). If
either is held, the pull is refused with :class:`~usreview.site.errors.GatewayRunningError`
and nothing is fetched.

A pull is also how the results cursor is set by hand (``cursor``; ``usreview site pull
--cursor N``): after the cursor was damaged or lost, the follower delivers nothing until
it is set (:mod:`usreview.site.cursor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usreview.errors import InputError
from usreview.site.config import SiteConfig
from usreview.site.errors import GatewayRunningError
from usreview.site.results import Delivered, ResultFollower
from usreview.site.status import UPLOADER_LOCK_FILE, StateLock, StatusBook

__all__ = ["PullReport", "pull_results"]


@dataclass(frozen=True)
class PullReport:
    """What a pull delivered, the cursor reached, and the PACS deliveries still pending;
    with ``retry_refused``, the refused results delivered now and those still refused."""

    delivered: list[Delivered]
    cursor: int
    pacs_pending: int
    retried: list[Delivered] = field(default_factory=list)
    still_refused: int = 0


def pull_results(
    config: SiteConfig, *, retry_refused: bool = False, cursor: int | None = None
) -> PullReport:
    """Fetch and deliver the results published since the last one delivered.

    With ``retry_refused``, first fetch again from the hub and open the results put aside
    in ``state/refused/`` (the hub seals an expired one again; the copy aside is opened if
    the hub cannot be asked; :meth:`~usreview.site.results.ResultFollower.retry_refused`).
    With ``cursor``, first save it as the results cursor (whatever ``results.cursor``
    holds, damaged or missing): the results after it are delivered, those up to it not.

    Raises
    ------
    InputError
        ``cursor`` is not a non-negative integer.
    GatewayRunningError
        A gateway, its upload process or another pull delivers the site's results now.
    ResultsCursorError
        The results cursor is damaged, or missing while results were delivered here
        before, and ``cursor`` was not given: nothing was fetched.
    HubUnreachableError, HubRefusedError
        The feed could not be read (what was delivered before stays delivered).
    """
    if cursor is not None and (
        isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0
    ):
        raise InputError(f"--cursor: a results cursor is a non-negative integer (got {cursor!r})")
    with StateLock(config.state):
        uploader = StateLock(config.state, UPLOADER_LOCK_FILE)
        if not uploader.try_acquire():
            raise GatewayRunningError(
                f"a gateway's upload process holds {uploader.path} and delivers this site's "
                "results itself (a stopped gateway's one ends once its uploads in progress "
                "are done); pull again when it has ended"
            )
        try:
            follower = ResultFollower(config, StatusBook(config.state), cursor=cursor)
            retried: list[Delivered] = []
            still_refused = 0
            try:
                if retry_refused:
                    retried, still_refused = follower.retry_refused()
                delivered = follower.pull()
            finally:
                follower.status.flush(force=True)
                follower.studies.close()
                follower.client.close()
            pending = len(follower.pacs.pending())
            return PullReport(delivered, follower.cursor, pending, retried, still_refused)
        finally:
            uploader.release()

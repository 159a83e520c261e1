"""Every exception a handler meets, as an HTTP status and a JSON body.

The body is ``{"status": 409, "error": "conflict", "message": "..."}`` (plus ``reason``
for a rejected instance, ``claim`` for a study another reviewer holds, ``field`` for a
report that fails validation). Bad input is always a 4xx; 503 means "send again later,
nothing was stored"; anything unexpected is a 500 whose details stay in the log.
The table :data:`_TABLE` is ordered from the most specific exception to the least.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tornado.web import HTTPError

from usreview.errors import InputError, ReportError
from usreview.hub.api.views import claim_view
from usreview.hub.errors import AuditError
from usreview.ingest import (
    NotForHubError,
    RefusedEnvelopeError,
    RejectedInstanceError,
    ReplayedEnvelopeError,
    UnknownSiteError,
    WorkerPoolError,
    WrongSenderError,
)
from usreview.ingest.errors import UidMismatchError
from usreview.store import (
    ConflictError,
    CorruptObjectError,
    InvalidMetadataError,
    NotFoundError,
    StorageError,
)
from usreview.store.review import ClaimedError, NotClaimedError, NotReadyError, VersionTakenError

__all__ = ["ApiError", "Problem", "not_found", "problem_for"]

_UNAVAILABLE = "the hub cannot do this now; nothing was stored or changed, try again later"
_INTERNAL = "the service failed; the details are in its log"


class ApiError(HTTPError):
    """An error answer decided by a handler: status, machine code, sentence.

    Parameters
    ----------
    status
        The HTTP status.
    error
        The machine-readable code (see ``docs/openapi.yaml``).
    message
        One sentence for the caller.
    reason
        For a rejected instance: why.
    extra
        More members of the body (``field``, ``claim``).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__(status)
        self.error = error
        self.message = message
        self.reason = reason
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class Problem:
    """What the caller is told."""

    status: int
    error: str
    message: str
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The JSON body."""
        body: dict[str, object] = {
            **self.extra,
            "status": self.status,
            "error": self.error,
            "message": self.message,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return body


def not_found(kind: str, ident: object) -> ApiError:
    """The one 404 of a resource: the same for missing and forbidden."""
    return ApiError(404, "not_found", f"no {kind} {ident}")


#: (exception, status, code, fixed message or None to use the exception's own).
_TABLE: Final[tuple[tuple[type[BaseException], int, str, str | None], ...]] = (
    (UnknownSiteError, 403, "forbidden", None),
    (WrongSenderError, 403, "wrong_sender", None),
    (NotForHubError, 400, "not_for_hub", None),
    (ReplayedEnvelopeError, 409, "replayed", None),
    (RefusedEnvelopeError, 400, "bad_envelope", None),
    (RejectedInstanceError, 422, "rejected_instance", None),
    (UidMismatchError, 400, "uid_mismatch", None),
    (ConflictError, 409, "conflict", None),
    (ClaimedError, 409, "claimed", None),
    (NotClaimedError, 409, "not_claimed", None),
    (NotReadyError, 409, "not_ready", None),
    (VersionTakenError, 409, "conflict", None),
    (NotFoundError, 404, "not_found", None),
    (InvalidMetadataError, 400, "bad_request", None),
    (StorageError, 503, "unavailable", _UNAVAILABLE),
    (WorkerPoolError, 503, "unavailable", _UNAVAILABLE),
    (AuditError, 503, "unavailable", _UNAVAILABLE),
    (CorruptObjectError, 500, "internal", "a stored object is damaged; tell an administrator"),
    (InputError, 400, "bad_request", None),
)

_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def problem_for(exc: BaseException | None, status: int = 500) -> Problem:
    """The answer to ``exc`` (or to a bare ``status`` when there is no exception)."""
    if isinstance(exc, ApiError):
        return Problem(exc.status_code, exc.error, exc.message, exc.reason, exc.extra)
    for kind, code, error, message in _TABLE:
        if isinstance(exc, kind):
            reason = exc.reason.value if isinstance(exc, RejectedInstanceError) else None
            return Problem(code, error, message or str(exc), reason, _extra(exc))
    if isinstance(exc, HTTPError):
        status = exc.status_code
        text = exc.log_message or exc.reason or ""
        if status >= 500:
            text = _INTERNAL
        return Problem(status, _CODES.get(status, "error"), text or f"HTTP {status}")
    if exc is not None or status >= 500:
        return Problem(500, "internal", _INTERNAL)
    return Problem(status, _CODES.get(status, "error"), f"HTTP {status}")


def _extra(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ClaimedError):
        return {"claim": claim_view(exc.claim)}
    if isinstance(exc, ReportError):
        return {"field": exc.field}
    return {}

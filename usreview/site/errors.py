"""Errors of the site (gateway, push, pull), all under :class:`SiteError`.

::

    SiteError
    ├── SiteConfigError           a setting in site.toml that cannot work (names the setting;
    │                             also an InputError: exit status 2)
    ├── SpoolError                an instance could not be written durably to the spool
    │   └── SpoolKeyError         sealed with a spool key not configured (none set, or not in
    │                             folders.retired_spool_keys): fix site.toml; the journal's
    │                             JournalKeyError (site.journal) names its segment
    ├── HubRequestError           talking to the hub failed
    │   ├── HubUnreachableError   no answer, TLS failure, 5xx or 503: try again later
    │   │   └── PushStoppedError  push stopped early, the hub down: how many were sent and
    │   │                         remain; the same command resumes
    │   └── HubRefusedError       a 4xx answer (``status``, ``code``, ``message``, ``reason``);
    │                             ``refusal`` says whether it is final (site.refusals)
    ├── ReceiptError              the hub's receipt does not verify or names other bytes
    ├── DeliveryError             a result could not be delivered (outbox or PACS)
    ├── GatewayRunningError       another process (a gateway) holds the site's state
    └── NotAcknowledgedError      push: instances the hub did not acknowledge (``failed``)

What a refusal of an upload means is decided in one place,
:func:`usreview.site.refusals.classify_refusal`, from the hub's JSON error fields.
"""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

from usreview.envelope.replay import CLOCK_SKEW
from usreview.errors import InputError, UsreviewError
from usreview.ingest.errors import RejectReason
from usreview.site.refusals import Refusal, classify_refusal

__all__ = [
    "DeliveryError",
    "GatewayRunningError",
    "HubRefusedError",
    "HubRequestError",
    "HubUnreachableError",
    "NotAcknowledgedError",
    "PushStoppedError",
    "ReceiptError",
    "SiteConfigError",
    "SiteError",
    "SpoolError",
    "SpoolKeyError",
]


class SiteError(UsreviewError):
    """The site's gateway or one of its commands failed."""


class SiteConfigError(SiteError, InputError):
    """A setting in ``site.toml`` that cannot work; the message names the setting."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class SpoolError(SiteError):
    """An instance could not be written durably to the spool."""


class SpoolKeyError(SpoolError):
    """A spooled instance is sealed with a spool key that is not configured (none set, or
    not in ``folders.retired_spool_keys``): the configuration is to fix, the instance is
    sound (kept in the spool, not rejected)."""


class HubRequestError(SiteError):
    """A request to the hub failed."""


class HubUnreachableError(HubRequestError):
    """The hub could not be reached or asked to try again later (5xx, 503, TLS, timeout)."""


class PushStoppedError(HubUnreachableError):
    """``site push`` stopped before its end because the hub could not be reached.

    Parameters
    ----------
    reason
        The hub's last error.
    sent
        Instances the hub acknowledged (those it held already included).
    remaining
        Instances not acknowledged because the push stopped.
    """

    def __init__(self, reason: str, *, sent: int, remaining: int) -> None:
        super().__init__(
            f"the hub cannot be reached ({reason}); push stopped: {sent} instance(s) sent, "
            f"{remaining} remaining. Run the same command again once the hub is back: it "
            "resumes (what the hub already holds is not sent again)"
        )
        self.sent = sent
        self.remaining = remaining


_NOT_YET_VALID = re.compile(
    r"valid only from (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z \(now (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z\)"
)


def _utc(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


class HubRefusedError(HubRequestError):
    """The hub answered with a 4xx error; :attr:`refusal` says whether to try again.

    Parameters
    ----------
    status
        The HTTP status.
    code
        The hub's machine-readable error code (``rejected_instance``, ``conflict``, ...).
    message
        The hub's sentence.
    reason
        The hub's ``reason`` (a rejected instance's :class:`RejectReason` value), if any.
    """

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"the hub refused ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.hub_message = message
        self.reason = reason

    @property
    def refusal(self) -> Refusal:
        """Final, retried for this instance, or retried for the site: :func:`classify_refusal`."""
        return classify_refusal(self.status, self.code, self.reason)

    @property
    def permanent(self) -> bool:
        """True when the instance itself is bad: sending it again can never work."""
        return self.refusal is Refusal.FINAL

    def advice(
        self, *, transfer_syntax: str | None = None, hub_key_file: Path | None = None
    ) -> str | None:
        """What to do about it, when that is clear (``None`` otherwise).

        Parameters
        ----------
        transfer_syntax
            The refused instance's transfer syntax (named when a decoder is missing).
        hub_key_file
            Where the site keeps the hub's public key (``hub.public_key``).
        """
        code, reason = self.code, self.reason
        if code == "bad_envelope":
            found = _NOT_YET_VALID.search(self.hub_message)
            if found:
                ahead = _utc(found[1]) - _utc(found[2])
                return (
                    f"the site clock is {ahead} s ahead of the hub: fix NTP "
                    f"(the hub accepts {CLOCK_SKEW} s); uploads resume by themselves"
                )
            if "expired" in self.hub_message:
                return "the site clock is behind the hub's by days: fix NTP"
            return "check the site's clock (NTP) and keys; each try seals the instance again"
        if code == "not_for_hub":
            where = f" as {hub_key_file}" if hub_key_file is not None else ""
            return (
                "the hub's public key changed: ask the hub's administrator for its current "
                f"public key (usreview hub add-site prints it), save it{where} "
                "(hub.public_key), then restart the gateway"
            )
        if code in ("wrong_sender", "forbidden") or self.status == 403:
            return (
                "the hub does not accept this site's key or name: give the site's public key "
                "to the hub's administrator (usreview hub add-site NAME --public-key "
                "NAME.pub --rotate)"
            )
        if self.status == 401:
            return (
                "the hub refuses the site's token: put the token the hub issued in the token file"
            )
        if reason == RejectReason.UNSUPPORTED_TRANSFER_SYNTAX.value:
            syntax = f" {transfer_syntax}" if transfer_syntax else ""
            return (
                f"the hub is missing a decoder for transfer syntax{syntax}: tell the hub's "
                "administrator; the instance is sent again until it is accepted"
            )
        if reason == RejectReason.IMAGE_TOO_LARGE.value or self.status == 413:
            return (
                "larger than the hub's limit: ask the hub's administrator to raise it; "
                "the instance is sent again until it is accepted"
            )
        if reason in (
            RejectReason.RESOURCE_LIMIT.value,
            RejectReason.TIMED_OUT.value,
            RejectReason.WORKER_CRASHED.value,
        ):
            return (
                "the hub could not parse it in time or memory: tell the hub's administrator "
                "if it persists; the instance is sent again"
            )
        return None


class ReceiptError(SiteError):
    """The hub's receipt does not verify, or names another instance or other bytes."""


class DeliveryError(SiteError):
    """A result could not be delivered into the outbox or to a PACS.

    ``permanent``: trying again cannot help (the file is not DICOM the PACS can take, or
    the PACS refused it for what it is); otherwise the PACS may take it later. ``tries``:
    the PACS may take it later, but not forever (a processing failure): how many times
    in all to try before it is set aside (``None``: no limit).
    """

    def __init__(self, message: str, *, permanent: bool = False, tries: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.tries = tries


class GatewayRunningError(SiteError):
    """Another process (a running gateway) holds the site's state folder."""


class NotAcknowledgedError(SiteError):
    """Some instances were not acknowledged by the hub; ``failed`` maps path to reason."""

    def __init__(self, failed: dict[str, str]) -> None:
        names = "; ".join(f"{path}: {reason}" for path, reason in sorted(failed.items()))
        super().__init__(f"{len(failed)} instance(s) not acknowledged by the hub: {names}")
        self.failed = dict(failed)

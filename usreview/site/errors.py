"""Errors of the site (gateway, push, pull), all under :class:`SiteError`.

::

    SiteError
    ├── SiteConfigError           a setting in site.toml that cannot work (names the setting;
    │                             also an InputError: exit status 2)
    ├── SpoolError                an instance could not be written durably to the spool
    │   └── SpoolKeyError         it is sealed at rest and no spool key is set: fix site.toml
    ├── HubRequestError           talking to the hub failed
    │   ├── HubUnreachableError   no answer, TLS failure, 5xx or 503: try again later
    │   └── HubRefusedError       a 4xx answer (``status``, ``code``, ``message``)
    ├── ReceiptError              the hub's receipt does not verify or names other bytes
    ├── DeliveryError             a result could not be delivered (outbox or PACS)
    ├── GatewayRunningError       another process (a gateway) holds the site's state
    └── NotAcknowledgedError      push: instances the hub did not acknowledge (``failed``)
"""

from __future__ import annotations

from usreview.errors import InputError, UsreviewError

__all__ = [
    "DeliveryError",
    "GatewayRunningError",
    "HubRefusedError",
    "HubRequestError",
    "HubUnreachableError",
    "NotAcknowledgedError",
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
    """A spooled instance is sealed at rest and no spool key is set: the configuration is
    to fix, the instance is sound (kept in the spool, not rejected)."""


class HubRequestError(SiteError):
    """A request to the hub failed."""


class HubUnreachableError(HubRequestError):
    """The hub could not be reached or asked to try again later (5xx, 503, TLS, timeout)."""


class HubRefusedError(HubRequestError):
    """The hub answered with a 4xx error; sending the same again will not help.

    Parameters
    ----------
    status
        The HTTP status.
    code
        The hub's machine-readable error code (``rejected_instance``, ``conflict``, ...).
    message
        The hub's sentence.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the hub refused ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.hub_message = message

    @property
    def permanent(self) -> bool:
        """True when the instance itself is refused (not the site's credentials)."""
        return self.status not in (401, 403, 404, 408, 429)


class ReceiptError(SiteError):
    """The hub's receipt does not verify, or names another instance or other bytes."""


class DeliveryError(SiteError):
    """A result could not be delivered into the outbox or to a PACS.

    ``permanent``: trying again cannot help (the file is not DICOM the PACS can take, or
    the PACS refused it for what it is); otherwise the PACS may take it later.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class GatewayRunningError(SiteError):
    """Another process (a running gateway) holds the site's state folder."""


class NotAcknowledgedError(SiteError):
    """Some instances were not acknowledged by the hub; ``failed`` maps path to reason."""

    def __init__(self, failed: dict[str, str]) -> None:
        names = "; ".join(f"{path}: {reason}" for path, reason in sorted(failed.items()))
        super().__init__(f"{len(failed)} instance(s) not acknowledged by the hub: {names}")
        self.failed = dict(failed)

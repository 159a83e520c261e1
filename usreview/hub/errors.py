"""Errors of the JupyterHub deployment, all under :class:`HubError`.

::

    HubError
    ├── HubConfigError          a setting that cannot work; the message names the setting
    │   ├── InsecureBindError   a non-loopback --ip without TLS
    │   └── ProxyNotFoundError  configurable-http-proxy is not installed
    ├── StateError              the state directory is unusable (permissions, damaged files)
    ├── AccountError            a bad user or site name, an unknown role, a duplicate
    ├── AuditError              the audit log cannot be written, or it does not verify
    └── HubUnavailableError     the running hub's API cannot be reached or refused a request

:class:`AccountError` is also an :class:`~usreview.errors.InputError` (exit status 2).
"""

from __future__ import annotations

from usreview.errors import InputError, UsreviewError

__all__ = [
    "AccountError",
    "AuditError",
    "HubConfigError",
    "HubError",
    "HubUnavailableError",
    "InsecureBindError",
    "ProxyNotFoundError",
    "StateError",
]


class HubError(UsreviewError):
    """The hub could not be configured, started or administered."""


class AuditError(HubError):
    """The audit log cannot be written, or it does not verify."""


class HubConfigError(HubError):
    """A hub setting that cannot work; the message names the setting to change."""


class InsecureBindError(HubConfigError):
    """The public endpoint would listen beyond loopback without TLS."""


class ProxyNotFoundError(HubConfigError):
    """No ``configurable-http-proxy`` executable was found."""


class StateError(HubError):
    """The state directory or one of its files cannot be used."""


class AccountError(HubError, InputError):
    """A user or site that cannot be added (bad name, unknown role, duplicate)."""


class HubUnavailableError(HubError):
    """The running hub's REST API cannot be reached, or it refused a request."""

"""The site: the first and last hop of a study, at the clinic.

A gateway receives instances from scanners by DICOM C-STORE, spools each durably before
answering, uploads it sealed to the hub in the background, and delivers the hub's results
into an outbox folder and to the clinic's PACS. Modules (one responsibility each)::

    config      site.toml: reading, checking (errors name the setting), init_site()
    spool       the durable spool of received instances (UID_SHA256.dcm)
    journal     the spool's write-ahead journal (group commit, replay at start)
    scp         the DICOM Storage SCP (pynetdicom, TCP_NODELAY + QUICKACK, AE allow-list)
    client      HTTP to the hub's API (pinned TLS certificate, the site's token)
    uploader    sealing and uploading the spool, verified receipts, backoff
    backoff     exponential backoff with jitter
    results     following the results feed (long-poll, persisted cursor, replay cache)
    deliver     the outbox folder and C-STORE to the PACS (durable retry markers)
    pacs_senders one thread per PACS sending its queue
    identity    the study a result names itself; the quarantine
    cursor      the results cursor, read strictly (backup, site pull --cursor)
    supersede   amendments: superseded results move aside, the new summary says so
    retention   results leave the site: results.keep_days, results.outbox = false
    push        one-shot upload of files or folders
    progress    push's progress bar (rate, time left) or plain lines
    pull        one-shot delivery of the results (both state locks held)
    dicomtls    DICOM TLS on the gateway's port (certificate, server context)
    atrest      the spool's encryption at rest (AES-256-GCM with the site's spool key)
    status      the status file, the state locks, ``usreview site status``
    studies     the per-study journal (instances acknowledged or rejected, results, PACS)
    rejected    ``usreview site rejected``: what the spool put aside, decrypted exports
    gateway     the gateway process: the SCP, and supervising the upload process
    worker      the upload process: uploader and results follower, woken by the SCP

Errors are in :mod:`usreview.site.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes
from usreview.site.config import PacsDestination, SiteConfig, init_site, load_config
from usreview.site.errors import (
    DeliveryError,
    GatewayRunningError,
    HubRefusedError,
    HubRequestError,
    HubUnreachableError,
    NotAcknowledgedError,
    PushStoppedError,
    ReceiptError,
    SiteConfigError,
    SiteError,
    SpoolError,
    SpoolKeyError,
)

if TYPE_CHECKING:
    from usreview.site.gateway import Gateway, run_gateway
    from usreview.site.push import PushReport, push_paths
    from usreview.site.results import ResultFollower
    from usreview.site.spool import Spool, SpooledInstance
    from usreview.site.status import SiteStatus, format_status, read_status

# Imported when first used: the site's commands (status, check, ...) read the
# configuration and a file or two, and need neither the DICOM network stack nor the
# hub's client.
_MODULES = {
    "Gateway": "gateway",
    "run_gateway": "gateway",
    "PushReport": "push",
    "push_paths": "push",
    "ResultFollower": "results",
    "Spool": "spool",
    "SpooledInstance": "spool",
    "SiteStatus": "status",
    "format_status": "status",
    "read_status": "status",
}

__getattr__ = lazy_attributes(__name__, _MODULES)

__all__ = [
    "DeliveryError",
    "Gateway",
    "GatewayRunningError",
    "HubRefusedError",
    "HubRequestError",
    "HubUnreachableError",
    "NotAcknowledgedError",
    "PacsDestination",
    "PushReport",
    "PushStoppedError",
    "ReceiptError",
    "ResultFollower",
    "SiteConfig",
    "SiteConfigError",
    "SiteError",
    "SiteStatus",
    "Spool",
    "SpoolError",
    "SpoolKeyError",
    "SpooledInstance",
    "format_status",
    "init_site",
    "load_config",
    "push_paths",
    "read_status",
    "run_gateway",
]

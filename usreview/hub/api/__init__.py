"""The usreview service's HTTP API (``docs/openapi.yaml``), under ``/services/usreview/api/v1/``.

Modules (one responsibility each)::

    app                 open_context(): archive, recovery, workers, ingest, audit; the URL table
    settings            ServiceSettings (traitlets; STATE/service_config.json)
    sitekeys            the registered sites' public keys, reloaded when a file changes
    base                the handlers' base: caller rights, JSON errors, audit of refusals
    errors              exception -> status, code and sentence
    views               JSON views of the archive's records
    handlers_service    GET /whoami, the 404 of unknown paths (both audited)
    handlers_upload     PUT /instances/{uid} (streamed, capped), GET /instances/{uid}
    handlers_receipts   GET /instances/{uid}/receipt, GET /receipts
    handlers_results    GET /results (long-poll), GET /results/{id}
    handlers_review     GET /studies (the worklist), GET /studies/{uid},
                        GET /studies/{uid}/priors, GET /instances/{uid}/analysis,
                        GET /instances/{uid}/frames/{n}; opening stored instances
    handlers_claims     POST and DELETE /studies/{uid}/claim
    handlers_reports    GET and POST /studies/{uid}/reports
    reporting           publish_report(): check, build the SR, seal, record a report
    publish             publish_result(): seal a result to sites and put it in the feed
    plaintext           open_stored(): a stored instance opened back into its DICOM
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes

if TYPE_CHECKING:
    from usreview.hub.api.app import (
        ServiceContext,
        ServiceWorker,
        api_routes,
        open_context,
        recover_shared_state,
    )
    from usreview.hub.api.publish import publish_result
    from usreview.hub.api.settings import ServiceSettings

# Imported when first used: the administration commands need the settings and a few
# modules, not the handlers (tornado, JupyterHub's service auth, the processors).
_MODULES = {
    "ServiceContext": "app",
    "ServiceWorker": "app",
    "api_routes": "app",
    "open_context": "app",
    "recover_shared_state": "app",
    "publish_result": "publish",
    "ServiceSettings": "settings",
}

__getattr__ = lazy_attributes(__name__, _MODULES)

__all__ = [
    "ServiceContext",
    "ServiceSettings",
    "ServiceWorker",
    "api_routes",
    "open_context",
    "publish_result",
    "recover_shared_state",
]

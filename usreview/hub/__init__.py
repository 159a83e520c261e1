"""Wiring usreview into JupyterHub: configuration, login, roles, the usreview service.

Modules (one responsibility each)::

    config      configure(c, ...): everything JupyterHub needs, from one tested function
    state       the state directory: keys, secrets, databases (mode 0700)
    accounts    the registry of people and sites
    passwords   generated passwords and their scrypt hashes
    auth        the Authenticator (a password of one's own per person)
    roles       groups, roles and custom scopes as data (least privilege)
    tls         the bind check and a self-signed demo certificate
    proxy       finding configurable-http-proxy
    service     the hub-managed usreview service (tornado, make_app())
    supervisor  several service processes on one port (fork, restart, die together)
    audit       the append-only, hash-chained audit log
    dashboards  the single-user servers of reviewers, trainees and scientists (Voila)
    spawner     each person's server under a system account of their own
    kernel_pool a warm Voila kernel in each reviewer's server
    admin       a client of the running hub's REST API
    commands    what the ``usreview hub`` commands do
    orphans     envelopes no index row names: list them, ingest them again

Errors are in :mod:`usreview.hub.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes

if TYPE_CHECKING:
    from usreview.hub.config import Endpoints, configure

__all__ = ["Endpoints", "configure"]

# Imported when first used: a module of this package (say ``dashboards``, run under a
# person's account) does not pay for JupyterHub's imports.
__getattr__ = lazy_attributes(__name__, {"Endpoints": "config", "configure": "config"})

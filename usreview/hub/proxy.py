"""Finding the proxy: npm's ``configurable-http-proxy``, pinned in ``hub_config/``.

``make test`` and ``make demo`` install it with ``npm ci --prefix hub_config`` from the
committed ``package.json`` and ``package-lock.json`` (5.3.0: works with Node 20).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from usreview.hub.errors import ProxyNotFoundError

__all__ = ["PROXY_ENV", "find_proxy"]

PROXY_ENV = "USREVIEW_PROXY"
_CHECKOUT = Path(__file__).resolve().parents[2]
_BUNDLED = _CHECKOUT / "hub_config" / "node_modules" / ".bin" / "configurable-http-proxy"


def find_proxy(bundled: Path | None = None) -> Path:
    """Return the absolute path of ``configurable-http-proxy``.

    Looks at ``$USREVIEW_PROXY``, then ``bundled`` (default:
    ``hub_config/node_modules/.bin`` of the checkout), then ``PATH``.

    Raises
    ------
    ProxyNotFoundError
        If none is found (or ``$USREVIEW_PROXY`` names no executable).
    """
    configured = os.environ.get(PROXY_ENV)
    if configured:
        path = Path(configured)
        if path.is_file() and os.access(path, os.X_OK):
            return path.absolute()
        raise ProxyNotFoundError(f"${PROXY_ENV}={configured} is not an executable file")
    bundled = _BUNDLED if bundled is None else bundled
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("configurable-http-proxy")
    if found:
        return Path(found).absolute()
    raise ProxyNotFoundError(
        "configurable-http-proxy is not installed: run 'make test' or 'make demo' "
        "(they run 'npm ci --prefix hub_config'), or set $USREVIEW_PROXY to its path"
    )

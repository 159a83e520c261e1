"""The rule for account names at the hub (people and sites), shared with the sites.

Here rather than in :mod:`usreview.hub.accounts` so that ``usreview site init`` can check a
site's name without importing the hub (and JupyterHub's traitlets, which a site's install
does not have).
"""

from __future__ import annotations

import re

__all__ = ["ACCOUNT_NAME", "ACCOUNT_NAME_RULE"]

#: A hub account name: a person's, or a site's (``hub add-site NAME``, ``site init NAME``).
ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: :data:`ACCOUNT_NAME` in words, for error messages.
ACCOUNT_NAME_RULE = "1 to 32 lowercase letters, digits, '_' or '-', starting with a letter"

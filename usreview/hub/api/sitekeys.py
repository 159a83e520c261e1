"""The registered sites' public keys, read from ``STATE/sites/NAME.pub`` when needed.

``usreview hub add-site`` writes a site's key there while the service runs, so the
mapping looks at the file at every lookup and reloads it when it changed (by inode,
modification time and size); a removed file removes the site.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from usreview.envelope import EnvelopeError, PublicKeys, load_public_keys

__all__ = ["SiteKeyFiles"]

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_log = logging.getLogger(__name__)


class SiteKeyFiles(Mapping[str, PublicKeys]):
    """``{site: PublicKeys}`` backed by the folder of ``.pub`` files.

    Parameters
    ----------
    folder
        ``STATE/sites``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, tuple[tuple[int, int, int], PublicKeys]] = {}
        self._lock = threading.Lock()

    def __getitem__(self, site: str) -> PublicKeys:
        if not isinstance(site, str) or not _NAME.fullmatch(site):
            raise KeyError(site)
        path = self.folder / f"{site}.pub"
        try:
            info = path.stat()
        except OSError:
            with self._lock:
                self._cache.pop(site, None)
            raise KeyError(site) from None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(site)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            keys = load_public_keys(path)
        except EnvelopeError as exc:
            _log.error("the key of site %s cannot be used: %s", site, exc)
            raise KeyError(site) from None
        with self._lock:
            self._cache[site] = (stamp, keys)
        return keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.stem for p in self.folder.glob("*.pub") if _NAME.fullmatch(p.stem)))

    def __len__(self) -> int:
        return sum(1 for _ in self)

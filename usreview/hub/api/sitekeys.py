"""The registered sites' public keys, read from ``STATE/sites/`` when needed.

``STATE/sites/NAME.pub`` is a site's current key. ``usreview hub add-site`` writes it
while the service runs, so the mapping looks at the file at every lookup and reloads it
when it changed (by inode, modification time and size); a removed file removes the site.

Rotation (``usreview hub add-site NAME --public-key NEW.pub --rotate``, :meth:`rotate`)
replaces the current key and moves the old one into ``STATE/sites/NAME.previous.json``,
newest first, with the time it was replaced and the end of its grace period
(``accepted_until``, default :data:`DEFAULT_GRACE_SECONDS` later). Which keys apply is
always asked for explicitly:

- :meth:`SiteKeyFiles.current` (also ``site_keys[site]``): the one key results are
  sealed to;
- :meth:`SiteKeyFiles.upload_ring`: what a new upload may be signed with, the current
  key and the replaced keys still in their grace period (what the ingest uses):
  envelopes the site sealed before it switched still arrive, and a grace of 0 refuses
  the old key at once (a compromised key);
- :meth:`SiteKeyFiles.stored_ring`: what opens envelopes the hub already stored, the
  current key and every key the site had (they were verified when they arrived).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usreview._names import ACCOUNT_NAME
from usreview.envelope import EnvelopeError, PublicKeys, load_public_keys
from usreview.envelope.atomic import replace_file
from usreview.envelope.keyring import KeyRing
from usreview.envelope.keys import parse_public_keys
from usreview.hub.errors import AccountError, StateError

__all__ = ["DEFAULT_GRACE_SECONDS", "PreviousKey", "SiteKeyFiles", "UploadRings"]

#: How long a replaced key still verifies new uploads, by default (7 days).
DEFAULT_GRACE_SECONDS = 7 * 86400
_FORMAT = "usreview-site-previous-keys"
_log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class PreviousKey:
    """A key a site used before: when it was replaced, until when uploads may use it."""

    public: PublicKeys
    replaced_at: float
    accepted_until: float

    def to_json(self) -> dict[str, Any]:
        """The entry of ``NAME.previous.json``."""
        return {
            "key_id": self.public.key_id.hex(),
            "replaced_at": self.replaced_at,
            "accepted_until": self.accepted_until,
            "public_key": self.public.to_text(),
        }


@dataclass(frozen=True)
class _Site:
    current: PublicKeys
    previous: tuple[PreviousKey, ...]


class SiteKeyFiles(Mapping[str, PublicKeys]):
    """``{site: current key}`` backed by the folder of ``.pub`` files.

    A site's value is its current key only; the rings that also trust the keys it
    replaced are :meth:`upload_ring` and :meth:`stored_ring`.

    Parameters
    ----------
    folder
        ``STATE/sites``.
    clock
        Unix time, for the grace periods (tests pass a fake one).
    """

    def __init__(self, folder: Path, *, clock: Any = time.time) -> None:
        self.folder = Path(folder)
        self._clock = clock
        self._cache: dict[str, tuple[tuple[_Stamp, _Stamp | None], _Site]] = {}
        self._lock = threading.Lock()

    def __getitem__(self, site: str) -> PublicKeys:
        return self.current(site)

    def __iter__(self) -> Iterator[str]:
        names = (p.stem for p in self.folder.glob("*.pub"))
        return iter(sorted(name for name in names if ACCOUNT_NAME.fullmatch(name)))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def current(self, site: str) -> PublicKeys:
        """The current key of ``site``, the only one results are sealed to
        (``KeyError``: no such site)."""
        return self._site(site).current

    def previous(self, site: str) -> tuple[PreviousKey, ...]:
        """The keys ``site`` used before, newest first (``KeyError``: no such site)."""
        return self._site(site).previous

    def upload_ring(self, site: str, now: float | None = None) -> KeyRing:
        """The keys a new upload of ``site`` may be signed with: the current one active,
        replaced ones retired until their grace period ends (``KeyError``: no such site)."""
        found = self._site(site)
        now = self._clock() if now is None else now
        valid = (old.public for old in found.previous if old.accepted_until > now)
        return KeyRing.rotation(found.current, valid)

    def stored_ring(self, site: str) -> KeyRing:
        """The keys an envelope the hub stored for ``site`` may be signed with: the current
        one active, every replaced one retired, grace or not (``KeyError``: no such site).

        Only for envelopes the archive holds: they were verified when they arrived.
        """
        found = self._site(site)
        return KeyRing.rotation(found.current, (old.public for old in found.previous))

    @property
    def uploads(self) -> UploadRings:
        """``{site: KeyRing}`` of :meth:`upload_ring`, for the ingest."""
        return UploadRings(self)

    def rotate(
        self, site: str, new_key: PublicKeys, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> PreviousKey:
        """Make ``new_key`` the current key of ``site``; return the replaced key's entry.

        The replaced key verifies new uploads for ``grace_seconds`` more.

        Raises
        ------
        AccountError
            ``site`` has no key, or ``new_key`` is its current or an earlier key.
        StateError
            The site's key files cannot be read or written.
        """
        if grace_seconds < 0:
            raise AccountError("the grace period cannot be negative")
        try:
            found = self._site(site)
        except KeyError:
            raise AccountError(f"site {site!r} has no key to rotate: add it first") from None
        used = {found.current.key_id} | {p.public.key_id for p in found.previous}
        if new_key.key_id in used:
            raise AccountError(
                f"key {new_key.key_id.hex()[:16]} is site {site!r}'s current or an earlier key: "
                "generate a new one ('usreview site rotate-key')"
            )
        now = self._clock()
        replaced = PreviousKey(found.current, now, now + grace_seconds)
        doc = {
            "format": _FORMAT,
            "version": 1,
            "keys": [p.to_json() for p in (replaced, *found.previous)],
        }
        try:  # the history first: a crash in between leaves the old key current
            replace_file(self._previous_path(site), json.dumps(doc, indent=2).encode() + b"\n")
            replace_file(self.folder / f"{site}.pub", new_key.to_text().encode(), mode=0o644)
        except OSError as exc:
            raise StateError(f"cannot write the keys of site {site!r}: {exc}") from None
        return replaced

    # -- reading -------------------------------------------------------------------------

    def _previous_path(self, site: str) -> Path:
        return self.folder / f"{site}.previous.json"

    def _site(self, site: str) -> _Site:
        if not isinstance(site, str) or not ACCOUNT_NAME.fullmatch(site):
            raise KeyError(site)
        path = self.folder / f"{site}.pub"
        try:
            stamp = (_stamp(path), _stamp_or_none(self._previous_path(site)))
        except OSError:
            with self._lock:
                self._cache.pop(site, None)
            raise KeyError(site) from None
        with self._lock:
            cached = self._cache.get(site)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            found = _Site(load_public_keys(path), self._load_previous(site))
        except (EnvelopeError, StateError) as exc:
            _log.error("the key of site %s cannot be used: %s", site, exc)
            raise KeyError(site) from None
        with self._lock:
            self._cache[site] = (stamp, found)
        return found

    def _load_previous(self, site: str) -> tuple[PreviousKey, ...]:
        path = self._previous_path(site)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable ({exc})") from None
        try:
            if doc.get("format") != _FORMAT or doc.get("version") != 1:
                raise ValueError("not a list of previous site keys, version 1")
            return tuple(
                PreviousKey(
                    parse_public_keys(item["public_key"], str(path)),
                    float(item["replaced_at"]),
                    float(item["accepted_until"]),
                )
                for item in doc["keys"]
            )
        except (ValueError, KeyError, TypeError, AttributeError, EnvelopeError) as exc:
            raise StateError(f"{path}: malformed ({exc})") from None


class UploadRings(Mapping[str, KeyRing]):
    """``{site: KeyRing}``: each site's :meth:`SiteKeyFiles.upload_ring`, as of now."""

    def __init__(self, keys: SiteKeyFiles) -> None:
        self._keys = keys

    def __getitem__(self, site: str) -> KeyRing:
        return self._keys.upload_ring(site)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _stamp(path: Path) -> _Stamp:
    info = path.stat()
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _stamp_or_none(path: Path) -> _Stamp | None:
    try:
        return _stamp(path)
    except FileNotFoundError:
        return None

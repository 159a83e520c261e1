"""The results cursor, read strictly: a damaged or lost cursor never restarts the feed.

``STATE/results.cursor`` (``{"cursor": N}``, mode 0600) is the last feed position whose
result was delivered. The follower reads it with :func:`load_cursor`:

- present and readable: go on after it;
- present but unreadable (cut short, not JSON, not a non-negative integer, or the file
  cannot be read): :class:`ResultsCursorError`; nothing is delivered. Starting again at 0
  would deliver every result the hub still lists again, into the outbox and the PACS (the
  replay cache does not stop it: the hub seals an old result again, under a new message
  id, when it is fetched close to its expiry);
- missing at a site that delivered results before (:func:`earlier_deliveries`: the
  backup ``results.cursor.bak``, the per-study journal, the outbox, the PACS queues,
  ``refused/`` and ``quarantine/``): :class:`ResultsCursorError` too; missing at a new
  site: 0.

The error names the cursor to go on from (the newest result found delivered, or the
backup's if newer) and the command that sets it: ``usreview site pull --cursor N`` (with the
gateway stopped), which :func:`save_cursor` writes before pulling.

:func:`save_cursor` writes the cursor atomically and durably, after copying the previous
value into ``results.cursor.bak`` (atomically too): a cursor damaged on disk has a backup
at most one result behind.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from usreview.envelope.atomic import replace_file
from usreview.site.config import SiteConfig
from usreview.site.errors import SiteError
from usreview.site.status import CURSOR_FILE
from usreview.site.studies import read_journal

__all__ = [
    "CURSOR_BACKUP",
    "EarlierDeliveries",
    "ResultsCursorError",
    "earlier_deliveries",
    "load_cursor",
    "read_saved_cursor",
    "save_cursor",
]

#: The previous cursor, kept beside ``results.cursor``.
CURSOR_BACKUP = CURSOR_FILE + ".bak"
_RESULT_FILE = re.compile(r"^(\d{8,})[-.]")


class ResultsCursorError(SiteError):
    """The results cursor is damaged, or missing at a site that delivered results before:
    no result is delivered until it is set (``usreview site pull --cursor N``)."""


def _parse(data: bytes) -> int:
    """The cursor in ``data``.

    Raises
    ------
    ValueError
        Not ``{"cursor": N}`` with N a non-negative integer (the message says why).
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        shown = "empty" if not data.strip() else "not JSON"
        raise ValueError(shown) from None
    value = doc.get("cursor") if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"no non-negative integer 'cursor' in {data[:80]!r}")
    return value


def read_saved_cursor(state: Path) -> int | None:
    """The cursor saved in ``STATE/results.cursor``; None when there is no such file.

    Raises
    ------
    ResultsCursorError
        The file is there but cannot be read or is damaged.
    """
    path = Path(state) / CURSOR_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsCursorError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        return _parse(data)
    except ValueError as exc:
        raise ResultsCursorError(f"{path} is damaged ({exc})") from None


def _read_backup(state: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return _parse((Path(state) / CURSOR_BACKUP).read_bytes())
    return None


def save_cursor(state: Path, cursor: int, previous: int | None) -> None:
    """Write ``cursor`` to ``STATE/results.cursor`` atomically and durably, after writing
    ``previous`` (the cursor it replaces, if it was a sound one) to the backup."""
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise ValueError(f"a results cursor is a non-negative integer (got {cursor!r})")
    state = Path(state)
    if previous is not None:
        replace_file(state / CURSOR_BACKUP, json.dumps({"cursor": previous}).encode(), mode=0o600)
    replace_file(state / CURSOR_FILE, json.dumps({"cursor": cursor}).encode(), mode=0o600)


@dataclass(frozen=True)
class EarlierDeliveries:
    """What shows that a site delivered results before: where, and the newest result id
    found (the feed's cursor and result id are the same number at the hub)."""

    places: tuple[str, ...]
    newest: int | None
    backup: int | None

    def __bool__(self) -> bool:
        return bool(self.places)

    @property
    def suggested(self) -> int | None:
        """The cursor to go on from: the newest result found delivered, or the backup's
        if it is newer (the outbox's files may have been taken away meanwhile)."""
        known = [n for n in (self.backup, self.newest) if n is not None]
        return max(known) if known else None


def _ids(paths: Iterable[Path]) -> list[int]:
    """The result ids in the names of ``paths`` (``ID-KIND.EXT``, ``ID.json``)."""
    found = []
    for path in paths:
        match = _RESULT_FILE.match(path.name)
        if match:
            found.append(int(match.group(1)))
    return found


def earlier_deliveries(config: SiteConfig) -> EarlierDeliveries:
    """Look for results delivered here before (no network): the cursor's backup, the
    per-study journal's ``result`` lines, result files in the outbox (``ID-KIND.EXT``,
    ``superseded/`` too), and the PACS queues, ``refused/`` and ``quarantine/``."""
    state = Path(config.state)
    places: list[str] = []
    ids: list[int] = []
    backup = _read_backup(state)
    if backup is not None or (state / CURSOR_BACKUP).exists():
        places.append(CURSOR_BACKUP)
    journal = [
        entry["id"]
        for entry in read_journal(state)
        if entry.get("e") == "result" and isinstance(entry.get("id"), int)
    ]
    if journal:
        places.append("the per-study journal")
        ids += journal
    outbox = Path(config.outbox)
    if outbox.is_dir():
        found = _ids(outbox.glob("*/[0-9]*")) + _ids(outbox.glob("*/superseded/[0-9]*"))
        if found:
            places.append(f"the outbox ({outbox})")
            ids += found
    for name, pattern in (
        ("the PACS queues", "pacs/*/[0-9]*.json"),
        ("the PACS queues", "pacs/*/failed/[0-9]*.json"),
        ("refused/", "refused/[0-9]*.json"),
        ("quarantine/", "quarantine/[0-9]*.json"),
    ):
        found = _ids(state.glob(pattern))
        if found:
            if name not in places:
                places.append(name)
            ids += found
    return EarlierDeliveries(tuple(places), max(ids) if ids else None, backup)


def _advice(config: SiteConfig, earlier: EarlierDeliveries) -> str:
    n = earlier.suggested
    if n is None:
        where = "N: the last result delivered here (see the outbox and the PACS)"
    elif n == earlier.newest:
        where = f"{n} is the newest result found delivered here"
    else:
        where = f"{CURSOR_BACKUP} holds {n}, the cursor saved before the last one"
    return (
        "no result is delivered until the cursor is set: stop the gateway, then run "
        f"'usreview site pull --config {config.path} --cursor {n if n is not None else 'N'}' "
        f"({where}); results after it are delivered, those up to it are not"
    )


def load_cursor(config: SiteConfig) -> int:
    """The cursor to follow the feed from (see the module's description).

    Raises
    ------
    ResultsCursorError
        The cursor is damaged, or missing while results were delivered here before.
    """
    state = Path(config.state)
    try:
        saved = read_saved_cursor(state)
    except ResultsCursorError as exc:
        earlier = earlier_deliveries(config)
        raise ResultsCursorError(
            f"{exc}: starting again at 0 would deliver every result again; "
            + _advice(config, earlier)
        ) from None
    if saved is not None:
        return saved
    earlier = earlier_deliveries(config)
    if earlier:
        raise ResultsCursorError(
            f"{state / CURSOR_FILE} is missing, but results were delivered here before "
            f"({', '.join(earlier.places)}): starting again at 0 would deliver every result "
            "again; " + _advice(config, earlier)
        )
    return 0

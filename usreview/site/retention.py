"""Results leave the site once every consumer has them: ``[results]`` of site.toml.

- ``keep_days = N`` (0, the default: for ever): :func:`prune_outbox` removes the outbox
  files :func:`~usreview.site.deliver.deliver_to_outbox` wrote (``OUTBOX/STUDY/ID-KIND.EXT``,
  and those in ``superseded/``) last modified more than N days ago, when nothing of their
  result is left in a PACS queue (pending, or set aside in ``failed/``): a result not yet
  delivered to every configured PACS stays, however old. Other files (the clinic's own,
  temporary ones) are never touched; a study folder it empties is removed. It runs in the
  process that delivers results (the gateway's upload process, when it starts and every
  :data:`PRUNE_SECONDS`; ``site pull``, after delivering), never beside a delivery.
- ``outbox = false`` (PACS only): nothing is written into the outbox. A DICOM result is
  kept only as the PACS queues' own copies (``STATE/pacs/NAME/ID.dcm``, 0600), each
  removed once its PACS took it; :func:`every_pacs_took` records the result as removed
  when the last one did. A result no PACS takes (a JSON or text summary) is not kept
  (:func:`not_kept`).

Each removal is logged and counted in the status file (``site status``: ``outbox``).
"""

from __future__ import annotations

import contextlib
import logging
import stat
import time
from pathlib import Path

from usreview.site.config import SiteConfig
from usreview.site.deliver import PacsQueue, outbox_result_id
from usreview.site.status import StatusBook
from usreview.site.supersede import SUPERSEDED

__all__ = ["PRUNE_SECONDS", "every_pacs_took", "not_kept", "prune_outbox"]

_log = logging.getLogger(__name__)
#: How often (seconds) the gateway's upload process removes the outbox files past
#: ``results.keep_days``.
PRUNE_SECONDS = 3600.0
_DAY = 86400.0


def prune_outbox(
    config: SiteConfig, queue: PacsQueue, status: StatusBook, *, now: float | None = None
) -> list[Path]:
    """Remove the outbox files older than ``results.keep_days`` whose result no PACS
    queue holds; return them (none when ``keep_days`` is 0).

    ``now`` is Unix time (default: the clock). A file that cannot be removed is recorded
    in the status as an error and left; the others go on.
    """
    days = config.outbox_keep_days
    outbox = config.outbox
    if days <= 0 or not outbox.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - days * _DAY
    held = queue.held_results()
    removed: list[Path] = []
    for study in _listing(outbox, status):
        if study.is_symlink() or not study.is_dir():
            continue
        for folder in (study / SUPERSEDED, study):
            gone = _prune_folder(folder, cutoff, held, status)
            if gone:
                removed += gone
                with contextlib.suppress(OSError):  # not empty: the clinic's files, others
                    folder.rmdir()
    if removed:
        why = f"older than {days:g} days, delivered to every PACS (results.keep_days)"
        for path in removed:
            _log.info("outbox: removed %s: %s", path, why)
        status.removed(str(removed[-1].relative_to(outbox)), why, count=len(removed))
    return removed


def _prune_folder(folder: Path, cutoff: float, held: set[int], status: StatusBook) -> list[Path]:
    """Remove the result files of ``folder`` modified before ``cutoff`` whose result id is
    not in ``held``; return them."""
    removed = []
    for path in _listing(folder, status):
        result = outbox_result_id(path.name)
        if result is None or result in held:
            continue
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:  # the clinic took it meanwhile
            continue
        except OSError as exc:
            status.error("outbox", f"cannot remove {path} (results.keep_days): {exc}")
            continue
        removed.append(path)
    return removed


def _listing(folder: Path, status: StatusBook) -> list[Path]:
    """What ``folder`` holds, sorted; nothing when it is gone or cannot be read (that is
    recorded in the status)."""
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        status.error("outbox", f"cannot list {folder} (results.keep_days): {exc}")
        return []


def every_pacs_took(result_id: int, queue: PacsQueue, status: StatusBook) -> bool:
    """After a PACS took result ``result_id`` (``results.outbox = false``): if no queue
    holds it any longer, it is gone from the site; record that. Returns whether it is."""
    if queue.holds(result_id):
        return False
    why = "every PACS took it (results.outbox = false)"
    _log.info("result %d removed: %s", result_id, why)
    status.removed(f"result {result_id}", why)
    return True


def not_kept(result_id: int, kind: str, status: StatusBook) -> None:
    """Record that result ``result_id``, which no PACS takes, is not kept
    (``results.outbox = false``)."""
    why = "not DICOM, no PACS takes it (results.outbox = false)"
    _log.info("result %d (%s) not kept: %s", result_id, kind, why)
    status.removed(f"result {result_id} ({kind})", why)

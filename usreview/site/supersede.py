"""Amendments in the outbox: a result that supersedes an earlier one.

When a reviewer amends a published report, the hub publishes the new SR and summary
naming the results they replace (the feed item's ``supersedes``). The site then:

- moves the earlier result's files from ``OUTBOX/STUDY/`` to ``OUTBOX/STUDY/superseded/``
  (same names), so nothing superseded is left looking current;
- states it in the new result's summary: a JSON object gets a ``supersedes`` member
  (``{"result": ID, "files": ["superseded/NAME", ...]}``), a text summary a first line
  ``Supersedes result ID: superseded/NAME`` and a blank line before the hub's text (no
  file of the earlier result in the outbox: never delivered here, or removed since by
  ``results.keep_days`` or the clinic, and the line says so).

Both are idempotent: delivering the same result again finds the earlier files already
moved and writes the same summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from usreview.envelope.atomic import fsync_directory

__all__ = ["SUPERSEDED", "annotate", "retire", "superseded_files"]

#: The subfolder of a study's outbox folder that holds superseded results.
SUPERSEDED = "superseded"
_NONE_HERE = "none of its files is in this outbox (not delivered here, or removed since)"


def _pattern(result_id: int) -> str:
    return f"{int(result_id):08d}-*"


def superseded_files(study_folder: Path, result_id: int) -> list[str]:
    """The outbox names of result ``result_id`` once superseded (``superseded/NAME``).

    Looks in the study's folder and in its ``superseded/`` subfolder; hidden (temporary)
    files are left out.
    """
    names = {p.name for p in study_folder.glob(_pattern(result_id)) if p.is_file()}
    names |= {p.name for p in (study_folder / SUPERSEDED).glob(_pattern(result_id))}
    return [f"{SUPERSEDED}/{name}" for name in sorted(names) if not name.startswith(".")]


def retire(study_folder: Path, result_id: int) -> list[Path]:
    """Move result ``result_id``'s files into ``superseded/``; return their new paths.

    Raises
    ------
    OSError
        A file could not be moved (those moved stay moved).
    """
    current = sorted(p for p in study_folder.glob(_pattern(result_id)) if p.is_file())
    if not current:
        return []
    aside = study_folder / SUPERSEDED
    aside.mkdir(mode=0o750, exist_ok=True)
    moved = []
    for path in current:
        target = aside / path.name
        os.replace(path, target)
        moved.append(target)
    fsync_directory(aside)
    fsync_directory(study_folder)
    return moved


def annotate(data: bytes, ext: str, result_id: int, files: list[str]) -> bytes:
    """``data`` (a summary) stating that it supersedes result ``result_id``.

    A JSON object gains ``supersedes`` (left alone if it has one); a text summary gains a
    first line. Other content (DICOM, a JSON list, binary) is returned unchanged.
    """
    if ext == "json":
        doc = json.loads(data)
        if not isinstance(doc, dict) or "supersedes" in doc:
            return data
        doc["supersedes"] = {"result": int(result_id), "files": files}
        return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    if ext == "txt":
        # No file: never delivered here, or removed since (results.keep_days, the clinic).
        where = ", ".join(files) if files else _NONE_HERE
        return f"Supersedes result {int(result_id)}: {where}\n\n".encode() + data
    return data

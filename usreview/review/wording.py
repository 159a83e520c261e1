"""How the dashboards word what they show: one time format, one line per exception.

Shared by the pages, the report form and the results panel, so a time or a failure reads
the same everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["one_line", "utc"]


def one_line(exc: BaseException, longest: int = 200) -> str:
    """``Type: message`` on one line, cut to ``longest`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= longest else text[: longest - 1] + "…"


def utc(moment: Any, *, zone: bool = True, short: bool = False) -> str:
    """A time as every page shows it: to the minute, in UTC, said, ``2024-03-14 14:05 UTC``.

    ``moment`` is ISO 8601 text as the service sends it (``...T14:05:09.123456Z``; without
    an offset it is UTC) or a datetime. The kernel cannot know the reviewer's time zone
    (the browser does), so the zone is always said: ``zone=False`` only where a column's
    heading says it (``2024-03-14 14:05``). ``short``: the time of day alone when it is
    today (``14:05 UTC``). A date alone, or text that is not a time, is shown as it came;
    ``None`` as "".
    """
    if moment is None:
        return ""
    if isinstance(moment, str):
        text = moment
        if len(text) <= 10:  # a date, or not a time
            return text
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return text
    if not isinstance(moment, datetime):
        return str(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    today = moment.date() == datetime.now(UTC).date()
    text = moment.strftime("%H:%M" if short and today else "%Y-%m-%d %H:%M")
    return f"{text} UTC" if zone else text

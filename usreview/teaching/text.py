"""The reviewer's words for trainees: without the patient's identifiers, without dates.

A report's findings and impression are kept with a teaching case; any identifier of
the source (name components, IDs, accession number, institution, physicians) and
anything that looks like a date is replaced by ``[removed]`` / ``[date]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["scrub_text"]

_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DATES = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+\d{{2,4}}\b", re.I),
    re.compile(rf"\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b", re.I),
)
_SPLIT = re.compile(r"[\^\s,=]+")


def scrub_text(text: str, identifiers: Iterable[str]) -> str:
    """``text`` with every identifier and date replaced.

    Parameters
    ----------
    text
        The reviewer's free text.
    identifiers
        Values of the source's identifying attributes; person names are split into
        their components (``DOE^JANE`` removes ``DOE`` and ``JANE``); parts shorter than
        two characters are ignored.
    """
    for pattern in _DATES:
        text = pattern.sub("[date]", text)
    parts = {part for value in identifiers for part in _SPLIT.split(str(value)) if len(part) > 1}
    for part in sorted(parts, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(part)}(?!\w)", "[removed]", text, flags=re.I)
    return text

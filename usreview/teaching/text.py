"""The reviewer's words for trainees: without the patient's identifiers, without dates.

A report's findings and impression are kept with a teaching case; any identifier of
the source (name components, IDs, accession number, institution, physicians) and
anything that looks like a date is replaced by ``[removed]`` / ``[date]``, as the HIPAA
Safe Harbor method asks of every element of a date but the year alone: full dates in
the usual orders, a day with its month (``14/03``, ``14 March``, ``march 14th``) and a
month with its year (``March 2024``, ``03/2024``). Identifiers a reviewer may type that
the header does not hold are removed too: a number after ``MRN``, ``accession``, ``NHS``
or ``SSN``, or after ``ID``, ``record``, ``chart`` or ``acc`` unless a unit follows it (a
reading: ``ID 3.2 mm``, ``record 140 bpm``); runs of seven or more digits; telephone
numbers and e-mail addresses. Clinical numbers stay: decimals (``3.5 cm``), ranges
(``10-12 weeks``), grades (``2/4``), readings, years. Privacy first: a word that could be
a date or an identifier goes (``march 3 lesions`` loses its number).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["scrub_text"]

_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
#: What a number after ID, record, chart or acc is when it is a reading: a unit follows.
_NOT_A_READING = (
    r"(?!\s*(?:(?:mm|cm|m|ml|l|s|ms|min|bpm|mmhg|hz|khz|mhz|db|g|kg|cm/s2?|m/s2?|mm/s)\b"
    r"|%|°|/))"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_ORDINAL = r"(?:st|nd|rd|th)?"
_DATES = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
    # A day and a month in words, with or without the year (in any case: a date typed
    # "march 14" goes too, and so does the odd "march 3 lesions": privacy first).
    re.compile(rf"\b\d{{1,2}}{_ORDINAL}\s+(?:of\s+)?(?:{_MONTHS})\b\.?(?:,?\s+\d{{4}}\b)?", re.I),
    re.compile(rf"\b(?:{_MONTHS})\.?\s+\d{{1,2}}{_ORDINAL}\b(?:,?\s+\d{{4}}\b)?", re.I),
    # A month and its year: "March 2024", "03/2024", "2024-03".
    re.compile(rf"\b(?:{_MONTHS})\.?,?\s+\d{{4}}\b", re.I),
    re.compile(rf"\b{_MONTH}/(?:19|20)\d{{2}}\b|\b(?:19|20)\d{{2}}-(?:0[1-9]|1[0-2])\b"),
    # A day and a month in figures, two digits on at least one side: "14/03", "03/14".
    re.compile(rf"(?<![\d/.])(?:\d\d/{_MONTH}|{_DAY}/\d\d)(?![\d/]|\.\d)"),
)
_IDENTIFIERS = (
    # A number after a label that only an identifier has: "MRN P-1234", "NHS 943 476 5919",
    # "accession A-77", "SSN 123-45-6789".
    re.compile(
        r"\b(?:MRN|MR\s?#|MR\s+no\.?|accession(?:\s+no\.?|\s+number)?|NHS(?:\s+number)?|SSN)"
        r"\s*(?:[:#=]|no\.?|number)?\s*(?=[\w-]*\d)\w[\w-]{2,}(?:\s\d{3,4}){0,2}(?![\w.-])",
        re.I,
    ),
    # After a label that clinical text uses too, unless it is a reading: "patient ID 6543",
    # "chart 55667", "ID: 12345" go; "ID 3.2 mm", "record 140 bpm", "Acc 250 cm/s2" stay.
    re.compile(
        r"\b(?:ID|IDs|acc\.?|record|chart)\s*(?:[:#=]|no\.?|number)?\s*"
        r"(?=[\w-]*\d)\w[\w-]{2,}(?:\s\d{3,4}){0,2}(?![\w.-])" + _NOT_A_READING,
        re.I,
    ),
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),  # e-mail
    re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s-]?)?\(?\d{3}\)?[\s-]\d{3}[\s-]\d{4}(?![\w.])"),  # phone
    re.compile(r"(?<![\w.])\d{7,}(?![\w.])"),  # seven digits or more
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
    for pattern in _IDENTIFIERS:
        text = pattern.sub("[removed]", text)
    parts = {part for value in identifiers for part in _SPLIT.split(str(value)) if len(part) > 1}
    for part in sorted(parts, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(part)}(?!\w)", "[removed]", text, flags=re.I)
    return text

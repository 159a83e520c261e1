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
numbers (eight digits or more in groups, with a leading ``+``, parentheses, a leading
``0`` or a last group of four digits: ``+44 20 7946 0958``, ``07700 900123``,
``555-123-4567``) and e-mail addresses. Months may be words or abbreviations, with
spaces, dashes, dots or nothing between the parts (``14-Mar-2024``, ``14MAR24``).
Clinical numbers stay: decimals (``3.5 cm``), ranges (``10-12 weeks``), grades (``2/4``),
readings (a list of values followed by its unit: ``PSV 120 150 180 cm/s``), years.
Privacy first: a word that could be a date or an identifier goes (``march 3 lesions``
loses its number).

The header's identifiers are matched as whole phrases (case-insensitive, any white
space between their words): an institution ``St Mary Hospital`` removes that phrase, not
every ``St``. Person names are split into their parts (``DOE^JANE`` removes ``Doe`` and
``Jane`` wherever they stand) but for particles and titles (``de``, ``van``, ``St``,
``Dr``...) in a name of several words; a family or given name of one word always goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["scrub_text"]

_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
#: A month in words, not the start of a longer word ("marked", "decreased").
_MONTH_WORD = rf"(?:{_MONTHS})(?![a-z])\.?"
#: A unit after a number: the number is a reading.
_UNIT = (
    r"(?:(?:mm|cm|m|ml|l|s|ms|min|bpm|mmhg|hz|khz|mhz|db|g|kg|cm/s2?|m/s2?|mm/s)\b"
    r"|%|°|/)"
)
#: What a number after ID, record, chart or acc is when it is a reading: a unit follows.
_NOT_A_READING = rf"(?!\s*{_UNIT})"
_READING_FOLLOWS = re.compile(rf"\s*{_UNIT}", re.I)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_ORDINAL = r"(?:st|nd|rd|th)?"
#: The year after a day and a month in words: "14 March 2024", "14-Mar-24", "14MAR2024".
_YEAR_AFTER = r"(?:,?\s+\d{4}|[-./]?\d{2}(?:\d{2})?)(?!\w)"
_DATES = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
    re.compile(rf"\b(?:19|20)\d{{2}}[\s./-]*{_MONTH_WORD}[\s./-]*\d{{1,2}}\b", re.I),
    # A day and a month in words, with or without the year (in any case: a date typed
    # "march 14" goes too, and so does the odd "march 3 lesions": privacy first).
    re.compile(rf"\b\d{{1,2}}{_ORDINAL}(?:\s+of\s+|[\s./-]*){_MONTH_WORD}(?:{_YEAR_AFTER})?", re.I),
    re.compile(rf"\b{_MONTH_WORD}[\s./-]*\d{{1,2}}{_ORDINAL}\b(?:{_YEAR_AFTER})?", re.I),
    # A month and its year: "March 2024", "Mar-24", "03/2024", "2024-03".
    re.compile(rf"\b{_MONTH_WORD}(?:,?\s+\d{{4}}|[-/']?\d{{2}}(?:\d{{2}})?)\b", re.I),
    re.compile(rf"\b{_MONTH}/(?:19|20)\d{{2}}\b|\b(?:19|20)\d{{2}}-(?:0[1-9]|1[0-2])\b"),
    # A day and a month in figures, two digits on at least one side: "14/03", "03/14".
    re.compile(rf"(?<![\d/.])(?:\d\d/{_MONTH}|{_DAY}/\d\d)(?![\d/]|\.\d)"),
)
#: Groups of digits that may be a telephone number (:func:`_phone` decides).
_PHONE = re.compile(
    r"(?<![\w.+/-])(?:\+ ?)?(?:\(\d{1,5}\) ?)?\d{1,8}(?:(?:[ .-]| ?\(\d{1,5}\) ?)\d{1,8})*"
    r"(?![\w+/]|[.-]\d)"
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
    re.compile(r"(?<![\w.])\d{7,}(?![\w.])"),  # seven digits or more
)
_YEAR = re.compile(r"(?:19|20)\d\d")
#: Where a person name's words part.
_SPLIT = re.compile(r"[\s,.-]+")
#: Words of a person name that are not the person's: particles, titles, and words of
#: clinical text; removed only as a family or given name of one word.
_NOT_A_NAME = frozenset(
    {
        *("a", "al", "ap", "ben", "bin", "bint", "da", "das", "de", "del", "della", "der"),
        *("des", "di", "do", "dos", "du", "e", "el", "la", "las", "le", "lo", "los", "ter"),
        *("ten", "van", "von", "y", "zu", "of", "the", "and", "st", "ste", "san", "saint"),
        *("mr", "mrs", "ms", "miss", "mx", "dr", "prof", "rev", "sir", "dame", "jr", "sr"),
        *("ii", "iii", "iv", "md", "phd", "rn", "us", "er", "ed", "icu", "ward", "unit"),
        *("clinic", "dept", "left", "right"),
    }
)


def scrub_text(text: str, identifiers: Iterable[str] = (), names: Iterable[str] = ()) -> str:
    """``text`` with every identifier and date replaced.

    Parameters
    ----------
    text
        The reviewer's free text.
    identifiers
        Values of the source's identifying attributes (institution, station, IDs),
        removed as whole phrases; a value holding ``^`` is a DICOM person name (as in
        ``names``). Values shorter than two characters are ignored.
    names
        Person names (DICOM PN values, the reviewers' names): each is removed as a
        phrase, and so is each of its words (``DOE^JANE`` removes ``DOE`` and ``JANE``)
        but for the particles and titles of a name of several words; words shorter than
        two characters are ignored.
    """
    values = [str(value) for value in identifiers]
    people = [str(name) for name in names] + [value for value in values if "^" in value]
    text = _remove(text, {value for value in values if "^" not in value})
    for pattern in _DATES:
        text = pattern.sub("[date]", text)
    for pattern in _IDENTIFIERS[:2]:
        text = pattern.sub("[removed]", text)
    text = _PHONE.sub(_phone, text)
    for pattern in _IDENTIFIERS[2:]:
        text = pattern.sub("[removed]", text)
    return _remove(text, {part for name in people for part in _name_parts(name)})


def _remove(text: str, phrases: Iterable[str]) -> str:
    """``text`` without ``phrases`` (whole words, any case, any white space inside)."""
    words = sorted(
        (phrase.split() for phrase in phrases if len(phrase.strip()) > 1),
        key=lambda w: len(" ".join(w)),
        reverse=True,
    )
    if not words:
        return text
    alternatives = "|".join(r"\s+".join(map(re.escape, w)) for w in words)
    return re.sub(rf"(?<!\w)(?:{alternatives})(?!\w)", "[removed]", text, flags=re.I)


def _name_parts(name: str) -> set[str]:
    """What to remove of a person name: each component, and each word of it but words
    that are not a name (:data:`_NOT_A_NAME`) unless one is a family or given name alone."""
    parts = set()
    for group in name.split("="):  # alphabetic, ideographic, phonetic
        for n, component in enumerate(group.split("^")):
            words = [word for word in _SPLIT.split(component) if len(word) > 1]
            alone = n < 2 and len(words) == 1
            if len(words) > 1:
                parts.add(component.strip())
            parts.update(w for w in words if alone or w.casefold() not in _NOT_A_NAME)
    return parts


def _phone(match: re.Match[str]) -> str:
    """``[removed]`` for a telephone number, else the digits as they were.

    Eight digits or more; with a leading ``+`` or parentheses, or else not a reading (a
    unit follows), not decimals, not years alone, and with a trunk prefix (``020``) or a
    last group of four digits or more (``555 123 4567``, not ``120 150 180``).
    """
    found = match.group()
    groups = re.findall(r"\d+", found)
    if sum(map(len, groups)) < 8:
        return found
    if found.startswith("+") or "(" in found:
        return "[removed]"
    separators = set(re.findall(r"\D+", found))
    if "." in found and (separators != {"."} or len(groups) < 3):
        return found  # decimals: "0.72 0.68 0.70"
    if all(_YEAR.fullmatch(group) for group in groups):
        return found  # "2019-2021"
    if _READING_FOLLOWS.match(match.string, match.end()):
        return found
    trunk = len(groups[0]) > 1 and groups[0].startswith("0")
    return "[removed]" if trunk or len(groups[-1]) >= 4 else found

"""Concepts, private coding schemes, character set and local time shared by what the hub writes.

The automatic SRs (:mod:`usreview.processing.sr`) and the reviewer's report
(:mod:`usreview.review.report`) are both TID 1500 Measurement Reports: they use the same
concepts for the procedure, the "Qualitative Evaluations" container (C0034375, UMLS), the
findings and the recommendations, declare the private schemes they use the same way, and
are written in UTF-8 (ISO_IR 192) whatever the source instance declares, so that any text
(a reviewer's "≥ 125 cm/s", a patient's name) survives. The derived images use the same
character set.

Every object the hub writes dates itself the same way (:func:`stamp_local_time`): its new
dates and times are local, in the source's Timezone Offset From UTC (0008,0201) when that is
valid (``&HHMM``, from -1200 to +1400), which the object then carries too; else in the hub's
zone, and no offset is written, since an offset applies to every date and time of the
object, the study's that it copies from the source too, whose zone is then unknown.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Final

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from usreview.processing.results import CodingScheme

__all__ = [
    "FINDING",
    "IMAGE_LIBRARY",
    "QUALITATIVE_EVALUATIONS",
    "RECOMMENDATION",
    "SPECIFIC_CHARACTER_SET",
    "ULTRASONOGRAPHY",
    "declare_private_schemes",
    "stamp_local_time",
]

#: Specific Character Set (0008,0005) of every object the hub writes: UTF-8.
SPECIFIC_CHARACTER_SET: Final = "ISO_IR 192"
#: Procedure reported (CID 100).
ULTRASONOGRAPHY: Final = CodedConcept("16310003", "SCT", "Ultrasonography")
#: TID 1500's container of qualitative evaluations (CODE and TEXT items only).
QUALITATIVE_EVALUATIONS: Final = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: TID 1600's container of the images the report refers to.
IMAGE_LIBRARY: Final = CodedConcept("111028", "DCM", "Image Library")
FINDING: Final = CodedConcept("121071", "DCM", "Finding")
RECOMMENDATION: Final = CodedConcept("121075", "DCM", "Recommendation")
#: A valid Timezone Offset From UTC: ``&HHMM`` (PS3.3 C.12.1.1.8), -1200 to +1400.
_OFFSET: Final = re.compile(r"([+-])(\d\d)([0-5]\d)")
_OFFSET_RANGE: Final = (-12 * 60, 14 * 60)  # minutes
# Private coding schemes: name and responsible organisation, as declared in (0008,0110).
_PRIVATE_SCHEMES: Final = {
    CodingScheme.USREVIEW.value: (
        "usreview concepts without a standard code",
        "usreview (automatic ultrasound processing)",
    ),
}


def declare_private_schemes(document: Dataset) -> None:
    """List the private coding schemes (``99...``) the content of ``document`` uses in (0008,0110).

    As the SOP Common module asks; nothing is added when the document uses none.
    """
    used = {
        str(element.value)
        for element in document.iterall()
        if element.keyword == "CodingSchemeDesignator" and str(element.value).startswith("99")
    }
    items = []
    for designator in sorted(used):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        name, organization = _PRIVATE_SCHEMES.get(designator, ("private coding scheme", ""))
        item.CodingSchemeName = name
        if organization:
            item.CodingSchemeResponsibleOrganization = organization
        items.append(item)
    if items:
        document.CodingSchemeIdentificationSequence = DicomSequence(items)


def _source_zone(source: Dataset) -> dt.tzinfo | None:
    """The zone of ``source``'s valid Timezone Offset From UTC, or ``None``."""
    found = _OFFSET.fullmatch(str(source.get("TimezoneOffsetFromUTC") or "").strip())
    if found is None:
        return None
    sign, hours, minutes = found.groups()
    offset = (1 if sign == "+" else -1) * (int(hours) * 60 + int(minutes))
    if not _OFFSET_RANGE[0] <= offset <= _OFFSET_RANGE[1]:
        return None
    return dt.timezone(dt.timedelta(minutes=offset))


def stamp_local_time(ds: Dataset, source: Dataset, prefixes: Iterable[str]) -> dt.datetime:
    """Set ``ds``'s dates and times of ``prefixes`` to now, in local time, with its offset.

    Each prefix names a date and time pair (``"Content"``: Content Date and Content Time).
    Now is in ``source``'s valid Timezone Offset From UTC, which ``ds`` then carries; else
    in the hub's zone, and ``ds`` carries no offset (see the module docstring).

    Returns
    -------
    datetime.datetime
        The moment written, with its offset (for DT values, which carry their own).
    """
    zone = _source_zone(source)
    now = dt.datetime.now(dt.UTC).astimezone(zone).replace(microsecond=0)
    for prefix in prefixes:
        setattr(ds, f"{prefix}Date", now.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", now.strftime("%H%M%S"))
    if zone is not None:
        ds.TimezoneOffsetFromUTC = now.strftime("%z")
    elif "TimezoneOffsetFromUTC" in ds:
        del ds.TimezoneOffsetFromUTC
    return now

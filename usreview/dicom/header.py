"""The descriptive header fields an instance carries, read tolerantly and checked.

Patient, study and equipment (:data:`HEADER_FIELDS`): the archive keeps them with the UIDs,
and the ingest's parsing worker reads them from untrusted files, so this module needs
nothing but the standard library and a pydicom dataset.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["HEADER_FIELDS", "header_fields", "header_problem", "is_uid"]

#: Header fields kept from each instance: name -> (DICOM keyword, most characters kept).
HEADER_FIELDS: Final[Mapping[str, tuple[str, int]]] = {
    "patient_name": ("PatientName", 200),
    "patient_id": ("PatientID", 64),
    "patient_birth_date": ("PatientBirthDate", 10),
    "patient_sex": ("PatientSex", 16),
    "study_description": ("StudyDescription", 64),
    "study_date": ("StudyDate", 10),
    "study_time": ("StudyTime", 15),
    "accession_number": ("AccessionNumber", 64),
    "referring_physician_name": ("ReferringPhysicianName", 200),
    "manufacturer": ("Manufacturer", 64),
    "model_name": ("ManufacturerModelName", 64),
}
_DATES = ("patient_birth_date", "study_date")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TIME = re.compile(r"([01][0-9]|2[0-3])(:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?)?")


def header_fields(dataset: Dataset) -> dict[str, str | None]:
    """The :data:`HEADER_FIELDS` of a header, tolerantly: ``None`` when absent or unusable.

    Text is stripped of control characters and cut to its length; dates (DA) become
    ``YYYY-MM-DD`` and the study time (TM) ``HH:MM[:SS[.ffffff]]``.
    """
    found: dict[str, str | None] = {}
    for name, (keyword, longest) in HEADER_FIELDS.items():
        try:
            with warnings.catch_warnings():  # pydicom's complaints about messy values
                warnings.simplefilter("ignore")
                raw = dataset.get(keyword)
                text = "" if raw is None else str(raw)
        except Exception:  # a malformed element: tolerated as absent
            text = ""
        text = _CONTROL.sub(" ", text).strip()
        if name in _DATES:
            found[name] = _iso_date(text)
        elif name == "study_time":
            found[name] = _iso_time(text)
        else:
            found[name] = text[:longest].strip() or None
    return found


def _iso_date(text: str) -> str | None:
    digits = text.replace("-", "").replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:])).isoformat()
    except ValueError:
        return None


def _iso_time(text: str) -> str | None:
    digits = text.replace(":", "")
    whole, _, fraction = digits.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    parts = ":".join(whole[i : i + 2] for i in range(0, len(whole), 2))
    if fraction and len(whole) == 6:
        parts += "." + fraction[:6]
    return parts if _TIME.fullmatch(parts) else None


def header_problem(name: str, value: str | None) -> str | None:
    """What is wrong with ``value`` as the header field ``name`` (``None``: it is valid).

    Valid: absent, or non-empty text within the field's length without control
    characters; dates ``YYYY-MM-DD``, the study time ``HH:MM[:SS[.ffffff]]``.
    """
    if value is None:
        return None
    longest = HEADER_FIELDS[name][1]
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        return f"{name} must be non-empty text of at most {longest} characters"
    if _CONTROL.search(value):
        return f"{name} must not hold control characters"
    if name in _DATES and _iso_date(value) != value:
        return f"{name} must be a date YYYY-MM-DD (got {value!r})"
    if name == "study_time" and not _TIME.fullmatch(value):
        return f"{name} must be a time HH:MM[:SS[.ffffff]] (got {value!r})"
    return None


def is_uid(value: object) -> bool:
    """Whether ``value`` is a DICOM UID: digits in dot-separated parts, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None

"""The patient's age at the study, as the instance's header gives it, for rules on adults.

Patient's Age (0010,1010) first: an Age String ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``
(read tolerantly: fewer digits, spaces and lower case pass). Else Patient's Birth Date
(0010,0030) with the Study Date (0008,0020): the completed years between them. Anything
else (absent, unreadable, a birth after the study) is no answer (``None``): the rules then
say that the age is unknown. An adult is :data:`ADULT_YEARS` or older, the usual age of
majority; the published criteria that hold "in adults" give no age of their own.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Final

from usreview.dicom.header import header_fields

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["ADULT_YEARS", "Age", "age_of"]

#: From this age (in completed years) a patient counts as an adult.
ADULT_YEARS: Final = 18
_AGE_STRING = re.compile(r"(\d{1,3})\s*([DWMY])")
_UNITS: Final = {"D": ("day", 1 / 365.25), "W": ("week", 7 / 365.25), "M": ("month", 1 / 12)}


@dataclass(frozen=True)
class Age:
    """An age at the study: in years, in words, and where it was read."""

    years: float
    words: str
    source: str

    @property
    def adult(self) -> bool:
        """Whether the patient is :data:`ADULT_YEARS` or older."""
        return self.years >= ADULT_YEARS

    def __str__(self) -> str:
        return f"{self.words} ({self.source})"


def _text(ds: Dataset, keyword: str) -> str:
    try:
        with warnings.catch_warnings():  # pydicom's complaints about messy values
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:  # a malformed element: tolerated as absent
        return ""
    return "" if value is None else str(value).strip()


def _from_age_string(text: str) -> Age | None:
    found = _AGE_STRING.fullmatch(text.upper())
    if found is None:
        return None
    number, unit = int(found.group(1)), found.group(2)
    name, years = _UNITS.get(unit, ("year", 1.0))
    words = f"{number} {name}{'' if number == 1 else 's'} old"
    return Age(number * years, words, f"Patient's Age {text!r}")


def _from_dates(birth: str | None, study: str | None) -> Age | None:
    if birth is None or study is None:
        return None
    born, seen = date.fromisoformat(birth), date.fromisoformat(study)
    if born > seen:
        return None
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    words = f"{years} year{'' if years == 1 else 's'} old"
    return Age(float(years), words, "Patient's Birth Date and Study Date")


def age_of(ds: Dataset) -> Age | None:
    """The patient's age at the study that ``ds`` records, or ``None`` when it records none."""
    age = _from_age_string(_text(ds, "PatientAge"))
    if age is not None:
        return age
    fields = header_fields(ds)
    return _from_dates(fields["patient_birth_date"], fields["study_date"])

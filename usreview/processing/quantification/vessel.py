"""Which vessel (and side) a spectral Doppler image was sampled in, as the image says it.

Coded first: the Anatomic Region Sequence (0008,2218) and Primary Anatomic Structure
Sequence (0008,2228) items with a SNOMED CT code (``SCT``, or the legacy SNOMED RT
``SRT`` codes) of a known vessel (:data:`VESSELS`); the side from their modifier
sequences (SNOMED CT left 7771000 / right 24028007), else Image Laterality (0020,0062),
else the series' Laterality (0020,0060). Without a code, a conservative text fallback
reads the Series Description and Image Comments: one vessel named by its usual
abbreviation or name (``ICA``, ``internal carotid``...), the side by ``LT``/``LEFT``/``RT``/
``RIGHT`` (or ``L``/``R`` just before the vessel). Two different vessels or sides in the
same place is no answer (``None``): a wrong vessel would apply a wrong rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from usreview.processing.results import Code, CodingScheme

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["SIDES", "VESSELS", "Vessel", "vessel_of"]

SCT = CodingScheme.SNOMED
#: Known vessels: short name -> SNOMED CT code.
VESSELS: dict[str, Code] = {
    "cca": Code("32062004", SCT, "Common carotid artery"),
    "ica": Code("86117002", SCT, "Internal carotid artery"),
    "eca": Code("22286001", SCT, "External carotid artery"),
    "vertebral": Code("85234005", SCT, "Vertebral artery"),
    "renal": Code("2841007", SCT, "Renal artery"),
}
#: Sides: name -> SNOMED CT code (TID 300 finding site laterality, CID 244).
SIDES: dict[str, Code] = {
    "left": Code("7771000", SCT, "Left"),
    "right": Code("24028007", SCT, "Right"),
}
_BY_CODE = {("SCT", code.value): name for name, code in VESSELS.items()} | {
    ("SRT", "T-45100"): "cca",
    ("SRT", "T-45300"): "ica",
    ("SRT", "T-45200"): "eca",
    ("SRT", "T-45700"): "vertebral",
    ("SRT", "T-46600"): "renal",
}
_SIDE_BY_CODE = {("SCT", "7771000"): "left", ("SCT", "24028007"): "right"} | {
    ("SRT", "G-A101"): "left",
    ("SRT", "G-A100"): "right",
}
_SIDE_BY_VALUE = {"L": "left", "R": "right"}
_TEXT_VESSELS = {
    "cca": r"CCA|COMMON\s+CAROTID",
    "ica": r"ICA|INTERNAL\s+CAROTID",
    "eca": r"ECA|EXTERNAL\s+CAROTID",
    "vertebral": r"VERT|VERTEBRAL(?:\s+ARTERY)?",
}
_TEXT_SIDES = {"left": r"LT|LEFT", "right": r"RT|RIGHT"}
_TEXT_FIELDS = ("SeriesDescription", "ImageComments")


@dataclass(frozen=True)
class Vessel:
    """A vessel sampled: its short name and code, the side if known, where it was read."""

    name: str
    code: Code
    side: str | None
    source: str

    @property
    def label(self) -> str:
        """In words, e.g. ``left internal carotid artery``."""
        meaning = self.code.meaning.lower()
        return f"{self.side} {meaning}" if self.side else meaning

    def finding_site(self) -> dict[str, Any]:
        """``{"location": code, "laterality": code}`` for a quantity's ``details``."""
        site: dict[str, Any] = {"location": self.code.as_dict()}
        if self.side is not None:
            site["laterality"] = SIDES[self.side].as_dict()
        return site

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {"name": self.name, "side": self.side, "label": self.label, "source": self.source}


def _codes(items: Iterable[Dataset]) -> Iterable[tuple[str, str]]:
    for item in items:
        value, scheme = item.get("CodeValue"), item.get("CodingSchemeDesignator")
        if value is not None and scheme is not None:
            yield str(scheme).strip().upper(), str(value).strip()


def _one(found: set[str]) -> str | None:
    return next(iter(found)) if len(found) == 1 else None


def _coded(ds: Dataset) -> tuple[str | None, set[str]]:
    """The coded vessel (``None``: none or several) and the sides of its modifiers."""
    regions = list(ds.get("AnatomicRegionSequence") or [])
    items = regions + list(ds.get("PrimaryAnatomicStructureSequence") or [])
    for region in regions:
        items += list(region.get("PrimaryAnatomicStructureSequence") or [])
    vessels = {_BY_CODE[c] for c in _codes(items) if c in _BY_CODE}
    modifiers = [
        modifier
        for item in items
        for keyword in (
            "AnatomicRegionModifierSequence",
            "PrimaryAnatomicStructureModifierSequence",
        )
        for modifier in item.get(keyword) or []
    ]
    sides = {_SIDE_BY_CODE[c] for c in _codes(modifiers) if c in _SIDE_BY_CODE}
    return _one(vessels), sides


def _from_text(ds: Dataset) -> tuple[str | None, set[str], str | None]:
    """The vessel named in free text, the sides named, and the field it was read from."""
    for keyword in _TEXT_FIELDS:
        text = str(ds.get(keyword) or "").upper()
        if not text.strip():
            continue
        vessels = {
            name
            for name, pattern in _TEXT_VESSELS.items()
            if re.search(rf"(?<![A-Z0-9])(?:{pattern})(?![A-Z0-9])", text)
        }
        if len(vessels) != 1:
            continue
        [vessel] = vessels
        sides = {
            side
            for side, pattern in _TEXT_SIDES.items()
            if re.search(rf"(?<![A-Z0-9])(?:{pattern})(?![A-Z0-9])", text)
        }
        before = re.search(
            rf"(?<![A-Z0-9])([LR])[\s.]+(?:{_TEXT_VESSELS[vessel]})(?![A-Z0-9])", text
        )
        if before:
            sides.add(_SIDE_BY_VALUE[before.group(1)])
        return vessel, sides, keyword
    return None, set(), None


def vessel_of(ds: Dataset) -> Vessel | None:
    """The vessel ``ds`` names (coded first, then a conservative text reading), or ``None``."""
    vessel, sides = _coded(ds)
    source = "AnatomicRegionSequence (coded)"
    if vessel is None:
        vessel, sides, field = _from_text(ds)
        source = f"{field} (text)"
    if vessel is None:
        return None
    if not sides:
        for keyword in ("ImageLaterality", "Laterality"):
            value = str(ds.get(keyword) or "").strip().upper()
            if value in _SIDE_BY_VALUE:
                sides = {_SIDE_BY_VALUE[value]}
                break
    return Vessel(vessel, VESSELS[vessel], _one(sides), source)

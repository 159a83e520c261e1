"""De-identified copies of ultrasound instances (DICOM PS3.15 Annex E, Basic Profile).

:func:`deidentify` keeps only the attributes a viewer needs and that identify nobody
(:data:`KEPT`: the image pixel, cine and ultrasound region modules, the SOP class,
modality, image type, laterality, manufacturer and model), which is stricter than Table
E.1-1's list of what to remove: every other attribute, private ones and every sequence but
the Sequence of Ultrasound Regions and the coded anatomy are dropped, including nested
ones. Then:

- the coded anatomy (:data:`ANATOMY`: Anatomic Region Sequence, Primary Anatomic
  Structure Sequence and their modifiers, which name the vessel and side the hub's rules
  read) keeps its code items only: Code Value, Coding Scheme Designator and Version, and
  Code Meaning when it is plain words (no date, identifier or name of the source); an
  item without one of these is dropped;
- a palette colour image keeps its lookup tables (plain or segmented) and stays
  PALETTE COLOR; any other copy has no palette lookup table attributes;

- the type 2 identity attributes are present but empty (patient's name and ID become
  the case's label), dates and times are gone (Longitudinal Temporal Information
  Modified ``REMOVED``), the birth date among them;
- Patient's Age (0010,1010) is kept, as PS3.15's Retain Patient Characteristics Option
  allows, so that the rules for adults grade a copy as they grade its source
  (:mod:`usreview.processing.recommendations.patient` reads it): the source's Patient's
  Age, else the completed years between its birth date and study date (read before both
  are dropped); aggregated as HIPAA Safe Harbor asks for ages over 89: any age of 90
  years or more is :data:`AGGREGATED_AGE` (``090Y``). A source that records no age gives
  a copy without one;
- every UID that is not a well-known DICOM UID is replaced through a :class:`UidMap`,
  so the copies of one case keep their references to each other and nothing else;
- the pixels outside every ultrasound region are set to 0
  (:func:`usreview.teaching.pixels.blank_outside_regions`): an instance without
  regions is refused; colour comes out as RGB, uncompressed;
- Patient Identity Removed (0012,0062) is ``YES``, De-identification Method (0012,0063)
  says what was done, including that text inside the regions was not checked, and
  De-identification Method Code Sequence (0012,0064) holds (113100, DCM, "Basic
  Application Confidentiality Profile"), and (113108, DCM, "Retain Patient
  Characteristics Option") when the copy keeps an age.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Final

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from usreview.dicom import UltrasoundInstance
from usreview.processing.recommendations.patient import age_of
from usreview.teaching.errors import DeidentificationError
from usreview.teaching.pixels import blank_outside_regions
from usreview.teaching.text import scrub_text

__all__ = ["AGGREGATED_AGE", "ANATOMY", "KEPT", "METHOD", "UidMap", "case_name", "deidentify"]

#: Attributes copied from the source (besides the ultrasound group, (0018,6000-60FF), and
#: the coded anatomy, :data:`ANATOMY`).
KEPT: Final = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Modality",
        "ImageType",
        "PatientOrientation",
        "Manufacturer",
        "ManufacturerModelName",
        "InstanceNumber",
        "SeriesNumber",
        "Laterality",
        "ImageLaterality",
        "BodyPartExamined",
        "UltrasoundColorDataPresent",
        "SamplesPerPixel",
        "Rows",
        "Columns",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "NumberOfFrames",
        "FrameIncrementPointer",
        "FrameTime",
        "FrameTimeVector",
        "CineRate",
        "RecommendedDisplayFrameRate",
        "ActualFrameDuration",
        "PreferredPlaybackSequencing",
        "StartTrim",
        "StopTrim",
        "HeartRate",
        "RedPaletteColorLookupTableDescriptor",
        "GreenPaletteColorLookupTableDescriptor",
        "BluePaletteColorLookupTableDescriptor",
        "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
        "SegmentedRedPaletteColorLookupTableData",
        "SegmentedGreenPaletteColorLookupTableData",
        "SegmentedBluePaletteColorLookupTableData",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    }
)
#: Coded anatomy kept as code items: each sequence and the sequences its items keep.
ANATOMY: Final = {
    "AnatomicRegionSequence": (
        "AnatomicRegionModifierSequence",
        "PrimaryAnatomicStructureSequence",
    ),
    "PrimaryAnatomicStructureSequence": ("PrimaryAnatomicStructureModifierSequence",),
    "AnatomicRegionModifierSequence": (),
    "PrimaryAnatomicStructureModifierSequence": (),
}
#: What De-identification Method (0012,0063) says (each value at most 64 characters).
METHOD: Final = (
    "DICOM PS3.15 Basic Profile, keep-list of attributes",
    "pixels outside the ultrasound regions set to 0",
    "text inside the ultrasound regions not checked",
    "Patient's Age kept, 090Y for 90 years or more",
)
#: Patient's Age of a copy whose patient is 90 or older (HIPAA Safe Harbor: over 89).
AGGREGATED_AGE: Final = "090Y"
_AGGREGATED_YEARS: Final = 90
#: An Age String as written: three digits and the unit (days, weeks, months, years).
_AGE_STRING = re.compile(r"\d{3}[DWMY]")
_RETAIN_CHARACTERISTICS: Final = ("113108", "Retain Patient Characteristics Option")
_ULTRASOUND_GROUP = 0x0018
_ULTRASOUND_ELEMENTS = range(0x6000, 0x6100)
_CODE: Final = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion")
#: A plain code meaning: words, with a few digits and marks (``Renal artery``).
_PLAIN_MEANING = re.compile(r"[A-Za-z][A-Za-z0-9 ,()'/+.-]{0,63}")
#: The source's identifying values a code meaning must not hold (besides person names).
_IDENTIFYING: Final = ("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName")
_PALETTE: Final = tuple(
    f"{prefix}{colour}PaletteColorLookupTable{suffix}"
    for colour in ("Red", "Green", "Blue")
    for prefix, suffix in (("", "Descriptor"), ("", "Data"), ("Segmented", "Data"))
)
_EMPTY: Final = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


class UidMap:
    """New UIDs for old ones, the same new UID each time within one case (thread-unsafe)."""

    def __init__(self, make: Callable[[], str] = generate_uid) -> None:
        self._make = make
        self._known: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        """The replacement of ``uid`` (a well-known DICOM UID is kept)."""
        if UID(uid).name != uid:  # registered in the standard
            return uid
        if uid not in self._known:
            self._known[uid] = str(self._make())
        return self._known[uid]

    def __len__(self) -> int:
        return len(self._known)


def case_name(case_uid: str) -> str:
    """A case's short name, its copies' Patient's Name and ID: ``TEACHING-`` and the last 8
    characters of its UID."""
    return f"TEACHING-{case_uid[-8:]}"


def deidentify(instance: UltrasoundInstance, uids: UidMap, *, label: str) -> Dataset:
    """The de-identified copy of ``instance`` (see the module docstring), ready to save.

    Parameters
    ----------
    instance
        The source, read with :func:`usreview.dicom.read` (its pixels are decoded).
    uids
        The case's UID map (one per case).
    label
        Patient's Name and Patient ID of the copy (the case's label, e.g. ``TEACHING-7``).

    Raises
    ------
    DeidentificationError
        The instance has no ultrasound region inside its image.
    InputError
        Its pixels cannot be decoded (a subclass, from :mod:`usreview.dicom`).
    """
    if not instance.regions:
        raise DeidentificationError(
            "no Sequence of Ultrasound Regions: the pixels cannot be cleaned, so the "
            "instance is not copied"
        )
    frames = blank_outside_regions(instance.pixels.frames(), instance.regions)
    copy = _kept(instance.dataset, uids, _identifiers(instance.dataset))
    copy.SpecificCharacterSet = "ISO_IR 192"
    copy.PatientName = label.replace("-", "^")
    copy.PatientID = label
    for keyword in _EMPTY:
        setattr(copy, keyword, "")
    if "PatientOrientation" not in copy:
        copy.PatientOrientation = ""
    age = _kept_age(instance.dataset)
    if age is not None:
        copy.PatientAge = age
    copy.PatientIdentityRemoved = "YES"
    copy.DeidentificationMethod = list(METHOD)
    methods = [("113100", "Basic Application Confidentiality Profile")]
    if age is not None:
        methods.append(_RETAIN_CHARACTERISTICS)
    copy.DeidentificationMethodCodeSequence = Sequence([_dcm_code(*m) for m in methods])
    copy.LongitudinalTemporalInformationModified = "REMOVED"
    palette = instance.photometric_interpretation == "PALETTE COLOR"
    _set_pixels(copy, frames, "NumberOfFrames" in instance.dataset, palette=palette)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = copy.SOPClassUID
    meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy.file_meta = meta
    return copy


def _kept_age(source: Dataset) -> str | None:
    """The Patient's Age of ``source``'s copy (see the module docstring), or ``None``."""
    age = age_of(source)
    if age is None:
        return None
    if age.years >= _AGGREGATED_YEARS:
        return AGGREGATED_AGE
    if age.source.startswith("Patient's Age"):  # read from it: kept in its own unit
        recorded = str(source.PatientAge).strip().upper()
        if _AGE_STRING.fullmatch(recorded):
            return recorded
    return f"{math.floor(age.years + 1e-9):03d}Y"  # from the dates, or a loosely written age


def _dcm_code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


def _identifiers(source: Dataset) -> list[str]:
    """The source's person names and identifying values (what a code meaning must not hold)."""
    found: list[str] = []
    for element in source:
        if element.VR == "PN" or element.keyword in _IDENTIFYING:
            found += [str(v) for v in (element.value if element.VM > 1 else [element.value])]
    return [value for value in found if value]


def _coded(items: Iterable[Dataset], nested: tuple[str, ...], names: list[str]) -> Sequence:
    """``items`` reduced to their code (see :data:`ANATOMY`); an item not plainly coded goes."""
    kept = []
    for item in items:
        meaning = str(item.get("CodeMeaning") or "").strip()
        plain = _PLAIN_MEANING.fullmatch(meaning) and scrub_text(meaning, names) == meaning
        if not plain or not all(str(item.get(k) or "").strip() for k in _CODE[:2]):
            continue
        out = Dataset()
        for keyword in _CODE:
            if keyword in item:
                setattr(out, keyword, str(item.get(keyword) or "").strip())
        out.CodeMeaning = meaning
        for keyword in nested:
            inner = _coded(item.get(keyword) or (), ANATOMY[keyword], names)
            if inner:
                setattr(out, keyword, inner)
        kept.append(out)
    return Sequence(kept)


def _kept(source: Dataset, uids: UidMap, names: list[str]) -> Dataset:
    out = Dataset()
    for element in source:
        tag = element.tag
        ultrasound = tag.group == _ULTRASOUND_GROUP and tag.element in _ULTRASOUND_ELEMENTS
        if tag.is_private:
            continue
        if element.keyword in ANATOMY and element.VR == "SQ":
            coded = _coded(element.value, ANATOMY[element.keyword], names)
            if coded:
                out.add(DataElement(tag, "SQ", coded))
            continue
        if not (ultrasound or element.keyword in KEPT):
            continue
        if element.VR == "SQ":
            items = Sequence([_kept(item, uids, names) for item in element.value])
            out.add(DataElement(tag, "SQ", items))
        elif element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            mapped = [uids(str(v)) for v in values]
            out.add(DataElement(tag, "UI", mapped if element.VM > 1 else mapped[0]))
        elif element.VR in ("PN", "DA", "DT", "TM", "UN"):
            continue  # never in the keep-list; a misfiled one is dropped all the same
        else:
            out.add(DataElement(tag, element.VR, element.value))
    return out


def _set_pixels(copy: Dataset, frames: np.ndarray, multi_frame: bool, *, palette: bool) -> None:
    """Set the pixel module of ``copy``: RGB colour, the source's palette colour when it
    and its lookup tables are all there, else MONOCHROME2 (without palette attributes)."""
    data = frames if multi_frame or frames.shape[0] != 1 else frames[0]
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    bits = data.dtype.itemsize * 8
    copy.BitsAllocated = bits
    if int(copy.get("BitsStored", bits)) > bits:
        copy.BitsStored, copy.HighBit = bits, bits - 1
    if frames.ndim == 4:
        copy.SamplesPerPixel = 3
        copy.PhotometricInterpretation = "RGB"
        copy.PlanarConfiguration = 0
    palette = palette and frames.ndim == 3 and _has_palette(copy)
    if not palette:
        for keyword in _PALETTE:
            if keyword in copy:
                delattr(copy, keyword)
    if frames.ndim != 4:
        copy.PhotometricInterpretation = "PALETTE COLOR" if palette else "MONOCHROME2"
    raw = data.tobytes()
    if len(raw) % 2:
        raw += b"\0"
    copy.add(DataElement(0x7FE00010, "OB" if bits == 8 else "OW", raw))


def _has_palette(ds: Dataset) -> bool:
    """Whether ``ds`` has a descriptor and a table (plain or segmented) for each colour."""
    return all(
        f"{colour}PaletteColorLookupTableDescriptor" in ds
        and (
            f"{colour}PaletteColorLookupTableData" in ds
            or f"Segmented{colour}PaletteColorLookupTableData" in ds
        )
        for colour in ("Red", "Green", "Blue")
    )

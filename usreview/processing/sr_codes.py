"""Concepts, private coding schemes and character set shared by the SRs the hub writes.

The automatic SRs (:mod:`usreview.processing.sr`) and the reviewer's report
(:mod:`usreview.review.report`) are both TID 1500 Measurement Reports: they use the same
concepts for the procedure, the "Qualitative Evaluations" container (C0034375, UMLS), the
findings and the recommendations, declare the private schemes they use the same way, and
are written in UTF-8 (ISO_IR 192) whatever the source instance declares, so that any text
(a reviewer's "≥ 125 cm/s", a patient's name) survives. The derived images use the same
character set.
"""

from __future__ import annotations

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

"""Teaching cases: de-identified copies of published studies for trainees.

A reviewer marks a published study as a teaching case; the hub copies its instances
through :func:`deidentify` (DICOM PS3.15 Basic Profile as a keep-list, new UIDs mapped
consistently within the case, pixels outside the ultrasound regions blanked, instances
without regions refused) and keeps the report's findings and impression cleaned by
:func:`scrub_text`. The cases are recorded in the archive
(:mod:`usreview.store.teaching`) and served to trainees by the hub.

Errors: :class:`DeidentificationError` (an :class:`usreview.errors.InputError`).
"""

from __future__ import annotations

from usreview.teaching.deidentify import KEPT, METHOD, UidMap, case_name, deidentify
from usreview.teaching.errors import DeidentificationError
from usreview.teaching.pixels import blank_outside_regions, region_mask
from usreview.teaching.text import scrub_text

__all__ = [
    "KEPT",
    "METHOD",
    "DeidentificationError",
    "UidMap",
    "blank_outside_regions",
    "case_name",
    "deidentify",
    "region_mask",
    "scrub_text",
]

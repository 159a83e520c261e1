"""The ultrasound DICOM model: read instances, their frames, regions, kinds and studies.

>>> from usreview.dicom import read
>>> instance = read("study/IM0001.dcm")                        # doctest: +SKIP
>>> instance.kinds, instance.number_of_frames                   # doctest: +SKIP
((<ImageKind.BMODE: 'bmode'>,), 1)
>>> distance(instance.regions, (120, 200), (180, 260))          # doctest: +SKIP
(2.226..., <PhysicalUnits.CM: 3>)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes
from usreview.dicom.enum import (
    ImageKind,
    PhysicalUnits,
    RegionDataType,
    RegionFlags,
    RegionSpatialFormat,
    ScrollingType,
)

if TYPE_CHECKING:
    from usreview.dicom.pixels import DEFAULT_MAX_DECODED_BYTES
    from usreview.dicom.reader import (
        ULTRASOUND_SOP_CLASSES,
        UltrasoundInstance,
        iter_dicom_paths,
        read,
    )
    from usreview.dicom.regions import (
        UltrasoundRegion,
        distance,
        read_regions,
        region_for_points,
    )
    from usreview.dicom.study import Series, Study, group_studies
    from usreview.dicom.timing import FrameTiming

# Imported when first used: the hub's service and its parsing workers import a module or
# two of this package (the enums, the header checks) at start and need pydicom and numpy
# only when they read an instance.
_MODULES = {
    "DEFAULT_MAX_DECODED_BYTES": "pixels",
    "ULTRASOUND_SOP_CLASSES": "reader",
    "UltrasoundInstance": "reader",
    "iter_dicom_paths": "reader",
    "read": "reader",
    "UltrasoundRegion": "regions",
    "distance": "regions",
    "read_regions": "regions",
    "region_for_points": "regions",
    "Series": "study",
    "Study": "study",
    "group_studies": "study",
    "FrameTiming": "timing",
}

__getattr__ = lazy_attributes(__name__, _MODULES)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "ULTRASOUND_SOP_CLASSES",
    "FrameTiming",
    "ImageKind",
    "PhysicalUnits",
    "RegionDataType",
    "RegionFlags",
    "RegionSpatialFormat",
    "ScrollingType",
    "Series",
    "Study",
    "UltrasoundInstance",
    "UltrasoundRegion",
    "distance",
    "group_studies",
    "iter_dicom_paths",
    "read",
    "read_regions",
    "region_for_points",
]

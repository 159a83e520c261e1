"""The ultrasound DICOM model: read instances, their frames, regions, kinds and studies.

>>> from usreview.dicom import read
>>> instance = read("study/IM0001.dcm")                        # doctest: +SKIP
>>> instance.kinds, instance.number_of_frames                   # doctest: +SKIP
((<ImageKind.BMODE: 'bmode'>,), 1)
>>> distance(instance.regions, (120, 200), (180, 260))          # doctest: +SKIP
(2.226..., <PhysicalUnits.CM: 3>)
"""

from __future__ import annotations

from usreview.dicom.enum import (
    ImageKind,
    PhysicalUnits,
    RegionDataType,
    RegionFlags,
    RegionSpatialFormat,
    ScrollingType,
)
from usreview.dicom.pixels import DEFAULT_MAX_DECODED_BYTES
from usreview.dicom.reader import ULTRASOUND_SOP_CLASSES, UltrasoundInstance, iter_dicom_paths, read
from usreview.dicom.regions import UltrasoundRegion, distance, read_regions, region_for_points
from usreview.dicom.study import Series, Study, group_studies
from usreview.dicom.timing import FrameTiming

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

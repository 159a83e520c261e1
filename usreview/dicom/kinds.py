"""Which kinds of image an ultrasound instance holds, and which attribute decides each.

=================  ==========================================================================
kind               decided by
=================  ==========================================================================
``volume``         SOP Class is Enhanced US Volume Storage
``cine``           Number of Frames > 1 (and not a volume)
``bmode``          a region with Region Spatial Format 2D and Region Data Type tissue;
                   else Image Type value 4 bit 0001 (2D imaging)
``mmode``          a region with Region Spatial Format M-mode; else Image Type bit 0002 or 0020
``pw_doppler``     a region with Region Data Type PW spectral Doppler; else Image Type bit 0008
``cw_doppler``     a region with Region Data Type CW spectral Doppler; else Image Type bit 0004
``color_flow``     a region with Region Data Type color flow; else Image Type bit 0010 or 0020;
                   else Ultrasound Color Data Present = 1
``power_doppler``  Image Type bit 0100 (color power mode); a color-flow region then counts as power
``duplex``         a spectral Doppler kind together with ``bmode`` or ``color_flow``
``harmonic``       "HARMONIC" or "THI" in Image Type, Processing Function or Series Description
``ecg``            a region with Region Data Type ECG trace
=================  ==========================================================================

Image Type value 4 is the ultrasound modality bit map of PS3.3 C.8.5.6.1.1, written in hex.
An instance with neither regions nor a bit map is taken as ``bmode``, plus ``color_flow`` when
Ultrasound Color Data Present is 1 (a warning says so): that attribute alone is not trusted
when regions exist, since palette B-mode images set it for coloured annotations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from usreview.dicom.enum import ImageKind, RegionDataType, RegionSpatialFormat
from usreview.dicom.regions import UltrasoundRegion

__all__ = ["ENHANCED_US_VOLUME", "classify"]

ENHANCED_US_VOLUME = "1.2.840.10008.5.1.4.1.1.6.2"

_BITMAP = {
    0x0001: (ImageKind.BMODE,),
    0x0002: (ImageKind.MMODE,),
    0x0004: (ImageKind.CW_DOPPLER,),
    0x0008: (ImageKind.PW_DOPPLER,),
    0x0010: (ImageKind.COLOR_FLOW,),
    0x0020: (ImageKind.MMODE, ImageKind.COLOR_FLOW),
    0x0100: (ImageKind.POWER_DOPPLER,),
}
_REGION_DATA = {
    RegionDataType.PW_SPECTRAL_DOPPLER: ImageKind.PW_DOPPLER,
    RegionDataType.CW_SPECTRAL_DOPPLER: ImageKind.CW_DOPPLER,
    RegionDataType.COLOR_FLOW: ImageKind.COLOR_FLOW,
    RegionDataType.ECG_TRACE: ImageKind.ECG,
}
_HARMONIC = re.compile(r"\b(HARMONIC|THI)\b", re.IGNORECASE)
_ORDER = list(ImageKind)


def image_type_bitmap(dataset: Any) -> int | None:
    """Image Type value 4 as an integer bit map, or ``None`` when absent or not hex."""
    image_type = dataset.get("ImageType")
    values = list(image_type) if image_type is not None and not isinstance(image_type, str) else []
    if len(values) < 4:
        return None
    try:
        return int(str(values[3]).strip(), 16)
    except ValueError:
        return None


def classify(
    dataset: Any,
    regions: Sequence[UltrasoundRegion],
    number_of_frames: int,
    warnings: list[str] | None = None,
) -> tuple[ImageKind, ...]:
    """The kinds of one instance, in :class:`ImageKind` order (see the module table)."""
    kinds: set[ImageKind] = set()
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class == ENHANCED_US_VOLUME:
        kinds.add(ImageKind.VOLUME)
    elif number_of_frames > 1:
        kinds.add(ImageKind.CINE)

    for region in regions:
        if region.spatial_format == RegionSpatialFormat.M_MODE:
            kinds.add(ImageKind.MMODE)
        elif (
            region.spatial_format == RegionSpatialFormat.TWO_D
            and region.data_type == RegionDataType.TISSUE
        ):
            kinds.add(ImageKind.BMODE)
        if region.data_type in _REGION_DATA:
            kinds.add(_REGION_DATA[region.data_type])

    bitmap = image_type_bitmap(dataset)
    if bitmap is not None:
        for bit, implied in _BITMAP.items():
            if bitmap & bit:
                kinds.update(implied)
    if ImageKind.POWER_DOPPLER in kinds:
        kinds.discard(ImageKind.COLOR_FLOW)
    image_kinds = kinds - {ImageKind.CINE, ImageKind.ECG, ImageKind.VOLUME}
    if not image_kinds and ImageKind.VOLUME not in kinds:
        kinds.add(ImageKind.BMODE)
        if int(dataset.get("UltrasoundColorDataPresent", 0) or 0) == 1:
            kinds.add(ImageKind.COLOR_FLOW)
        if warnings is not None:
            warnings.append(
                "no ultrasound regions or Image Type bit map: image kind assumed from the "
                "photometric data (B-mode, plus color flow if Ultrasound Color Data Present)"
            )
    spectral = kinds & {ImageKind.PW_DOPPLER, ImageKind.CW_DOPPLER}
    if spectral and kinds & {ImageKind.BMODE, ImageKind.COLOR_FLOW, ImageKind.POWER_DOPPLER}:
        kinds.add(ImageKind.DUPLEX)

    texts = [*(dataset.get("ImageType") or [])]
    texts += [dataset.get("ProcessingFunction") or "", dataset.get("SeriesDescription") or ""]
    if any(_HARMONIC.search(str(text)) for text in texts):
        kinds.add(ImageKind.HARMONIC)
    return tuple(sorted(kinds, key=_ORDER.index))

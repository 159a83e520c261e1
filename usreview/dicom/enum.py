"""Coded values of the ultrasound model, named after their DICOM attributes (PS3.3 C.8.5.5)."""

from __future__ import annotations

from enum import IntEnum, IntFlag, StrEnum


class RegionSpatialFormat(IntEnum):
    """Region Spatial Format (0018,6012): the spatial organisation of a region."""

    NONE = 0
    TWO_D = 1
    M_MODE = 2
    SPECTRAL = 3
    WAVEFORM = 4
    GRAPHICS = 5


class RegionDataType(IntEnum):
    """Region Data Type (0018,6014): what the pixels of a region show."""

    NONE = 0x00
    TISSUE = 0x01
    COLOR_FLOW = 0x02
    PW_SPECTRAL_DOPPLER = 0x03
    CW_SPECTRAL_DOPPLER = 0x04
    DOPPLER_MEAN_TRACE = 0x05
    DOPPLER_MODE_TRACE = 0x06
    DOPPLER_MAX_TRACE = 0x07
    VOLUME_TRACE = 0x08
    ECG_TRACE = 0x0A
    PULSE_TRACE = 0x0B
    PHONOCARDIOGRAM_TRACE = 0x0C
    GRAY_BAR = 0x0D
    COLOR_BAR = 0x0E
    INTEGRATED_BACKSCATTER = 0x0F
    AREA_TRACE = 0x10
    D_AREA_DT = 0x11
    OTHER_PHYSIOLOGICAL = 0x12


class PhysicalUnits(IntEnum):
    """Physical Units X/Y Direction (0018,6024)/(0018,6026)."""

    NONE = 0x0
    PERCENT = 0x1
    DB = 0x2
    CM = 0x3
    SECONDS = 0x4
    HERTZ = 0x5
    DB_PER_SECOND = 0x6
    CM_PER_SECOND = 0x7
    CM2 = 0x8
    CM2_PER_SECOND = 0x9
    CM3 = 0xA
    CM3_PER_SECOND = 0xB
    DEGREES = 0xC

    @property
    def ucum(self) -> str:
        """The UCUM code of the unit (``"1"`` for none)."""
        return _UCUM[self]


_UCUM = {
    PhysicalUnits.NONE: "1",
    PhysicalUnits.PERCENT: "%",
    PhysicalUnits.DB: "dB",
    PhysicalUnits.CM: "cm",
    PhysicalUnits.SECONDS: "s",
    PhysicalUnits.HERTZ: "Hz",
    PhysicalUnits.DB_PER_SECOND: "dB/s",
    PhysicalUnits.CM_PER_SECOND: "cm/s",
    PhysicalUnits.CM2: "cm2",
    PhysicalUnits.CM2_PER_SECOND: "cm2/s",
    PhysicalUnits.CM3: "cm3",
    PhysicalUnits.CM3_PER_SECOND: "cm3/s",
    PhysicalUnits.DEGREES: "deg",
}


class RegionFlags(IntFlag):
    """Region Flags (0018,6016). Bits 3-4 are the scrolling type, see :class:`ScrollingType`."""

    LOW_PRIORITY = 0x1
    SCALING_PROTECTED = 0x2
    FREQUENCY_SCALE = 0x4
    SCROLLING_BIT0 = 0x8
    SCROLLING_BIT1 = 0x10


class ScrollingType(IntEnum):
    """Bits 3-4 of Region Flags: how a time-based region is updated on screen."""

    UNSPECIFIED = 0
    SCROLLING = 1
    SWEEPING = 2
    SWEEPING_THEN_SCROLLING = 3


class ImageKind(StrEnum):
    """What an ultrasound instance shows; an instance may have several kinds at once."""

    BMODE = "bmode"
    MMODE = "mmode"
    PW_DOPPLER = "pw_doppler"
    CW_DOPPLER = "cw_doppler"
    COLOR_FLOW = "color_flow"
    POWER_DOPPLER = "power_doppler"
    DUPLEX = "duplex"
    HARMONIC = "harmonic"
    ECG = "ecg"
    VOLUME = "volume"
    CINE = "cine"

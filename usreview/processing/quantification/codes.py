"""Codes and units of the Doppler quantities, shared by the processor, rules and reports.

LOINC codes (DICOM CID 12120, 12121, 12220) and UCUM units, by quantity name: what the
``doppler_indices`` processor reports (:mod:`.doppler`), what the study rules read and
what a reviewer's report codes. Data only: reading it loads no processor.
"""

from __future__ import annotations

from usreview.processing.results import Code, CodingScheme

__all__ = ["CODES"]

_LN = CodingScheme.LOINC

#: LOINC codes (DICOM CID 12120, 12121, 12220) and UCUM units, by quantity name.
CODES: dict[str, tuple[Code, str]] = {
    "peak_systolic_velocity": (Code("11726-7", _LN, "Peak Systolic Velocity"), "cm/s"),
    "end_diastolic_velocity": (Code("11653-3", _LN, "End Diastolic Velocity"), "cm/s"),
    "resistive_index": (Code("12023-8", _LN, "Resistivity Index"), "1"),
    "pulsatility_index": (Code("12008-9", _LN, "Pulsatility Index"), "1"),
    "time_averaged_peak_velocity": (Code("11692-1", _LN, "Time averaged peak velocity"), "cm/s"),
    "velocity_time_integral": (Code("20354-7", _LN, "Velocity Time Integral"), "cm"),
    "peak_velocity": (Code("20355-4", _LN, "Peak Blood Velocity"), "cm/s"),
    "heart_rate": (Code("8867-4", _LN, "Heart rate"), "/min"),
}

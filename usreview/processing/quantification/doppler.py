"""Processor ``doppler_indices``: PSV, EDV, RI, PI, VTI and heart rate from a spectral display.

PW reports ``peak_systolic_velocity``, ``end_diastolic_velocity``, ``resistive_index``,
``pulsatility_index``, ``time_averaged_peak_velocity``, ``velocity_time_integral`` and
``heart_rate``; CW reports ``peak_velocity``, ``velocity_time_integral`` and ``heart_rate``.
Each is the mean over the complete cycles in view, with the cycle count, and, when the image
names the vessel sampled (:mod:`.vessel`: coded, else a conservative text reading), that
vessel and side as the quantity's finding site (``details["finding_site"]``, in the SR a TID
300 Finding Site with its laterality) plus a ``vessel`` finding saying where it was read.
A spectrum without
a usable signal gets a finding that says so instead of numbers; a region that cannot be
measured (:func:`.spectral.region_problem`, a baseline outside it hiding the slowest
flow, or an aliased or clipped spectrum: :func:`.spectral.aliasing_problem`) is skipped
with the reason. The traced envelope is
returned as an overlay image: the whole displayed frame, in RGB, with the envelope drawn into
the spectral region, so that it leaves the hub as a derived Ultrasound Image of the source with
the source's regions (derivation: 113076, DCM, "Segmentation"). Method and assumptions:
:mod:`.spectral`, :mod:`.cycles`.

Parameters: ``dynamic_range_db`` (assumed display range, 50), ``average_ms`` (power averaged
over about this many milliseconds of columns before tracing, at least one column: 18, three
columns at a 3.5 s sweep of 600 columns; a width fixed in columns flattened the systolic
peak on slow sweeps, PI -7.8% at 12 s) and ``edge_refinement`` (``"cw"``: CW
envelopes are moved from the MGM knee to the area midpoint of the spectral edge, since on
a flat, filled-in CW spectrum the knee sits about 1.3 broadening SDs inside the edge, while
on a PW spectrum concentrated near its maximum the plain knee is the better estimate).
Edge-refined envelopes are traced against the mean noise (:func:`.spectral.noise_floor`,
version 1.5): against the pixel median over ln 2, 29% above the mean once three columns
are averaged, CW peak velocity read 2.7% low at 5 dB (worst 5.3%) and VTI 3.2% low.
PW envelopes traced without edge refinement are corrected for window broadening
(:func:`.spectral.deconvolve_knee`, version 1.4): at low speeds the knee sat above the edge.
PW envelopes are signed (version 1.6): where diastolic flow reverses
(:func:`.spectral.reversed_flow`) the other side is traced and counts negative, so EDV
may be negative, RI = (PSV - EDV) / PSV above 1 and PI = (PSV - EDV) / TAMV uses the
signed mean. Before, EDV was clamped at 0: -12 cm/s under a PSV of 80 read RI 1.00 (1.15).

Version 1.7 (:mod:`.cycles`): heart rates are searched from 12 to 320/min, a period at
the edge of that range is refused (finding ``no_cycles``) and a sub-harmonic pick is
checked at half the lag; 1.6 searched 30 to 200/min and read 200/min as 111 with the VTI
doubled (12.2 cm as 22.1), 220/min as 55. Upstrokes need the trace to have fallen below a
quarter of its range first: a strip opening just after a systolic peak read a first cycle
at its late-systolic hump (89.9 instead of 72/min). A sweeping display (Region Flags) is
measured only on the longer side of its write point (finding ``sweep``), and refused when
that cannot be found; 1.6 measured across it (73.2/min read 31.9, VTI 33.4 cm read 76.5).
Version 1.8: the overlay series has a Series Number of its own
(:func:`usreview.processing.filters.derived.derived_series_number`); 1.7 shared one with
every other derived series of its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind, RegionDataType, UltrasoundInstance, UltrasoundRegion
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.cycles import (
    EJECTION_FRACTION,
    Cycle,
    Cycles,
    continuous_columns,
    detect_cycles,
)
from usreview.processing.quantification.spectral import (
    FlowSide,
    SpectralCalibration,
    aliasing_problem,
    calibrate,
    deconvolve_knee,
    flow_side,
    grey_to_power,
    mgm_envelope,
    reversed_flow,
    spectral_region,
    window_broadening,
)
from usreview.processing.quantification.vessel import Vessel, vessel_of
from usreview.processing.registry import Context, processor
from usreview.processing.results import (
    Code,
    CodingScheme,
    DerivedImage,
    Finding,
    Output,
    Quantity,
)

__all__ = [
    "CODES",
    "ENVELOPE_DERIVATION",
    "Trace",
    "doppler_indices",
    "envelope_trace",
    "overlay",
    "trace",
]

Float = npt.NDArray[np.float64]
LN = CodingScheme.LOINC

#: CID 7203 Image Derivation of the overlay: the envelope is the signal's segmented edge.
ENVELOPE_DERIVATION = Code("113076", CodingScheme.DCM, "Segmentation")
MIN_SIGNAL_FRACTION = 0.3  # of columns, for a PW spectrum (CW is silent in diastole)
#: With the baseline outside the region, the slowest velocity used (PW end diastole, CW
#: ejection threshold) must exceed the hidden speeds by this factor: on the simulator the
#: accepted traces kept EDV within 1 cm/s and RI within 0.015; with less room than 10%
#: the MGM knee rides up on the truncated spectrum (EDV +2 to +4 cm/s).
HIDDEN_MARGIN = 1.2


def _quantity(name: str, values: Sequence[float], digits: int = 4) -> Quantity:
    code, unit = CODES[name]
    arr = np.asarray(values, dtype=np.float64)
    details: dict[str, Any] = {"per_cycle": [round(float(v), digits) for v in arr]}
    if len(arr) > 1:
        details["sd"] = round(float(arr.std(ddof=1)), digits)
    return Quantity(name, code, round(float(arr.mean()), digits), unit, len(arr), details)


def _indices(cycles: Sequence[Cycle], pw: bool) -> list[Quantity]:
    periods = [c.period_s for c in cycles]
    heart_rate = Quantity(
        "heart_rate",
        CODES["heart_rate"][0],
        round(60.0 / float(np.mean(periods)), 2),
        "/min",
        len(cycles),
        {"per_cycle": [round(60.0 / p, 2) for p in periods]},
    )
    if not pw:
        return [
            _quantity("peak_velocity", [c.peak for c in cycles]),
            _quantity("velocity_time_integral", [c.ejection_integral for c in cycles]),
            heart_rate,
        ]
    vti = [c.mean * c.period_s for c in cycles]
    psv = [c.peak for c in cycles]
    edv = [c.end_diastolic for c in cycles]
    return [
        _quantity("peak_systolic_velocity", psv),
        _quantity("end_diastolic_velocity", edv),
        _quantity("resistive_index", [(c.peak - c.end_diastolic) / c.peak for c in cycles]),
        _quantity("pulsatility_index", [(c.peak - c.end_diastolic) / c.mean for c in cycles]),
        _quantity("time_averaged_peak_velocity", [c.mean for c in cycles]),
        _quantity("velocity_time_integral", vti),
        heart_rate,
    ]


def overlay(
    grey: npt.NDArray[np.uint8],
    calibration: SpectralCalibration,
    side: FlowSide,
    envelope: Float,
    cycles: Sequence[Cycle],
) -> npt.NDArray[np.uint8]:
    """The spectral region in RGB with the envelope (yellow) and cycle feet (cyan) drawn in."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rows, cols = grey.shape
    signed = side.sign * envelope
    r = np.rint(calibration.baseline_row + signed / calibration.velocity_per_row)
    for c in range(cols):
        if np.isfinite(r[c]):
            y = int(np.clip(r[c], 0, rows - 1))
            rgb[max(y - 1, 0) : y + 1, c] = (255, 220, 0)
    dt = calibration.seconds_per_column
    for cycle in cycles:
        for t in (cycle.start_s, cycle.end_s):
            c = round(t / dt)
            if 0 <= c < cols:
                rgb[::4, c] = (0, 220, 255)
    return rgb


@dataclass(frozen=True)
class Trace:
    """A traced maximum-velocity envelope and what it was traced on."""

    grey: npt.NDArray[np.uint8]
    """The spectral region's grey levels."""
    shown: npt.NDArray[np.uint8]
    """The whole displayed frame."""
    region: UltrasoundRegion
    calibration: SpectralCalibration
    side: FlowSide
    envelope: Float
    """Velocity (cm/s) per column along ``side.sign``: negative where PW flow reversed
    (:func:`.spectral.reversed_flow`); NaN where there is no signal."""
    pw: bool


def trace(
    instance: UltrasoundInstance,
    *,
    dynamic_range_db: float = 50.0,
    average_ms: float = 18.0,
    edge_refinement: str = "cw",
) -> Trace:
    """Trace the maximum-velocity envelope of ``instance``'s spectral region (MGM).

    Power is averaged over the odd number of columns (at least one) nearest to spanning
    ``average_ms``, rounded down.

    Raises
    ------
    CalibrationError
        No spectral region with a velocity and time calibration.
    ValueError
        ``edge_refinement`` is not none, cw or all, or ``average_ms`` is not in [0, 1000].
    """
    if not 0.0 <= average_ms <= 1000.0:
        raise ValueError(f"parameter 'average_ms' {average_ms}: use 0 to 1000 ms")
    region = spectral_region(instance)
    cal = calibrate(region)
    shown = instance.display_frame(0)
    display = shown
    if display.ndim == 3:  # colour spectral displays: their luminance
        display = np.rint(display @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    x0, y0, x1, y1 = region.bounds
    grey = display[y0 : y1 + 1, x0 : x1 + 1]
    power = grey_to_power(grey, dynamic_range_db)
    # fewer speckle fluctuations: an odd number of columns spanning about average_ms
    average = max(1, round(average_ms / 1000.0 / cal.seconds_per_column))
    average -= 1 - average % 2
    if average > 1:
        power = ndimage.uniform_filter1d(power, average, axis=1, mode="nearest")
    side = flow_side(power, cal)
    pw = region.data_type == RegionDataType.PW_SPECTRAL_DOPPLER
    if edge_refinement not in ("none", "cw", "all"):
        raise ValueError(f"parameter 'edge_refinement' {edge_refinement!r}: use none, cw or all")
    edge = edge_refinement == "all" or (edge_refinement == "cw" and not pw)
    envelope = mgm_envelope(side, edge=edge)
    if not pw:
        return Trace(grey, shown, region, cal, side, envelope, pw)
    backward = reversed_flow(side, envelope, cal.seconds_per_column, edge=edge)
    if not edge:
        sigma_w = window_broadening(side, envelope)
        envelope = deconvolve_knee(envelope, sigma_w)
        backward = deconvolve_knee(backward, sigma_w)
    signed: Float = np.where(np.isfinite(backward), -backward, envelope)
    return Trace(grey, shown, region, cal, side, signed, pw)


def envelope_trace(instance: UltrasoundInstance) -> Float:
    """The automatic envelope as rows of (time s, signed velocity cm/s), default parameters.

    Time is the region's physical time axis; columns without signal are NaN. For viewers
    that overlay the trace.
    """
    traced = trace(instance)
    region = traced.region
    columns = region.min_x0 + np.arange(traced.envelope.size, dtype=np.float64)
    seconds, _ = region.to_physical(columns, np.zeros_like(columns))
    return np.column_stack([seconds, traced.side.sign * traced.envelope])


@processor(
    "doppler_indices",
    kinds={ImageKind.PW_DOPPLER, ImageKind.CW_DOPPLER},
    version="1.8",
    params={"dynamic_range_db": 50.0, "average_ms": 18.0, "edge_refinement": "cw"},
    requires=("scipy",),
)
def doppler_indices(context: Context) -> Output:
    """Spectral Doppler indices from the maximum-velocity envelope (MGM), over complete cycles."""
    instance = context.instance
    traced = trace(
        instance,
        dynamic_range_db=float(context.params["dynamic_range_db"]),
        average_ms=float(context.params["average_ms"]),
        edge_refinement=str(context.params["edge_refinement"]),
    )
    cal, side, envelope, pw = traced.calibration, traced.side, traced.envelope, traced.pw
    aliased = aliasing_problem(side, envelope, cal)
    if aliased is not None:
        raise NotApplicable(aliased)
    grey, shown = traced.grey, traced.shown
    x0, y0, x1, y1 = traced.region.bounds
    dt = cal.seconds_per_column
    # a sweeping display: only the longer side of its write point (time runs on there)
    span = continuous_columns(grey, traced.region.scrolling)
    measured = envelope[span.start : span.stop]
    with_signal = float(np.mean(np.isfinite(measured))) if measured.size else 0.0
    vessel = vessel_of(instance.dataset)
    if span.problem is None:
        found = detect_cycles(measured, dt)
    else:
        found = Cycles([], np.full(measured.shape, np.nan), None, span.problem)
    offset = span.start * dt  # cycle times from the region's first column
    cycles = [replace(c, start_s=c.start_s + offset, end_s=c.end_s + offset) for c in found.cycles]
    _check_hidden_band(side, cycles, pw)
    mode = "PW" if pw else "CW"
    smooth = np.full(envelope.shape, np.nan)
    smooth[span.start : span.stop] = np.where(np.isfinite(measured), found.smooth, np.nan)
    canvas = np.array(shown if shown.ndim == 3 else np.repeat(shown[..., None], 3, axis=2))
    canvas[y0 : y1 + 1, x0 : x1 + 1] = overlay(grey, cal, side, smooth, cycles)
    image = DerivedImage(
        "doppler_envelope",
        canvas,
        f"{mode} traced maximum-velocity envelope (MGM, yellow) and cycle boundaries (cyan)",
        derivation=ENVELOPE_DERIVATION,
        source_frame=1 if instance.number_of_frames > 1 else None,
    )
    evidence: dict[str, Any] = {
        "columns_with_signal": round(with_signal, 3),
        "signal_to_noise_ratio": round(side.signal_ratio, 3),
        "complete_cycles": len(cycles),
        "seconds": round(cal.columns * dt, 3),
    }
    if span.note is not None:
        evidence.update(sweep=span.note, columns=[span.start, span.stop])
    problem = found.problem
    if problem is None and not cycles and span.note is not None:
        problem = f"no complete cycle lies on the longer side of its write point ({span.note})"
    if problem is not None and not (pw and with_signal < MIN_SIGNAL_FRACTION):
        text = f"No {mode} Doppler cycle is measured: {problem}; no velocities are reported."
        refused = Finding("no_cycles", text, evidence)
        return Output(findings=(refused, *_vessel_findings(vessel)), images=(image,))
    if (pw and with_signal < MIN_SIGNAL_FRACTION) or not cycles:
        why = (
            "too few columns hold a Doppler signal"
            if with_signal < MIN_SIGNAL_FRACTION
            else ("no complete cardiac cycle was found")
        )
        text = f"No usable {mode} Doppler signal: {why}; no velocities are reported."
        unusable = Finding("no_usable_signal", text, evidence)
        return Output(findings=(unusable, *_vessel_findings(vessel)), images=(image,))
    direction = (
        "toward the probe (above the baseline)"
        if side.sign > 0
        else ("away from the probe (below the baseline)")
    )
    finding = Finding(
        "flow_direction",
        # True whether or not the values are reported (the range check may withhold them).
        f"{mode} flow {direction}; {len(cycles)} complete cycle(s) traced.",
        {
            **evidence,
            "flow_sign": side.sign,
            "assumed_dynamic_range_db": context.params["dynamic_range_db"],
        },
    )
    quantities = _indices(cycles, pw)
    if vessel is not None:
        site = vessel.finding_site()
        quantities = [replace(q, details={**q.details, "finding_site": site}) for q in quantities]
    described = span.describe(dt)
    swept = () if described is None else (Finding("sweep", described, evidence),)
    return Output(
        quantities=tuple(quantities),
        images=(image,),
        findings=(finding, *swept, *_vessel_findings(vessel)),
    )


def _check_hidden_band(side: FlowSide, cycles: Sequence[Cycle], pw: bool) -> None:
    """Raise :class:`NotApplicable` when slow flow may hide between baseline and region.

    Only a baseline outside the region hides speeds (``side.offset_rows`` rows of them).
    """
    hidden = side.offset_rows * side.cm_s_per_row
    if hidden <= 0 or not cycles:
        return
    slowest = min(c.end_diastolic if pw else EJECTION_FRACTION * c.peak for c in cycles)
    if slowest < HIDDEN_MARGIN * hidden:
        raise NotApplicable(
            f"the baseline lies {side.offset_rows:.1f} rows outside the spectral region, "
            f"hiding speeds under {hidden:.1f} cm/s, too close to the slowest velocity "
            f"measured ({slowest:.1f} cm/s) to trace it"
        )


def _vessel_findings(vessel: Vessel | None) -> tuple[Finding, ...]:
    if vessel is None:
        return ()
    text = f"Spectrum labelled as sampled in the {vessel.label} (read from {vessel.source})."
    return (Finding("vessel", text, vessel.as_dict()),)

"""Kinds ``pw`` and ``cw``: spectral Doppler displays as scanners export them.

PW: a small B-mode image of a vessel with the sample-volume gate on top, the
spectrogram of a carotid- or renal-like waveform below. CW: a spectrogram of an
aortic-valve-like ejection waveform only. Physics in :mod:`usreview.simulate.doppler`.

A PW image may name the vessel sampled and its side as scanners do (``vessel``, ``side``):
the Anatomic Region Sequence (SNOMED CT code, with the side as its Anatomic Region
Modifier), Image Laterality, and the usual free text (``LT ICA``) in the
Series Description and Image Comments. PW instances simulated with the same seed and
``study`` label belong to one study (one patient), so that a study can hold, say, the
left CCA and ICA spectra.

A negative ``edv_cm_s`` reverses diastolic flow: the waveform ``EDV + (PSV - EDV) f``
(:mod:`usreview.simulate.doppler`) then dips below zero around end diastole, for as long
as ``f < -EDV / (PSV - EDV)`` (at PSV 80 cm/s: the last 15% of the cycle for -12 cm/s,
half of it for -25), and its spectrum lies on the other side of the baseline. The truth
stays analytic and signed: EDV is the (negative) velocity at the cycle boundary, RI =
(PSV - EDV) / PSV, PI = (PSV - EDV) / TAMV with TAMV = EDV + (PSV - EDV) mean(f).

With ``write_point`` above 0 a PW strip is a frozen sweeping display
(:mod:`usreview.simulate.sweep`): Region Flags say so, the newest time lies left of the
write point, ``erase_columns`` blank columns follow it, the oldest time lies right of them.
The indices of the truth are then means over the cycles complete on either side (none
crosses the write point; without one, only ``cycle_count`` 0), ``column_times_s`` and
``envelope_cm_s`` follow the display (null where erased), and ``sweep`` adds the write
point, the erase bar and, per stretch of continuous time, its columns, times and indices.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from usreview.dicom.enum import PhysicalUnits, RegionDataType, RegionSpatialFormat
from usreview.errors import SimulationError
from usreview.simulate import doppler, sweep
from usreview.simulate.bmode import (
    US_IMAGE_STORAGE,
    Inclusion,
    render,
    tissue_region,
    us_image_attributes,
)
from usreview.simulate.params import choice, param
from usreview.simulate.speckle import SOUND_SPEED_CM_S
from usreview.simulate.writer import (
    Context,
    Instance,
    Region,
    new_dataset,
    regions_sequence,
    set_pixels,
)

__all__ = ["CwParams", "PwParams", "build_cw", "build_pw"]

_BASELINE_FRACTION = 0.8  # baseline this far from the edge opposite to the flow
_HEADROOM = 1.15  # displayed range above the highest peak velocity
#: Displayed range beyond the fastest reversed flow: its spectral edge (broadened by the
#: window, SD about 2 cm/s) must stay clear of the far edge, where it would read as aliasing.
_REVERSED_HEADROOM = 1.5
#: Vessels a PW image may name: SNOMED CT code, meaning, the scanners' abbreviation.
VESSELS: dict[str, tuple[str, str, str]] = {
    "cca": ("32062004", "Common carotid artery", "CCA"),
    "ica": ("86117002", "Internal carotid artery", "ICA"),
    "eca": ("22286001", "External carotid artery", "ECA"),
    "vertebral": ("85234005", "Vertebral artery", "VERT"),
    "renal": ("2841007", "Renal artery", "RENAL A"),
}
#: Sides: SNOMED CT code and meaning, the laterality value, the scanners' prefix.
SIDES: dict[str, tuple[str, str, str, str]] = {
    "left": ("7771000", "Left", "L", "LT"),
    "right": ("24028007", "Right", "R", "RT"),
}
_STUDY_LABEL = re.compile(r"[A-Za-z0-9_-]{0,32}")


@dataclass(frozen=True)
class PwParams:
    """Parameters of kind ``pw``."""

    rows: int = param(480, 240, 1024, "image rows")
    columns: int = param(640, 320, 1280, "image columns")
    waveform: str = choice("carotid", ("carotid", "renal"), "velocity waveform shape")
    psv_cm_s: float = param(80.0, 5.0, 600.0, "mean peak systolic velocity (cm/s)")
    edv_cm_s: float = param(
        25.0, -100.0, 300.0, "end-diastolic velocity (cm/s); negative: diastolic flow reversed"
    )
    heart_rate_bpm: float = param(72.0, 30.0, 300.0, "mean heart rate (beats/min)")
    hr_variability: float = param(0.03, 0.0, 0.2, "beat-to-beat SD of the period (fraction)")
    psv_variability: float = param(0.03, 0.0, 0.2, "beat-to-beat SD of the PSV (fraction)")
    angle_deg: float = param(60.0, 0.0, 80.0, "Doppler correction angle (degrees)")
    frequency_mhz: float = param(5.0, 1.0, 15.0, "transmit frequency (MHz)")
    prf_hz: float = param(0.0, 0.0, 50000.0, "pulse repetition frequency (Hz); 0 chooses one")
    sweep_s: float = param(3.5, 1.0, 12.0, "time across the spectral display (s)")
    dynamic_range_db: float = param(50.0, 20.0, 90.0, "display dynamic range (dB)")
    flow: str = choice("toward", ("toward", "away"), "toward: above the baseline")
    sample_volume: float = param(0.5, 0.05, 10.0, "sample-volume width / vessel radius")
    broadening: float = param(0.1, 0.0, 0.5, "intrinsic broadening, FWHM / velocity")
    window_ms: float = param(10.0, 2.0, 50.0, "spectral analysis window (ms)")
    wall_filter_cm_s: float = param(3.0, 0.0, 50.0, "wall (high-pass) filter cut-off (cm/s)")
    vessel: str = choice("none", ("none", *VESSELS), "vessel sampled, written in the image")
    side: str = choice("none", ("none", *SIDES), "side of the vessel")
    study: str = param(
        "", help="study label: same seed and label, same study (0-32 of A-Z a-z 0-9 _ -)"
    )
    write_point: float = param(
        0.0, 0.0, 0.95, "sweeping display: write point as a share of the width (0: scrolling)"
    )
    erase_columns: int = param(8, 0, 64, "sweeping display: blank columns after the write point")


@dataclass(frozen=True)
class CwParams:
    """Parameters of kind ``cw``."""

    rows: int = param(480, 240, 1024, "image rows")
    columns: int = param(640, 320, 1280, "image columns")
    psv_cm_s: float = param(250.0, 20.0, 700.0, "mean peak velocity (cm/s)")
    ejection_ms: float = param(300.0, 100.0, 600.0, "ejection time per beat (ms)")
    heart_rate_bpm: float = param(70.0, 30.0, 200.0, "mean heart rate (beats/min)")
    hr_variability: float = param(0.03, 0.0, 0.2, "beat-to-beat SD of the period (fraction)")
    psv_variability: float = param(0.03, 0.0, 0.2, "beat-to-beat SD of the peak (fraction)")
    angle_deg: float = param(0.0, 0.0, 80.0, "Doppler correction angle (degrees)")
    frequency_mhz: float = param(2.0, 1.0, 10.0, "transmit frequency (MHz)")
    sweep_s: float = param(3.0, 1.0, 12.0, "time across the spectral display (s)")
    dynamic_range_db: float = param(50.0, 20.0, 90.0, "display dynamic range (dB)")
    flow: str = choice("toward", ("toward", "away"), "toward: above the baseline")
    broadening: float = param(0.1, 0.0, 0.5, "intrinsic broadening, FWHM / velocity")
    window_ms: float = param(10.0, 2.0, 50.0, "spectral analysis window (ms)")
    wall_filter_cm_s: float = param(10.0, 0.0, 100.0, "wall (high-pass) filter cut-off (cm/s)")


def _nyquist(prf_hz: float, frequency_mhz: float, angle_deg: float) -> float:
    cos = math.cos(math.radians(angle_deg))
    return SOUND_SPEED_CM_S * prf_hz / (4.0 * frequency_mhz * 1e6 * cos)


def _check_sweep(sweep_s: float, heart_rate_bpm: float, variability: float) -> None:
    longest = 60.0 / heart_rate_bpm * (1.0 + 3.0 * variability)
    if sweep_s < 2.0 * longest:
        raise SimulationError(
            f"parameter 'sweep_s': {sweep_s} s may hold no complete cycle at "
            f"{heart_rate_bpm} bpm; use at least {2.0 * longest:.2f} s"
        )


def _spectral_region(rows: int, columns: int, top: int) -> tuple[int, int, int, int]:
    return columns // 16, top, columns - 1 - columns // 32, rows - 1 - rows // 32


def build_pw(ctx: Context, p: PwParams) -> list[Instance]:
    """Simulate one PW Doppler image; return ``[(name, dataset, truth)]``."""
    if not _STUDY_LABEL.fullmatch(p.study):
        raise SimulationError(
            f"parameter 'study': {p.study!r} is not 0-32 of the characters A-Z a-z 0-9 _ -"
        )
    if p.edv_cm_s >= p.psv_cm_s:
        raise SimulationError("parameter 'edv_cm_s' must be below 'psv_cm_s'")
    _check_sweep(p.sweep_s, p.heart_rate_bpm, p.hr_variability)
    top_velocity = p.psv_cm_s * (1.0 + 3.0 * p.psv_variability) * _HEADROOM
    # reversed flow lies on the short side of the baseline: scaled to the long side's range
    reversed_room = _BASELINE_FRACTION / (1.0 - _BASELINE_FRACTION)
    top_velocity = max(top_velocity, -p.edv_cm_s * _REVERSED_HEADROOM * reversed_room)
    if p.prf_hz > 0:
        prf = p.prf_hz
        if 2.0 * _nyquist(prf, p.frequency_mhz, p.angle_deg) * _BASELINE_FRACTION < top_velocity:
            raise SimulationError(
                f"parameter 'prf_hz': {prf} Hz aliases a PSV of {p.psv_cm_s} cm/s (or an EDV "
                f"of {p.edv_cm_s} cm/s); raise it or use 0 to choose one"
            )
    else:
        per_hz = _nyquist(1.0, p.frequency_mhz, p.angle_deg)
        prf = math.ceil(top_velocity / (2.0 * _BASELINE_FRACTION * per_hz) / 250.0) * 250.0
    v_nyquist = _nyquist(prf, p.frequency_mhz, p.angle_deg)

    b_top, b_bottom = p.rows // 60, int(p.rows * 0.33)
    bmode_region = tissue_region(
        p.rows, p.columns, 0.025, top=b_top, bottom=b_bottom, width=(b_bottom - b_top) * 8 // 5
    )
    x0, y0, x1, y1 = _spectral_region(p.rows, p.columns, int(p.rows * 0.36))
    n_rows = y1 - y0 + 1
    dv = 2.0 * v_nyquist / n_rows
    rng = ctx.rng("pw")
    image = np.zeros((p.rows, p.columns), np.uint8)
    _draw_vessel(rng, image, bmode_region, ctx.snr_db + 20.0, p.frequency_mhz)
    region, truth = _spectrum(
        ctx,
        rng,
        image,
        (x0, y0, x1, y1),
        dv=dv,
        data_type=RegionDataType.PW_SPECTRAL_DOPPLER,
        shape=p.waveform,
        p=p,
        edv=p.edv_cm_s,
        ejection=0.35,
        sample_volume=p.sample_volume,
        extra={
            "PulseRepetitionFrequency": round(prf),
            "DopplerCorrectionAngle": float(p.angle_deg),
            "TransducerFrequency": round(p.frequency_mhz * 1000),
        },
    )
    label = _label(p.vessel, p.side)
    description = "simulated PW Doppler" + (f" {label}" if label else "")
    ds = new_dataset(ctx, US_IMAGE_STORAGE, series_description=description)
    us_image_attributes(ds, modes="0009")
    ds.SequenceOfUltrasoundRegions = regions_sequence([bmode_region, region])
    set_pixels(ds, image)
    _name_vessel(ds, p.vessel, p.side, label)
    if p.study:
        ds.StudyInstanceUID = generate_uid(
            entropy_srcs=["usreview.simulate", "pw study", str(ctx.seed), p.study]
        )
    truth.update(
        prf_hz=prf,
        nyquist_cm_s=round(v_nyquist, 6),
        waveform=p.waveform,
        bmode_region=bmode_region.truth(),
        vessel={
            "name": p.vessel,
            "side": p.side,
            "code": VESSELS[p.vessel][0] if p.vessel in VESSELS else None,
            "label": label,
        },
    )
    return [("pw", ds, truth)]


def _label(vessel: str, side: str) -> str:
    """The scanners' free text, e.g. ``LT ICA`` (empty without a vessel)."""
    if vessel not in VESSELS:
        return ""
    return " ".join(([SIDES[side][3]] if side in SIDES else []) + [VESSELS[vessel][2]])


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _name_vessel(ds: Dataset, vessel: str, side: str, label: str) -> None:
    """Write the vessel (coded and as text) and the side into ``ds``."""
    if side in SIDES:
        ds.ImageLaterality = SIDES[side][2]  # (General Series Laterality then must be absent)
    if vessel not in VESSELS:
        return
    code, meaning, _ = VESSELS[vessel]
    item = _code(code, meaning)
    if side in SIDES:
        item.AnatomicRegionModifierSequence = DicomSequence([_code(*SIDES[side][:2])])
    ds.AnatomicRegionSequence = DicomSequence([item])
    ds.ImageComments = label
    if vessel != "renal":
        ds.BodyPartExamined = "NECK"


def build_cw(ctx: Context, p: CwParams) -> list[Instance]:
    """Simulate one CW Doppler image; return ``[(name, dataset, truth)]``."""
    _check_sweep(p.sweep_s, p.heart_rate_bpm, p.hr_variability)
    if p.ejection_ms / 1000.0 > 0.8 * 60.0 / p.heart_rate_bpm * (1 - 3 * p.hr_variability):
        raise SimulationError(
            f"parameter 'ejection_ms': {p.ejection_ms} ms is too long for {p.heart_rate_bpm} bpm"
        )
    top_velocity = p.psv_cm_s * (1.0 + 3.0 * p.psv_variability) * _HEADROOM
    x0, y0, x1, y1 = _spectral_region(p.rows, p.columns, p.rows // 12)
    n_rows = y1 - y0 + 1
    scale = math.ceil(top_velocity / 50.0) * 50.0  # a round velocity on the far edge
    dv = scale / round(n_rows * _BASELINE_FRACTION)
    rng = ctx.rng("cw")
    image = np.zeros((p.rows, p.columns), np.uint8)
    ejection = p.ejection_ms / 1000.0 * p.heart_rate_bpm / 60.0
    region, truth = _spectrum(
        ctx,
        rng,
        image,
        (x0, y0, x1, y1),
        dv=dv,
        data_type=RegionDataType.CW_SPECTRAL_DOPPLER,
        shape="aortic",
        p=p,
        edv=0.0,
        ejection=ejection,
        sample_volume=None,
        extra={
            "DopplerCorrectionAngle": float(p.angle_deg),
            "TransducerFrequency": round(p.frequency_mhz * 1000),
        },
    )
    ds = new_dataset(ctx, US_IMAGE_STORAGE, series_description="simulated CW Doppler")
    us_image_attributes(ds, modes="0004")
    ds.SequenceOfUltrasoundRegions = regions_sequence([region])
    set_pixels(ds, image)
    truth.update(waveform="aortic", ejection_ms=p.ejection_ms)
    return [("cw", ds, truth)]


def _draw_vessel(
    rng: np.random.Generator,
    image: npt.NDArray[np.uint8],
    region: Region,
    snr_db: float,
    frequency_mhz: float,
) -> None:
    """A horizontal vessel (radius 3 mm) mid-depth, with the sample-volume gate marks."""
    rows, cols = region.shape
    centre = region.physical(region.x0 + (cols - 1) / 2.0, region.y0 + (rows - 1) / 2.0)
    vessel = Inclusion("vessel", None, centre, (cols * abs(region.delta_x) * 4.0, 3.0))
    pixels = render(
        rng, region, [vessel], frequency_mhz=frequency_mhz, snr_db=snr_db, dynamic_range_db=60.0
    )
    cy, cx = (rows - 1) // 2, (cols - 1) // 2
    half = round(0.15 / abs(region.delta_y))  # gate 3 mm long
    for row in (cy - half, cy + half):
        pixels[row, cx - 6 : cx + 7] = 255
    pixels[: cy - half - 2 : 3, cx] = 200  # dotted Doppler line
    image[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = pixels


def _spectrum(
    ctx: Context,
    rng: np.random.Generator,
    image: npt.NDArray[np.uint8],
    box: tuple[int, int, int, int],
    *,
    dv: float,
    data_type: int,
    shape: str,
    p: PwParams | CwParams,
    edv: float,
    ejection: float,
    sample_volume: float | None,
    extra: dict[str, Any],
) -> tuple[Region, dict[str, Any]]:
    x0, y0, x1, y1 = box
    n_rows, n_cols = y1 - y0 + 1, x1 - x0 + 1
    sign = 1 if p.flow == "toward" else -1
    baseline = (
        round(n_rows * _BASELINE_FRACTION) if sign > 0 else round(n_rows * (1 - _BASELINE_FRACTION))
    )
    dt = p.sweep_s / n_cols
    spec = doppler.Spectrum(
        rows=n_rows,
        columns=n_cols,
        baseline=baseline,
        dv=dv,
        dt=dt,
        frequency_mhz=p.frequency_mhz,
        angle_deg=p.angle_deg,
        window_s=p.window_ms / 1000.0,
        broadening=p.broadening,
        sample_volume=sample_volume,
        wall_filter=p.wall_filter_cm_s,
    )
    beats = doppler.draw_beats(
        rng,
        duration_s=p.sweep_s,
        heart_rate_bpm=p.heart_rate_bpm,
        psv=p.psv_cm_s,
        edv=edv,
        hr_variability=p.hr_variability,
        psv_variability=p.psv_variability,
        shape=shape,
        ejection=ejection,
    )
    make = doppler.spectrogram if edv >= 0 else _reversing_spectrogram
    grey, reference, noise = make(
        rng, spec, beats, sign=sign, snr_db=ctx.snr_db, dynamic_range_db=p.dynamic_range_db
    )
    shown = (
        sweep.layout(n_cols, p.write_point, p.erase_columns)
        if isinstance(p, PwParams) and p.write_point > 0
        else None
    )
    image[y0 : y1 + 1, x0 : x1 + 1] = grey if shown is None else sweep.apply(grey, shown)
    if shown is not None:
        extra = {**extra, "RegionFlags": sweep.SWEEPING_FLAGS}
    region = Region(
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        spatial_format=RegionSpatialFormat.SPECTRAL,
        data_type=data_type,
        units_x=PhysicalUnits.SECONDS,
        units_y=PhysicalUnits.CM_PER_SECOND,
        delta_x=dt,
        delta_y=-dv,
        ref_x=0,
        ref_y=baseline,
        extra=extra,
    )
    times = np.arange(n_cols, dtype=np.float64) * dt
    envelope = sign * beats.vmax(times)
    if shown is None:
        truth = _indices(beats, [(0.0, float(times[-1]))])
        column_times: list[float | None] = [round(float(t), 6) for t in times]
        column_speeds: list[float | None] = [round(float(v), 4) for v in envelope]
    else:
        stretches = [
            (float(times[shown.source[a]]), float(times[shown.source[b - 1]]))
            for a, b in shown.parts
        ]
        truth = _indices(beats, stretches, required=False)  # a case to refuse, maybe
        truth["sweep"] = {
            "write_point_column": shown.write_point,
            "erase_columns": [shown.write_point, shown.write_point + shown.erase],
            "column_convention": "columns from RegionLocationMinX0; [start, stop)",
            "parts": [
                {"columns": [a, b], "start_s": round(t0, 6), "end_s": round(t1, 6)}
                | _indices(beats, [(t0, t1)], required=False)
                for (a, b), (t0, t1) in zip(shown.parts, stretches, strict=True)
            ],
        }
        column_times = [round(float(times[i]), 6) if i >= 0 else None for i in shown.source]
        column_speeds = [round(float(envelope[i]), 4) if i >= 0 else None for i in shown.source]
    truth.update(
        region=region.truth(),
        flow=p.flow,
        baseline_row=y0 + baseline,
        cm_s_per_pixel=dv,
        s_per_pixel=dt,
        dynamic_range_db=p.dynamic_range_db,
        display_mapping="grey = 255 * (10 log10(P / reference_power) + DR) / DR, clipped",
        reference_power=reference,
        noise_power_per_row=noise,
        angle_deg=p.angle_deg,
        column_times_s=column_times,
        envelope_cm_s=column_speeds,
    )
    return region, truth


@dataclass(frozen=True)
class _Part(doppler.Beats):
    """The forward (``part`` +1) or reversed (-1) flow of some beats: its speed, else 0."""

    part: int = 1

    def vmax(self, t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The speed (cm/s) of this part's flow at times ``t`` (s), zero when it is the other's."""
        out: npt.NDArray[np.float64] = np.maximum(self.part * super().vmax(t), 0.0)
        return out


def _reversing_spectrogram(
    rng: np.random.Generator,
    spec: doppler.Spectrum,
    beats: doppler.Beats,
    *,
    sign: int,
    snr_db: float,
    dynamic_range_db: float,
) -> tuple[npt.NDArray[np.uint8], float, float]:
    """:func:`.doppler.spectrogram` of beats whose velocity turns negative (reversed flow).

    Each column's expected spectrum lies on the side of its true velocity at the column's
    time: forward speeds on the ``sign`` side of the baseline, reversed ones on the other.
    Speckle, noise and compression as :func:`.doppler.spectrogram` (same draws, same order).
    """
    forward = beats.vmax(np.arange(spec.columns, dtype=np.float64) * spec.dt) >= 0.0
    fields = {f.name: getattr(beats, f.name) for f in dataclasses.fields(beats)}
    mean = np.zeros((spec.rows, spec.columns))
    for part, where in ((1, forward), (-1, ~forward)):
        mean[:, where] += doppler.mean_spectrum(spec, _Part(**fields, part=part), sign * part)[
            :, where
        ]
    return doppler.speckled_display(rng, mean, snr_db=snr_db, dynamic_range_db=dynamic_range_db)


def _indices(
    beats: doppler.Beats, stretches: list[tuple[float, float]], *, required: bool = True
) -> dict[str, Any]:
    """PSV, EDV, RI, PI, VTI and heart rate: means over the cycles complete in a stretch.

    ``stretches`` are the times (s) of continuous time in view: the whole strip, or both
    sides of a sweep's write point. Without a complete cycle: an error if ``required``,
    else only ``cycle_count`` 0 (a sweep whose sides are both shorter than a cycle).
    """
    done = np.sort(np.concatenate([beats.complete(t0, t1) for t0, t1 in stretches]))
    if len(done) == 0 and not required:
        return {"cycle_count": 0, "cycles": []}
    if len(done) == 0:  # guarded by _check_sweep
        raise SimulationError("parameter 'sweep_s': no complete cycle in the display")
    psv = beats.psv[done]
    periods = beats.periods[done]
    edv = beats.edv
    tamv = edv + (psv - edv) * beats.shape_mean
    ri = (psv - edv) / psv
    pi = (psv - edv) / tamv
    vti = tamv * periods
    return {
        "psv_cm_s": float(psv.mean()),
        "edv_cm_s": edv,
        "ri": float(ri.mean()),
        "pi": float(pi.mean()),
        "vti_cm": float(vti.mean()),
        "tamv_cm_s": float(tamv.mean()),
        "heart_rate_bpm": float(60.0 / periods.mean()),
        "cycle_count": len(done),
        "cycles": [
            {
                "start_s": round(float(beats.starts[i]), 6),
                "period_s": round(float(beats.periods[i]), 6),
                "psv_cm_s": round(float(beats.psv[i]), 6),
                "edv_cm_s": edv,
                "ri": round(float(r), 6),
                "pi": round(float(q), 6),
                "vti_cm": round(float(v), 6),
            }
            for i, r, q, v in zip(done, ri, pi, vti, strict=True)
        ],
    }

"""Kind ``mmode``: a parasternal-like B-mode image above an M-mode strip of the left ventricle.

Along the M-line, from the probe: chest wall, right-ventricular wall and cavity,
septum (IVS), LV cavity, posterior wall (LVPW), pericardium and deeper tissue. The LV
internal dimension follows ``D(t) = LVIDd - (LVIDd - LVIDs) s(phase)``, with ``s``
rising smoothly from 0 at end diastole (cycle start) to 1 at end systole (30 % of the
cycle) and back to 0 by 50 %; the septum takes 40 % of the excursion, the posterior
wall 60 %. Each structure carries its own speckle texture, moving with it.

With ``write_point`` above 0 the strip is a frozen sweeping display
(:mod:`usreview.simulate.sweep`): Region Flags say so, the newest time lies left of the
write point, ``erase_columns`` blank columns follow it, and the oldest time lies right of
them. The truth then adds ``sweep``: the write point, the erase bar and, per stretch of
continuous time, its columns, times and complete cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom.enum import PhysicalUnits, RegionDataType, RegionSpatialFormat
from usreview.errors import SimulationError
from usreview.simulate import speckle, sweep
from usreview.simulate.bmode import (
    US_IMAGE_STORAGE,
    Inclusion,
    render,
    tissue_region,
    us_image_attributes,
)
from usreview.simulate.params import param
from usreview.simulate.writer import (
    Context,
    Instance,
    Region,
    new_dataset,
    regions_sequence,
    set_pixels,
)

__all__ = ["MmodeParams", "build", "contraction"]

Float = npt.NDArray[np.float64]

_SEPTAL_SHARE = 0.4
_END_SYSTOLE = 0.30
_END_RELAXATION = 0.50
_SEPTUM_TOP_CM = 3.6  # anterior surface of the septum at end diastole
_BLOOD_DB = -40.0


@dataclass(frozen=True)
class MmodeParams:
    """Parameters of kind ``mmode``."""

    rows: int = param(480, 320, 1024, "image rows")
    columns: int = param(640, 320, 1280, "image columns")
    heart_rate_bpm: float = param(75.0, 30.0, 300.0, "heart rate (beats/min)")
    lvidd_mm: float = param(48.0, 20.0, 80.0, "LV internal dimension in diastole (mm)")
    lvids_mm: float = param(30.0, 10.0, 75.0, "LV internal dimension in systole (mm)")
    ivs_mm: float = param(10.0, 4.0, 25.0, "septal thickness (mm)")
    lvpw_mm: float = param(10.0, 4.0, 25.0, "posterior wall thickness (mm)")
    sweep_s: float = param(3.0, 1.0, 10.0, "time across the M-mode strip (s)")
    depth_cm: float = param(14.0, 10.0, 24.0, "depth shown in the M-mode strip (cm)")
    frequency_mhz: float = param(2.5, 1.0, 7.0, "transducer frequency (MHz)")
    dynamic_range_db: float = param(60.0, 20.0, 100.0, "display dynamic range (dB)")
    write_point: float = param(
        0.0, 0.0, 0.95, "sweeping display: write point as a share of the width (0: scrolling)"
    )
    erase_columns: int = param(8, 0, 64, "sweeping display: blank columns after the write point")


def contraction(phase: Float) -> Float:
    """The systolic shortening ``s`` in ``[0, 1]`` at cycle phase(s) ``phase``."""
    ph = np.mod(phase, 1.0)
    up = 0.5 * (1.0 - np.cos(np.pi * ph / _END_SYSTOLE))
    down = 0.5 * (1.0 + np.cos(np.pi * (ph - _END_SYSTOLE) / (_END_RELAXATION - _END_SYSTOLE)))
    out: Float = np.where(ph < _END_SYSTOLE, up, np.where(ph < _END_RELAXATION, down, 0.0))
    return out


def _cover(rows: Float, top: Float, bottom: Float) -> Float:
    """Fraction of pixel ``[row - 0.5, row + 0.5]`` inside ``[top, bottom]`` (pixels)."""
    out: Float = np.clip(np.minimum(rows + 0.5, bottom) - np.maximum(rows - 0.5, top), 0.0, 1.0)
    return out


def _texture(rng: np.random.Generator, n: int, sigma_px: float, oversample: int = 4) -> Float:
    """A 1D speckle line (complex, RMS 1) on a grid ``oversample`` times finer than a pixel."""
    raw = speckle.scatterers(rng, (n * oversample,))
    line = speckle.echo(raw, speckle.Psf((sigma_px * oversample,)))
    return np.stack([line.real, line.imag])


def _mstrip(
    rng: np.random.Generator,
    p: MmodeParams,
    shape: tuple[int, int],
    dy: float,
    dt: float,
    phase0: float,
    snr_db: float,
) -> tuple[npt.NDArray[np.uint8], Float, Float]:
    rows, cols = shape
    t = np.arange(cols, dtype=np.float64) * dt
    s = contraction(phase0 + t * p.heart_rate_bpm / 60.0)
    shortening = (p.lvidd_mm - p.lvids_mm) / 10.0 * s  # cm
    septum_endo = _SEPTUM_TOP_CM + p.ivs_mm / 10.0 + _SEPTAL_SHARE * shortening
    posterior_endo = (
        _SEPTUM_TOP_CM + p.ivs_mm / 10.0 + p.lvidd_mm / 10.0 - (1 - _SEPTAL_SHARE) * shortening
    )
    ivs_top = septum_endo - p.ivs_mm / 10.0
    lvpw_bottom = posterior_endo + p.lvpw_mm / 10.0
    # (top, bottom, moving anchor, level dB) in cm, per column
    zero = np.zeros(cols)
    layers = [
        (zero, zero + 1.5, zero, 0.0),
        (zero + 1.5, zero + 2.0, zero, 3.0),
        (zero + 2.0, ivs_top, zero, _BLOOD_DB),
        (ivs_top, septum_endo, ivs_top, 5.0),
        (septum_endo, posterior_endo, zero, _BLOOD_DB),
        (posterior_endo, lvpw_bottom, posterior_endo, 5.0),
        (lvpw_bottom, lvpw_bottom + 0.2, lvpw_bottom, 15.0),
        (lvpw_bottom + 0.2, zero + p.depth_cm + 5.0, lvpw_bottom, -6.0),
    ]
    row_idx = np.arange(rows, dtype=float)[:, None]
    psf = speckle.Psf.for_probe(p.frequency_mhz, (dy,))
    field = np.zeros((2, rows, cols))
    margin = int(3.0 / dy)
    for top, bottom, anchor, level in layers:
        cover = _cover(row_idx, top[None, :] / dy, bottom[None, :] / dy)
        tex = _texture(rng, rows + 2 * margin, psf.sigma[0])
        local = (row_idx - anchor[None, :] / dy + margin) * 4.0
        sampled = ndimage.map_coordinates(tex[0], [local.ravel()], order=1, mode="wrap")
        sampled_im = ndimage.map_coordinates(tex[1], [local.ravel()], order=1, mode="wrap")
        gain = cover * 10.0 ** (level / 20.0)
        field[0] += gain * sampled.reshape(rows, cols)
        field[1] += gain * sampled_im.reshape(rows, cols)
    echo = field[0] + 1j * field[1] + speckle.noise(rng, (rows, cols), snr_db)
    grey = speckle.log_compress(np.abs(echo), p.dynamic_range_db)
    return grey, septum_endo, posterior_endo


def build(ctx: Context, p: MmodeParams) -> list[Instance]:
    """Simulate one M-mode image; return ``[(name, dataset, truth)]``."""
    if p.lvids_mm >= p.lvidd_mm:
        raise SimulationError("parameter 'lvids_mm' must be below 'lvidd_mm'")
    bottom_cm = _SEPTUM_TOP_CM + (p.ivs_mm + p.lvidd_mm + p.lvpw_mm) / 10.0 + 0.5
    if bottom_cm > p.depth_cm:
        raise SimulationError(
            f"parameter 'depth_cm': the heart reaches {bottom_cm:.1f} cm; show more depth"
        )
    period = 60.0 / p.heart_rate_bpm
    if p.sweep_s < 2.0 * period:
        raise SimulationError(
            f"parameter 'sweep_s': at least {2 * period:.2f} s are needed for a complete cycle"
        )
    rng = ctx.rng("mmode")
    b_top, b_bottom = p.rows // 60, int(p.rows * 0.36)
    b_spacing = round(p.depth_cm / (b_bottom - b_top + 1), 4)
    bregion = tissue_region(
        p.rows,
        p.columns,
        b_spacing,
        top=b_top,
        bottom=b_bottom,
        depth0_cm=0.0,
        width=b_bottom - b_top + 1,
    )
    x0, y0 = p.columns // 16, int(p.rows * 0.40)
    x1, y1 = p.columns - 1 - p.columns // 32, p.rows - 1 - p.rows // 32
    n_rows, n_cols = y1 - y0 + 1, x1 - x0 + 1
    dy = p.depth_cm / n_rows
    dt = p.sweep_s / n_cols
    mregion = Region(
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        spatial_format=RegionSpatialFormat.M_MODE,
        data_type=RegionDataType.TISSUE,
        units_x=PhysicalUnits.SECONDS,
        units_y=PhysicalUnits.CM,
        delta_x=dt,
        delta_y=dy,
        extra={"RegionFlags": sweep.SWEEPING_FLAGS} if p.write_point > 0 else {},
    )
    image = np.zeros((p.rows, p.columns), np.uint8)
    _draw_bmode(rng, image, bregion, p, ctx.snr_db)
    phase0 = float(rng.uniform(0.0, 1.0))
    grey, septum, posterior = _mstrip(rng, p, (n_rows, n_cols), dy, dt, phase0, ctx.snr_db)
    shown = sweep.layout(n_cols, p.write_point, p.erase_columns) if p.write_point > 0 else None
    image[y0 : y1 + 1, x0 : x1 + 1] = grey if shown is None else sweep.apply(grey, shown)

    ds = new_dataset(ctx, US_IMAGE_STORAGE, series_description="simulated M-mode")
    us_image_attributes(ds, modes="0003")
    ds.SequenceOfUltrasoundRegions = regions_sequence([bregion, mregion])
    set_pixels(ds, image)
    t_end = (n_cols - 1) * dt
    first = (-phase0 % 1.0) * period  # first end diastole (cycle start) at or after t = 0
    starts = np.arange(first, t_end, period)
    spans = [(0.0, t_end)] if shown is None else _stretches(shown, dt)
    complete = [float(t) for t in starts if any(a <= t and t + period <= b for a, b in spans)]
    rows_septum = [round(float(y0 + v / dy), 3) for v in septum]
    rows_posterior = [round(float(y0 + v / dy), 3) for v in posterior]
    truth = {
        "region": mregion.truth(),
        "bmode_region": bregion.truth(),
        "heart_rate_bpm": p.heart_rate_bpm,
        "lvidd_mm": p.lvidd_mm,
        "lvids_mm": p.lvids_mm,
        "fractional_shortening": (p.lvidd_mm - p.lvids_mm) / p.lvidd_mm,
        "ivs_mm": p.ivs_mm,
        "lvpw_mm": p.lvpw_mm,
        "septal_excursion_mm": _SEPTAL_SHARE * (p.lvidd_mm - p.lvids_mm),
        "posterior_excursion_mm": (1 - _SEPTAL_SHARE) * (p.lvidd_mm - p.lvids_mm),
        "end_diastole_s": [round(t, 6) for t in starts],
        "end_systole_s": [
            round(float(t), 6)
            for t in np.arange(first - period, t_end, period) + _END_SYSTOLE * period
            if 0.0 <= t <= t_end
        ],
        "complete_cycles": len(complete),
        "septal_endocardium_row": _as_shown(rows_septum, shown),
        "posterior_endocardium_row": _as_shown(rows_posterior, shown),
        "row_convention": "row = RegionLocationMinY0 + depth / PhysicalDeltaY (depth 0 at MinY0)",
    }
    if shown is not None:
        truth["sweep"] = _sweep_truth(shown, dt, starts, period)
    return [("mmode", ds, truth)]


def _stretches(shown: sweep.SweepLayout, dt: float) -> list[tuple[float, float]]:
    """Recording times (s) of the first and last column of each stretch of continuous time."""
    return [(shown.source[a] * dt, shown.source[b - 1] * dt) for a, b in shown.parts]


def _as_shown(values: list[float], shown: sweep.SweepLayout | None) -> list[float | None]:
    """Per-column ``values`` of the recording in display order (``None`` where erased)."""
    if shown is None:
        return list(values)
    return [values[i] if i >= 0 else None for i in shown.source.tolist()]


def _sweep_truth(
    shown: sweep.SweepLayout, dt: float, starts: Float, period: float
) -> dict[str, object]:
    """The sweep's write point, erase bar and stretches of continuous time, with their cycles.

    Times are those of the recording (0 at its oldest column, which the erase bar blanked).
    """
    parts = []
    for (a, b), (t0, t1) in zip(shown.parts, _stretches(shown, dt), strict=True):
        done = [float(t) for t in starts if t0 <= t and t + period <= t1]
        parts.append(
            {
                "columns": [a, b],
                "start_s": round(t0, 6),
                "end_s": round(t1, 6),
                "complete_cycles": len(done),
                "end_diastole_s": [round(t, 6) for t in done],
            }
        )
    return {
        "write_point_column": shown.write_point,
        "erase_columns": [shown.write_point, shown.write_point + shown.erase],
        "column_convention": "columns from RegionLocationMinX0; [start, stop)",
        "parts": parts,
    }


def _draw_bmode(
    rng: np.random.Generator,
    image: npt.NDArray[np.uint8],
    region: Region,
    p: MmodeParams,
    snr_db: float,
) -> None:
    """A long-axis-like view: RV and LV cavities as dark ellipses, with the M-line cursor."""
    cols = region.shape[1]
    mid = region.physical(region.x0 + (cols - 1) / 2.0, region.y0)[0]
    lv_centre = _SEPTUM_TOP_CM + p.ivs_mm / 10.0 + p.lvidd_mm / 20.0
    cavities = [
        Inclusion("rv", None, (mid, 2.0 + (_SEPTUM_TOP_CM - 2.0) / 2.0), (30.0, 7.0)),
        Inclusion("lv", None, (mid - 0.5, lv_centre), (35.0, p.lvidd_mm / 2.0)),
    ]
    pixels = render(
        rng,
        region,
        cavities,
        frequency_mhz=p.frequency_mhz,
        snr_db=snr_db,
        dynamic_range_db=p.dynamic_range_db,
    )
    pixels[::4, (cols - 1) // 2] = 255
    image[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = pixels

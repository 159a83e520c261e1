"""Kind ``cine``: a multi-frame B-mode loop with a structure moving at a known rate.

A hyperechoic elliptical structure with its own scatterers moves rigidly up and down,
``y(t) = y0 + A sin(2 pi f t)``, through static speckled tissue. Each frame is formed
like :mod:`usreview.simulate.bmode`: the tissue scatterers the structure covers at time
``t`` are hidden, the structure's own echo is shifted by its sub-pixel displacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from usreview.errors import SimulationError
from usreview.simulate import speckle
from usreview.simulate.bmode import tissue_region, us_image_attributes
from usreview.simulate.params import param
from usreview.simulate.writer import Context, Instance, new_dataset, regions_sequence, set_pixels

__all__ = ["US_MULTIFRAME_IMAGE_STORAGE", "CineParams", "build"]

US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"

_CONTRAST_DB = 10.0


@dataclass(frozen=True)
class CineParams:
    """Parameters of kind ``cine``."""

    rows: int = param(320, 128, 1024, "image rows")
    columns: int = param(400, 128, 1024, "image columns")
    frames: int = param(30, 2, 300, "number of frames")
    frame_rate_hz: float = param(30.0, 1.0, 500.0, "acquisition frame rate (frames/s)")
    heart_rate_bpm: float = param(72.0, 20.0, 300.0, "motion frequency (cycles/min)")
    amplitude_mm: float = param(4.0, 0.0, 20.0, "axial motion amplitude (mm, zero to peak)")
    radius_mm: float = param(6.0, 1.0, 20.0, "lateral semi-axis of the structure (mm)")
    pixel_spacing_cm: float = param(0.02, 0.005, 0.1, "pixel spacing (cm)")
    frequency_mhz: float = param(5.0, 1.0, 15.0, "transducer centre frequency (MHz)")
    dynamic_range_db: float = param(60.0, 20.0, 100.0, "display dynamic range (dB)")
    frame_time_vector: bool = param(False, help="write Frame Time Vector instead of Frame Time")


def build(ctx: Context, p: CineParams) -> list[Instance]:
    """Simulate one cine loop; return ``[(name, dataset, truth)]``."""
    region = tissue_region(
        p.rows, p.columns, p.pixel_spacing_cm, top=p.rows // 16, bottom=p.rows - 1 - p.rows // 48
    )
    shape = region.shape
    s = p.pixel_spacing_cm
    a_px = p.radius_mm / 10.0 / s
    b_px = 0.6 * a_px
    amp_px = p.amplitude_mm / 10.0 / s
    if 2 * (b_px + amp_px) + 20 > shape[0] or 2 * a_px + 20 > shape[1]:
        raise SimulationError(
            "parameter 'amplitude_mm': the moving structure does not fit the image; "
            "reduce amplitude_mm or radius_mm"
        )
    rng = ctx.rng("cine")
    centre0 = (
        float(region.x0 + shape[1] / 2 + rng.uniform(-0.1, 0.1) * shape[1]),
        float(region.y0 + shape[0] / 2 + rng.uniform(-0.05, 0.05) * shape[0]),
    )
    frequency = p.heart_rate_bpm / 60.0
    frame_time_s = 1.0 / p.frame_rate_hz
    times = np.arange(p.frames) * frame_time_s
    rows_t = centre0[1] + amp_px * np.sin(2 * math.pi * frequency * times)

    psf = speckle.Psf.for_probe(p.frequency_mhz, (s, s))
    tissue = speckle.scatterers(rng, shape)
    local0 = (centre0[0] - region.x0, centre0[1] - region.y0)
    cover0 = speckle.coverage(shape, local0, (a_px, b_px))
    structure = speckle.echo(
        speckle.scatterers(rng, shape) * cover0 * 10 ** (_CONTRAST_DB / 20), psf
    )
    frames = np.zeros((p.frames, p.rows, p.columns), np.uint8)
    for k, row in enumerate(rows_t):
        dy = float(row - centre0[1])
        cover = speckle.coverage(shape, (local0[0], local0[1] + dy), (a_px, b_px))
        moved = ndimage.shift(structure.real, (dy, 0), order=1) + 1j * ndimage.shift(
            structure.imag, (dy, 0), order=1
        )
        echo = speckle.echo(tissue * (1.0 - cover), psf) + moved
        echo += speckle.noise(rng, shape, ctx.snr_db)
        frames[k, region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = speckle.log_compress(
            np.abs(echo), p.dynamic_range_db
        )

    ds = new_dataset(ctx, US_MULTIFRAME_IMAGE_STORAGE, series_description="simulated cine")
    us_image_attributes(ds, modes="0001")
    ds.SequenceOfUltrasoundRegions = regions_sequence([region])
    frame_time_ms = round(1000.0 * frame_time_s, 6)
    if p.frame_time_vector:
        ds.FrameTimeVector = [0.0] + [frame_time_ms] * (p.frames - 1)
        ds.FrameIncrementPointer = 0x00181065
    else:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063
    ds.CineRate = round(p.frame_rate_hz)
    ds.RecommendedDisplayFrameRate = round(p.frame_rate_hz)
    ds.PreferredPlaybackSequencing = 0
    set_pixels(ds, frames)
    centres = [[round(centre0[0], 4), round(float(r), 4)] for r in rows_t]
    truth = {
        "region": region.truth(),
        "frames": p.frames,
        "frame_time_ms": frame_time_ms,
        "frame_rate_hz": p.frame_rate_hz,
        "motion": {
            "description": "hyperechoic ellipse moving axially: row(t) = row0 + A sin(2 pi f t)",
            "frequency_hz": frequency,
            "heart_rate_bpm": p.heart_rate_bpm,
            "amplitude_mm": p.amplitude_mm,
            "amplitude_px": amp_px,
            "semi_axes_mm": [p.radius_mm, round(0.6 * p.radius_mm, 6)],
            "contrast_db": _CONTRAST_DB,
            "centre_pixel_per_frame": centres,
            "centre_cm_per_frame": [
                [round(v, 6) for v in region.physical(c, r)] for c, r in centres
            ],
            "frame_times_s": [round(float(t), 6) for t in times],
        },
    }
    return [("cine", ds, truth)]

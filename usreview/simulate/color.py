"""Kind ``color``: colour flow over B-mode, an RGB image of a straight tilted vessel.

The vessel has parabolic flow ``v(d) = vc (1 - d^2/R^2)`` along its axis; the probe
sees the axial component ``v sin(angle)`` (beam vertical, vessel tilted by ``angle``
from the horizontal). Inside the colour box each flow pixel shows that velocity plus
estimator noise, aliased into the Nyquist range, quantised to 63 levels per direction
and coloured by :func:`colour_map`; pixels under the wall-filter cut-off stay grey.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from usreview.dicom.enum import PhysicalUnits, RegionDataType, RegionSpatialFormat
from usreview.simulate import speckle
from usreview.simulate.bmode import US_IMAGE_STORAGE, tissue_region, us_image_attributes
from usreview.simulate.params import choice, param
from usreview.simulate.writer import (
    Context,
    Instance,
    Region,
    new_dataset,
    regions_sequence,
    set_pixels,
)

__all__ = ["LEVELS", "ColorParams", "build", "colour_map"]

LEVELS = 63
Float = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ColorParams:
    """Parameters of kind ``color``."""

    rows: int = param(480, 200, 1024, "image rows")
    columns: int = param(640, 240, 1280, "image columns")
    pixel_spacing_cm: float = param(0.01, 0.005, 0.05, "pixel spacing (cm)")
    centre_velocity_cm_s: float = param(50.0, 1.0, 300.0, "centre-line velocity along the vessel")
    vessel_diameter_mm: float = param(6.0, 1.0, 20.0, "vessel lumen diameter (mm)")
    vessel_angle_deg: float = param(20.0, 0.0, 60.0, "vessel tilt from the horizontal (degrees)")
    nyquist_cm_s: float = param(25.0, 2.0, 200.0, "colour scale Nyquist velocity (cm/s)")
    wall_filter_cm_s: float = param(2.0, 0.0, 50.0, "no colour below this |velocity| (cm/s)")
    velocity_noise: float = param(0.04, 0.0, 0.5, "estimator noise SD / Nyquist")
    flow: str = choice("toward", ("toward", "away"), "toward: red, flow rising to the probe")
    frequency_mhz: float = param(6.0, 1.0, 15.0, "transducer frequency (MHz)")
    dynamic_range_db: float = param(60.0, 20.0, 100.0, "B-mode dynamic range (dB)")


def colour_map(level: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """RGB of colour levels ``-LEVELS..LEVELS`` (positive red-yellow, negative blue-cyan)."""
    x = np.abs(level) / LEVELS
    main = np.rint(90 + 165 * x)
    green = np.rint(200 * x**3)
    zero = np.zeros_like(x)
    rgb = np.where(
        (level > 0)[..., None],
        np.stack([main, green, zero], -1),
        np.stack([zero, green, main], -1),
    )
    return rgb.astype(np.uint8)


def _geometry(region: Region, p: ColorParams) -> tuple[float, float, float, float]:
    rows, cols = region.shape
    cx = region.x0 + (cols - 1) / 2.0
    cy = region.y0 + (rows - 1) / 2.0
    return (
        cx,
        cy,
        math.radians(p.vessel_angle_deg),
        p.vessel_diameter_mm / 20.0 / p.pixel_spacing_cm,
    )


def build(ctx: Context, p: ColorParams) -> list[Instance]:
    """Simulate one colour-flow image; return ``[(name, dataset, truth)]``."""
    region = tissue_region(
        p.rows, p.columns, p.pixel_spacing_cm, top=p.rows // 16, bottom=p.rows - 1 - p.rows // 48
    )
    rng = ctx.rng("color")
    rows, cols = region.shape
    cx, cy, alpha, radius = _geometry(region, p)
    yy, xx = np.mgrid[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1].astype(float)
    # signed distance from the axis; the axis rises to the right (row decreases)
    dist = (xx - cx) * math.sin(alpha) + (yy - cy) * math.cos(alpha)
    lumen = np.clip(radius - np.abs(dist) + 0.5, 0.0, 1.0)
    psf = speckle.Psf.for_probe(p.frequency_mhz, (p.pixel_spacing_cm, p.pixel_spacing_cm))
    echo = speckle.echo(speckle.scatterers(rng, (rows, cols)) * (1.0 - lumen), psf)
    echo += speckle.noise(rng, (rows, cols), ctx.snr_db)
    grey = speckle.log_compress(np.abs(echo), p.dynamic_range_db)

    sign = 1.0 if p.flow == "toward" else -1.0
    along = p.centre_velocity_cm_s * np.clip(1.0 - (dist / radius) ** 2, 0.0, None)
    axial = sign * along * math.sin(alpha)
    measured = axial + p.velocity_noise * p.nyquist_cm_s * rng.standard_normal((rows, cols))
    aliased = np.mod(measured + p.nyquist_cm_s, 2 * p.nyquist_cm_s) - p.nyquist_cm_s
    level = np.clip(np.rint(aliased / p.nyquist_cm_s * LEVELS), -LEVELS, LEVELS).astype(np.int64)
    bx0, bx1 = region.x0 + cols // 5, region.x1 - cols // 5
    by0, by1 = region.y0 + rows // 8, region.y1 - rows // 8
    in_box = np.zeros((rows, cols), bool)
    in_box[by0 - region.y0 : by1 - region.y0 + 1, bx0 - region.x0 : bx1 - region.x0 + 1] = True
    coloured = in_box & (lumen >= 0.5) & (np.abs(aliased) >= p.wall_filter_cm_s) & (level != 0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[coloured] = colour_map(level[coloured])

    image = np.zeros((p.rows, p.columns, 3), np.uint8)
    image[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = rgb
    bar = _colour_bar(image, region)
    ref = region.physical(bx0, by0)
    prf = 4.0 * p.frequency_mhz * 1e6 * p.nyquist_cm_s / speckle.SOUND_SPEED_CM_S
    box = Region(
        x0=bx0,
        y0=by0,
        x1=bx1,
        y1=by1,
        spatial_format=RegionSpatialFormat.TWO_D,
        data_type=RegionDataType.COLOR_FLOW,
        units_x=PhysicalUnits.CM,
        units_y=PhysicalUnits.CM,
        delta_x=region.delta_x,
        delta_y=region.delta_y,
        ref_value_x=round(ref[0], 6),
        ref_value_y=round(ref[1], 6),
        extra={
            "TransducerFrequency": round(p.frequency_mhz * 1000),
            "PulseRepetitionFrequency": round(prf),
        },
    )

    ds = new_dataset(ctx, US_IMAGE_STORAGE, series_description="simulated colour flow")
    us_image_attributes(ds, modes="0011")
    ds.SequenceOfUltrasoundRegions = regions_sequence([region, box])
    set_pixels(ds, image)
    levels = np.arange(-LEVELS, LEVELS + 1)
    levels = levels[levels != 0]
    centre_cm = region.physical(cx, cy)
    truth: dict[str, Any] = {
        "region": region.truth(),
        "color_region": box.truth(),
        "vessel": {
            "centre_pixel": [cx, cy],
            "centre_cm": [round(v, 6) for v in centre_cm],
            "angle_deg": p.vessel_angle_deg,
            "direction": "rising to the right (towards the probe when flow is 'toward')",
            "diameter_mm": p.vessel_diameter_mm,
            "profile": "parabolic: v(d) = vc (1 - (d/R)^2), d from the axis",
        },
        "flow": p.flow,
        "centre_velocity_cm_s": p.centre_velocity_cm_s,
        "axial_centre_velocity_cm_s": sign * p.centre_velocity_cm_s * math.sin(alpha),
        "aliasing": bool(p.centre_velocity_cm_s * math.sin(alpha) > p.nyquist_cm_s),
        "nyquist_cm_s": p.nyquist_cm_s,
        "prf_hz": round(prf),
        "wall_filter_cm_s": p.wall_filter_cm_s,
        "colour_levels": LEVELS,
        "colour_map": [
            {"level": int(k), "velocity_cm_s": k / LEVELS * p.nyquist_cm_s, "rgb": rgb_.tolist()}
            for k, rgb_ in zip(levels, colour_map(levels), strict=True)
        ],
        "colour_bar": bar,
    }
    return [("color", ds, truth)]


def _colour_bar(image: npt.NDArray[np.uint8], region: Region) -> dict[str, Any]:
    """Draw the colour scale right of the region: +Nyquist at the top row."""
    x0 = region.x1 + 6
    x1 = min(x0 + 8, image.shape[1] - 1)
    top = region.y0 + (region.y1 - region.y0) // 2 - LEVELS
    levels = np.arange(LEVELS, -LEVELS - 1, -1)
    colours = colour_map(levels)
    colours[levels == 0] = 0
    image[top : top + len(levels), x0 : x1 + 1] = colours[:, None, :]
    return {"columns": [x0, x1], "top_row": top, "levels_top_to_bottom": [LEVELS, -LEVELS]}

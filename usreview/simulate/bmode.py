"""Kind ``bmode``: a linear-array B-mode image with inclusions and point targets.

Also holds the pieces the other kinds reuse: :func:`tissue_region` (a calibrated 2D
region whose reference pixel and reference values are non-zero) and :func:`render`
(speckle with elliptical inclusions and point targets, log-compressed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from usreview.dicom.enum import PhysicalUnits, RegionDataType, RegionSpatialFormat
from usreview.errors import SimulationError
from usreview.simulate import speckle
from usreview.simulate.params import param
from usreview.simulate.writer import (
    Context,
    Instance,
    Region,
    new_dataset,
    regions_sequence,
    set_pixels,
)

__all__ = [
    "US_IMAGE_STORAGE",
    "BmodeParams",
    "Inclusion",
    "build",
    "noise_free",
    "render",
    "tissue_region",
    "us_image_attributes",
]

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"

# name, contrast in dB against tissue (None: anechoic, no scatterers)
_TYPES: tuple[tuple[str, float | None], ...] = (
    ("anechoic", None),
    ("hyperechoic", 10.0),
    ("hypoechoic", -9.0),
)


@dataclass(frozen=True)
class BmodeParams:
    """Parameters of kind ``bmode``."""

    rows: int = param(480, 128, 1024, "image rows")
    columns: int = param(640, 128, 1024, "image columns")
    pixel_spacing_cm: float = param(0.02, 0.005, 0.1, "pixel spacing, both directions (cm)")
    frequency_mhz: float = param(5.0, 1.0, 15.0, "transducer centre frequency (MHz)")
    dynamic_range_db: float = param(60.0, 20.0, 100.0, "display dynamic range (dB)")
    inclusions: int = param(3, 0, 6, "number of inclusions (anechoic, hyper-, hypoechoic, ...)")
    min_radius_mm: float = param(3.0, 1.0, 30.0, "smallest inclusion semi-axis (mm)")
    max_radius_mm: float = param(8.0, 1.0, 30.0, "largest inclusion semi-axis (mm)")


@dataclass(frozen=True)
class Inclusion:
    """An axis-aligned elliptical inclusion in region physical coordinates (cm)."""

    kind: str
    contrast_db: float | None
    centre_cm: tuple[float, float]
    semi_axes_mm: tuple[float, float]

    @property
    def amplitude(self) -> float:
        """Scatterer amplitude relative to tissue."""
        return 0.0 if self.contrast_db is None else 10.0 ** (self.contrast_db / 20.0)


def tissue_region(
    rows: int,
    columns: int,
    spacing_cm: float,
    *,
    top: int,
    bottom: int,
    depth0_cm: float = 0.2,
    width: int | None = None,
) -> Region:
    """A 2D tissue region spanning rows ``top..bottom``, centred laterally.

    It is ``width`` columns wide, by default all but a sixteenth of the image each side.

    The physical x origin is the probe centre, y is depth with the region's first row
    at ``depth0_cm``; the reference pixel sits at a fifth of the width and a tenth of
    the height, so its physical values are non-zero.
    """
    margin = columns // 16 if width is None else max((columns - width) // 2, 0)
    x0, x1 = margin, columns - 1 - margin
    width, height = x1 - x0 + 1, bottom - top + 1
    ref_x, ref_y = width // 5, height // 10
    return Region(
        x0=x0,
        y0=top,
        x1=x1,
        y1=bottom,
        spatial_format=RegionSpatialFormat.TWO_D,
        data_type=RegionDataType.TISSUE,
        units_x=PhysicalUnits.CM,
        units_y=PhysicalUnits.CM,
        delta_x=spacing_cm,
        delta_y=spacing_cm,
        ref_x=ref_x,
        ref_y=ref_y,
        ref_value_x=round((ref_x - (width - 1) / 2.0) * spacing_cm, 6),
        ref_value_y=round(depth0_cm + ref_y * spacing_cm, 6),
    )


def render(
    rng: np.random.Generator,
    region: Region,
    inclusions: list[Inclusion],
    *,
    frequency_mhz: float,
    snr_db: float,
    dynamic_range_db: float,
    targets_px: Sequence[tuple[int, int]] = (),
) -> npt.NDArray[np.uint8]:
    """Render the region's B-mode pixels (region-sized array).

    ``targets_px`` are point targets (+25 dB) at image pixel ``(col, row)``.
    """
    shape = region.shape
    spacing = abs(region.delta_x)
    field = speckle.scatterers(rng, shape) * _echogenicity(region, inclusions)
    psf = speckle.Psf.for_probe(frequency_mhz, (spacing, spacing))
    for col, row in targets_px:
        field[row - region.y0, col - region.x0] = psf.point_amplitude(25.0)
    echo = speckle.echo(field, psf) + speckle.noise(rng, shape, snr_db)
    return speckle.log_compress(np.abs(echo), dynamic_range_db)


def _echogenicity(region: Region, inclusions: list[Inclusion]) -> speckle.Float:
    """Scatterer amplitude per pixel of the region: 1 in tissue, scaled in inclusions."""
    spacing = abs(region.delta_x)
    amplitude = np.ones(region.shape)
    for inc in inclusions:
        col, row = region.pixel(*inc.centre_cm)
        a = inc.semi_axes_mm[0] / 10.0 / spacing
        b = inc.semi_axes_mm[1] / 10.0 / spacing
        cover = speckle.coverage(region.shape, (col - region.x0, row - region.y0), (a, b))
        amplitude += cover * (inc.amplitude - 1.0)
    return amplitude


def noise_free(truth: Mapping[str, Any]) -> npt.NDArray[np.uint8]:
    """The image of a ``bmode`` truth record rendered without speckle (a reference for filters).

    Same regions, inclusions, point targets, probe and display as :func:`build`; each pixel
    shows the RMS echo (:func:`~usreview.simulate.speckle.mean_echo`) instead of one speckle
    draw. Note that the mean of log-compressed speckle lies 2.5 dB (Euler's constant) lower.
    """
    p, r = truth["params"], truth["region"]
    (x0, y0), (x1, y1) = r["location_min"], r["location_max"]
    (ux, uy), (dx, dy) = r["units"], r["physical_delta"]
    (px, py), (vx, vy) = r["reference_pixel"], r["reference_physical_value"]
    region = Region(
        x0, y0, x1, y1, r["spatial_format"], r["data_type"], ux, uy, dx, dy, px, py, vx, vy
    )
    inclusions = [
        Inclusion(i["kind"], i["contrast_db"], tuple(i["centre_cm"]), tuple(i["semi_axes_mm"]))
        for i in truth["inclusions"]
    ]
    spacing = abs(region.delta_x)
    psf = speckle.Psf.for_probe(p["frequency_mhz"], (spacing, spacing))
    power = _echogenicity(region, inclusions) ** 2
    for target in truth["point_targets"]:
        col, row = target["pixel"]
        power[row - region.y0, col - region.x0] = psf.point_amplitude(25.0) ** 2
    image = np.zeros((p["rows"], p["columns"]), np.uint8)
    image[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = speckle.log_compress(
        speckle.mean_echo(power, psf, truth["snr_db"]), p["dynamic_range_db"]
    )
    return image


def _place(rng: np.random.Generator, region: Region, p: BmodeParams, count: int) -> list[Inclusion]:
    rows, cols = region.shape
    s = p.pixel_spacing_cm
    placed: list[Inclusion] = []
    for index in range(count):
        for _attempt in range(200):
            r = float(rng.uniform(p.min_radius_mm, p.max_radius_mm))
            axes = (r, r) if index % 2 == 0 else (r, round(r * float(rng.uniform(0.5, 0.8)), 3))
            margin = max(axes) / 10.0 / s + 12
            col = float(rng.uniform(region.x0 + margin, region.x1 - margin))
            row = float(rng.uniform(region.y0 + margin, region.y1 - margin))
            centre = tuple(round(v, 4) for v in region.physical(round(col, 2), round(row, 2)))
            clear = all(
                math.dist(centre, q.centre_cm) * 10.0 > max(axes) + max(q.semi_axes_mm) + 3.0
                for q in placed
            )
            if clear and margin * 2 < min(rows, cols):
                kind, contrast = _TYPES[index % len(_TYPES)]
                placed.append(Inclusion(kind, contrast, (centre[0], centre[1]), axes))
                break
        else:
            raise SimulationError(
                f"parameter 'inclusions': cannot place {count} inclusions of up to "
                f"{p.max_radius_mm} mm in this image; use fewer or smaller ones"
            )
    return placed


def _targets(
    rng: np.random.Generator, region: Region, inclusions: list[Inclusion]
) -> list[tuple[int, int]]:
    s = abs(region.delta_x)
    out: list[tuple[int, int]] = []
    while len(out) < 3:
        col = int(rng.integers(region.x0 + 15, region.x1 - 15))
        row = int(rng.integers(region.y0 + 15, region.y1 - 15))
        x, y = region.physical(col, row)
        free = all(
            math.dist((x, y), inc.centre_cm) * 10.0 > max(inc.semi_axes_mm) + 2.0
            for inc in inclusions
        ) and all(math.dist((col, row), t) * s * 10 > 5.0 for t in out)
        if free:
            out.append((col, row))
    return out


def us_image_attributes(ds: Any, *, modes: str) -> None:
    """Set the US Image module's own attributes; ``modes`` is Image Type value 4."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", modes]
    ds.LossyImageCompression = "00"


def build(ctx: Context, p: BmodeParams) -> list[Instance]:
    """Simulate one B-mode image; return ``[(name, dataset, truth)]``."""
    if p.min_radius_mm > p.max_radius_mm:
        raise SimulationError("parameter 'min_radius_mm' exceeds 'max_radius_mm'")
    region = tissue_region(
        p.rows, p.columns, p.pixel_spacing_cm, top=p.rows // 16, bottom=p.rows - 1 - p.rows // 48
    )
    rng = ctx.rng("bmode")
    inclusions = _place(rng, region, p, p.inclusions)
    targets = _targets(rng, region, inclusions)
    image = np.zeros((p.rows, p.columns), np.uint8)
    image[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1] = render(
        rng,
        region,
        inclusions,
        frequency_mhz=p.frequency_mhz,
        snr_db=ctx.snr_db,
        dynamic_range_db=p.dynamic_range_db,
        targets_px=targets,
    )
    ds = new_dataset(ctx, US_IMAGE_STORAGE, series_description="simulated B-mode")
    us_image_attributes(ds, modes="0001")
    ds.SequenceOfUltrasoundRegions = regions_sequence([region])
    set_pixels(ds, image)
    truth = {
        "region": region.truth(),
        "pixel_spacing_mm": p.pixel_spacing_cm * 10.0,
        "inclusions": [_inclusion_truth(region, inc) for inc in inclusions],
        "point_targets": [
            {"pixel": [c, r], "physical_cm": [round(v, 6) for v in region.physical(c, r)]}
            for c, r in targets
        ],
        "point_pairs": [
            {
                "points": [i, j],
                "distance_mm": round(
                    math.dist(targets[i], targets[j]) * p.pixel_spacing_cm * 10, 6
                ),
            }
            for i, j in ((0, 1), (1, 2))
        ],
    }
    return [("bmode", ds, truth)]


def _inclusion_truth(region: Region, inc: Inclusion) -> dict[str, Any]:
    a, b = inc.semi_axes_mm
    col, row = region.pixel(*inc.centre_cm)
    out = asdict(inc)
    out.update(
        shape="circle" if a == b else "ellipse",
        centre_cm=list(inc.centre_cm),
        centre_pixel=[round(col, 4), round(row, 4)],
        semi_axes_mm=[a, b],
        diameters_mm=[2 * a, 2 * b],
        area_mm2=round(math.pi * a * b, 6),
    )
    if a == b:
        out["radius_mm"] = a
    return out

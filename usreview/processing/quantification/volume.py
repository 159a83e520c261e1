"""Processor ``volume``: the volume of the dominant anechoic structure of a 3D volume (mL).

Grey levels are turned back into echo power (assumed display dynamic range, default 60 dB)
and smoothed by a Gaussian of ``smoothing_mm`` (the same in mm along every axis, whatever the
voxel size) to average speckle out: at a flat wall of a cavity the mean power falls to half
its tissue level, wherever the point-spread function puts it.

1. The largest component of the darkest 1% (or 0.5, 0.25, 0.1%: the first that does not touch
   the volume's border) seeds the structure. Its level is the mean echo power (not smoothed) of
   the region's core, at least ``_CORE_MM`` inside its wall (the smoothed centre of a small
   structure stays above it: the 10th percentile of the smoothed seed read 0.25 mL up to 19%
   high), but no lower than the smoothed power reaches in the region (a wide smoothing must
   still find the structure).
2. The volume is split at the midpoint of that level and the surroundings' level (at first the
   whole volume's median, then the median of a shell of tissue ``_SHELL_WIDTH_MM`` thick, from
   ``_SHELL_SIGMAS`` smoothing sigmas but at least ``_SHELL_FROM_MM`` beyond the region: in mm,
   whatever the voxel size), keeping the component of the seed's darkest voxel, until the
   region changes by less than ``_SETTLED``. A structure less than ``_MIN_CONTRAST_DB`` below
   its surroundings is not anechoic.
3. A curved wall's midpoint lies inside the true wall by the blur's variance times the wall's
   mean curvature: the region misses sigma^2 x M, M the integral of the mean curvature over the
   wall (4 pi R for a sphere: -3 sigma^2 / R^2 of its volume, -9% for 1 mL at 1 mm smoothing).
   It is added back, with sigma^2 the smoothing's variance plus the point-spread function's (from
   the speckle's correlation between neighbouring voxels of the shell) and M that of the
   ellipsoid with the region's volume and second moments (``curvature_correction_ml``).
4. The smoothing is capped at a quarter of the structure's half-thickness (its deepest voxel's
   distance to the wall) and the structure segmented again, so that the first-order correction
   holds (a blurred sphere's: -0.8% left at a quarter, -2.8% at a third) (``smoothing_mm_used``).

Its volume is the filled region's voxel count times the voxel volume, plus that correction.
On 330 simulated volumes (known truth; 0.25-30 mL, voxels 0.3-1.2 mm, anisotropic ones, SNR
10-40 dB) it read -3.5% to +4.0% when the structure's half-thickness was at least
``_ACCURATE_HALF_THICKNESS_VOXELS`` voxels (of the largest side), but for one of 176 (+7.2%, 1 mL:
the speckle along the wall, SD 2.1% at 1 mL, 0.5% at 6 mL), and -5% to +10% from
``_MIN_HALF_THICKNESS_VOXELS`` to that: such a volume carries a ``coarse_voxels`` finding.
Thinner structures are refused, not measured.

Segmentation runs on display values (:func:`~usreview.dicom.display.to_display` over the whole
volume, so one grey window for every slice): MONOCHROME1 is inverted and more than 8 stored bits
are scaled to 0-255. The voxel size is the product of the absolute spacings
(:attr:`~usreview.dicom.UltrasoundInstance.voxel_spacing_mm`: the slice spacing comes from the
frames' positions when there are any, never from Slice Thickness); a negative Spacing Between
Slices only says that the slices are stored in reverse order. That order is recorded in the
quantity's details (``slice_order``: ``forward``, ``reversed`` or ``unsorted``, with the
``slice_order_evidence``): reversed when the slice spacing is negative or the frames' positions
(Image Position (Volume), else (Patient)) decrease along the slice normal; unsorted slices are
sorted by position before they are measured. The volume is not applicable when the slice
spacing is unknown or contradicted by the positions, when a spacing is zero or not finite, when
Pixel Spacing is negative, when a voxel side lies outside [``_MIN_VOXEL_MM``, ``_MAX_VOXEL_MM``],
when the volume spans less than ``_MIN_EXTENT_MM`` or more than ``_MAX_EXTENT_MM`` along an axis,
when no structure is anechoic, when the structure reaches the volume's border (cut off, or a
region that leaked through the speckle), when its wall does not settle, when the smoothing
leaves the tissue's speckle varying by more than ``_MAX_SPREAD``, or when the structure is too
thin for the voxel size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind
from usreview.dicom.display import to_display
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.spectral import grey_to_power
from usreview.processing.registry import Context, processor
from usreview.processing.results import Code, CodingScheme, Finding, Output, Quantity

__all__ = ["structure_volume"]

VOLUME_CODE = Code("118565006", CodingScheme.SNOMED, "Volume")


#: Voxel sides finer than 10 um are below the resolution of any ultrasound (even 50 MHz
#: preclinical probes resolve some 30 um) ...
_MIN_VOXEL_MM = 0.01
#: ... and coarser than 10 mm cannot delimit an organ structure.
_MAX_VOXEL_MM = 10.0
#: A volume spanning less than this along an axis cannot hold an organ structure inside it ...
_MIN_EXTENT_MM = 5.0
#: ... and no ultrasound probe images deeper or wider than half a metre.
_MAX_EXTENT_MM = 500.0
#: The smoothing sigma is capped at this fraction of the volume's size in voxels (along each axis):
#: wider smoothing averages the structure into its surroundings, and its cost grows with the width.
_MAX_SIGMA_FRACTION = 0.25

#: The shell whose median is the surroundings' level starts this many smoothing sigmas beyond
#: the region, out of the smoothed wall (whose mean power is 88% of the tissue's at 1.2 sigma,
#: 98% at 2) ...
_SHELL_SIGMAS = 2.0
#: ... but at least this far (mm) ...
_SHELL_FROM_MM = 1.2
#: ... and is this thick (mm). (Volume 1.1 took 2-6 voxels: inside the 1 mm smoothing at 0.3 mm
#: voxels, which read 6.2 mL as 5.0 mL.)
_SHELL_WIDTH_MM = 2.4
#: An anechoic structure's level lies at least this far (dB) below its surroundings' (the
#: simulated ones lie 9.6-38 dB below at 10-40 dB SNR; tissue alone dips some 3 dB).
_MIN_CONTRAST_DB = 6.0
#: The smoothed power may vary by at most this fraction (standard deviation over mean) in the
#: tissue shell: at the default smoothing it varied by 9-23%; a smaller smoothing_mm that left
#: 38-63% read +4.5% to +34% (a region seeping into the speckle's dips).
_MAX_SPREAD = 0.35
#: The structure is seeded by the darkest share (%) of the volume, the first of these at which
#: it does not touch the border.
_SEED_PERCENTILES = (1.0, 0.5, 0.25, 0.1)
#: The structure's level is the mean echo power (not smoothed) of the region's voxels at least
#: this deep (mm), or half its depth if thinner.
_CORE_MM = 1.0
#: The region is split again until it changes by less than this fraction ...
_SETTLED = 0.005
#: ... within this many splits.
_MAX_SPLITS = 20
#: The smoothing is capped at this fraction of the structure's half-thickness, and the structure
#: segmented again at most ``_MAX_RESMOOTHINGS`` times while the cap shrinks (a third left 0.25 mL
#: at 0.3 mm 3% low on average).
_MAX_SMOOTHING_OF_HALF_THICKNESS = 0.25
_MAX_RESMOOTHINGS = 4
#: A structure thinner than this many voxels (of the largest side) from its deepest voxel to its
#: wall is refused: at 1.2 mm voxels 0.25 mL (2.2-2.5 voxels) read +4% to +29% or did not
#: settle, 0.5 mL (3.0-3.2 voxels) +2% to +14%.
_MIN_HALF_THICKNESS_VOXELS = 3.5
#: Below this many, a ``coarse_voxels`` finding gives the errors measured on simulated volumes
#: (0.25-1 mL at 0.6-1.2 mm: -4.9% to +10.2%; from this many on: -3.5% to +4.0%, one +7.2%).
_ACCURATE_HALF_THICKNESS_VOXELS = 6.5
_COARSE_ERRORS = "-5% to +10%"
#: Shells and depths are measured on voxels sampled about this far apart (mm): a shell's
#: median needs no finer grid, and distances over a whole box of 0.3 mm voxels took seconds.
_STEP_MM = 0.6
#: Directions over the sphere (Fibonacci lattice), for the mean width of the fitted ellipsoid.
_DIRECTIONS = 400


def _around(mask: npt.NDArray[np.bool_], margin: Sequence[int]) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels per axis (within the volume)."""
    box = ndimage.find_objects(mask.astype(np.int8))[0]
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m))
        for s, m, n in zip(box, margin, mask.shape, strict=True)
    )


def _strides(size: Sequence[float]) -> tuple[int, ...]:
    """Every how many voxels per axis to sample a shell or a distance: about ``_STEP_MM``."""
    return tuple(max(1, int(_STEP_MM / s + 1e-9)) for s in size)


def _shell(
    region: npt.NDArray[np.bool_], size: Sequence[float], inner: float, outer: float
) -> tuple[tuple[slice, ...], npt.NDArray[np.bool_]]:
    """The voxels farther than ``inner`` and at most ``outer`` mm from ``region``, sampled
    every :func:`_strides` voxels: the box holding them and their mask over the box's samples.

    Distances are computed over the box only, which holds every voxel within ``outer`` of
    the region.
    """
    near = _around(region, [math.ceil(outer / s) + 1 for s in size])
    strides = _strides(size)
    sampled = region[near][tuple(slice(None, None, k) for k in strides)]
    step = [s * k for s, k in zip(size, strides, strict=True)]
    distance = ndimage.distance_transform_edt(~sampled, sampling=step)
    return near, (distance > inner) & (distance <= outer)


def _sampled(array: npt.NDArray[Any], near: tuple[slice, ...], size: Sequence[float]) -> Any:
    """``array`` over the box ``near`` at the samples of :func:`_shell`."""
    return array[near][tuple(slice(None, None, k) for k in _strides(size))]


def _voxel_size_mm(
    spacing: tuple[float, float, float], shape: tuple[int, ...]
) -> tuple[float, float, float]:
    """The (slice, row, column) voxel sides in mm, or :class:`NotApplicable` saying why not.

    A negative slice spacing (reversed slice order) counts by its absolute value.
    """
    between, row, column = spacing
    if not all(math.isfinite(s) and s != 0.0 for s in spacing):
        raise NotApplicable(f"the voxel spacing {spacing} mm has a zero or non-finite value")
    if row < 0.0 or column < 0.0:
        raise NotApplicable(f"the pixel spacing ({row}, {column}) mm is negative")
    size = (abs(between), row, column)
    if not all(_MIN_VOXEL_MM <= s <= _MAX_VOXEL_MM for s in size):
        raise NotApplicable(
            f"the voxel size {size} mm is implausible for ultrasound: each side must lie in "
            f"[{_MIN_VOXEL_MM}, {_MAX_VOXEL_MM}] mm"
        )
    extent = tuple(round(n * s, 3) for n, s in zip(shape, size, strict=True))
    if not all(_MIN_EXTENT_MM <= e <= _MAX_EXTENT_MM for e in extent):
        raise NotApplicable(
            f"the volume spans {extent} mm: each side must lie in "
            f"[{_MIN_EXTENT_MM}, {_MAX_EXTENT_MM}] mm to hold an organ structure"
        )
    return size


def _slice_order(
    between: float, found: tuple[str, npt.NDArray[np.float64]] | None
) -> tuple[dict[str, Any], npt.NDArray[np.intp] | None]:
    """The order of the slices as stored (``slice_order``) and what shows it (evidence), and
    for unsorted slices the order that sorts them by position.

    ``reversed`` when the slice spacing is negative or the frames' positions (``found``: where
    they come from and their values along the slice normal) decrease; ``unsorted`` when the
    positions go back and forth.
    """
    evidence = [f"slice spacing {between:g} mm"]
    order = "reversed" if between < 0 else "forward"
    sort: npt.NDArray[np.intp] | None = None
    if found is not None:
        name, along = found
        steps = np.diff(along)
        if np.all(steps > 0):
            evidence.append(f"{name} increasing along the slice normal")
        elif np.all(steps < 0):
            evidence.append(f"{name} decreasing along the slice normal")
            order = "reversed"
        else:
            evidence.append(f"{name} not monotonic along the slice normal")
            evidence.append("slices sorted by position before measuring")
            order = "unsorted"
            sort = np.argsort(along, kind="stable")
    return {"slice_order": order, "slice_order_evidence": evidence}, sort


def _smoothing_sigma(
    smoothing_mm: float, size: tuple[float, float, float], shape: tuple[int, ...]
) -> list[float]:
    """Gaussian sigma in voxels per axis: ``smoothing_mm`` over the voxel side, capped."""
    return [
        min(smoothing_mm / s, _MAX_SIGMA_FRACTION * n) for s, n in zip(size, shape, strict=True)
    ]


def _seed(smooth: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """The largest connected component of the darkest ``_SEED_PERCENTILES`` of ``smooth``, at
    the first of them where it does not touch the volume's border, or :class:`NotApplicable`.

    At 1%, a small structure's dark component can reach the border through its blurred wall and
    the speckle's dips although the structure does not; a darker share leaves its core alone.
    """
    for level in np.percentile(smooth, _SEED_PERCENTILES):
        labels, count = ndimage.label(smooth <= level)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        largest = int(sizes.argmax())
        if largest not in set(np.unique(_faces(labels)).tolist()):
            out: npt.NDArray[np.bool_] = labels == largest
            return out
    contrast_db = 10 * math.log10(float(np.median(smooth)) / max(float(smooth.min()), 1e-30))
    if contrast_db < _MIN_CONTRAST_DB:
        raise NotApplicable(
            f"no anechoic structure inside the volume: nothing lies {_MIN_CONTRAST_DB:g} dB "
            f"below the median (the darkest, {contrast_db:.1f} dB)"
        )
    raise NotApplicable(
        "the darkest region reaches the border of the volume: a structure cut off by the "
        "volume's edge is not measured"
    )


def _faces(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The values on the six faces of a 3D array, flattened."""
    return np.concatenate(
        [array[[0, -1]].ravel(), array[:, [0, -1]].ravel(), array[:, :, [0, -1]].ravel()]
    )


def _blur_variance(
    power: npt.NDArray[np.float64], shell: npt.NDArray[np.bool_], size: Sequence[float]
) -> float:
    """The point-spread function's blur of the mean power: its variance (mm^2), averaged over
    the three axes, from the speckle's correlation between each sample of the tissue ``shell``
    (over the box ``power``, as :func:`_shell` gives it) and its next voxel along each axis.

    Fully developed speckle of a Gaussian PSF of sigma ``s`` correlates its power by
    ``rho = exp(-d^2 / (2 s^2))`` at a distance ``d``; the mean power is blurred by the
    squared PSF, of variance ``s^2 / 2 = -d^2 / (4 ln rho)``. Uncorrelated speckle (rho
    below 0.01) counts as no blur.
    """
    strides = _strides(size)
    variances = []
    for axis, side in enumerate(size):
        offset = [0, 0, 0]
        offset[axis] = 1
        following = power[tuple(slice(o, None, k) for o, k in zip(offset, strides, strict=True))]
        crop = tuple(slice(0, n) for n in following.shape)
        samples = shell[crop]
        first = power[tuple(slice(None, None, k) for k in strides)][crop][samples]
        second = following[samples]
        rho = 0.0
        if first.size > 2 and np.ptp(first) > 0 and np.ptp(second) > 0:
            rho = float(np.corrcoef(first, second)[0, 1])
        variances.append(0.0 if rho < 0.01 else -(side**2) / (4.0 * math.log(min(rho, 0.99))))
    return float(np.mean(variances))


def _mean_curvature_integral(solid: npt.NDArray[np.bool_], size: Sequence[float]) -> float:
    """The integral of the mean curvature over the wall (mm) of the ellipsoid with the volume
    and second moments of ``solid``: 2 pi times its mean width."""
    points = np.argwhere(solid) * np.asarray(size, np.float64)
    variances = np.linalg.eigvalsh(np.cov(points.T))
    semi = np.sqrt(5.0 * np.maximum(variances, 1e-12))  # a uniform ellipsoid: a^2 / 5
    volume = float(np.count_nonzero(solid)) * float(np.prod(size))
    semi *= (volume / (4.0 / 3.0 * math.pi * float(np.prod(semi)))) ** (1.0 / 3.0)
    k = np.arange(_DIRECTIONS) + 0.5
    polar = np.arccos(1.0 - 2.0 * k / _DIRECTIONS)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * k
    directions = np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1
    )
    support = np.sqrt((directions**2 * semi**2).sum(axis=1))
    return float(2.0 * math.pi * 2.0 * support.mean())


class _Segmentation(NamedTuple):
    """A structure's filled region, its smoothing (mm), the shell around it (box, mask), how
    far below the shell's level the structure's is (dB) and the smoothed power's relative spread
    (standard deviation over mean) in the shell."""

    solid: npt.NDArray[np.bool_]
    smoothing_mm: float
    near: tuple[slice, ...]
    shell: npt.NDArray[np.bool_]
    contrast_db: float
    spread: float


def _segment(
    power: npt.NDArray[np.float64], size: tuple[float, float, float], smoothing_mm: float
) -> _Segmentation:
    """Segment the dominant anechoic structure at ``smoothing_mm`` (steps 1 and 2 of the
    module's description), or :class:`NotApplicable` saying why it cannot be."""
    sigma = _smoothing_sigma(smoothing_mm, size, power.shape)
    smooth = ndimage.gaussian_filter(power.astype(np.float32), sigma)
    seed = _seed(smooth)
    darkest = np.unravel_index(int(np.argmin(np.where(seed, smooth, np.inf))), smooth.shape)
    level = max(_core_level(power, seed, size), float(smooth[seed].min()))
    surroundings = float(np.median(smooth))
    inner = max(_SHELL_FROM_MM, _SHELL_SIGMAS * smoothing_mm)
    outer = inner + _SHELL_WIDTH_MM
    region = seed
    for _ in range(_MAX_SPLITS):
        labels = ndimage.label(smooth < 0.5 * (level + surroundings))[0]
        label = int(labels[darkest])
        if label == 0:
            raise NotApplicable(
                f"the anechoic structure could not be delimited (smoothing {smoothing_mm:g} mm)"
            )
        new = labels == label
        if np.any(_faces(new)):
            raise NotApplicable(
                "the structure reaches the border of the volume: it is cut off by the volume's "
                f"edge, or its region leaked through the speckle (smoothing {smoothing_mm:g} mm)"
            )
        settled = abs(int(new.sum()) - int(region.sum())) <= _SETTLED * new.sum()
        region = new
        level = max(_core_level(power, region, size), float(smooth[region].min()))
        near, shell = _shell(region, size, inner, outer)
        if not np.any(shell):
            raise NotApplicable(
                f"no tissue {inner:g}-{outer:g} mm around the structure: it fills the volume"
            )
        tissue = _sampled(smooth, near, size)[shell]
        surroundings = float(np.median(tissue))
        if settled:
            contrast_db = 10 * math.log10(surroundings / level)
            spread = float(np.std(tissue)) / float(np.mean(tissue))
            return _Segmentation(_filled(region), smoothing_mm, near, shell, contrast_db, spread)
    raise NotApplicable(
        f"the structure's wall did not settle in {_MAX_SPLITS} splits (no clear wall)"
    )


def _filled(region: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``region`` with its holes filled (over its box: the volume held 6 million voxels)."""
    near = _around(region, [1, 1, 1])
    solid = np.zeros_like(region)
    solid[near] = ndimage.binary_fill_holes(np.pad(region[near], 1))[1:-1, 1:-1, 1:-1]
    return solid


def _core_level(
    power: npt.NDArray[np.float64], region: npt.NDArray[np.bool_], size: Sequence[float]
) -> float:
    """The mean echo power in the core of ``region`` (sampled as shells): deeper than
    ``_CORE_MM`` or half its depth, out of reach of the smoothing, so that a small structure's
    level is its own and not that of its blurred wall."""
    near = _around(region, [1, 1, 1])
    step = [s * k for s, k in zip(size, _strides(size), strict=True)]
    # a voxel's distance to the nearest voxel outside, less half a sample: to the wall
    depth = ndimage.distance_transform_edt(_sampled(region, near, size), sampling=step)
    depth -= 0.5 * min(step)
    core = depth >= min(_CORE_MM, 0.5 * float(depth.max()))
    return float(np.mean(_sampled(power, near, size)[core]))


def _half_thickness_mm(solid: npt.NDArray[np.bool_], size: Sequence[float]) -> float:
    """The distance (mm) from the structure's deepest voxel to its wall (sampled as shells)."""
    near = _around(solid, [1, 1, 1])
    step = [s * k for s, k in zip(size, _strides(size), strict=True)]
    return float(ndimage.distance_transform_edt(_sampled(solid, near, size), sampling=step).max())


@processor(
    "volume",
    kinds={ImageKind.VOLUME},
    version="2.0",
    params={"smoothing_mm": 1.0, "dynamic_range_db": 60.0},
    requires=("scipy",),
)
def structure_volume(context: Context) -> Output:
    """Volume of the largest anechoic structure inside a 3D volume."""
    instance = context.instance
    spacing = instance.voxel_spacing_mm
    if spacing is None:
        raise NotApplicable(
            instance.voxel_spacing_problem or "the volume has no voxel spacing (Pixel Measures)"
        )
    voxels = instance.frames()
    if voxels.ndim != 3:
        raise NotApplicable(f"expected grey voxels (frames, rows, columns), got {voxels.shape}")
    order, sort = _slice_order(spacing[0], instance.slice_positions_mm)
    if sort is not None:  # frames stored out of order: measure them in place
        voxels = voxels[sort]
    photometric = instance.photometric_interpretation
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotApplicable(f"the voxels are {photometric}, not grey")
    size = _voxel_size_mm(spacing, voxels.shape)
    grey = to_display(voxels, instance.dataset, photometric)
    power = grey_to_power(grey, float(context.params["dynamic_range_db"]))
    requested = float(context.params["smoothing_mm"])
    found = _segment(power, size, requested)
    half = _half_thickness_mm(found.solid, size)
    for _ in range(_MAX_RESMOOTHINGS):  # a wide smoothing widens the region it measures by
        cap = _MAX_SMOOTHING_OF_HALF_THICKNESS * half
        if found.smoothing_mm <= 1.01 * cap or half < _MIN_HALF_THICKNESS_VOXELS * max(size):
            break
        found = _segment(power, size, cap)
        half = _half_thickness_mm(found.solid, size)
    if found.spread > _MAX_SPREAD:
        why = (
            "capped at a quarter of the structure's half-thickness: the structure is too small "
            "for these voxels"
            if found.smoothing_mm < requested
            else "raise smoothing_mm"
        )
        raise NotApplicable(
            f"the smoothed tissue still varies by {found.spread:.0%} (over {_MAX_SPREAD:.0%}): "
            f"too little smoothing ({found.smoothing_mm:.2g} mm) for the speckle; {why}"
        )
    if found.contrast_db < _MIN_CONTRAST_DB:
        raise NotApplicable(
            "no anechoic structure inside the volume: the darkest region is only "
            f"{found.contrast_db:.1f} dB below its surroundings (an anechoic one is more than "
            f"{_MIN_CONTRAST_DB:g} dB below)"
        )
    voxels_deep = half / max(size)
    if voxels_deep < _MIN_HALF_THICKNESS_VOXELS:
        raise NotApplicable(
            f"the structure is too thin for the voxel size: {half:.1f} mm from its centre to "
            f"its wall, {voxels_deep:.1f} voxels of {max(size):g} mm (under "
            f"{_MIN_HALF_THICKNESS_VOXELS:g}); measure it on finer voxels"
        )
    blur = found.smoothing_mm**2 + _blur_variance(power[found.near], found.shell, size)
    correction_ml = blur * _mean_curvature_integral(found.solid, size) / 1000.0
    voxel_ml = float(np.prod(size)) / 1000.0
    count = int(np.count_nonzero(found.solid))
    extent = ndimage.find_objects(found.solid.astype(np.int8))[0]
    dims = [round((s.stop - s.start) * d, 2) for s, d in zip(extent, size, strict=True)]
    quantity = Quantity(
        "volume",
        VOLUME_CODE,
        round(count * voxel_ml + correction_ml, 3),
        "mL",
        details={
            "voxels": count,
            "extent_mm_frames_rows_columns": dims,
            "half_thickness_mm": round(half, 2),
            "smoothing_mm_used": round(found.smoothing_mm, 3),
            "curvature_correction_ml": round(correction_ml, 3),
            "contrast_db": round(found.contrast_db, 1),
            "tissue_spread": round(found.spread, 3),
            **order,
        },
    )
    findings: tuple[Finding, ...] = ()
    if voxels_deep < _ACCURATE_HALF_THICKNESS_VOXELS:
        findings = (
            Finding(
                "coarse_voxels",
                f"The structure is {voxels_deep:.1f} voxels of {max(size):g} mm from its centre "
                f"to its wall: structures this thin for their voxels read {_COARSE_ERRORS} on "
                f"simulated volumes (within 5% from {_ACCURATE_HALF_THICKNESS_VOXELS:g} voxels); "
                "measure it on finer voxels for a closer volume.",
                {"half_thickness_mm": round(half, 2), "voxel_mm": max(size)},
            ),
        )
    return Output(quantities=(quantity,), findings=findings)

"""Processor ``volume``: the volume of the dominant anechoic structure of a 3D volume (mL).

Grey levels are turned back into echo power (assumed display dynamic range, default 60 dB)
and smoothed (Gaussian, ``smoothing_mm``) to average speckle out: at the wall of a cavity
the mean power falls to half its tissue level, wherever the point-spread function puts it.
The largest component of the darkest 1% that does not touch the volume's border seeds the structure;
the volume is then split at the midpoint of the structure's grey level and that of a shell
2-6 voxels around it, keeping the component holding the seed, until it stops growing.
Its volume is the voxel count times the voxel volume (Enhanced US Volume pixel measures).

Segmentation runs on display values (:func:`~usreview.dicom.display.to_display` over the whole
volume, so one grey window for every slice): MONOCHROME1 is inverted and more than 8 stored bits
are scaled to 0-255. The voxel size is the product of the absolute spacings: a negative Spacing
Between Slices only says that the slices are stored in reverse order. That order is recorded in the
quantity's details (``slice_order``: ``forward``, ``reversed`` or ``unsorted``, with the
``slice_order_evidence``): reversed when the slice spacing is negative or the frames' positions
(Image Position (Volume), else (Patient)) decrease along the slice normal; unsorted slices are
sorted by position before they are measured. The volume is not
applicable when a spacing is zero or not finite, when Pixel Spacing is negative, when a voxel side
lies outside [``_MIN_VOXEL_MM``, ``_MAX_VOXEL_MM``], or when the volume spans less than
``_MIN_EXTENT_MM`` or more than ``_MAX_EXTENT_MM`` along an axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from scipy import ndimage

from usreview.dicom import ImageKind
from usreview.dicom.display import to_display
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.spectral import grey_to_power
from usreview.processing.registry import Context, processor
from usreview.processing.results import Code, CodingScheme, Output, Quantity

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

#: Where a frame's position and orientation are, per frame of reference (volume, then patient):
#: (position sequence, position, orientation sequence, orientation, name).
_PLANES = (
    (
        "PlanePositionVolumeSequence",
        "ImagePositionVolume",
        "PlaneOrientationVolumeSequence",
        "ImageOrientationVolume",
        "Image Position (Volume)",
    ),
    (
        "PlanePositionSequence",
        "ImagePositionPatient",
        "PlaneOrientationSequence",
        "ImageOrientationPatient",
        "Image Position (Patient)",
    ),
)

#: The shell around the structure: from this many voxels out ...
_SHELL_IN = 2
#: ... to this many.
_SHELL_OUT = 6


def _around(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels (within the volume)."""
    box = ndimage.find_objects(mask.astype(np.int8))[0]
    return tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(box, mask.shape, strict=True)
    )


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


def _group_value(group: Dataset, sequence: str, keyword: str) -> Any:
    """``keyword`` of the first item of the functional group ``sequence`` (``None`` if absent)."""
    items = group.get(sequence) or []
    return items[0].get(keyword) if len(items) else None


def _frame_positions(dataset: Dataset, frames: int) -> tuple[str, npt.NDArray[np.float64]] | None:
    """The frames' positions (mm) along the slice normal, and where they come from.

    The normal is the cross product of the orientation's row and column directions (the first
    frame's, else the shared one). ``None`` when no frame of reference gives each of the
    ``frames`` frames (at least 2) a finite position, not all the same, and an orientation.
    """
    per_frame = list(dataset.get("PerFrameFunctionalGroupsSequence") or [])
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if frames < 2 or len(per_frame) != frames:
        return None
    for position_sequence, position, orientation_sequence, orientation, name in _PLANES:
        try:
            positions = np.array(
                [_group_value(f, position_sequence, position) for f in per_frame], np.float64
            )
            cosines = np.array(
                _group_value(per_frame[0], orientation_sequence, orientation)
                or _group_value(shared, orientation_sequence, orientation),
                np.float64,
            )
        except (TypeError, ValueError):
            continue
        if positions.shape != (frames, 3) or cosines.shape != (6,):
            continue
        normal = np.cross(cosines[:3], cosines[3:])
        along = positions @ normal
        if np.all(np.isfinite(along)) and np.ptp(along) > 0 and np.linalg.norm(normal) > 0.5:
            return name, along
    return None


def _slice_order(
    dataset: Dataset, between: float, frames: int
) -> tuple[dict[str, Any], npt.NDArray[np.intp] | None]:
    """The order of the slices as stored (``slice_order``) and what shows it (evidence), and
    for unsorted slices the order that sorts them by position.

    ``reversed`` when the slice spacing is negative or the frames' positions decrease along
    the slice normal; ``unsorted`` when the positions go back and forth.
    """
    evidence = [f"slice spacing {between:g} mm"]
    order = "reversed" if between < 0 else "forward"
    found = _frame_positions(dataset, frames)
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


def _largest_inner(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_] | None:
    """The largest connected component of ``mask`` not touching the border (or ``None``)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    border = np.unique(
        np.concatenate(
            [labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[border] = 0
    sizes[0] = 0
    if sizes.max() == 0:
        return None
    out: npt.NDArray[np.bool_] = labels == int(sizes.argmax())
    return out


@processor(
    "volume",
    kinds={ImageKind.VOLUME},
    version="1.1",
    params={"smoothing_mm": 1.0, "dynamic_range_db": 60.0},
    requires=("scipy",),
)
def structure_volume(context: Context) -> Output:
    """Volume of the largest anechoic structure inside a 3D volume."""
    instance = context.instance
    spacing = instance.voxel_spacing_mm
    if spacing is None:
        raise NotApplicable("the volume has no voxel spacing (Pixel Measures Sequence)")
    voxels = instance.frames()
    if voxels.ndim != 3:
        raise NotApplicable(f"expected grey voxels (frames, rows, columns), got {voxels.shape}")
    order, sort = _slice_order(instance.dataset, spacing[0], voxels.shape[0])
    if sort is not None:  # frames stored out of order: measure them in place
        voxels = voxels[sort]
    photometric = instance.photometric_interpretation
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotApplicable(f"the voxels are {photometric}, not grey")
    size = _voxel_size_mm(spacing, voxels.shape)
    grey = to_display(voxels, instance.dataset, photometric)
    sigma = _smoothing_sigma(float(context.params["smoothing_mm"]), size, grey.shape)
    power = grey_to_power(grey, float(context.params["dynamic_range_db"]))
    smooth = ndimage.gaussian_filter(power.astype(np.float32), sigma)
    seed = _largest_inner(smooth <= np.percentile(smooth, 1))
    if seed is None:
        raise NotApplicable("no anechoic structure inside the volume")
    # refine: split at the midpoint of the structure's level and its surroundings' level
    region = seed
    for _ in range(8):
        near = _around(region, _SHELL_OUT)  # the dilations reach no further
        grown = ndimage.binary_dilation(region[near], iterations=_SHELL_IN)
        shell = ndimage.binary_dilation(grown, iterations=_SHELL_OUT - _SHELL_IN) & ~grown
        level = float(np.median(smooth[region]))
        threshold = 0.5 * (level + float(np.median(smooth[near][shell])))
        labels, _ = ndimage.label(smooth < threshold)
        label = int(np.bincount(labels[seed]).argmax())
        if label == 0:
            raise NotApplicable("the anechoic structure could not be delimited")
        new = labels == label
        done = abs(int(new.sum()) - int(region.sum())) <= 0.002 * new.sum()
        region = new
        if done:
            break
    solid = ndimage.binary_fill_holes(region)
    voxel_ml = float(np.prod(size)) / 1000.0
    count = int(np.count_nonzero(solid))
    extent = ndimage.find_objects(solid.astype(np.int8))[0]
    dims = [round((s.stop - s.start) * d, 2) for s, d in zip(extent, size, strict=True)]
    quantity = Quantity(
        "volume",
        VOLUME_CODE,
        round(count * voxel_ml, 3),
        "mL",
        details={
            "voxels": count,
            "extent_mm_frames_rows_columns": dims,
            **order,
        },
    )
    return Output(quantities=(quantity,))

"""Processor ``volume``: the volume of the dominant anechoic structure of a 3D volume (mL).

Grey levels are turned back into echo power (assumed display dynamic range, default 60 dB)
and smoothed (Gaussian, ``smoothing_mm``) to average speckle out: at the wall of a cavity
the mean power falls to half its tissue level, wherever the point-spread function puts it.
The largest component of the darkest 1% that does not touch the volume's border seeds the structure;
the volume is then split at the midpoint of the structure's grey level and that of a shell
2-6 voxels around it, keeping the component holding the seed, until it stops growing.
Its volume is the voxel count times the voxel volume (Enhanced US Volume pixel measures).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.spectral import grey_to_power
from usreview.processing.registry import Context, processor
from usreview.processing.results import Code, CodingScheme, Output, Quantity

__all__ = ["structure_volume"]

VOLUME_CODE = Code("118565006", CodingScheme.SNOMED, "Volume")


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
    version="1.0",
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
    sigma = [float(context.params["smoothing_mm"]) / s for s in spacing]
    power = grey_to_power(voxels.astype(np.uint8), float(context.params["dynamic_range_db"]))
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
    voxel_ml = float(np.prod(spacing)) / 1000.0
    count = int(np.count_nonzero(solid))
    extent = ndimage.find_objects(solid.astype(np.int8))[0]
    dims = [round((s.stop - s.start) * d, 2) for s, d in zip(extent, spacing, strict=True)]
    quantity = Quantity(
        "volume",
        VOLUME_CODE,
        round(count * voxel_ml, 3),
        "mL",
        details={"voxels": count, "extent_mm_frames_rows_columns": dims},
    )
    return Output(quantities=(quantity,))

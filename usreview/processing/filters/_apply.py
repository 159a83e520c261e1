"""Apply a frame filter to the grey-scale tissue regions of an instance, frame by frame.

Only the sector of each tissue region is filtered, and in it neither burned-in graphics nor
point reflectors (:mod:`~usreview.processing.filters._masks`), nor the pixels of any other
region that overlaps it (an ECG trace, a grey bar), nor coloured pixels: all of these keep
their values exactly and lend none to their neighbours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from usreview.dicom import ImageKind, RegionDataType, RegionSpatialFormat, UltrasoundInstance
from usreview.processing.errors import NotApplicable
from usreview.processing.filters._masks import graphics_mask, sector_mask
from usreview.processing.filters.derived import SMOOTHING
from usreview.processing.results import DerivedImage, Output

__all__ = ["FrameFilter", "filter_instance", "grey_frame", "kept_pixels", "tissue_boxes"]

#: A frame filter: ``apply(frame, keep)``, where ``keep`` marks the pixels to leave as they
#: are and to give no weight as neighbours.
FrameFilter = Callable[[npt.NDArray[np.uint8], npt.NDArray[np.bool_]], npt.NDArray[np.uint8]]
#: Kinds a speckle filter may meet; any other (Doppler, colour, M-mode) is left alone. An ECG
#: trace (most echo stills have one) is a region of its own, kept as it is.
_GREY_KINDS = frozenset({ImageKind.BMODE, ImageKind.CINE, ImageKind.HARMONIC, ImageKind.ECG})
#: A pixel whose channels differ by more than this is coloured (an annotation, flow).
_COLOUR_SPREAD = 16
#: Above this fraction of coloured pixels in the tissue regions, the image is not grey-scale.
_COLOUR_FRACTION = 0.02


#: The smallest frame side, and tissue region side, a speckle filter is applied to (pixels).
_MIN_SIDE = 8


def tissue_boxes(instance: UltrasoundInstance) -> list[tuple[slice, slice]]:
    """Bounding boxes of the 2D tissue regions, clipped to the frame; the whole frame if none."""
    boxes = []
    for region in instance.regions:
        if (
            region.spatial_format == RegionSpatialFormat.TWO_D
            and region.data_type == RegionDataType.TISSUE
        ):
            x0, y0, x1, y1 = region.bounds
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, instance.columns - 1), min(y1, instance.rows - 1)
            if x1 - x0 >= _MIN_SIDE and y1 - y0 >= _MIN_SIDE:
                boxes.append((slice(y0, y1 + 1), slice(x0, x1 + 1)))
    return boxes or [(slice(0, instance.rows), slice(0, instance.columns))]


def _other_regions(instance: UltrasoundInstance) -> npt.NDArray[np.bool_]:
    """Pixels inside a region that is not a 2D tissue region (ECG trace, grey bar, ...)."""
    inside = np.zeros((instance.rows, instance.columns), bool)
    for region in instance.regions:
        if (
            region.spatial_format == RegionSpatialFormat.TWO_D
            and region.data_type == RegionDataType.TISSUE
        ):
            continue
        x0, y0, x1, y1 = region.bounds
        inside[max(y0, 0) : max(y1 + 1, 0), max(x0, 0) : max(x1 + 1, 0)] = True
    return inside


def kept_pixels(
    grey: npt.NDArray[np.uint8],
    fixed: npt.NDArray[np.bool_] | None = None,
    sector: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """The pixels of a tissue region's rectangle ``grey`` that a speckle filter keeps.

    Those outside the sector (``sector``, by default found in ``grey``), burned-in graphics
    and point reflectors (see :mod:`~usreview.processing.filters._masks`), and ``fixed``
    ones (coloured, or in another region).
    """
    graphics = graphics_mask(grey)
    if fixed is not None:
        graphics |= fixed
    if sector is None:
        sector = sector_mask(grey, graphics)
    keep: npt.NDArray[np.bool_] = graphics | ~sector
    return keep


def grey_frame(
    instance: UltrasoundInstance, index: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """Display frame ``index`` as 8-bit grey, plus the RGB frame when it is stored in colour.

    Grey images stored as RGB, YBR or palette colour are common; their grey is the channel
    mean (lossy YBR leaves the channels a few levels apart).
    """
    frame = instance.display_frame(index)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame), None
    r, g, b = (frame[..., k].astype(np.uint16) for k in range(3))
    grey = ((r + g + b + 1) // 3).astype(np.uint8)
    return grey, frame


def _coloured(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    coloured: npt.NDArray[np.bool_] = spread > _COLOUR_SPREAD
    return coloured


def filter_instance(instance: UltrasoundInstance, apply: FrameFilter, description: str) -> Output:
    """Filter the sector of the tissue regions of every frame; every other pixel is kept.

    Kept exactly, and given no weight as neighbours (:func:`kept_pixels`): the rectangle of
    a tissue region outside its sector (found in the first frame: a cine's acquisition area
    does not change), burned-in graphics and point reflectors in it (found in each frame),
    coloured pixels, the pixels of any other region (ECG trace, grey bar), and everything
    outside the tissue regions.
    Returns one :class:`DerivedImage` called ``filtered``: the frame, or for a cine all its
    frames (``multiframe``), grey or, for frames stored in colour, RGB; its derivation is
    (113087, DCM, "Smoothing").
    Raises :class:`NotApplicable` for Doppler, colour flow or M-mode content.
    """
    other = set(instance.kinds) - _GREY_KINDS
    if other:
        shown = ", ".join(sorted(k.value for k in other))
        raise NotApplicable(
            f"speckle reduction applies to grey-scale B-mode only; this shows {shown}"
        )
    if min(instance.rows, instance.columns) < _MIN_SIDE:
        raise NotApplicable(
            f"the frame is {instance.rows} x {instance.columns} pixels: too small for speckle "
            f"reduction (at least {_MIN_SIDE} x {_MIN_SIDE})"
        )
    boxes = tissue_boxes(instance)
    elsewhere = _other_regions(instance)
    sectors: list[npt.NDArray[np.bool_]] = []  # per box, from the first frame
    count = instance.number_of_frames
    stack: npt.NDArray[np.uint8] | None = None
    for index in range(count):
        frame, rgb = grey_frame(instance, index)
        coloured = _coloured(rgb) if rgb is not None else np.zeros(frame.shape, bool)
        if max(coloured[box].mean() for box in boxes) > _COLOUR_FRACTION:
            raise NotApplicable(
                f"speckle reduction applies to grey-scale images; frame {index + 1} has colour "
                "in its tissue region"
            )
        source = frame if rgb is None else rgb
        if stack is None:  # frames of one instance share their shape and colour model
            stack = np.empty((count, *source.shape), np.uint8)
        elif stack.shape[1:] != source.shape:
            raise ValueError(f"frame {index + 1} has shape {source.shape}, not {stack.shape[1:]}")
        out = stack[index]
        out[...] = source
        for k, box in enumerate(boxes):
            fixed = coloured[box] | elsewhere[box]
            if index == 0:  # a cine's acquisition area does not change from frame to frame
                sectors.append(sector_mask(frame[box], graphics_mask(frame[box]) | fixed))
            keep = kept_pixels(frame[box], fixed, sectors[k])
            if keep.all():
                continue
            filtered = apply(frame[box], keep)
            change, target = ~keep, out[box]
            target[change] = filtered[change] if rgb is None else filtered[change][:, None]
    if stack is None:
        raise NotApplicable("the instance holds no frame")
    image = DerivedImage(
        "filtered",
        stack if count > 1 else stack[0],
        description,
        multiframe=count > 1,
        derivation=SMOOTHING,
    )
    return Output(images=(image,))

"""Apply a frame filter to the grey-scale tissue regions of an instance, frame by frame."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from usreview.dicom import ImageKind, RegionDataType, RegionSpatialFormat, UltrasoundInstance
from usreview.processing.errors import NotApplicable
from usreview.processing.filters.derived import SMOOTHING
from usreview.processing.results import DerivedImage, Output

__all__ = ["FrameFilter", "filter_instance", "grey_frame", "tissue_boxes"]

FrameFilter = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]
#: Kinds a speckle filter may meet; any other (Doppler, colour, M-mode) is left alone.
_GREY_KINDS = frozenset({ImageKind.BMODE, ImageKind.CINE, ImageKind.HARMONIC})
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
    """Filter the tissue regions of every frame; pixels outside them (annotations) are kept.

    Returns one :class:`DerivedImage` called ``filtered``: the frame, or for a cine all its
    frames (``multiframe``), grey or, for frames stored in colour, RGB with coloured pixels
    kept; its derivation is (113087, DCM, "Smoothing").
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
        for box in boxes:
            filtered = apply(frame[box])
            if rgb is None:
                out[box] = filtered
            else:  # coloured pixels (annotations) keep their colour
                keep = coloured[box]
                out[box] = np.where(keep[..., None], rgb[box], filtered[..., None])
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

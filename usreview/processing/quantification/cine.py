"""Processor ``cine_heart_rate``: the heart rate of a B-mode cine, from how its frames repeat.

Frames one cardiac cycle apart show the heart at the same phase, so they look alike. The
frames' largest 2D tissue region (the whole frame without one; grey, colour averaged) is
reduced to blocks of about ``block_mm`` (block means: speckle averages out, structures stay),
and the frames are placed on an even time grid when their Frame Time Vector is uneven.
Each block's slow drift (probe, breathing, gain: a running mean over ``highpass_s``) is
removed, leaving what changes within a cycle. The similarity of two frames is the correlation
of what remains; at each lag it is averaged over every pair of frames that far apart, which
gives an autocorrelation of the whole cine, 1.0 at lag 0.

Its first strong peak is the period, chosen as the spectral and M-mode processors choose
theirs (:func:`.cycles.repetition`: a period at either edge of 12 to 320/min refused, a
multiple never taken for the period, nor a peak landing on whole frames at two or three
periods when the one period, falling between two frames, reads weaker) and refined below a
frame; a period slower than 25/min is breathing or a moving probe and is refused. The heart
rate is 60 s over the period, with the number of whole cycles the cine holds. A cine without
frame timing, whose frames do not repeat within the range (fewer than about 1.5 cycles
shown, no motion: most cines outside the heart), or with fewer than 4.5 frames per cycle is
skipped with the reason (not a finding: a liver sweep has no heart rate to miss).

On the simulator (:mod:`usreview.simulate.cine`, a structure moving at a known rate through
speckled tissue), 30 to 270/min at 15 to 60 frames/s (4.5 frames per cycle or more, 3.3
cycles shown) and 5 to 40 dB read within 1.7%, 95% of 372 cases within 0.7%
(``python -m tests.test_processing_cine_rate``). A real echo cine (SonoSite, 120 frames at
30/s) reads 65.4/min, and each of its halves within 1.5% of that.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import (
    ImageKind,
    PhysicalUnits,
    RegionDataType,
    RegionSpatialFormat,
    UltrasoundInstance,
)
from usreview.processing.errors import NotApplicable
from usreview.processing.filters._apply import grey_frame
from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.cycles import repetition
from usreview.processing.registry import Context, processor
from usreview.processing.results import Output, Quantity

__all__ = ["cine_heart_rate", "frame_similarity"]

Float = npt.NDArray[np.float64]
#: Kinds whose frames are not 2D images in time: time runs inside the frame, or frames are slices.
_NOT_2D_IN_TIME = frozenset(
    {ImageKind.MMODE, ImageKind.PW_DOPPLER, ImageKind.CW_DOPPLER, ImageKind.VOLUME}
)
#: A frame time vector whose increments vary more than this share is resampled evenly.
_UNEVEN = 0.05
#: Fewer frames per cycle than this place the period too coarsely (3.75 read 240/min as 231).
_MIN_FRAMES_PER_CYCLE = 4.5
#: A slower repetition is breathing or a moving probe, not a heart (the traces' search goes
#: down to 12/min).
_SLOWEST_BPM = 25.0
#: Blocks per side of a region without a calibration in cm (about 1 mm on a 13 cm image).
_BLOCKS_UNCALIBRATED = 128
#: Most blocks kept per frame (300 frames: 79 MB at most).
_MAX_BLOCKS = 32768


@processor(
    "cine_heart_rate",
    kinds={ImageKind.CINE},
    version="1.0",
    params={"block_mm": 1.0, "highpass_s": 1.0},
    requires=("scipy",),
)
def cine_heart_rate(context: Context) -> Output:
    """Heart rate of a cine from the repetition of its frames (frame-similarity autocorrelation)."""
    instance = context.instance
    other = set(instance.kinds) & _NOT_2D_IN_TIME
    if other:
        shown = ", ".join(sorted(k.value for k in other))
        raise NotApplicable(f"the frames of this cine are not 2D images in time ({shown})")
    if instance.timing.offsets_ms is None:
        raise NotApplicable(
            "no heart rate: the header gives no frame timing (Frame Time, Frame Time Vector "
            "or Cine Rate)"
        )
    if instance.number_of_frames < 3:
        raise NotApplicable(f"no heart rate: the cine has {instance.number_of_frames} frames")
    values, dt = frame_similarity(
        instance, float(context.params["block_mm"]), float(context.params["highpass_s"])
    )
    n = instance.number_of_frames
    found = repetition(values, n, dt, "the cine")
    if found.period_s is None:
        raise NotApplicable(
            "no heart rate: "
            + (
                found.problem
                or "its frames do not repeat (no periodic motion, or fewer than about 1.5 "
                "cycles shown)"
            )
        )
    if 60.0 / found.period_s < _SLOWEST_BPM:
        raise NotApplicable(
            f"no heart rate: the cine repeats every {found.period_s:.3g} s "
            f"({60.0 / found.period_s:.3g}/min), slower than a heart ({_SLOWEST_BPM:g}/min "
            "and faster are measured): breathing or a moving probe"
        )
    if found.period_s / dt < _MIN_FRAMES_PER_CYCLE:
        raise NotApplicable(
            f"no heart rate: the cine repeats every {found.period_s:.3g} s, only "
            f"{found.period_s / dt:.1f} frames at {1.0 / dt:.3g} frames/s, too few to place "
            f"the period (at least {_MIN_FRAMES_PER_CYCLE:g}: a higher frame rate is needed)"
        )
    code, unit = CODES["heart_rate"]
    cycles = int((n - 1) * dt // found.period_s)
    rate = Quantity(
        "heart_rate",
        code,
        round(60.0 / found.period_s, 2),
        unit,
        cycles,
        {
            "period_s": round(found.period_s, 4),
            "frame_similarity": round(float(found.similarity or 0.0), 3),
            "peaks": found.multiples,
            "method": "repetition of the frames",
            "frames": n,
            "frame_time_ms": round(dt * 1000.0, 3),
        },
    )
    return Output(quantities=(rate,))


def frame_similarity(
    instance: UltrasoundInstance, block_mm: float = 1.0, highpass_s: float = 1.0
) -> tuple[Float, float]:
    """The cine's frame-similarity autocorrelation (lag 0 first) and its frame interval (s).

    See the module doc. Frames are read one at a time (a cine is never held whole at full
    size).
    """
    box, block = _measured_box(instance, block_mm)
    rows = []
    for index in range(instance.number_of_frames):
        grey, _ = grey_frame(instance, index)
        rows.append(_blocks(grey[box].astype(np.float32), block))
    stack = np.stack(rows).astype(np.float64)
    offsets = np.asarray(instance.timing.offsets_ms, dtype=np.float64) / 1000.0
    steps = np.diff(offsets)
    dt = float(np.mean(steps))
    if dt <= 0:
        raise NotApplicable("no heart rate: the frame times do not increase")
    if np.max(np.abs(steps - dt)) > _UNEVEN * dt:  # an uneven Frame Time Vector
        even = offsets[0] + dt * np.arange(len(offsets))
        stack = np.stack([np.interp(even, offsets, column) for column in stack.T], axis=1)
    window = max(3, round(highpass_s / dt) | 1)
    change = stack - ndimage.uniform_filter1d(stack, size=window, axis=0, mode="nearest")
    norms = np.linalg.norm(change, axis=1, keepdims=True)
    change = np.divide(change, norms, out=np.zeros_like(change), where=norms > 0)
    gram = change @ change.T
    n = len(gram)
    values = np.array([np.mean(np.diagonal(gram, k)) for k in range(n)])
    return values, dt


def _measured_box(instance: UltrasoundInstance, block_mm: float) -> tuple[tuple[slice, slice], int]:
    """The largest 2D tissue region's box (else the frame's) and its block side in pixels.

    The side is kept between what leaves at most :data:`_MAX_BLOCKS` blocks per frame (a
    calibration of a micrometre per pixel would keep every pixel of every frame) and what
    still leaves 8 blocks across the box.
    """
    best = None
    for region in instance.regions:
        if (
            region.spatial_format == RegionSpatialFormat.TWO_D
            and region.data_type == RegionDataType.TISSUE
            and not region.bounds_problem(instance.rows, instance.columns)
        ):
            x0, y0, x1, y1 = region.bounds
            area = (x1 - x0 + 1) * (y1 - y0 + 1)
            if best is None or area > best[0]:
                best = (area, region)
    if best is None:
        box = (slice(0, instance.rows), slice(0, instance.columns))
        height, width = instance.rows, instance.columns
        side = round(min(height, width) / _BLOCKS_UNCALIBRATED)
    else:
        region = best[1]
        x0, y0, x1, y1 = region.bounds
        box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        height, width = y1 - y0 + 1, x1 - x0 + 1
        side = round(min(height, width) / _BLOCKS_UNCALIBRATED)
        if region.units_x == PhysicalUnits.CM and region.delta_x:
            side = round(min(block_mm / 10.0 / abs(region.delta_x), float(height + width)))
    fewest = math.ceil(math.sqrt(height * width / _MAX_BLOCKS))
    return box, max(1, min(max(side, fewest), min(height, width) // 8))


def _blocks(image: npt.NDArray[np.float32], side: int) -> npt.NDArray[np.float32]:
    """Means of ``side`` x ``side`` blocks of ``image`` (partial blocks at the edges dropped)."""
    h, w = (image.shape[0] // side) * side, (image.shape[1] // side) * side
    if h == 0 or w == 0:
        return image.ravel()
    out: npt.NDArray[np.float32] = (
        image[:h, :w].reshape(h // side, side, w // side, side).mean(axis=(1, 3)).ravel()
    )
    return out

"""An index of similarity against the case library: the prior cases an image resembles most.

Every instance the hub processes is compared with the de-identified instances of the
teaching cases (the hub's case library: prior images an expert has reported on). The
comparison uses a descriptor of the image's main region, in physical units where the
region is calibrated, so that two images are alike when what they show is alike:

- the region: the spectral region of a PW or CW spectrum, else the largest tissue region
  (B-mode, M-mode), else the whole frame; the middle frame of a cine or volume;
- the **profile**: the region's mean and spread along its vertical axis, on a fixed
  physical grid when the axis is calibrated (velocity in cm/s for a spectrum: the
  distribution of velocities over time, whatever the phase of the cycles; depth in cm
  for tissue and M-mode), else on its rows;
- the **texture**: the histograms of the grey levels, of the echogenicity (means of 8x8
  blocks, without the speckle) and of the gradient orientations (at half resolution).

Each part is centred and made unit length, so each weighs the same; the descriptor is unit
length and two descriptors' similarity is their dot product (cosine, 1 for identical
images). Only images of the same kind are compared (a spectrum with spectra, a still with
stills). Describing a 480x640 still takes about 6 ms.
:data:`VERSION` changes whenever descriptors change: older ones are then recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from usreview.dicom import ImageKind, UltrasoundInstance
from usreview.dicom.enum import PhysicalUnits, RegionDataType
from usreview.dicom.regions import UltrasoundRegion
from usreview.teaching import case_name

__all__ = [
    "VERSION",
    "Descriptor",
    "LibraryEntry",
    "Match",
    "describe",
    "rank",
    "similar_cases_finding",
]

VERSION: Final = "1.0"
#: Kinds compared, in order of precedence: an instance is described as its first kind here.
KINDS: Final = (
    ImageKind.PW_DOPPLER,
    ImageKind.CW_DOPPLER,
    ImageKind.MMODE,
    ImageKind.VOLUME,
    ImageKind.COLOR_FLOW,
    ImageKind.BMODE,
)
#: Physical grids of the profile (start, stop, points) by the vertical axis' unit.
GRIDS: Final = {
    PhysicalUnits.CM_PER_SECOND: (-800.0, 800.0, 321),  # 5 cm/s steps
    PhysicalUnits.CM: (0.0, 30.0, 121),  # 0.25 cm steps
}
#: Points of an uncalibrated profile (its rows, resampled).
ROW_POINTS: Final = 64
GREY_BINS: Final = 32
#: Longest side (pixels) described; a larger frame or region is sampled down to it.
MAX_SIDE: Final = 1024
#: Side of the blocks whose mean grey levels are the echogenicity, without the speckle
#: (pixels).
BLOCK: Final = 8
ORIENTATION_BINS: Final = 8

#: How far from 1 the length of a recorded descriptor's vector may be (rounding only).
_UNIT_TOLERANCE: Final = 1e-6

_SPECTRAL = {
    ImageKind.PW_DOPPLER: RegionDataType.PW_SPECTRAL_DOPPLER,
    ImageKind.CW_DOPPLER: RegionDataType.CW_SPECTRAL_DOPPLER,
}


@dataclass(frozen=True)
class Descriptor:
    """What an image is compared by: its kind and a unit vector (see the module doc)."""

    kind: str
    vector: tuple[float, ...]
    version: str = VERSION

    def as_dict(self) -> dict[str, Any]:
        """JSON view (what the archive keeps): kind, version, vector."""
        return {"kind": self.kind, "version": self.version, "vector": list(self.vector)}

    @classmethod
    def from_dict(cls, value: Any) -> Descriptor | None:
        """The descriptor :meth:`as_dict` gave, or ``None`` for anything else.

        Its vector must be finite numbers of unit length (or all zero), as :func:`describe`
        makes them: a damaged record would otherwise rank first, or give a similarity
        outside -1 to 1.
        """
        if not isinstance(value, dict):
            return None
        kind, version, vector = value.get("kind"), value.get("version"), value.get("vector")
        if not (isinstance(kind, str) and isinstance(version, str) and isinstance(vector, list)):
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector):
            return None
        try:
            values = tuple(float(v) for v in vector)
        except OverflowError:  # an integer too large for a float
            return None
        if not all(math.isfinite(v) for v in values):
            return None
        norm = math.sqrt(math.fsum(v * v for v in values))
        if norm != 0 and abs(norm - 1) > _UNIT_TOLERANCE:
            return None
        return cls(kind, values, version)


@dataclass(frozen=True)
class LibraryEntry:
    """A de-identified instance of the case library with its descriptor."""

    case_uid: str
    sop_instance_uid: str
    descriptor: Descriptor


@dataclass(frozen=True)
class Match:
    """A library instance like the query, with the similarity (cosine, at most 1)."""

    entry: LibraryEntry
    similarity: float

    def as_dict(self) -> dict[str, object]:
        """JSON view: the case, its instance (de-identified UIDs), the similarity."""
        return {
            "case_uid": self.entry.case_uid,
            "sop_instance_uid": self.entry.sop_instance_uid,
            "similarity": round(self.similarity, 4),
        }


def describe(instance: UltrasoundInstance) -> Descriptor | None:
    """The descriptor of ``instance``, or ``None`` for a kind that is not compared.

    Raises :class:`~usreview.errors.InputError` (from reading pixels) for pixel data that
    cannot be decoded.
    """
    kind = next((k for k in KINDS if k in instance.kinds), None)
    if kind is None:
        return None
    shown = instance.display_frame(instance.pixels.number_of_frames // 2)  # 8-bit
    found = _region(instance, kind)
    region, rows = None, np.arange(shown.shape[0])
    if found is not None:
        region, (x0, y0, x1, y1) = found
        shown, rows = shown[y0 : y1 + 1, x0 : x1 + 1], rows[y0 : y1 + 1]
    # A huge frame is sampled down first (a view): the floats below stay small.
    step = max(1, math.ceil(max(shown.shape[:2]) / MAX_SIDE))
    shown, rows = shown[::step, ::step], rows[::step]
    frame = shown.astype(np.float32)
    if frame.ndim == 3:  # RGB: its luminance
        frame = frame @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    frame /= 255.0
    parts = (
        *_profiles(frame, region, rows),
        _histogram(frame),
        _histogram(_block_means(frame, BLOCK)),
        _orientations(_block_means(frame, 2)),  # at half resolution: a quarter of the work
    )
    vector = np.concatenate([_unit(p - p.mean()) for p in parts])
    vector = _unit(vector)
    return Descriptor(kind.value, tuple(float(v) for v in vector))


def rank(query: Descriptor, library: Iterable[LibraryEntry], *, limit: int = 3) -> list[Match]:
    """The ``limit`` library entries most like ``query``, most similar first.

    Only entries of the same kind and descriptor version (and length) are compared; one
    match per case (its most similar instance).
    """
    entries = [
        e
        for e in library
        if e.descriptor.kind == query.kind
        and e.descriptor.version == query.version
        and len(e.descriptor.vector) == len(query.vector)
    ]
    if not entries or limit < 1:
        return []
    vectors = np.array([e.descriptor.vector for e in entries], dtype=np.float64)
    scores = vectors @ np.array(query.vector, dtype=np.float64)
    best: dict[str, Match] = {}
    for index in np.argsort(-scores, kind="stable"):
        entry = entries[int(index)]
        if entry.case_uid not in best:
            best[entry.case_uid] = Match(entry, float(min(1.0, scores[index])))
        if len(best) == limit:
            break
    return list(best.values())


def similar_cases_finding(matches: Sequence[Match]) -> dict[str, Any]:
    """The ``similar_cases`` finding of a JSON summary: the matches, most similar first."""
    named = [f"{case_name(m.entry.case_uid)} ({m.similarity:.2f})" for m in matches]
    return {
        "code": "similar_cases",
        "text": "Most similar cases of the case library: " + ", ".join(named),
        "evidence": {
            "matches": [m.as_dict() for m in matches],
            "method": f"similarity {VERSION}",
        },
        "processor": "similarity",
    }


def _region(
    instance: UltrasoundInstance, kind: ImageKind
) -> tuple[UltrasoundRegion, tuple[int, int, int, int]] | None:
    """The largest region of ``kind``'s data type, with its bounds clipped to the image.

    Clipped, not refused: scanners write regions a pixel past the image's edge, and a
    descriptor, unlike a measurement, does not depend on the edge.
    """
    wanted = _SPECTRAL.get(kind, RegionDataType.TISSUE)
    best: tuple[int, tuple[UltrasoundRegion, tuple[int, int, int, int]]] | None = None
    for region in instance.regions:
        x0, y0 = max(region.min_x0, 0), max(region.min_y0, 0)
        x1, y1 = min(region.max_x1, instance.columns - 1), min(region.max_y1, instance.rows - 1)
        area = (x1 - x0 + 1) * (y1 - y0 + 1)
        usable = region.data_type == wanted and x1 - x0 >= 7 and y1 - y0 >= 7
        if usable and (best is None or area > best[0]):
            best = (area, (region, (x0, y0, x1, y1)))
    return None if best is None else best[1]


def _profiles(
    frame: npt.NDArray[np.float32],
    region: UltrasoundRegion | None,
    rows: npt.NDArray[np.int_],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mean and spread along the vertical axis (image ``rows``), on the physical grid when
    calibrated."""
    mean, spread = frame.mean(axis=1, dtype=np.float64), frame.std(axis=1, dtype=np.float64)
    grid = GRIDS.get(region.units_y) if region is not None else None
    if region is None or grid is None or region.deltas_problem() is not None:
        points = np.linspace(0, len(mean) - 1, ROW_POINTS)
        at = np.arange(len(mean))
        return np.interp(points, at, mean), np.interp(points, at, spread)
    values = region.to_physical(np.zeros_like(rows), rows)[1]
    order = np.argsort(values)
    points = np.linspace(*grid[:2], int(grid[2]))
    return (
        np.interp(points, values[order], mean[order], left=0.0, right=0.0),
        np.interp(points, values[order], spread[order], left=0.0, right=0.0),
    )


def _histogram(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Square roots of the grey levels' frequencies (so that a dot product compares them)."""
    bins = np.minimum((values * GREY_BINS).astype(np.intp), GREY_BINS - 1).ravel()
    counts = np.bincount(np.maximum(bins, 0), minlength=GREY_BINS)
    return np.sqrt(counts / max(1, values.size))


def _block_means(frame: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """Means of ``size`` by ``size`` blocks (the frame itself if it is smaller)."""
    rows, columns = (n // size * size for n in frame.shape)
    if not rows or not columns:
        return frame
    blocks = frame[:rows, :columns].reshape(rows // size, size, columns // size, size)
    return np.asarray(blocks.mean(axis=(1, 3)), dtype=np.float32)


def _orientations(frame: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Histogram of gradient orientations (0-180 degrees), weighted by magnitude."""
    if min(frame.shape) < 2:
        return np.zeros(ORIENTATION_BINS)
    dy, dx = np.gradient(frame)
    angle = np.mod(np.arctan2(dy, dx), np.float32(np.pi))
    bins = np.minimum((angle * (ORIENTATION_BINS / np.pi)).astype(np.intp), ORIENTATION_BINS - 1)
    weights = np.hypot(dx, dy)
    counts = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=ORIENTATION_BINS)
    return np.asarray(counts, dtype=np.float64)


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 and np.isfinite(norm) else np.zeros_like(vector)

"""An index of similarity against the case library: the prior cases an image resembles most.

Every instance the hub processes is compared with the de-identified instances of the
teaching cases (the hub's case library: prior images an expert has reported on). The
comparison uses a descriptor of the image's main region, in physical units where the
region is calibrated, so that two images are alike when what they show is alike, not when
they were shown alike (the same gain, dynamic range or depth):

- the region: the spectral region of a PW or CW spectrum, else the largest tissue region
  (B-mode, M-mode), else the whole frame; the middle frame of a cine or volume;
- its grey levels **normalised**: less their median, divided by the spread of their upper
  half (90th less 50th percentile), clipped to -3..3 (:data:`LEVELS`). A display's gain
  adds to its log-compressed grey levels and its dynamic range scales them, so the
  normalised levels are the same under both but for what the display clipped. The upper
  half, not the interquartile range: a quarter to a half of an M-mode strip is black at a
  dynamic range of 45 dB;
- the **profiles**: the mean and spread of the normalised rows along the vertical axis, on
  a physical grid when the axis is calibrated (velocity in cm/s for a spectrum: the
  distribution of velocities over time, whatever the phase of the cycles; depth in cm for
  tissue and M-mode), and on the region's rows (resampled to 64), calibrated or not; and
  the mean's autocovariance, the **distances** between structures (the walls of a
  ventricle) wherever they lie;
- the **texture**: the histograms of the normalised grey levels, of the echogenicity
  (means of 8x8 blocks, without the speckle), of the gradient orientations (at half
  resolution) and of the local binary patterns of the 8x8 blocks; and the
  **heterogeneity**: how much the echogenicity varies from blocks of 2 to 64 pixels (the
  speckle averages out as blocks grow, lesions and organs do not).

Each part is made unit length and weighed by its share (:data:`PARTS`): structure and
texture weigh most, the positions along the axis (they differ from patient to patient and
with the depth setting) less, the grey levels least. A profile is compared as its
deviation from flat, so that two flat profiles are alike rather than as alike as their
noise. The similarity of two descriptors is their cosine over the parts both have: the
mean of the parts' cosines weighed by their shares (1 for identical images). Every
descriptor has :data:`DIMENSION` numbers: a part an image does not have (the physical
profiles and distances of an image that is not calibrated) is zeros, so that calibrated
and uncalibrated images are compared on the parts they share. Only images of the same
kind are compared (a spectrum with spectra, a still with stills). Describing a 480x640
still takes a little less time than version 1.0 did.

:data:`VERSION` changes whenever descriptors change. The case library then describes its
instances again (:mod:`usreview.processing.case_library` takes a record of another version
as none), and :func:`rank` never compares descriptors of different versions. A processing
job of an instance of a kind compared (:func:`compares`) records it as :data:`NAME` =
:data:`VERSION` among its processors, and its signature names it, so that ``usreview hub
jobs --outdated`` lists the jobs whose similar cases an older descriptor chose.

A similarity says which cases are closer, not how close: images of one kind share most of
what is described, so that even unrelated images have cosines well above 0.5 and the figure
differs from one kind (and one library) to the next. The ``similar_cases`` finding
(:func:`similar_cases_finding`) therefore names each case by its rank among the cases
compared ("1st of 12"); the cosine stays in its evidence, for ordering and research. Version 1.0
compared raw grey levels with the profiles at equal weight, so that it mostly measured the
display's gain, and its descriptors had 314 numbers when calibrated and 200 when not.
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
    "DIMENSION",
    "KINDS",
    "NAME",
    "PARTS",
    "VERSION",
    "Descriptor",
    "LibraryEntry",
    "Match",
    "Part",
    "compares",
    "describe",
    "ordinal",
    "rank",
    "similar_cases_finding",
]

VERSION: Final = "2.0"
#: How a processing job records the descriptor its similar cases were chosen by
#: (``similarity=2.0``, beside its processors' ``name=version``).
NAME: Final = "similarity"
#: Kinds compared, in order of precedence: an instance is described as its first kind here.
KINDS: Final = (
    ImageKind.PW_DOPPLER,
    ImageKind.CW_DOPPLER,
    ImageKind.MMODE,
    ImageKind.VOLUME,
    ImageKind.COLOR_FLOW,
    ImageKind.BMODE,
)
#: Points of the physical profiles, whatever the axis' unit.
GRID_POINTS: Final = 321
#: Physical grids of the profile (start, stop) by the vertical axis' unit.
GRIDS: Final = {
    PhysicalUnits.CM_PER_SECOND: (-800.0, 800.0),  # 5 cm/s steps
    PhysicalUnits.CM: (0.0, 32.0),  # 0.1 cm steps
}
#: Points of the profiles along the rows (resampled), calibrated or not.
ROW_POINTS: Final = 64
GREY_BINS: Final = 32
#: Range of the normalised grey levels: what is beyond is clipped to it (about 16 dB either
#: side of the median in speckle, whose upper half spreads over about 5 dB), so that what a
#: display clips to black or white at one gain or dynamic range is clipped alike at another.
LEVELS: Final = (-3.0, 3.0)
#: Longest side (pixels) described; a larger frame or region is sampled down to it.
MAX_SIDE: Final = 1024
#: Side of the blocks whose mean grey levels are the echogenicity, without the speckle
#: (pixels).
BLOCK: Final = 8
ORIENTATION_BINS: Final = 8
#: Lags of the physical profile's autocovariance (grid steps: 0.1 to 8 cm, 5 to 400 cm/s).
LAGS: Final = 80
#: Profiles flatter than this (root mean square, in normalised grey levels) count as flat.
FLAT: Final = 0.15
#: Sides (pixels) of the blocks whose means' spread is the heterogeneity, from the speckle
#: to whole structures.
SCALES: Final = (2, 4, 8, 16, 32, 64)
#: Where the spreads' logarithms (base 2) are placed (soft bins, 0.5 apart).
_SCALE_GRID: Final = tuple(float(v) for v in np.linspace(-6.0, 2.0, 17))
#: Rotation-invariant uniform local binary patterns (8 neighbours): 0-8 neighbours
#: brighter, or not uniform.
PATTERN_BINS: Final = 10


@dataclass(frozen=True)
class Part:
    """A part of the descriptor: its name, its length and its share of the similarity."""

    name: str
    size: int
    share: float


#: The descriptor's parts, in order, with their shares (percent of the similarity of two
#: images that have every part). A part an image does not have is zeros. The shape and
#: structure of what is shown (the distances between structures, the heterogeneity, the
#: echogenicity and patterns) weigh most; the positions along the axis, which differ from
#: one patient (and one depth setting) to the next, less; the grey levels themselves least.
PARTS: Final = (
    # The profiles and their autocovariances end with a constant (see _anchored).
    Part("profile", GRID_POINTS + 1, 10.0),  # calibrated only
    Part("spread", GRID_POINTS + 1, 3.0),  # calibrated only
    Part("distances", LAGS + 1, 21.0),  # calibrated only
    Part("row_profile", ROW_POINTS + 1, 3.0),
    Part("row_spread", ROW_POINTS + 1, 1.0),
    Part("row_distances", ROW_POINTS // 2 + 1, 5.0),
    Part("levels", GREY_BINS, 5.0),
    Part("echogenicity", GREY_BINS, 10.0),
    Part("heterogeneity", len(SCALES) * len(_SCALE_GRID), 26.0),
    Part("orientations", ORIENTATION_BINS, 5.0),
    Part("patterns", PATTERN_BINS, 11.0),
)
#: Length of every descriptor's vector.
DIMENSION: Final = sum(p.size for p in PARTS)

#: How far from 1 the length of a recorded descriptor's vector may be (rounding only).
_UNIT_TOLERANCE: Final = 1e-6
#: A part whose squared length is below this is one the image does not have.
_ABSENT: Final = 1e-12

_SPECTRAL = {
    ImageKind.PW_DOPPLER: RegionDataType.PW_SPECTRAL_DOPPLER,
    ImageKind.CW_DOPPLER: RegionDataType.CW_SPECTRAL_DOPPLER,
}
_BOUNDS: Final = tuple(
    (start := sum(p.size for p in PARTS[:i]), start + part.size) for i, part in enumerate(PARTS)
)


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
    """A library instance like the query, with the similarity (cosine, at most 1), its
    ``rank`` among the cases compared (1 for the most similar) and how many cases were
    ``compared`` (of the query's kind and descriptor version)."""

    entry: LibraryEntry
    similarity: float
    rank: int = 1
    compared: int = 1

    def as_dict(self) -> dict[str, object]:
        """JSON view: the case, its instance (de-identified UIDs), the similarity, the rank."""
        return {
            "case_uid": self.entry.case_uid,
            "sop_instance_uid": self.entry.sop_instance_uid,
            "similarity": round(self.similarity, 4),
            "rank": self.rank,
        }


def compares(kinds: Iterable[ImageKind | str]) -> bool:
    """Whether an instance of these kinds is compared with the library (:data:`KINDS`)."""
    names = {kind.value if isinstance(kind, ImageKind) else kind for kind in kinds}
    return any(kind.value in names for kind in KINDS)


def ordinal(number: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ... ``11th``, ``21st``."""
    if 10 <= number % 100 <= 20:
        return f"{number}th"
    return f"{number}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(number % 10, 'th') }"


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
    frame, levels = _normalised(frame)
    pyramid = _pyramid(frame)
    # A frame too small for them has its coarsest blocks in their place.
    half, blocks = (pyramid[min(side, max(pyramid))] for side in (2, BLOCK))
    mean, spread = frame.mean(axis=1, dtype=np.float64), frame.std(axis=1, dtype=np.float64)
    parts = (
        *_physical_profiles(mean, spread, region, rows),
        *_row_profiles(mean, spread),
        _centred(levels),
        _centred(_histogram(blocks)),
        _heterogeneity(pyramid),
        _centred(_orientations(half)),  # at half resolution: a quarter of the work
        _centred(_patterns(blocks)),
    )
    return Descriptor(kind.value, tuple(float(v) for v in _combined(parts)))


def rank(query: Descriptor, library: Iterable[LibraryEntry], *, limit: int = 3) -> list[Match]:
    """The ``limit`` library entries most like ``query``, most similar first.

    Only entries of the same kind and descriptor version (and length) are compared, on the
    parts both have (:data:`PARTS`; a vector of another length than :data:`DIMENSION` is
    compared whole); one match per case (its most similar instance).
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
    scores = _similarities(np.array(query.vector, dtype=np.float64), vectors)
    compared = len({e.case_uid for e in entries})
    best: dict[str, Match] = {}
    for index in np.argsort(-scores, kind="stable"):
        entry = entries[int(index)]
        if entry.case_uid not in best:
            score = float(min(1.0, scores[index]))
            best[entry.case_uid] = Match(entry, score, len(best) + 1, compared)
        if len(best) == limit:
            break
    return list(best.values())


def similar_cases_finding(matches: Sequence[Match]) -> dict[str, Any]:
    """The ``similar_cases`` finding of a JSON summary: the matches, most similar first,
    each named by its rank among the cases compared (``compared`` in the evidence), not by
    its cosine, which orders the cases but does not say how alike they are."""
    compared = max((m.compared for m in matches), default=0)
    named = [f"{case_name(m.entry.case_uid)} ({ordinal(m.rank)})" for m in matches]
    return {
        "code": "similar_cases",
        "text": f"Most similar cases of the case library ({compared} compared), closest "
        "first: " + ", ".join(named),
        "evidence": {
            "matches": [m.as_dict() for m in matches],
            "compared": compared,
            "method": f"similarity {VERSION}",
        },
        "processor": NAME,
    }


def _similarities(
    query: npt.NDArray[np.float64], vectors: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The cosine of ``query`` with each row of ``vectors`` over the parts both have."""
    if len(query) != DIMENSION:  # not a descriptor describe() made: compared whole
        return vectors @ query
    dots = np.empty((len(vectors), len(PARTS)))
    lengths = np.empty_like(dots)
    own = np.empty(len(PARTS))
    for index, (start, stop) in enumerate(_BOUNDS):
        dots[:, index] = vectors[:, start:stop] @ query[start:stop]
        lengths[:, index] = np.einsum("ij,ij->i", vectors[:, start:stop], vectors[:, start:stop])
        own[index] = query[start:stop] @ query[start:stop]
    shared = (lengths > _ABSENT) & (own > _ABSENT)
    norms = np.sqrt((lengths * shared).sum(axis=1) * (own * shared).sum(axis=1))
    total = (dots * shared).sum(axis=1)
    return np.asarray(np.divide(total, norms, out=np.zeros_like(total), where=norms > 0))


def _combined(parts: Sequence[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """The unit vector of ``parts`` (as :data:`PARTS`), each made unit length and weighed
    by its share; a part that is all zeros (absent) stays zeros."""
    pieces = []
    for part, values in zip(PARTS, parts, strict=True):
        assert len(values) == part.size, (part.name, len(values))
        pieces.append(math.sqrt(part.share) * _unit(values))
    return _unit(np.concatenate(pieces))


def _centred(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``values`` less their mean: a histogram compared by its correlation."""
    return np.asarray(values - values.mean(), dtype=np.float64)


def _anchored(values: npt.NDArray[np.float64], flat: float) -> npt.NDArray[np.float64]:
    """Deviations from flat (a profile less its mean, an autocovariance) followed by a
    constant, ``flat`` as a root mean square over them (:data:`FLAT`, squared for an
    autocovariance). Two flat profiles are then alike, rather than as alike as their noise
    (their correlation); a flat profile and one that is not are unlike; two that are not
    are compared by their correlation."""
    return np.append(values, flat * math.sqrt(len(values)))


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


def _normalised(
    frame: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The grey levels (0-255) less their median, divided by the upper half's spread (90th
    less 50th percentile; failing that the 99th less the 50th, or 1), clipped to
    :data:`LEVELS`; and their histogram (:func:`_histogram`, from the count of each grey
    level, a luminance rounded)."""
    counts = np.bincount(np.rint(frame).astype(np.intp).ravel(), minlength=256)[:256]
    below = np.cumsum(counts)
    middle, high, top = (float(np.searchsorted(below, q * below[-1])) for q in (0.5, 0.9, 0.99))
    spread = next((s for s in (high - middle, top - middle) if s >= 1.0), 1.0)
    normalised = (frame - np.float32(middle)) * np.float32(1 / spread)
    level = np.clip((np.arange(256) - middle) / spread, *LEVELS)
    return (
        np.clip(normalised, *LEVELS, out=normalised),
        _histogram(level, weights=counts.astype(np.float64)),
    )


def _physical_profiles(
    mean: npt.NDArray[np.float64],
    spread: npt.NDArray[np.float64],
    region: UltrasoundRegion | None,
    rows: npt.NDArray[np.int_],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The rows' ``mean`` and ``spread`` on the physical grid of the vertical axis (image
    ``rows``), less their means where the region covers the grid (zeros beyond), and the
    mean's autocovariance (:data:`LAGS`); all zeros when the axis is not calibrated."""
    grid = GRIDS.get(region.units_y) if region is not None else None
    absent = np.zeros(GRID_POINTS + 1), np.zeros(GRID_POINTS + 1), np.zeros(LAGS + 1)
    if region is None or grid is None or region.deltas_problem() is not None:
        return absent
    values = region.to_physical(np.zeros_like(rows), rows)[1]
    order = np.argsort(values)
    points = np.linspace(*grid, GRID_POINTS)
    covered = (points >= values[order[0]]) & (points <= values[order[-1]])
    if covered.sum() < 2:
        return absent
    profiles = []
    for profile in (mean, spread):
        on_grid = np.zeros(GRID_POINTS)
        inside = np.interp(points[covered], values[order], profile[order])
        on_grid[covered] = inside - inside.mean()
        profiles.append(on_grid)
    return (
        _anchored(profiles[0], FLAT),
        _anchored(profiles[1], FLAT),
        _anchored(_autocovariance(profiles[0][covered], LAGS), FLAT**2),
    )


def _row_profiles(
    mean: npt.NDArray[np.float64], spread: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The rows' ``mean`` and ``spread`` resampled to :data:`ROW_POINTS`, less their means,
    and the mean's autocovariance (half as many lags)."""
    points = np.linspace(0, len(mean) - 1, ROW_POINTS)
    at = np.arange(len(mean))
    mean, spread = np.interp(points, at, mean), np.interp(points, at, spread)
    mean, spread = mean - mean.mean(), spread - spread.mean()
    return (
        _anchored(mean, FLAT),
        _anchored(spread, FLAT),
        _anchored(_autocovariance(mean, ROW_POINTS // 2), FLAT**2),
    )


def _autocovariance(values: npt.NDArray[np.float64], lags: int) -> npt.NDArray[np.float64]:
    """The autocovariance of ``values`` (a mean of 0) at lags 1 to ``lags`` (0 beyond its
    length): how alike the profile is to itself moved along, whatever its position."""
    found = np.zeros(lags)
    count = min(lags, len(values) - 1)
    if count > 0:
        full = np.correlate(values, values, mode="full")[len(values) : len(values) + count]
        found[:count] = full / len(values)
    return found


def _histogram(
    values: npt.NDArray[np.floating[Any]], weights: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.float64]:
    """Square roots of the frequencies of normalised grey levels (each of the ``weights``
    if given) in :data:`GREY_BINS` bins over :data:`LEVELS`, each value shared between its
    two nearest bins (so that a small shift moves the histogram a little, not a whole
    bin)."""
    low, high = LEVELS
    position = (values.ravel().astype(np.float64) - low) * (GREY_BINS / (high - low)) - 0.5
    position = np.clip(position, 0, GREY_BINS - 1)
    below = np.minimum(position.astype(np.intp), GREY_BINS - 2)
    above = position - below
    weight = np.ones(len(position)) if weights is None else weights.ravel()
    counts = np.bincount(below, weights=weight * (1 - above), minlength=GREY_BINS)
    counts += np.bincount(below + 1, weights=weight * above, minlength=GREY_BINS)
    return np.sqrt(counts / max(1.0, float(weight.sum())))


def _halved(frame: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Means of 2 by 2 blocks (a last odd row or column is left out)."""
    rows, columns = (n // 2 * 2 for n in frame.shape)
    even, odd = frame[0:rows:2, :columns], frame[1:rows:2, :columns]
    summed = even[:, 0::2] + even[:, 1::2] + odd[:, 0::2] + odd[:, 1::2]
    return np.asarray(summed * np.float32(0.25), dtype=np.float32)


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


def _pyramid(frame: npt.NDArray[np.float32]) -> dict[int, npt.NDArray[np.float32]]:
    """``frame`` and the means of its blocks of 2, 4, 8, ... pixels (by side), each made
    from the one before, while both sides hold at least 2 blocks."""
    pyramid, side = {1: frame}, 1
    while side < max(SCALES) and min(pyramid[side].shape) >= 4:
        pyramid[2 * side] = _halved(pyramid[side])
        side *= 2
    return pyramid


def _heterogeneity(pyramid: dict[int, npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """How much the echogenicity varies at each scale: the spread of the means of blocks
    of :data:`SCALES` pixels (:func:`_pyramid`), from the speckle (whose spread falls as
    the blocks grow) to whole structures (whose spread stays). Each spread's logarithm is a
    soft bin (a Gaussian, 0.5 wide) on :data:`_SCALE_GRID`, so that two images' spreads are
    compared by how close they are, scale by scale; a scale a small frame does not have
    is zeros."""
    grid = np.array(_SCALE_GRID)
    found = []
    for scale in SCALES:
        blocks = pyramid.get(scale)
        if blocks is None:
            found.append(np.zeros(len(grid)))
            continue
        spread = math.log2(max(float(blocks.std(dtype=np.float64)), 2.0**-8))
        found.append(np.exp(-0.5 * ((grid - spread) / 0.5) ** 2))
    return np.concatenate(found)


#: The 8 neighbours of a pixel, in turn around it (row, column offsets).
_NEIGHBOURS: Final = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _patterns(frame: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Square roots of the frequencies of the rotation-invariant uniform local binary
    patterns (Ojala et al., IEEE TPAMI 24(7), 2002): how many of the 8 neighbours are
    brighter than the pixel when they make one arc (9 bins), else one bin. They depend on
    the order of the grey levels only. Flat neighbourhoods (clipped to black or white) are
    left out: they show no pattern."""
    if min(frame.shape) < 3:
        return np.zeros(PATTERN_BINS)
    centre = frame[1:-1, 1:-1]
    rows, columns = frame.shape
    brighter = np.stack(
        [
            frame[1 + dr : rows - 1 + dr, 1 + dc : columns - 1 + dc] > centre
            for dr, dc in _NEIGHBOURS
        ]
    )
    darker = np.stack(
        [
            frame[1 + dr : rows - 1 + dr, 1 + dc : columns - 1 + dc] < centre
            for dr, dc in _NEIGHBOURS
        ]
    )
    flat = ~(brighter | darker).any(axis=0)
    ones = brighter.sum(axis=0)
    changes = (brighter != np.roll(brighter, 1, axis=0)).sum(axis=0)
    labels = np.where(changes <= 2, ones, PATTERN_BINS - 1)[~flat]
    counts = np.bincount(labels.ravel(), minlength=PATTERN_BINS)
    return np.sqrt(counts / max(1, labels.size))


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 and np.isfinite(norm) else np.zeros_like(vector)

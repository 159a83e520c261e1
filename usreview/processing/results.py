"""Typed outputs of processors, with their provenance.

A processor returns an :class:`Output` (quantities, derived images, findings and
recommendations); the registry wraps it into a :class:`ProcessorResult` that records who
made it from what (:class:`Provenance`) and whether it was done, skipped or failed.
``as_dict()`` gives the JSON view; what leaves the hub is DICOM (:mod:`.sr` for the
measurements, derived instances for the images: :mod:`.execution`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


__all__ = [
    "Code",
    "CodingScheme",
    "DerivedImage",
    "Finding",
    "Output",
    "ProcessorResult",
    "Provenance",
    "Quantity",
    "Recommendation",
    "ResultStatus",
]


class CodingScheme(StrEnum):
    """Coding Scheme Designator of a concept code."""

    LOINC = "LN"
    DCM = "DCM"
    SNOMED = "SCT"
    USREVIEW = "99USREVIEW"  # private scheme for concepts without a standard code


class ResultStatus(StrEnum):
    """What became of one processor applied to one instance."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Code:
    """A coded concept: value, scheme and meaning (as DICOM's Code Sequence items)."""

    value: str
    scheme: CodingScheme
    meaning: str

    def __post_init__(self) -> None:
        _require(bool(self.value.strip()), "Code: argument 'value' is empty")
        _require(bool(self.meaning.strip()), "Code: argument 'meaning' is empty")
        object.__setattr__(self, "scheme", CodingScheme(self.scheme))

    def as_dict(self) -> dict[str, str]:
        """``{"value", "scheme", "meaning"}``."""
        return {"value": self.value, "scheme": self.scheme.value, "meaning": self.meaning}


@dataclass(frozen=True)
class Quantity:
    """A measured value with its concept code and UCUM unit.

    ``cycles`` is the number of cardiac cycles it was averaged over (``None`` when not
    cycle-based); ``details`` holds JSON-ready extras (per-cycle values, spread).
    """

    name: str
    code: Code
    value: float
    unit: str
    cycles: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.name.isidentifier(), f"Quantity: argument 'name' {self.name!r} is invalid")
        _require(bool(self.unit.strip()), f"Quantity {self.name}: argument 'unit' is empty")
        _require(
            math.isfinite(float(self.value)),
            f"Quantity {self.name}: argument 'value' {self.value!r} is not finite",
        )
        object.__setattr__(self, "value", float(self.value))

    def as_dict(self) -> dict[str, Any]:
        """JSON view: name, code value, scheme, meaning, value, unit, cycles, details."""
        out: dict[str, Any] = {
            "name": self.name,
            "code": self.code.value,
            "scheme": self.code.scheme.value,
            "meaning": self.code.meaning,
            "value": self.value,
            "unit": self.unit,
        }
        if self.cycles is not None:
            out["cycles"] = self.cycles
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class DerivedImage:
    """An image made by a processor from its input instance, 8-bit grey or RGB.

    One frame is ``(rows, cols)`` grey or ``(rows, cols, 3)`` RGB; with ``multiframe`` the
    frames come first, ``(frames, rows, cols)`` or ``(frames, rows, cols, 3)`` (a filtered
    cine). Leaving the hub, it becomes a derived DICOM instance of the source
    (:func:`usreview.processing.filters.derived_from_result`), so rows and columns are the
    source's. ``derivation`` is the CID 7203 "Image Derivation" code of what was done
    (``None``: described in words only); ``source_frame`` is, for one frame taken from a
    multi-frame source, that frame's number (from 1).
    """

    name: str
    pixels: npt.NDArray[np.uint8]
    description: str
    multiframe: bool = False
    derivation: Code | None = None
    source_frame: int | None = None

    def __post_init__(self) -> None:
        _require(self.name.isidentifier(), f"DerivedImage: argument 'name' {self.name!r}")
        _require(
            bool(self.description.strip()), f"DerivedImage {self.name}: argument 'description'"
        )
        shape = self.pixels.shape
        grey = 3 if self.multiframe else 2
        layout = "(frames, rows, cols[, 3])" if self.multiframe else "(rows, cols[, 3])"
        _require(
            self.pixels.dtype == "uint8"
            and (len(shape) == grey or (len(shape) == grey + 1 and shape[-1] == 3))
            and 0 not in shape,
            f"DerivedImage {self.name}: argument 'pixels' must be uint8 {layout}, grey or RGB, "
            f"got {self.pixels.dtype} {shape}",
        )
        _require(
            self.source_frame is None or (self.source_frame >= 1 and not self.multiframe),
            f"DerivedImage {self.name}: argument 'source_frame' {self.source_frame!r} must be "
            "a frame number from 1, for a single-frame image",
        )

    @property
    def number_of_frames(self) -> int:
        """How many frames it holds (1 unless ``multiframe``)."""
        return int(self.pixels.shape[0]) if self.multiframe else 1

    @property
    def rgb(self) -> bool:
        """Whether its pixels are RGB (else grey)."""
        return self.pixels.ndim == (4 if self.multiframe else 3)

    @property
    def size(self) -> tuple[int, int]:
        """``(rows, cols)`` of each frame."""
        start = 1 if self.multiframe else 0
        return int(self.pixels.shape[start]), int(self.pixels.shape[start + 1])

    def frame(self, index: int) -> npt.NDArray[np.uint8]:
        """Frame ``index`` (from 0): ``(rows, cols)`` grey or ``(rows, cols, 3)`` RGB."""
        if not 0 <= index < self.number_of_frames:
            raise IndexError(
                f"DerivedImage {self.name}: frame {index} of {self.number_of_frames} frame(s)"
            )
        return self.pixels[index] if self.multiframe else self.pixels

    def as_dict(self) -> dict[str, Any]:
        """JSON view without the pixels."""
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.pixels.shape),
            "frames": self.number_of_frames,
            "description": self.description,
        }
        if self.derivation is not None:
            out["derivation"] = self.derivation.as_dict()
        return out


@dataclass(frozen=True)
class Finding:
    """A statement about the instance (e.g. no usable signal), with its evidence."""

    code: str
    text: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.code.strip()), "Finding: argument 'code' is empty")
        _require(bool(self.text.strip()), "Finding: argument 'text' is empty")

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {"code": self.code, "text": self.text, "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Recommendation:
    """Decision support for the reviewing expert: what a published rule says of the values.

    ``evidence`` holds the measured quantities the rule used; ``rule`` its name, ``criterion``
    the rule in words and ``source`` the publication.
    """

    rule: str
    category: str
    text: str
    criterion: str
    source: str
    evidence: tuple[Quantity, ...]

    def __post_init__(self) -> None:
        for name in ("rule", "category", "text", "criterion", "source"):
            _require(bool(getattr(self, name).strip()), f"Recommendation: argument {name!r} empty")
        _require(bool(self.evidence), "Recommendation: argument 'evidence' is empty")

    def as_dict(self) -> dict[str, Any]:
        """JSON view with the evidence quantities."""
        return {
            "rule": self.rule,
            "category": self.category,
            "text": self.text,
            "criterion": self.criterion,
            "source": self.source,
            "evidence": [q.as_dict() for q in self.evidence],
        }


@dataclass(frozen=True)
class Output:
    """What a processor function returns."""

    quantities: tuple[Quantity, ...] = ()
    images: tuple[DerivedImage, ...] = ()
    findings: tuple[Finding, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()


@dataclass(frozen=True)
class Provenance:
    """Who made a result from what: processor name, version, parameters, input instance."""

    processor: str
    version: str
    parameters: Mapping[str, Any]
    sop_instance_uid: str
    study_instance_uid: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "processor": self.processor,
            "version": self.version,
            "parameters": dict(self.parameters),
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid,
        }


@dataclass(frozen=True)
class ProcessorResult:
    """One processor applied to one instance: its output, or why it was skipped or failed."""

    provenance: Provenance
    status: ResultStatus
    output: Output = field(default_factory=Output)
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the processor ran to completion (done)."""
        return self.status == ResultStatus.DONE

    def quantity(self, name: str) -> Quantity | None:
        """The quantity called ``name``, if any."""
        return next((q for q in self.output.quantities if q.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON view (derived images without their pixels)."""
        return {
            "processor": self.provenance.processor,
            "status": self.status.value,
            "reason": self.reason,
            "seconds": round(self.seconds, 4),
            "provenance": self.provenance.as_dict(),
            "quantities": [q.as_dict() for q in self.output.quantities],
            "images": [i.as_dict() for i in self.output.images],
            "findings": [f.as_dict() for f in self.output.findings],
            "recommendations": [r.as_dict() for r in self.output.recommendations],
        }

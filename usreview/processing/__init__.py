"""Automatic processing: registered processors, the default pipeline and typed results.

>>> from usreview.dicom import read
>>> from usreview.processing import run_pipeline
>>> results = run_pipeline(read("pw.dcm"))                      # doctest: +SKIP
>>> [(q.name, q.value, q.unit) for q in results[0].output.quantities][:1]  # doctest: +SKIP
[('peak_systolic_velocity', 80.9, 'cm/s')]

Families share one shape: ``quantification/`` (Doppler, M-mode, volume) and
``recommendations/`` (published rules as data). Add a processor with :func:`processor`, or
from another package through the entry-point group ``usreview.processors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes
from usreview.processing.errors import (
    NotApplicable,
    ProcessingError,
    ProcessorUnavailableError,
    UnknownProcessorError,
)
from usreview.processing.results import (
    Code,
    CodingScheme,
    DerivedImage,
    Finding,
    Output,
    ProcessorResult,
    Provenance,
    Quantity,
    Recommendation,
    ResultStatus,
)

if TYPE_CHECKING:
    from usreview.processing.analyze import analyze_file, analyze_paths
    from usreview.processing.pipeline import PIPELINE, run_pipeline
    from usreview.processing.registry import (
        ENTRY_POINT_GROUP,
        Context,
        Processor,
        Registry,
        default_registry,
        processor,
    )

# Imported when first used: the hub's service reads results, rules and codes from this
# package's modules and needs none of the processors (nor scipy, which they import).
_MODULES = {
    "analyze_file": "analyze",
    "analyze_paths": "analyze",
    "PIPELINE": "pipeline",
    "run_pipeline": "pipeline",
    "ENTRY_POINT_GROUP": "registry",
    "Context": "registry",
    "Processor": "registry",
    "Registry": "registry",
    "default_registry": "registry",
    "processor": "registry",
}

__getattr__ = lazy_attributes(__name__, _MODULES)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PIPELINE",
    "Code",
    "CodingScheme",
    "Context",
    "DerivedImage",
    "Finding",
    "NotApplicable",
    "Output",
    "ProcessingError",
    "Processor",
    "ProcessorResult",
    "ProcessorUnavailableError",
    "Provenance",
    "Quantity",
    "Recommendation",
    "Registry",
    "ResultStatus",
    "UnknownProcessorError",
    "analyze_file",
    "analyze_paths",
    "default_registry",
    "processor",
    "run_pipeline",
]

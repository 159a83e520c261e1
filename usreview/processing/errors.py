"""Errors of the processing stage.

::

    UsreviewError
    └── ProcessingError                 a processor or the pipeline could not do its work
        ├── NotApplicable               the processor does not apply to this instance (skipped)
        ├── UnknownProcessorError       no processor of that name is registered
        └── ProcessorUnavailableError   its dependencies are missing
"""

from __future__ import annotations

from usreview.errors import UsreviewError

__all__ = [
    "NotApplicable",
    "ProcessingError",
    "ProcessorUnavailableError",
    "UnknownProcessorError",
]


class ProcessingError(UsreviewError):
    """A processor or the pipeline could not do its work."""


class NotApplicable(ProcessingError):
    """Raised by a processor when the instance holds nothing it can measure; the reason is kept."""


class UnknownProcessorError(ProcessingError):
    """No processor of that name is registered."""


class ProcessorUnavailableError(ProcessingError):
    """The processor is registered but its dependencies are missing."""

"""The one exception tree of usreview.

Every error that usreview raises on purpose derives from :class:`UsreviewError`.
Boundaries (the CLI, HTTP handlers, DICOM associations) turn these into a status
and one sentence; anything else reaching a boundary is a bug.

::

    UsreviewError
    ├── InputError                      bad input from outside (a file, a request)
    │   ├── NotDicomError               not a DICOM file at all
    │   ├── NotUltrasoundError          DICOM, but not an ultrasound SOP class
    │   ├── UnsupportedTransferSyntaxError
    │   │                               no decoder installed for the transfer syntax
    │   ├── CorruptPixelDataError       pixel data missing, truncated or undecodable
    │   ├── ImageTooLargeError          declared decoded size over the configured cap
    │   ├── SimulationError             invalid simulator parameters
    │   └── ReportError                 a reviewer's report that fails validation (names the
    │                                   field; usreview.review.report)
    ├── CalibrationError                no usable ultrasound region for a measurement,
    │   └── MixedCalibrationError       or points spanning regions of different calibration
    ├── EnvelopeError                   a sealed envelope could not be made or opened
    │                                   (subclasses in usreview.envelope)
    ├── StoreError                      the archive failed (subclasses in usreview.store)
    ├── IngestError                     an upload could not be taken in (usreview.ingest)
    ├── ProcessingError                 a processor could not run (usreview.processing.errors)
    ├── HubError                        the hub deployment (subclasses in usreview.hub.errors)
    ├── ReviewError                     a review dashboard's request (usreview.review)
    └── SiteError                       a site's gateway and commands (usreview.site.errors)
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CorruptPixelDataError",
    "EnvelopeError",
    "ImageTooLargeError",
    "InputError",
    "MixedCalibrationError",
    "NotDicomError",
    "NotUltrasoundError",
    "ReportError",
    "ReviewError",
    "SimulationError",
    "UnsupportedTransferSyntaxError",
    "UsreviewError",
]


class UsreviewError(Exception):
    """Root of every error usreview raises on purpose."""


class InputError(UsreviewError):
    """Input from outside (a file, a request body) that cannot be accepted."""


class NotDicomError(InputError):
    """The bytes are not a DICOM Part 10 file or dataset."""


class NotUltrasoundError(InputError):
    """A valid DICOM object whose SOP class is not an ultrasound image."""


class UnsupportedTransferSyntaxError(InputError):
    """No installed decoder handles this transfer syntax; the message names what to install."""


class CorruptPixelDataError(InputError):
    """Pixel data is missing, truncated, inconsistent with the header, or fails to decode."""


class ImageTooLargeError(InputError):
    """The declared decoded image is over the configured cap (checked before decoding)."""


class CalibrationError(UsreviewError):
    """No ultrasound region gives a physical calibration for the requested points."""


class MixedCalibrationError(CalibrationError):
    """The points of one measurement fall in regions of different calibration."""


class SimulationError(InputError):
    """Simulator parameters that cannot produce a valid study."""


class ReportError(InputError):
    """A reviewer's report that fails validation; ``field`` names the offending field.

    Parameters
    ----------
    field
        The field, as a path into the report's JSON (``measurements[2].unit``).
    problem
        What is wrong with it, in a few words.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class EnvelopeError(UsreviewError):
    """A sealed envelope could not be created or opened."""


class ReviewError(UsreviewError):
    """A review dashboard could not do what the reviewer asked (the message says why)."""

"""Processors' images as DICOM: derived Ultrasound (Multi-frame) Image Storage instances.

Used for the speckle filters' outputs and the Doppler envelope overlay (any
:class:`~usreview.processing.results.DerivedImage`: :func:`derived_from_result`); never
Secondary Capture, so that viewers keep the ultrasound regions and their calibration.

:func:`derived_dataset` copies the source's header (patient, study, equipment context,
acquisition, the Sequence of Ultrasound Regions so that calibration stays valid, cine timing)
and records the derivation as PS3.3 C.7.6.1.1 asks:

- Image Type ``DERIVED\\SECONDARY`` (values 3 and 4, the ultrasound bit map, are kept);
- Derivation Description (what was done: processor, version, parameters);
- Derivation Code Sequence: the image's code from CID 7203 "Image Derivation" (113087, DCM,
  "Smoothing" for the speckle filters; 113076, DCM, "Segmentation" for the traced envelope);
- Source Image Sequence: the source instance, with purpose of reference
  (121322, DCM, "Source image for image processing operation") from CID 7202.

It is also marked as usreview's own, so that an instance a site's PACS forwards back to the
hub is not processed again (filtered-of-filtered images): Manufacturer ``usreview`` and
Manufacturer's Model Name ``usreview processing`` (the General Equipment is this software),
and an item of the Contributing Equipment Sequence (SOP Common) naming usreview with purpose
(109102, DCM, "Processing Equipment") from CID 7005, its version, the time and what was
done; the source's own contributing equipment is kept before it.
:func:`usreview_derivation` recognises either mark (the first alone on instances made
before the second was added).

The series and instance UIDs are new and derived from the provenance, so processing the same
instance again gives the same UIDs (a retried job replaces its result instead of adding one).
One derived series holds a processor's images of one source series (same processor, version
and parameters); its Series Number is ``SLOT * 10000 + N`` (:func:`derived_series_number`),
where ``N`` is the source's Series Number (0 when absent; modulo 10000) and ``SLOT``, from
1 to 214747, a hash (SHA-256) of what names the derived series: the source's Series
Instance UID, the processor, its version and parameters. So the number is the same each
time the same source series is processed by the same processor, ends with the source
series' number, is 10000 or more (above a scanner's series numbers and the SRs' 9001 and
9101), at most 2**31 - 1, and differs between the derived series of one study: always for
sources of different numbers below 10000, and for two processors on one source series
unless their slots collide (a chance of 1 in 214747 per pair).

Private elements, LUTs, windows and icons of the source are dropped: the pixels are 8-bit
display values (MONOCHROME2, or RGB for a source stored in colour), Explicit VR Little
Endian. So is any cine timing (Frame Time, Frame Time Vector, Cine Rate, Recommended Display
Frame Rate) that the reader ignores as invalid (:func:`~usreview.dicom.timing.timing_problems`);
valid timing is copied unchanged. Frame Increment Pointer (Type 1C with several frames) is
kept: when what it names is invalid it names the valid timing instead, if need be a Frame
Time of 1000 / the valid Cine Rate or Recommended Display Frame Rate.

The text is written in UTF-8 (``ISO_IR 192``, as the SRs), whatever the source declared. The
new dates and times are local, as in every object the hub writes
(:func:`~usreview.processing.sr_codes.stamp_local_time`): in the source's Timezone Offset
From UTC (0008,0201) when it has a valid one (the copied study dates and times are in it),
else in the hub's; an offset is not written where the source had no valid one, since it
would apply to the site's copied study dates and times too, whose zone is not known
(Contribution DateTime carries its own).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from usreview import __version__
from usreview.dicom import UltrasoundInstance
from usreview.dicom.timing import (
    TIMING_KEYWORDS,
    FrameTiming,
    frame_increment_pointers,
    frame_timing,
    timing_problems,
)
from usreview.processing.results import (
    Code,
    CodingScheme,
    DerivedImage,
    ProcessorResult,
    Provenance,
)
from usreview.processing.sr_codes import SPECIFIC_CHARACTER_SET, stamp_local_time

__all__ = [
    "MANUFACTURER",
    "MODEL_NAME",
    "PROCESSING_EQUIPMENT",
    "SMOOTHING",
    "SOURCE_IMAGE_FOR_PROCESSING",
    "US_IMAGE_STORAGE",
    "US_MULTIFRAME_IMAGE_STORAGE",
    "derived_dataset",
    "derived_from_result",
    "derived_series_number",
    "usreview_derivation",
]

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
#: CID 7203 Image Derivation.
SMOOTHING = Code("113087", CodingScheme.DCM, "Smoothing")
#: CID 7202 Source Image Purposes of Reference.
SOURCE_IMAGE_FOR_PROCESSING = Code(
    "121322", CodingScheme.DCM, "Source image for image processing operation"
)
#: CID 7005 Contributing Equipment Purposes of Reference.
PROCESSING_EQUIPMENT = Code("109102", CodingScheme.DCM, "Processing Equipment")
#: Manufacturer and Manufacturer's Model Name of usreview's derived instances.
MANUFACTURER = "usreview"
MODEL_NAME = "usreview processing"
_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203",
}
# Elements that describe the source's stored pixels or its own identity: not ours to copy.
_DROPPED = (
    "PixelData",
    "PlanarConfiguration",
    "IconImageSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
    "DeviceSerialNumber",
    "DerivationDescription",
    "DerivationCodeSequence",
    "SourceImageSequence",
    "DataSetTrailingPadding",
)
#: Derived series numbers: a slot (1 to :data:`_SLOTS`) times this, plus the source's number.
_SERIES_SPAN = 10_000
_SLOTS = (2**31 - 1) // _SERIES_SPAN - 1
_MARKS_SHOWN = 160  # characters of the derivation description quoted by usreview_derivation
_MULTIFRAME_ONLY = (
    "NumberOfFrames",
    "FrameIncrementPointer",
    "FrameTime",
    "FrameTimeVector",
    "FrameDelay",
    "ActualFrameDuration",
    "RecommendedDisplayFrameRate",
    "CineRate",
    "StartTrim",
    "StopTrim",
    "PreferredPlaybackSequencing",
    "FrameLabelVector",
)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme.value
    item.CodeMeaning = code.meaning
    return item


def _contribution(when: dt.datetime, what: str) -> Dataset:
    """The Contributing Equipment item that names usreview as the processing equipment."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(PROCESSING_EQUIPMENT)])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL_NAME
    item.SoftwareVersions = __version__
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S%z")
    item.ContributionDescription = f"derived image: {what}"[:1024]
    return item


def usreview_derivation(dataset: Dataset) -> str | None:
    """Why ``dataset`` is an instance that usreview derived, or ``None`` for any other.

    Recognised by the marks :func:`derived_dataset` writes: an item of the Contributing
    Equipment Sequence naming usreview as processing equipment, or usreview's Manufacturer
    and Manufacturer's Model Name (``usreview processing``). The simulator's instances
    (model ``usreview simulator``) and scanners' are not usreview-derived.
    """
    described = str(dataset.get("DerivationDescription") or "").strip()
    for item in dataset.get("ContributingEquipmentSequence") or []:
        purposes = item.get("PurposeOfReferenceCodeSequence") or []
        processing = any(
            str(code.get("CodeValue", "")) == PROCESSING_EQUIPMENT.value
            and str(code.get("CodingSchemeDesignator", "")) == PROCESSING_EQUIPMENT.scheme.value
            for code in purposes
        )
        if processing and str(item.get("Manufacturer", "")).strip() == MANUFACTURER:
            described = described or str(item.get("ContributionDescription") or "").strip()
            break
    else:
        equipment = (
            str(dataset.get("Manufacturer", "")).strip(),
            str(dataset.get("ManufacturerModelName", "")).strip(),
        )
        if equipment != (MANUFACTURER, MODEL_NAME):
            return None
    if len(described) > _MARKS_SHOWN:
        described = described[: _MARKS_SHOWN - 3] + "..."
    what = f" ({described})" if described else ""
    return f"a derived image that usreview made{what}"


def _drop_invalid_timing(ds: Dataset, number_of_frames: int) -> None:
    """Remove the timing attributes that the reader ignores, keeping Frame Increment Pointer.

    The pointer is Type 1C with several frames, so it is never dropped: when
    every attribute it names is invalid, it names the valid Frame Time or Frame Time Vector
    instead, or a Frame Time of 1000 / rate from a valid Cine Rate or Recommended Display
    Frame Rate; with no valid timing at all, the source's pointer and what it names stay.
    """
    invalid = timing_problems(ds, number_of_frames)
    pointers = frame_increment_pointers(ds)
    kept = [p for p in pointers if keyword_for_tag(p) not in invalid]
    valid = _timing_without(ds, invalid, number_of_frames)
    if pointers and not kept and valid.source is None:
        invalid = {k: v for k, v in invalid.items() if tag_for_keyword(k) not in pointers}
        kept = list(pointers)
    for keyword in invalid:
        delattr(ds, keyword)
    if not kept and valid.source is not None and number_of_frames > 1:
        if valid.source in ("CineRate", "RecommendedDisplayFrameRate"):
            ds.FrameTime = f"{valid.frame_time_ms:.8g}"
            kept = [Tag("FrameTime")]
        else:
            kept = [Tag(valid.source)]
    if kept:
        ds.FrameIncrementPointer = kept if len(kept) > 1 else kept[0]
    elif "FrameIncrementPointer" in ds:
        del ds.FrameIncrementPointer


def _timing_without(ds: Dataset, invalid: Iterable[str], number_of_frames: int) -> FrameTiming:
    """The frame timing that ``ds``'s timing attributes but the ``invalid`` ones give."""
    left = Dataset()
    for keyword in TIMING_KEYWORDS:
        if keyword in ds and keyword not in invalid:
            setattr(left, keyword, ds.get(keyword))
    return frame_timing(left, number_of_frames)


def derived_series_number(source_series_number: int, *series: str) -> int:
    """The Series Number of a derived series (see the module docstring).

    Parameters
    ----------
    source_series_number
        The source's Series Number (0 when it has none).
    *series
        What names the derived series: the source's Series Instance UID, the processor, its
        version and parameters.
    """
    digest = hashlib.sha256("\0".join(series).encode()).digest()
    slot = 1 + int.from_bytes(digest[:8], "big") % _SLOTS
    return slot * _SERIES_SPAN + source_series_number % _SERIES_SPAN


def _series_number(ds: Dataset) -> int:
    """``ds``'s Series Number, 0 when absent, unreadable or negative."""
    try:
        number = int(ds.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0
    return max(number, 0)


def _uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=["usreview.processing.filters", *parts])


def derived_dataset(
    source: UltrasoundInstance,
    pixels: npt.NDArray[np.uint8],
    provenance: Provenance,
    *,
    description: str,
    frame: int | None = None,
    derivation: Code | None = SMOOTHING,
    name: str | None = None,
) -> Dataset:
    """A derived US image of ``source`` holding ``pixels``, ready to save or send.

    Parameters
    ----------
    source
        The instance the pixels were derived from.
    pixels
        uint8 grey ``(rows, columns)`` or RGB ``(rows, columns, 3)`` (Ultrasound Image
        Storage), or every frame of the source stacked first (Ultrasound Multi-frame Image
        Storage); rows and columns as the source's, so that its regions stay valid.
    provenance
        Processor, version, parameters and input instance (Derivation Description, UIDs).
    description
        What was done, in words (first part of the Derivation Description).
    frame
        For a single frame taken from a multi-frame source: its number (from 1), which the
        Source Image Sequence references.
    derivation
        The Derivation Code (CID 7203 "Image Derivation"); ``None`` leaves the derivation
        to the description.
    name
        The image's name within its processor's output; with several images per result,
        it keeps their SOP Instance UIDs apart.

    Raises
    ------
    ValueError
        For pixels of the wrong type or shape, naming the argument.
    """
    size = (source.rows, source.columns)
    rgb = pixels.ndim in (3, 4) and pixels.shape[-1] == 3 and pixels.shape[-3:-1] == size
    if pixels.dtype != np.uint8 or (pixels.shape[-2:] != size and not rgb):
        raise ValueError(
            f"argument 'pixels' must be uint8 with the source's {size} rows and columns, grey "
            f"or RGB, one frame or all; got {pixels.dtype} {pixels.shape}"
        )
    multi = pixels.ndim == (4 if rgb else 3)
    if pixels.ndim > (4 if rgb else 3):
        raise ValueError(f"argument 'pixels' has too many dimensions: {pixels.shape}")
    if multi and pixels.shape[0] != source.number_of_frames:
        raise ValueError(
            f"argument 'pixels' has {pixels.shape[0]} frames; the source has "
            f"{source.number_of_frames}"
        )
    if frame is not None and not 1 <= frame <= source.number_of_frames:
        raise ValueError(f"argument 'frame' {frame} is not a frame of the source")
    if not description.strip():
        raise ValueError("argument 'description' is empty")

    ds = copy.deepcopy(source.dataset)
    ds.remove_private_tags()
    ds.decode()  # the source's text, read in its character set, is written in ours
    ds.SpecificCharacterSet = SPECIFIC_CHARACTER_SET
    for keyword in _DROPPED + (() if multi else _MULTIFRAME_ONLY):
        if keyword in ds:
            delattr(ds, keyword)
    if multi:
        _drop_invalid_timing(ds, source.number_of_frames)
    ds.file_meta = FileMetaDataset()
    lossy = (
        str(source.transfer_syntax) in _LOSSY_SYNTAXES or ds.get("LossyImageCompression") == "01"
    )

    params = json.dumps(dict(provenance.parameters), sort_keys=True, default=str)
    key = (provenance.processor, provenance.version, params)
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multi else US_IMAGE_STORAGE
    ds.SOPClassUID = sop_class
    named = () if name is None else (name,)
    ds.SOPInstanceUID = _uid("instance", source.sop_instance_uid, str(frame), *key, *named)
    ds.SeriesInstanceUID = _uid("series", source.series_instance_uid, *key)
    ds.SeriesNumber = derived_series_number(
        _series_number(source.dataset), source.series_instance_uid, *key
    )
    base = str(ds.get("SeriesDescription") or "").strip()
    ds.SeriesDescription = f"{base} {description}".strip()[:64]
    now = stamp_local_time(ds, source.dataset, ("InstanceCreation", "Content", "Series"))
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = __version__
    ds.ContributingEquipmentSequence = DicomSequence(
        [
            *(ds.get("ContributingEquipmentSequence") or []),
            _contribution(
                now, f"{description}; processor {provenance.processor} {provenance.version}"
            ),
        ]
    )

    image_type = [str(v) for v in (ds.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.DerivationDescription = (
        f"{description}; processor {provenance.processor} {provenance.version}; parameters {params}"
    )[:1024]
    if derivation is not None:
        ds.DerivationCodeSequence = DicomSequence([_code_item(derivation)])
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    if frame is not None and source.number_of_frames > 1:
        reference.ReferencedFrameNumber = frame
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code_item(SOURCE_IMAGE_FOR_PROCESSING)]
    )
    ds.SourceImageSequence = DicomSequence([reference])
    if lossy:
        ds.LossyImageCompression = "01"

    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = source.rows, source.columns
    if multi:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if "UltrasoundColorDataPresent" in ds and not rgb:
        ds.UltrasoundColorDataPresent = 0
    ds.add_new(0x7FE00010, "OB", np.ascontiguousarray(pixels).tobytes())  # Pixel Data

    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def derived_from_result(
    source: UltrasoundInstance, result: ProcessorResult, image: DerivedImage | str | None = None
) -> Dataset:
    """The derived instance of one image of ``result``: a frame, or a whole cine.

    ``image`` is one of the result's images or its name; by default the result's only image.
    The image's derivation code, source frame and name are recorded (see
    :func:`derived_dataset`); its frames become an Ultrasound Multi-frame Image.

    Raises
    ------
    ValueError
        When the result has no images (it was skipped or failed), several and none was
        chosen, or none of that name; or when the pixels do not fit the source.
    """
    images: Sequence[DerivedImage] = result.output.images
    name = result.provenance.processor
    if not result.ok or not images:
        raise ValueError(f"result of {name} holds no image: {result.reason}")
    if image is None:
        if len(images) > 1:
            names = ", ".join(i.name for i in images)
            raise ValueError(f"result of {name} holds several images ({names}): choose one")
        chosen = images[0]
    elif isinstance(image, str):
        found = [i for i in images if i.name == image]
        if not found:
            raise ValueError(f"result of {name} holds no image called {image!r}")
        chosen = found[0]
    else:
        chosen = image
    if chosen.multiframe and chosen.number_of_frames != source.number_of_frames:
        raise ValueError(
            f"image {chosen.name} of {name} has {chosen.number_of_frames} frames; the source "
            f"has {source.number_of_frames}"
        )
    frame = chosen.source_frame
    if frame is None and not chosen.multiframe and source.number_of_frames > 1:
        frame = 1  # one frame of a multi-frame source: the first unless it says otherwise
    pixels = chosen.pixels
    if chosen.multiframe and chosen.number_of_frames == 1:  # a one-frame "cine": one image
        pixels = pixels[0]
    return derived_dataset(
        source,
        pixels,
        result.provenance,
        description=chosen.description,
        frame=frame,
        derivation=chosen.derivation,
        name=None if len(images) == 1 else chosen.name,
    )

"""Read ultrasound instances from files, tolerantly, behind one error boundary.

:func:`read` accepts whatever bytes it is given: it returns an :class:`UltrasoundInstance` or
raises an :class:`~usreview.errors.InputError` subclass, and no other exception. The header is
parsed completely at once (so that lazy element conversion cannot fail later); pixel data is
left on disk and decoded one frame at a time.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings as _warnings
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from usreview.dicom.display import to_display
from usreview.dicom.enum import ImageKind
from usreview.dicom.fragments import check_frames_present
from usreview.dicom.kinds import classify
from usreview.dicom.pixels import DEFAULT_MAX_DECODED_BYTES, PixelData
from usreview.dicom.regions import UltrasoundRegion, read_regions
from usreview.dicom.timing import FrameTiming, frame_timing
from usreview.errors import (
    CorruptPixelDataError,
    InputError,
    NotDicomError,
    NotUltrasoundError,
    UnsupportedTransferSyntaxError,
)

__all__ = ["ULTRASOUND_SOP_CLASSES", "UltrasoundInstance", "iter_dicom_paths", "read"]

#: The SOP classes read as ultrasound images, with their names.
ULTRASOUND_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UC", b"UR", b"UT"}
_DEFLATED = "1.2.840.10008.1.2.1.99"


class UltrasoundInstance:
    """One ultrasound instance: its header, regions, kinds, timing and lazily decoded frames.

    Build it with :func:`read`.
    """

    def __init__(
        self,
        path: Path,
        dataset: Dataset,
        pixels: PixelData,
        warnings: list[str],
    ) -> None:
        self.path = path
        #: The header (every element before Pixel Data), including file meta information.
        self.dataset = dataset
        self.pixels = pixels
        #: What was tolerated while reading, as sentences.
        self.warnings = warnings
        self.regions: tuple[UltrasoundRegion, ...] = read_regions(dataset, warnings)
        self.timing: FrameTiming = frame_timing(dataset, pixels.number_of_frames, warnings)
        self.kinds: tuple[ImageKind, ...] = classify(
            dataset, self.regions, pixels.number_of_frames, warnings
        )

    def __repr__(self) -> str:
        kinds = ",".join(k.value for k in self.kinds)
        return f"<UltrasoundInstance {self.sop_instance_uid} {kinds} {self.path.name}>"

    # --- identity -------------------------------------------------------------------

    @property
    def sop_class_uid(self) -> UID:
        """SOP Class UID."""
        return UID(str(self.dataset.SOPClassUID))

    @property
    def sop_class_name(self) -> str:
        """Human name of the SOP class."""
        return ULTRASOUND_SOP_CLASSES[str(self.sop_class_uid)]

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID (empty when the header has none)."""
        return str(self.dataset.get("SOPInstanceUID", ""))

    @property
    def study_instance_uid(self) -> str:
        """Study Instance UID (empty when the header has none)."""
        return str(self.dataset.get("StudyInstanceUID", ""))

    @property
    def series_instance_uid(self) -> str:
        """Series Instance UID (empty when the header has none)."""
        return str(self.dataset.get("SeriesInstanceUID", ""))

    @property
    def transfer_syntax(self) -> UID:
        """Transfer syntax of the stored pixel data."""
        return self.pixels.transfer_syntax

    # --- image geometry ---------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows of each frame."""
        return self.pixels.rows

    @property
    def columns(self) -> int:
        """Columns of each frame."""
        return self.pixels.columns

    @property
    def number_of_frames(self) -> int:
        """Frames (1 for a single image; slices for a volume)."""
        return self.pixels.number_of_frames

    @property
    def photometric_interpretation(self) -> str:
        """Photometric interpretation as stored."""
        return self.pixels.photometric_interpretation

    def has_kind(self, kind: ImageKind | str) -> bool:
        """Whether the instance holds ``kind``."""
        return ImageKind(kind) in self.kinds

    # --- pixels ---------------------------------------------------------------------

    def frame(self, index: int = 0) -> npt.NDArray[Any]:
        """Frame ``index``, decoded alone (stored values; YBR colour as RGB)."""
        return self.pixels.frame(index)

    def frames(self) -> npt.NDArray[Any]:
        """All frames, shaped ``(frames, rows, columns[, 3])``."""
        return self.pixels.frames()

    def display_frame(self, index: int = 0) -> npt.NDArray[np.uint8]:
        """Frame ``index`` as shown on screen: 8-bit grey ``(rows, columns)`` or RGB."""
        frame = self.frame(index)
        try:
            return to_display(frame, self.dataset, self.photometric_interpretation)
        except Exception as exc:  # a broken palette lookup table, for instance
            raise CorruptPixelDataError(
                f"frame {index} cannot be displayed: {_first_line(exc)}"
            ) from exc

    @cached_property
    def slice_positions_mm(self) -> tuple[str, npt.NDArray[np.float64]] | None:
        """Each frame's position along the slice normal (mm), and the attribute it comes from.

        Image Position (Volume), else (Patient), of the per-frame Plane Position functional
        groups, projected on the normal of the row and column directions (the first frame's
        orientation, else the shared one). ``None`` unless every one of at least 2 frames has a
        finite position, not all the same, and an orientation.
        """
        return _frame_positions(self.dataset, self.number_of_frames)

    @property
    def voxel_spacing_mm(self) -> tuple[float, float, float] | None:
        """(slice, row, column) spacing of an Enhanced US Volume; ``None`` when not known.

        Row and column come from Pixel Spacing (shared Pixel Measures). The slice spacing is
        the step between the frames' positions along the slice normal
        (:attr:`slice_positions_mm`) when they are given, with the sign of a declared negative
        Spacing Between Slices (slices stored in reverse); else the declared Spacing Between
        Slices. Slice Thickness is never used: it is the thickness of the slab a slice images,
        not the distance between slices. :attr:`voxel_spacing_problem` says why it is ``None``.
        """
        return self._voxel_spacing[0]

    @property
    def voxel_spacing_problem(self) -> str | None:
        """Why :attr:`voxel_spacing_mm` is ``None``, as a sentence (``None`` when it is known)."""
        return self._voxel_spacing[1]

    @cached_property
    def _voxel_spacing(self) -> tuple[tuple[float, float, float] | None, str | None]:
        try:
            shared = self.dataset.SharedFunctionalGroupsSequence[0]
            measures = shared.PixelMeasuresSequence[0]
            row, col = (float(v) for v in measures.PixelSpacing)
            declared = measures.get("SpacingBetweenSlices")
            between = None if declared is None or declared == "" else float(declared)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None, "no Pixel Spacing in the shared Pixel Measures Sequence"
        between, problem = _slice_spacing(between, self.slice_positions_mm)
        return (None if between is None else (between, row, col)), problem


#: Where a frame's position and orientation are, per frame of reference (volume, then patient):
#: (position sequence, position, orientation sequence, orientation, name).
_PLANES = (
    (
        "PlanePositionVolumeSequence",
        "ImagePositionVolume",
        "PlaneOrientationVolumeSequence",
        "ImageOrientationVolume",
        "Image Position (Volume)",
    ),
    (
        "PlanePositionSequence",
        "ImagePositionPatient",
        "PlaneOrientationSequence",
        "ImageOrientationPatient",
        "Image Position (Patient)",
    ),
)

#: A declared slice spacing, and each step between sorted frame positions, may differ from the
#: positions' median step by this fraction (positions are decimal strings of 16 characters).
_SPACING_TOLERANCE = 0.01


def _group_value(group: Dataset, sequence: str, keyword: str) -> Any:
    """``keyword`` of the first item of the functional group ``sequence`` (``None`` if absent)."""
    items = group.get(sequence) or []
    return items[0].get(keyword) if len(items) else None


def _frame_positions(dataset: Dataset, frames: int) -> tuple[str, npt.NDArray[np.float64]] | None:
    """See :attr:`UltrasoundInstance.slice_positions_mm`."""
    per_frame = list(dataset.get("PerFrameFunctionalGroupsSequence") or [])
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if frames < 2 or len(per_frame) != frames:
        return None
    for position_sequence, position, orientation_sequence, orientation, name in _PLANES:
        try:
            positions = np.array(
                [_group_value(f, position_sequence, position) for f in per_frame], np.float64
            )
            cosines = np.array(
                _group_value(per_frame[0], orientation_sequence, orientation)
                or _group_value(shared, orientation_sequence, orientation),
                np.float64,
            )
        except (TypeError, ValueError):
            continue
        if positions.shape != (frames, 3) or cosines.shape != (6,):
            continue
        normal = np.cross(cosines[:3], cosines[3:])
        length = float(np.linalg.norm(normal))
        if not length > 0.5:  # direction cosines nowhere near perpendicular unit vectors
            continue
        along = positions @ (normal / length)  # in mm, whatever rounding the cosines carry
        if np.all(np.isfinite(along)) and np.ptp(along) > 0:
            return name, along
    return None


def _slice_spacing(
    declared: float | None, positions: tuple[str, npt.NDArray[np.float64]] | None
) -> tuple[float | None, str | None]:
    """The slice spacing (mm) from the frames' positions, checked against the declared Spacing
    Between Slices, else the declared one; or ``None`` and why not."""
    if positions is None:
        if declared is None:
            return None, (
                "the slice spacing is unknown: no Spacing Between Slices and no frame positions "
                "(Slice Thickness is the thickness of a slice, not the distance between slices)"
            )
        return declared, None
    name, along = positions
    steps = np.diff(np.sort(along))
    step = float(np.median(steps))
    if step <= 0 or float(np.max(np.abs(steps - step))) > _SPACING_TOLERANCE * step:
        return None, (
            f"the slices are not evenly spaced: their {name} steps from {steps.min():.4g} to "
            f"{steps.max():.4g} mm along the slice normal"
        )
    if declared is None:
        return step, None
    if not abs(abs(declared) - step) <= _SPACING_TOLERANCE * step:  # NaN disagrees too
        return None, (
            f"the Spacing Between Slices ({declared:g} mm) disagrees with the {step:.4g} mm "
            f"between the frames' {name} along the slice normal"
        )
    return math.copysign(step, declared), None


def read(
    path: str | os.PathLike[str],
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> UltrasoundInstance:
    """Read one ultrasound instance from ``path``.

    Parameters
    ----------
    path
        A DICOM Part 10 file (a bare dataset without preamble is accepted with a warning).
    max_decoded_bytes
        Cap on rows x columns x samples x bytes x frames, checked before any decoding.

    Raises
    ------
    InputError
        One of its subclasses, whatever the bytes: :class:`NotDicomError`,
        :class:`NotUltrasoundError`, :class:`UnsupportedTransferSyntaxError`,
        :class:`CorruptPixelDataError` or :class:`ImageTooLargeError`.
    """
    file_path = Path(path)
    notes: list[str] = []
    try:
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            instance = _read(file_path, notes, max_decoded_bytes)
        for warning in caught:
            text = _first_line(warning.message)
            if text not in notes:
                notes.append(text)
        return instance
    except InputError:
        raise
    except OSError as exc:
        raise NotDicomError(f"cannot read the file: {exc.strerror or exc}") from exc
    except (MemoryError, RecursionError) as exc:
        raise NotDicomError(f"not a valid DICOM file: {type(exc).__name__} while parsing") from exc
    except Exception as exc:
        raise NotDicomError(f"not a valid DICOM file: {_first_line(exc)}") from exc


def _read(path: Path, notes: list[str], max_decoded_bytes: int) -> UltrasoundInstance:
    if not path.is_file():
        raise NotDicomError(_not_a_file(path))
    with open(path, "rb") as fp:
        try:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            fp.seek(0)
            if not _starts_like_a_dataset(fp.read(2)):  # pydicom would walk the whole file
                raise NotDicomError(
                    "not a DICOM file (no 'DICM' preamble, no image header)"
                ) from None
            fp.seek(0)
            dataset = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in dataset or "Rows" not in dataset:
                raise NotDicomError(
                    "not a DICOM file (no 'DICM' preamble, no image header)"
                ) from None
            notes.append("no DICOM preamble or file meta information; read as a bare dataset")
        position = fp.tell()
        # Convert every element now, inside the error boundary.
        for _element in dataset.iterall():
            pass
        sop_class = str(
            dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", "")
        )
        if not sop_class and not len(dataset):
            raise NotDicomError("the file ends before its DICOM header (truncated?)")
        if sop_class not in ULTRASOUND_SOP_CLASSES:
            modality = dataset.get("Modality", "?")
            raise NotUltrasoundError(
                f"not an ultrasound image: SOP class {sop_class or 'missing'} "
                f"({UID(sop_class).name if sop_class else 'none'}), modality {modality}"
            )
        if "SOPClassUID" not in dataset:
            dataset.SOPClassUID = sop_class
        syntax = _transfer_syntax(dataset, notes)
        if syntax == _DEFLATED:
            raise UnsupportedTransferSyntaxError(
                "unsupported transfer syntax Deflated Explicit VR Little Endian: inflate it first, "
                "for example with dcmtk's 'dcmconv +te'"
            )
        offset, length = _locate_pixel_data(fp, position, syntax)
        pixels = PixelData(
            path, dataset, offset, length, syntax, max_decoded_bytes=max_decoded_bytes
        )
        if pixels.encapsulated:  # every compressed frame in the file (item headers only)
            note = check_frames_present(fp, offset, pixels.number_of_frames, syntax, syntax.name)
            if note is not None:
                notes.append(note)
    return UltrasoundInstance(path, dataset, pixels, notes)


def _transfer_syntax(dataset: Dataset, notes: list[str]) -> UID:
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax:
        return UID(str(syntax))
    implicit, little = dataset.original_encoding
    notes.append("no Transfer Syntax UID in the file meta information; inferred from the encoding")
    if implicit:
        return UID("1.2.840.10008.1.2")
    return UID("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")


def _locate_pixel_data(fp: Any, position: int, syntax: UID) -> tuple[int, int | None]:
    """Offset and length (``None`` when undefined) of the top-level Pixel Data value."""
    fp.seek(position)
    head = fp.read(12)
    if len(head) < 8:
        raise CorruptPixelDataError(
            "the file ends before any pixel data (truncated, or an image without pixels)"
        )
    little = syntax != "1.2.840.10008.1.2.2"
    endian = "<" if little else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = (group << 16) | element
    if tag != _PIXEL_DATA:
        raise CorruptPixelDataError(
            f"the file has no Pixel Data (7FE0,0010); found ({group:04X},{element:04X})"
        )
    if syntax == "1.2.840.10008.1.2":
        (length,) = struct.unpack("<I", head[4:8])
        value_offset = position + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise CorruptPixelDataError("pixel data element header is truncated")
        (length,) = struct.unpack(f"{endian}I", head[8:12])
        value_offset = position + 12
    else:
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        value_offset = position + 8
    return value_offset, (None if length == 0xFFFFFFFF else length)


#: The group of the first element of a bare dataset: file meta information, or the
#: identifying group whose SOP Class UID every image has (either byte order).
_FIRST_GROUPS = (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08")


def _starts_like_a_dataset(first: bytes) -> bool:
    """Whether bytes without a preamble may be a bare dataset worth a forced read.

    A forced read of anything else (say a file of zeros, which reads as empty elements)
    can take minutes before it finds no image header.
    """
    return first in _FIRST_GROUPS


def _not_a_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read."""
    if path.is_symlink() and not path.exists():
        return "broken symbolic link"
    if path.is_dir():
        try:
            os.scandir(path).close()
        except OSError as exc:
            return f"cannot list the folder: {exc.strerror or exc}"
        return "a folder, not a file"
    return "not a regular file" if path.exists() else "no such file"


def _first_line(exc: object) -> str:
    """The message's first line, without pydicom's advice to change its settings (which
    nobody reading a usreview message can follow)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    sentences = re.split(r"(?<=\.)\s+", line)
    return " ".join(s for s in sentences if "pydicom.config" not in s) or line


def iter_dicom_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named in ``paths``, folders searched recursively in sorted order.

    Sidecar files (``*.json``, ``*.md``, ``*.txt``, hidden files) inside folders are skipped;
    files named directly are always yielded. Broken symbolic links and folders that cannot be
    listed are yielded too, so that :func:`read` reports them; other special files (FIFOs,
    sockets, devices) inside folders are skipped.
    """
    for item in paths:
        path = Path(item)
        if os.path.isdir(path):  # False, not an error, for a path it cannot see
            yield from _search(path)
        else:
            yield path


def _search(folder: Path) -> list[Path]:
    """What :func:`iter_dicom_paths` yields for ``folder``, sorted."""
    found: list[Path] = []
    # A folder that cannot be listed is kept, so that reading it says why.
    walk = os.walk(folder, onerror=lambda exc: found.append(Path(exc.filename)))
    for parent, _folders, names in walk:
        for name in names:
            child = Path(parent, name)
            if (
                not name.startswith(".")
                and child.suffix.lower() not in {".json", ".md", ".txt"}
                and (os.path.isfile(child) or not os.path.exists(child))  # or a broken link
            ):
                found.append(child)
    return sorted(found)

"""Common DICOM attributes of simulated studies, ultrasound regions, and atomic saving.

Everything that varies between runs is derived from the :class:`Context` (kind, seed,
SNR and parameters): UIDs come from :func:`pydicom.uid.generate_uid` with those as
entropy sources, dates and times are fixed, so the same call writes the same bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from usreview import __version__
from usreview.dicom.enum import PhysicalUnits, RegionDataType, RegionFlags, RegionSpatialFormat
from usreview.dicom.regions import UltrasoundRegion
from usreview.envelope.atomic import replace_file, write_new_file

__all__ = [
    "STUDY_DATE",
    "STUDY_TIME",
    "Context",
    "Instance",
    "Region",
    "discard",
    "instance_files",
    "new_dataset",
    "regions_sequence",
    "save",
    "set_pixels",
]

STUDY_DATE = "20240102"
STUDY_TIME = "093000"

Instance = tuple[str, Dataset, dict[str, Any]]
"""One instance to write: file stem, dataset, kind-specific truth."""


@dataclass(frozen=True)
class Context:
    """What makes one simulated study unique: kind, seed, SNR and resolved parameters."""

    kind: str
    seed: int
    snr_db: float
    params: Mapping[str, object] = field(default_factory=dict)

    def _key(self) -> str:
        return json.dumps(
            {"kind": self.kind, "seed": self.seed, "snr_db": self.snr_db, "params": self.params},
            sort_keys=True,
        )

    def uid(self, role: str) -> str:
        """Return a UID that depends only on this context and ``role``."""
        return str(generate_uid(entropy_srcs=["usreview.simulate", self._key(), role]))

    def rng(self, stream: str) -> np.random.Generator:
        """Return an independent generator for ``stream``, seeded by the seed only."""
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode())])

    @property
    def patient_name(self) -> str:
        """Synthetic patient name, e.g. ``SIM^BMODE^S0``."""
        return f"SIM^{self.kind.upper()}^S{self.seed}"


@dataclass(frozen=True)
class Region:
    """One item of the Sequence of Ultrasound Regions, with its pixel-to-physical mapping.

    ``x0, y0, x1, y1`` are the inclusive region bounds in image pixels; ``ref_x``/``ref_y``
    the reference pixel relative to ``(x0, y0)``; ``units_x``/``units_y`` the DICOM unit
    codes (3 cm, 4 s, 7 cm/s).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    data_type: int
    units_x: int
    units_y: int
    delta_x: float
    delta_y: float
    ref_x: int = 0
    ref_y: int = 0
    ref_value_x: float = 0.0
    ref_value_y: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> UltrasoundRegion:
        """The region as the DICOM model reads it: the one pixel-to-physical formula."""
        return UltrasoundRegion(
            spatial_format=RegionSpatialFormat(self.spatial_format),
            data_type=RegionDataType(self.data_type),
            flags=RegionFlags(0),
            min_x0=self.x0,
            min_y0=self.y0,
            max_x1=self.x1,
            max_y1=self.y1,
            units_x=PhysicalUnits(self.units_x),
            units_y=PhysicalUnits(self.units_y),
            delta_x=float(self.delta_x),
            delta_y=float(self.delta_y),
            reference_pixel_x0=self.ref_x,
            reference_pixel_y0=self.ref_y,
            reference_value_x=float(self.ref_value_x),
            reference_value_y=float(self.ref_value_y),
        )

    def physical(self, col: float, row: float) -> tuple[float, float]:
        """Physical ``(x, y)`` of image pixel ``(col, row)`` by the DICOM region formula."""
        x, y = self.calibration.to_physical(col, row)
        return float(x), float(y)

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel ``(col, row)`` of physical ``(x, y)``; the inverse of :meth:`physical`."""
        col, row = self.calibration.to_pixel(x, y)
        return float(col), float(row)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the region."""
        return self.y1 - self.y0 + 1, self.x1 - self.x0 + 1

    def item(self) -> Dataset:
        """Return the region as a Sequence of Ultrasound Regions item."""
        d = self.calibration.to_dataset()
        for keyword, value in self.extra.items():
            setattr(d, keyword, value)
        return d

    def truth(self) -> dict[str, Any]:
        """The calibration as plain JSON values."""
        return {
            "location_min": [self.x0, self.y0],
            "location_max": [self.x1, self.y1],
            "spatial_format": self.spatial_format,
            "data_type": self.data_type,
            "units": [self.units_x, self.units_y],
            "physical_delta": [self.delta_x, self.delta_y],
            "reference_pixel": [self.ref_x, self.ref_y],
            "reference_physical_value": [self.ref_value_x, self.ref_value_y],
        }


def new_dataset(
    ctx: Context,
    sop_class_uid: str,
    *,
    series_description: str,
    instance: int = 1,
) -> Dataset:
    """Return a dataset with file meta, patient, study, series, equipment and SOP common."""
    ds = Dataset()
    sop_uid = UID(ctx.uid(f"instance-{instance}"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME
    ds.PatientName = ctx.patient_name
    ds.PatientID = f"SIM-{ctx.kind.upper()}-{ctx.seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ctx.uid("study")
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SIM"
    ds.AccessionNumber = ""
    ds.StudyDescription = "usreview simulated study"
    ds.Modality = "US"
    ds.SeriesInstanceUID = ctx.uid("series")
    ds.SeriesNumber = 1
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = STUDY_TIME
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "ABDOMEN"
    ds.Manufacturer = "usreview"
    ds.ManufacturerModelName = "usreview simulator"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = instance
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    return ds


def set_pixels(ds: Dataset, pixels: npt.NDArray[np.uint8]) -> None:
    """Store 8-bit pixels: ``(rows, cols)``, ``(frames, rows, cols)`` or RGB ``(..., 3)``."""
    rgb = pixels.ndim >= 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8
    frames = pixels.ndim == (4 if rgb else 3)
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows = int(pixels.shape[1 if frames else 0])
    ds.Columns = int(pixels.shape[2 if frames else 1])
    if frames:
        ds.NumberOfFrames = int(pixels.shape[0])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()


def regions_sequence(regions: Sequence[Region]) -> DicomSequence:
    """Return the Sequence of Ultrasound Regions for ``regions``."""
    return DicomSequence([r.item() for r in regions])


def instance_files(out: Path, name: str) -> tuple[Path, Path]:
    """The files :func:`save` writes for instance ``name``: its truth, then its DICOM."""
    return out / f"{name}.truth.json", out / f"{name}.dcm"


def discard(paths: Iterable[Path]) -> None:
    """Remove ``paths`` (those missing are ignored): what a failed run wrote."""
    for path in paths:
        path.unlink(missing_ok=True)


def save(
    ds: Dataset, truth: Mapping[str, Any], out: Path, name: str, *, overwrite: bool = False
) -> Path:
    """Write ``NAME.truth.json``, then ``NAME.dcm``, into ``out``; return the DICOM's path.

    Each file is written atomically (mode 0600) and, unless ``overwrite``, never over an
    existing one (:class:`FileExistsError`). The sidecar is written first, so a complete
    ``.dcm`` always has its truth beside it; if the DICOM cannot be written, the sidecar is
    removed again. An :class:`OSError` (a full disk) names the file it was writing.
    """
    from io import BytesIO

    text = json.dumps(truth, indent=2, sort_keys=True, allow_nan=False) + "\n"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    out.mkdir(parents=True, exist_ok=True)
    sidecar, path = instance_files(out, name)
    written: list[Path] = []
    try:
        for target, data in ((sidecar, text.encode()), (path, buffer.getvalue())):
            if overwrite:
                replace_file(target, data, mode=0o600)
            else:
                write_new_file(target, data)
            written.append(target)
    except BaseException:
        discard(written)
        raise
    return path

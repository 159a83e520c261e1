"""Kind ``volume``: a 3D speckle volume with an anechoic ellipsoid (e.g. a bladder).

Written as Enhanced US Volume Storage: one frame per elevation slice, with the
multi-frame functional groups (pixel measures, plane position and orientation in the
volume frame of reference, frame content, US image description) and a dimension
index on the slice position. Volume coordinates are millimetres with the origin at
the centre of the first voxel: ``x = column * dx``, ``y = row * dy``, ``z = frame * dz``;
``dx = dy`` is ``voxel_mm`` and ``dz`` is ``slice_mm`` (``voxel_mm`` when 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from usreview.errors import SimulationError
from usreview.simulate import speckle
from usreview.simulate.params import param
from usreview.simulate.writer import (
    STUDY_DATE,
    STUDY_TIME,
    Context,
    Instance,
    new_dataset,
    set_pixels,
)

__all__ = ["ENHANCED_US_VOLUME_STORAGE", "VolumeParams", "build", "ellipsoid_coverage"]

ENHANCED_US_VOLUME_STORAGE = "1.2.840.10008.5.1.4.1.1.6.2"

Float = npt.NDArray[np.float64]
_DATETIME = STUDY_DATE + STUDY_TIME


@dataclass(frozen=True)
class VolumeParams:
    """Parameters of kind ``volume``."""

    frames: int = param(80, 16, 256, "slices (elevation)")
    rows: int = param(112, 32, 512, "rows per slice (depth)")
    columns: int = param(128, 32, 512, "columns per slice (lateral)")
    voxel_mm: float = param(0.6, 0.1, 2.0, "voxel spacing within a slice (mm)")
    slice_mm: float = param(0.0, 0.0, 4.0, "spacing between slices (mm); 0: voxel_mm")
    semi_axis_x_mm: float = param(20.0, 2.0, 100.0, "ellipsoid semi-axis, lateral (mm)")
    semi_axis_y_mm: float = param(15.0, 2.0, 100.0, "ellipsoid semi-axis, depth (mm)")
    semi_axis_z_mm: float = param(12.0, 2.0, 100.0, "ellipsoid semi-axis, elevation (mm)")
    frequency_mhz: float = param(3.5, 1.0, 15.0, "transducer frequency (MHz)")
    dynamic_range_db: float = param(60.0, 20.0, 100.0, "display dynamic range (dB)")


def ellipsoid_coverage(
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
    supersample: int = 2,
) -> Float:
    """Fraction of each voxel ``(frame, row, col)`` inside an axis-aligned ellipsoid.

    ``centre`` and ``semi_axes`` are in voxels, ordered ``(z, y, x)`` like the array.
    """
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    axes = [
        ((np.arange(n)[:, None] + offsets[None, :]).ravel() - c) / a
        for n, c, a in zip(shape, centre, semi_axes, strict=True)
    ]
    z2, y2, x2 = (v**2 for v in axes)
    inside = z2[:, None, None] + y2[None, :, None] + x2[None, None, :] <= 1.0
    s = supersample
    blocks: Float = inside.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))
    return blocks


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _item(**attributes: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def build(ctx: Context, p: VolumeParams) -> list[Instance]:
    """Simulate one volume; return ``[(name, dataset, truth)]``."""
    shape = (p.frames, p.rows, p.columns)
    size = _voxel_size(p)
    semi_mm = (p.semi_axis_z_mm, p.semi_axis_y_mm, p.semi_axis_x_mm)
    semi_vox = tuple(a / d for a, d in zip(semi_mm, size, strict=True))
    names = ("semi_axis_z_mm", "semi_axis_y_mm", "semi_axis_x_mm")
    for n, a, d, name in zip(shape, semi_vox, size, names, strict=True):
        if 2 * a + 8 > n:
            raise SimulationError(
                f"parameter {name!r}: the ellipsoid does not fit {n} voxels of {d} mm"
            )
    rng = ctx.rng("volume")
    centre = tuple(
        float(round(rng.uniform(a + 4, n - 1 - a - 4), 3))
        for n, a in zip(shape, semi_vox, strict=True)
    )
    cover = ellipsoid_coverage(
        shape, (centre[0], centre[1], centre[2]), (semi_vox[0], semi_vox[1], semi_vox[2])
    )
    # axial first for the probe: (depth, elevation, lateral)
    psf = speckle.Psf.for_probe(p.frequency_mhz, (size[1] / 10.0, size[0] / 10.0, size[2] / 10.0))
    # array axes are (elevation, depth, lateral): put the axial width on the depth axis
    psf = speckle.Psf((psf.sigma[1], psf.sigma[0], psf.sigma[2]))
    # A voxel partly inside keeps the tissue scatterers of the rest: power, not amplitude,
    # scales with the tissue fraction (amplitude 1 - c made a voxel half inside a quarter as
    # bright: a partial-volume rim that darkened 15% more than the ellipsoid's volume for
    # 0.25 mL at 1.2 mm, 2.6% for 6.2 mL at 0.6 mm).
    # Tissue scatters beyond the field of view too: blurring a field that ended at the border
    # (reflected) made the outermost millimetre brighter than the rest of the tissue.
    pad = [int(4 * s) + 2 for s in psf.sigma]
    inner = tuple(slice(m, m + n) for n, m in zip(shape, pad, strict=True))
    field = speckle.scatterers(rng, [n + 2 * m for n, m in zip(shape, pad, strict=True)])
    field[inner] *= np.sqrt(1.0 - cover)
    echo = speckle.echo(field, psf)[inner]
    echo += speckle.noise(rng, shape, ctx.snr_db)
    voxels = speckle.log_compress(np.abs(echo), p.dynamic_range_db)

    ds = new_dataset(ctx, ENHANCED_US_VOLUME_STORAGE, series_description="simulated 3D volume")
    _enhanced_us(ctx, ds, p)
    set_pixels(ds, voxels)
    volume_mm3 = 4.0 / 3.0 * math.pi * p.semi_axis_x_mm * p.semi_axis_y_mm * p.semi_axis_z_mm
    truth = {
        "shape_frames_rows_columns": list(shape),
        "voxel_spacing_mm": [size[2], size[1], size[0]],
        "coordinates": "x = column * dx, y = row * dy, z = frame * dz (mm)",
        "ellipsoid": {
            "contrast": "anechoic",
            "centre_voxel_frame_row_column": list(centre),
            "centre_mm_xyz": [
                round(centre[2] * size[2], 6),
                round(centre[1] * size[1], 6),
                round(centre[0] * size[0], 6),
            ],
            "semi_axes_mm_xyz": [p.semi_axis_x_mm, p.semi_axis_y_mm, p.semi_axis_z_mm],
            "volume_ml": volume_mm3 / 1000.0,
        },
    }
    return [("volume", ds, truth)]


def _voxel_size(p: VolumeParams) -> tuple[float, float, float]:
    """(slice, row, column) voxel sides in mm."""
    if 0.0 < p.slice_mm < 0.1:
        raise SimulationError(f"parameter 'slice_mm': {p.slice_mm!r} is outside [0.1, 4.0] (or 0)")
    return (p.slice_mm or p.voxel_mm, p.voxel_mm, p.voxel_mm)


def _enhanced_us(ctx: Context, ds: Dataset, p: VolumeParams) -> None:
    """The Enhanced US Volume modules besides the common ones and the pixels."""
    dz, dy, dx = _voxel_size(p)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionDateTime = _DATETIME
    ds.AcquisitionDuration = 1.0
    ds.ContentQualification = "RESEARCH"
    ds.FrameOfReferenceUID = ctx.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.VolumeFrameOfReferenceUID = ctx.uid("volume-frame-of-reference")
    ds.UltrasoundAcquisitionGeometry = "APEX"
    ds.ApexPosition = [p.columns * dx / 2.0, -10.0, p.frames * dz / 2.0]
    ds.VolumeToTransducerRelationship = "FIXED"
    ds.VolumeToTransducerMappingMatrix = [
        1.0,
        0.0,
        0.0,
        -p.columns * dx / 2.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        -p.frames * dz / 2.0,
        0.0,
        0.0,
        0.0,
        1.0,
    ]
    ds.SynchronizationFrameOfReferenceUID = ctx.uid("synchronization")
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.DeviceSerialNumber = "SIM-0001"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.LossyImageCompression = "00"
    ds.RecognizableVisualFeatures = "NO"
    ds.DimensionOrganizationType = "3D"
    ds.TransducerScanPatternCodeSequence = DicomSequence(
        [_code("125242", "DCM", "Volume scan pattern")]
    )
    ds.TransducerGeometryCodeSequence = DicomSequence(
        [_code("125252", "DCM", "Linear ultrasound transducer geometry")]
    )
    ds.TransducerBeamSteeringCodeSequence = DicomSequence(
        [_code("125258", "DCM", "Mechanical beam steering")]
    )
    ds.TransducerApplicationCodeSequence = DicomSequence(
        [_code("125261", "DCM", "External Transducer")]
    )
    ds.ProcessingFunction = "SIMULATION"
    ds.MechanicalIndex = 0.5
    ds.BoneThermalIndex = 0.1
    ds.CranialThermalIndex = 0.1
    ds.SoftTissueThermalIndex = 0.1
    ds.DepthsOfFocus = [p.rows * dy / 2.0]
    ds.DepthOfScanField = round(p.rows * dy)
    ds.PositionMeasuringDeviceUsed = "RIGID"
    ds.ViewCodeSequence = DicomSequence([_code("30730003", "SCT", "Sagittal")])
    ds.AnatomicRegionSequence = DicomSequence([_code("89837001", "SCT", "Urinary bladder")])
    dim_uid = ctx.uid("dimension-organization")
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209301,  # Image Position (Volume)
                FunctionalGroupPointer=0x0020930E,  # Plane Position (Volume) Sequence
                DimensionDescriptionLabel="Slice position",
            )
        ]
    )
    shared = _item(
        PixelMeasuresSequence=DicomSequence(
            [_item(PixelSpacing=[dy, dx], SliceThickness=dz, SpacingBetweenSlices=dz)]
        ),
        PlaneOrientationVolumeSequence=DicomSequence(
            [_item(ImageOrientationVolume=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])]
        ),
        USImageDescriptionSequence=DicomSequence(
            [
                _item(
                    FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                )
            ]
        ),
        FrameVOILUTSequence=DicomSequence([_item(WindowCenter=127.5, WindowWidth=256.0)]),
        ImageDataTypeSequence=DicomSequence(
            [_item(DataType="TISSUE_INTENSITY", AliasedDataType="NO")]
        ),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [
            _item(
                FrameContentSequence=DicomSequence(
                    [
                        _item(
                            FrameAcquisitionDateTime=_DATETIME,
                            FrameReferenceDateTime=_DATETIME,
                            FrameAcquisitionDuration=1000.0,
                            DimensionIndexValues=[k + 1],
                        )
                    ]
                ),
                PlanePositionVolumeSequence=DicomSequence(
                    [_item(ImagePositionVolume=[0.0, 0.0, round(k * dz, 6)])]
                ),
            )
            for k in range(p.frames)
        ]
    )

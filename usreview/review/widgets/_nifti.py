"""A 3D uint8 volume as NIfTI-1 bytes (what ipyniivue loads), without nibabel."""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

__all__ = ["nifti_bytes"]

_HEADER_SIZE = 348
_VOX_OFFSET = 352
_UINT8 = 2
_NIFTI_UNITS_MM = 2
_SFORM_SCANNER = 1


def nifti_bytes(volume: npt.ArrayLike, spacing_mm: tuple[float, float, float]) -> bytes:
    """NIfTI-1 (single file) bytes of ``volume`` shaped ``(slices, rows, columns)``.

    ``spacing_mm`` is (slice, row, column) spacing. Columns run along +x, slices along +y
    and rows (depth) along -z, so the coronal plane is the acquired B-mode plane with depth
    downward. Values must be uint8 (display grey levels).
    """
    data = np.ascontiguousarray(volume)
    if data.dtype != np.uint8 or data.ndim != 3:
        raise ValueError(
            f"argument 'volume': expected uint8 (slices, rows, columns), "
            f"got {data.dtype} {data.shape}"
        )
    ds, dr, dc = (float(v) for v in spacing_mm)
    if not all(np.isfinite(v) and v > 0 for v in (ds, dr, dc)):
        raise ValueError(f"argument 'spacing_mm': {spacing_mm} is not three positive sizes")
    slices, rows, cols = data.shape
    header = bytearray(_HEADER_SIZE)
    struct.pack_into("<i", header, 0, _HEADER_SIZE)
    dims = (3, cols, rows, slices, 1, 1, 1, 1)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, _UINT8, 8)  # datatype, bitpix
    struct.pack_into("<8f", header, 76, 1.0, dc, dr, ds, 1.0, 1.0, 1.0, 1.0)  # pixdim
    struct.pack_into("<f", header, 108, float(_VOX_OFFSET))
    struct.pack_into("<ff", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<ff", header, 124, 255.0, 0.0)  # cal_max, cal_min
    header[123] = _NIFTI_UNITS_MM  # xyzt_units
    struct.pack_into("<hh", header, 252, 0, _SFORM_SCANNER)  # qform_code, sform_code
    struct.pack_into("<4f", header, 280, dc, 0.0, 0.0, 0.0)  # srow_x
    struct.pack_into("<4f", header, 296, 0.0, 0.0, ds, 0.0)  # srow_y
    struct.pack_into("<4f", header, 312, 0.0, -dr, 0.0, 0.0)  # srow_z
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\x00" * 4 + data.tobytes()

"""Write 8-bit grey or RGB images as PNG with the standard library (no imaging package)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from usreview.envelope.atomic import replace_file

__all__ = ["encode_png", "write_png"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """PNG bytes of a ``(rows, cols)`` grey or ``(rows, cols, 3)`` RGB uint8 image."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"argument 'pixels': expected uint8 grey or RGB, got {pixels.dtype}")
    rows, cols = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = np.ascontiguousarray(pixels).reshape(rows, -1)
    scanlines = np.concatenate([np.zeros((rows, 1), np.uint8), raw], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, pixels: npt.NDArray[np.uint8]) -> Path:
    """Write ``pixels`` to ``path`` as PNG; return the path.

    The file is written atomically (complete or not at all; an older one is replaced) and
    readable by its owner only (mode 0600: images of a patient's study are PHI). An
    :class:`OSError` (a full disk) names ``path``.
    """
    replace_file(path, encode_png(pixels), mode=0o600)
    return path

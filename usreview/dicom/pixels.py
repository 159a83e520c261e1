"""Lazy, bounded access to the frames of one instance's pixel data.

Frames are read from the file on demand: an uncompressed frame is a slice of a memory map,
a compressed frame is located through the offset table and decoded alone. Nothing is decoded
before the declared decoded size has been checked against a cap, because a 2 KB RLE file can
ask for hundreds of GiB.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import convert_color_space
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from usreview.errors import (
    CorruptPixelDataError,
    ImageTooLargeError,
    UnsupportedTransferSyntaxError,
)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "JPEG_XL_SYNTAXES",
    "PixelData",
    "decodable_transfer_syntaxes",
]

#: Default cap on rows x columns x samples x bytes x frames, checked before any decoding.
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3

#: JPEG XL transfer syntaxes (Lossless, JPEG Recompression, JPEG XL), decoded by imagecodecs.
JPEG_XL_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
)

_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
#: Read by the reader only once inflated (it refuses them).
_DEFLATED = "1.2.840.10008.1.2.1.99"
_SIMPLE_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"})

Array = npt.NDArray[Any]


def decodable_transfer_syntaxes(candidates: Iterable[str]) -> tuple[str, ...]:
    """Those of ``candidates`` whose pixel data :class:`PixelData` decodes on this machine.

    Native encodings always; compressed ones when a decoding plugin for them is installed
    (pydicom's decoders, imagecodecs for JPEG XL); never Deflated (refused: inflate it
    first), nor the video syntaxes (MPEG-2, MPEG-4, HEVC), which no installed plugin
    decodes. A gateway accepts only these, so that what it acknowledges can be read.
    """
    found = []
    for syntax in candidates:
        if syntax in _NATIVE_SYNTAXES:
            found.append(syntax)
        elif syntax in JPEG_XL_SYNTAXES:
            if _jpeg_xl_available():
                found.append(syntax)
        elif syntax != _DEFLATED:
            try:
                if get_decoder(syntax).is_available:
                    found.append(syntax)
            except NotImplementedError:
                continue
    return tuple(found)


def _jpeg_xl_available() -> bool:
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a declared dependency
        return False
    return bool(imagecodecs.JPEGXL.available)


class PixelData:
    """The frames of one instance, read lazily from its file.

    Parameters
    ----------
    path
        The file.
    header
        The dataset read up to (not including) the pixel data.
    value_offset
        Byte offset of the Pixel Data value in the file.
    value_length
        Declared length of the value, ``None`` when undefined (encapsulated).
    transfer_syntax
        The transfer syntax UID.
    max_decoded_bytes
        Cap on the declared decoded size of all frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: Dataset,
        value_offset: int,
        value_length: int | None,
        transfer_syntax: str,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self.transfer_syntax = UID(transfer_syntax)
        self._header = header
        self._offset = value_offset
        self._length = value_length
        self.rows = _positive_int(header, "Rows")
        self.columns = _positive_int(header, "Columns")
        self.samples_per_pixel = _positive_int(header, "SamplesPerPixel", default=1)
        self.bits_allocated = _positive_int(header, "BitsAllocated")
        self.number_of_frames = _positive_int(header, "NumberOfFrames", default=1)
        self.photometric_interpretation = str(
            header.get("PhotometricInterpretation", "MONOCHROME2")
        ).strip()
        self.planar_configuration = int(header.get("PlanarConfiguration", 0) or 0)
        self.pixel_representation = int(header.get("PixelRepresentation", 0) or 0)
        if self.samples_per_pixel not in (1, 3) or self.bits_allocated not in (1, 8, 16, 32):
            raise CorruptPixelDataError(
                f"unsupported pixel layout: SamplesPerPixel {self.samples_per_pixel}, "
                f"BitsAllocated {self.bits_allocated}"
            )
        self.decoded_bytes = (
            self.rows
            * self.columns
            * self.samples_per_pixel
            * max(1, self.bits_allocated // 8)
            * self.number_of_frames
        )
        if self.decoded_bytes > max_decoded_bytes:
            raise ImageTooLargeError(
                f"declared image of {self.number_of_frames} frame(s) of {self.rows}x{self.columns}"
                f"x{self.samples_per_pixel} at {self.bits_allocated} bits needs "
                f"{_human(self.decoded_bytes)}, over the cap of {_human(max_decoded_bytes)}"
            )
        self.encapsulated = value_length is None
        if self.encapsulated == (self.transfer_syntax in _NATIVE_SYNTAXES):
            raise CorruptPixelDataError(
                f"pixel data is {'encapsulated' if self.encapsulated else 'native'} but the "
                f"transfer syntax {self.transfer_syntax.name} says otherwise"
            )
        self._frame_reader = self._choose_reader()

    # --- public ---------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of all decoded frames: ``(frames, rows, columns[, 3])``."""
        tail = (3,) if self.samples_per_pixel == 3 else ()
        return (self.number_of_frames, self.rows, self.columns, *tail)

    @property
    def is_color(self) -> bool:
        """Whether frames come out as RGB (three samples per pixel)."""
        return self.samples_per_pixel == 3

    def frame(self, index: int) -> Array:
        """Decode frame ``index`` alone: ``(rows, columns)`` or ``(rows, columns, 3)`` RGB.

        Stored values are kept for monochrome and palette colour; YBR colour comes out as RGB.
        """
        if not -self.number_of_frames <= index < self.number_of_frames:
            raise IndexError(
                f"frame {index} out of range: the instance has {self.number_of_frames}"
            )
        index %= self.number_of_frames
        return self._frame_reader(index)

    def frames(self) -> Array:
        """All frames as one array shaped :attr:`shape`."""
        if self._simple_native():
            data = self._read_native_all()
        else:
            data = np.empty(self.shape, dtype=self._dtype())
            for i in range(self.number_of_frames):
                data[i] = self._frame_reader(i)
        return data

    # --- native ---------------------------------------------------------------------

    def _dtype(self) -> np.dtype[Any]:
        size = max(1, self.bits_allocated // 8)
        kind = "i" if self.pixel_representation == 1 else "u"
        order = ">" if self.transfer_syntax == "1.2.840.10008.1.2.2" else "<"
        return np.dtype(f"{order}{kind}{size}")

    def _simple_native(self) -> bool:
        return (
            not self.encapsulated
            and self.bits_allocated in (8, 16, 32)
            and self.photometric_interpretation in _SIMPLE_PHOTOMETRIC
        )

    def _frame_shape(self) -> tuple[int, ...]:
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        if self.planar_configuration == 1:
            return (3, self.rows, self.columns)
        return (self.rows, self.columns, 3)

    def _check_native_length(self) -> None:
        per_frame = math.prod(self._frame_shape()) * self._dtype().itemsize
        needed = per_frame * self.number_of_frames
        assert self._length is not None
        available = os.path.getsize(self.path) - self._offset
        if self._length < needed or available < needed:
            raise CorruptPixelDataError(
                f"pixel data truncated: {min(self._length, available)} bytes present, "
                f"{needed} needed for {self.number_of_frames} frame(s) of "
                f"{self.rows}x{self.columns}x{self.samples_per_pixel}"
            )

    def _native_postprocess(self, data: Array) -> Array:
        if self.samples_per_pixel == 3 and self.planar_configuration == 1:
            data = np.moveaxis(data, -3, -1)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("="))
        if self.photometric_interpretation == "YBR_FULL":
            data = convert_color_space(np.ascontiguousarray(data), "YBR_FULL", "RGB")
        return np.ascontiguousarray(data)

    def _read_native_all(self) -> Array:
        self._check_native_length()
        count = self.number_of_frames * math.prod(self._frame_shape())
        data = np.fromfile(self.path, dtype=self._dtype(), count=count, offset=self._offset)
        data = data.reshape((self.number_of_frames, *self._frame_shape()))
        return self._native_postprocess(data)

    def _native_frame(self, index: int) -> Array:
        memmap = np.memmap(
            self.path,
            dtype=self._dtype(),
            mode="r",
            offset=self._offset,
            shape=(self.number_of_frames, *self._frame_shape()),
        )
        return self._native_postprocess(np.array(memmap[index]))

    # --- decoders -------------------------------------------------------------------

    def _choose_reader(self) -> Callable[[int], Array]:
        if self._simple_native():
            self._check_native_length()
            return self._native_frame
        if self.transfer_syntax in JPEG_XL_SYNTAXES:
            return self._jpeg_xl_frame
        try:
            decoder = get_decoder(self.transfer_syntax)
        except NotImplementedError:
            raise UnsupportedTransferSyntaxError(
                f"unsupported transfer syntax {self.transfer_syntax} "
                f"({self.transfer_syntax.name}): no decoder exists for it"
            ) from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
            raise UnsupportedTransferSyntaxError(
                f"unsupported transfer syntax {self.transfer_syntax.name}: install {missing}"
            )
        options = as_pixel_options(self._header)
        options["transfer_syntax_uid"] = self.transfer_syntax
        options.setdefault("pixel_keyword", "PixelData")

        def read(index: int) -> Array:
            with open(self.path, "rb") as fp:
                fp.seek(self._offset)
                try:
                    array, _meta = decoder.as_array(fp, index=index, **options)
                except Exception as exc:  # decoders raise many types on bad data
                    raise CorruptPixelDataError(
                        f"frame {index} cannot be decoded ({self.transfer_syntax.name}): "
                        f"{_first_line(exc)}"
                    ) from exc
            return np.asarray(array)

        return read

    def _jpeg_xl_frame(self, index: int) -> Array:
        try:
            import imagecodecs
        except ImportError:  # pragma: no cover - a declared dependency
            raise UnsupportedTransferSyntaxError(
                f"unsupported transfer syntax {self.transfer_syntax}: JPEG XL needs "
                "'pip install imagecodecs'"
            ) from None
        if not imagecodecs.JPEGXL.available:  # pragma: no cover
            raise UnsupportedTransferSyntaxError(
                "unsupported transfer syntax JPEG XL: this imagecodecs build has no JPEG XL codec"
            )
        with open(self.path, "rb") as fp:
            fp.seek(self._offset)
            try:
                encoded = get_frame(fp, index, number_of_frames=self.number_of_frames)
                decoded = np.asarray(imagecodecs.jpegxl_decode(encoded))
            except Exception as exc:
                raise CorruptPixelDataError(
                    f"frame {index} cannot be decoded (JPEG XL): {_first_line(exc)}"
                ) from exc
        expected = self.shape[1:]
        if decoded.shape != expected:
            raise CorruptPixelDataError(
                f"frame {index} decodes to shape {decoded.shape}, header says {expected}"
            )
        return decoded


def _positive_int(header: Dataset, keyword: str, default: int | None = None) -> int:
    value = header.get(keyword, default)
    try:
        number = int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        number = None
    if number is None or number <= 0:
        raise CorruptPixelDataError(f"invalid or missing {keyword}: {value!r}")
    return number


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _first_line(exc: BaseException) -> str:
    """The message's first line; with the lines it announces (ending in ':', as pydicom's
    "exceptions were raised by all available plugins:" does), joined with '; '."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return type(exc).__name__
    if text[0].endswith(":") and len(text) > 1:
        return f"{text[0]} {'; '.join(text[1:4])}"
    return text[0]

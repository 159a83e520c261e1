"""Encapsulated (compressed) pixel data: is every frame in the file?

A decoder may fill a cut JPEG frame without complaint, and frames are decoded only when
asked for, so :func:`usreview.dicom.reader.read` asks this module, reading item headers only
(and, without a Basic Offset Table, the last bytes of each fragment): a file whose frames are
not all there is refused (:class:`~usreview.errors.CorruptPixelDataError`), at the hub's
ingest as in ``usreview inspect`` and ``analyze``.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from usreview.errors import CorruptPixelDataError

__all__ = ["check_frames_present"]

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_RLE = "1.2.840.10008.1.2.5"
_EOI = b"\xff\xd9"  # JPEG / JPEG-LS end of image, JPEG 2000 end of codestream


def check_frames_present(
    fp: BinaryIO, value_offset: int, frames: int, syntax: str, syntax_name: str
) -> str | None:
    """Raise :class:`~usreview.errors.CorruptPixelDataError` unless the encapsulated pixel
    data at ``value_offset`` of the open file ``fp`` holds all its ``frames``.

    Returns a note for pixel data that ends without its sequence delimiter but holds every
    frame (tolerated), else ``None``.
    """
    size = os.fstat(fp.fileno()).st_size
    fp.seek(value_offset)
    items, ending = _items(fp, size)
    if not items:
        raise CorruptPixelDataError(
            f"pixel data incomplete: no Basic Offset Table item ({syntax_name})"
        )
    (table_at, table_length), fragments = items[0], items[1:]
    fp.seek(table_at)
    table = fp.read(table_length)
    offsets = list(struct.unpack(f"<{len(table) // 4}L", table[: len(table) // 4 * 4]))
    present = _frames_present(
        fp, offsets, fragments, frames, cut=ending == "cut", rle=syntax == _RLE
    )
    if present < frames:
        if ending == "cut":
            why = f"the file ends inside fragment {len(fragments) + 1}"
        else:
            why = f"{len(fragments)} fragment(s)"
        raise CorruptPixelDataError(
            f"pixel data incomplete: {present} of {frames} frame(s) in the file ({why}; "
            f"{syntax_name})"
        )
    if ending == "eof":
        return "encapsulated pixel data ends without its sequence delimiter (file truncated?)"
    return None


def _items(fp: BinaryIO, size: int) -> tuple[list[tuple[int, int]], str]:
    """Value offset and length of each complete item from ``fp``'s position, and how the
    items end: ``"delimiter"``, ``"eof"`` (the file ends between items) or ``"cut"``."""
    items: list[tuple[int, int]] = []
    while True:
        at = fp.tell()
        head = fp.read(8)
        if len(head) < 8:
            return items, "cut" if head else "eof"
        group, element, length = struct.unpack("<HHL", head)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            return items, "delimiter"
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise CorruptPixelDataError(
                f"pixel data corrupt: ({group:04X},{element:04X}) of length {length} at byte "
                f"{at}, where an item of encapsulated pixel data should be"
            )
        if at + 8 + length > size:
            return items, "cut"
        items.append((at + 8, length))
        fp.seek(length, os.SEEK_CUR)


def _frames_present(
    fp: BinaryIO,
    offsets: list[int],
    fragments: list[tuple[int, int]],
    frames: int,
    *,
    cut: bool,
    rle: bool,
) -> int:
    """How many of ``frames`` the complete ``fragments`` hold (value offset and length of
    each); ``offsets`` is the Basic Offset Table; ``cut``: the file ends inside the item
    after them, so the last frame at least is missing."""
    if not fragments:
        return 0
    if len(offsets) == frames and offsets == sorted(offsets):
        end = fragments[-1][0] + fragments[-1][1] - (fragments[0][0] - 8)  # as the table counts
        frame_ends = [*offsets[1:], end + 1 if cut else end]
        return sum(1 for frame_end in frame_ends if frame_end <= end)
    if rle or len(fragments) <= frames:  # one fragment per frame (always so for RLE)
        return min(len(fragments), frames - cut)
    if not cut:  # several fragments per frame, all there
        return frames
    ends = 0
    for at, length in fragments:  # count the frames' ends (as pydicom finds frames)
        fp.seek(at + max(0, length - 10))
        ends += _EOI in fp.read(min(10, length))
    return min(ends, frames - 1)

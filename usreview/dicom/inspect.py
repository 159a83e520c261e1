"""What ``usreview inspect`` reports of one instance, as a JSON-ready dict and as text, and
:func:`check_pixel_data`, which ``inspect`` and ``analyze`` use to refuse a file whose
compressed frames are not all there."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from usreview.dicom.reader import UltrasoundInstance, read
from usreview.errors import CorruptPixelDataError

__all__ = ["check_pixel_data", "format_summary", "summarize"]

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_RLE = "1.2.840.10008.1.2.5"
_EOI = b"\xff\xd9"  # JPEG / JPEG-LS end of image, JPEG 2000 end of codestream


def summarize(path: str | Path) -> dict[str, Any]:
    """Describe one instance (keys documented in the README under ``usreview inspect``).

    Raises an :class:`~usreview.errors.InputError` for anything that cannot be read.
    """
    instance = read(path)
    check_pixel_data(instance)
    timing = instance.timing
    return {
        "path": str(path),
        "sop_class_uid": str(instance.sop_class_uid),
        "sop_class": instance.sop_class_name,
        "sop_instance_uid": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "transfer_syntax_uid": str(instance.transfer_syntax),
        "transfer_syntax": instance.transfer_syntax.name,
        "rows": instance.rows,
        "columns": instance.columns,
        "frames": instance.number_of_frames,
        "frame_time_ms": timing.frame_time_ms,
        "frame_time_source": timing.source,
        "photometric_interpretation": instance.photometric_interpretation,
        "kinds": [kind.value for kind in instance.kinds],
        "regions": [region.as_dict() for region in instance.regions],
        "warnings": list(instance.warnings),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`'s result, ending with a blank line."""
    frame_time = (
        f"{summary['frame_time_ms']:.3f} ms ({summary['frame_time_source']})"
        if summary["frame_time_ms"]
        else "-"
    )
    lines = [
        f"{summary['path']}",
        f"  SOP class       {summary['sop_class']} ({summary['sop_class_uid']})",
        f"  SOP instance    {summary['sop_instance_uid']}",
        f"  transfer syntax {summary['transfer_syntax']} ({summary['transfer_syntax_uid']})",
        f"  image           {summary['rows']} x {summary['columns']}, "
        f"{summary['frames']} frame(s), {summary['photometric_interpretation']}",
        f"  frame time      {frame_time}",
        f"  kinds           {', '.join(summary['kinds'])}",
    ]
    if not summary["regions"]:
        lines.append("  regions         none")
    for n, region in enumerate(summary["regions"], 1):
        x0, y0, x1, y1 = region["bounds"]
        ux, uy = region["units"]
        dx, dy = region["deltas"]
        rx, ry = region["reference_pixel"]
        vx, vy = region["reference_value"]
        lines.append(
            f"  region {n}        {region['data_type']} ({region['spatial_format']}) "
            f"x {x0}-{x1}, y {y0}-{y1}; delta {dx:.6g} {ux}/px, {dy:.6g} {uy}/px; "
            f"reference pixel ({rx}, {ry}) = ({vx:g} {ux}, {vy:g} {uy})"
        )
    for warning in summary["warnings"]:
        lines.append(f"  warning         {warning}")
    return "\n".join(lines) + "\n\n"


def check_pixel_data(instance: UltrasoundInstance) -> None:
    """Raise :class:`~usreview.errors.CorruptPixelDataError` unless every frame of
    encapsulated (compressed) pixel data is in the file.

    Reads item headers only (and, without a Basic Offset Table, the last bytes of each
    fragment), no frame is decoded: a decoder may fill a cut JPEG frame without complaint,
    and frames are otherwise decoded only when asked for. Native pixel data is checked by
    :func:`~usreview.dicom.reader.read`. Pixel data that ends without its sequence delimiter
    but holds every frame is tolerated, with a note in ``instance.warnings``.
    """
    pixels = instance.pixels
    if not pixels.encapsulated:
        return
    frames = pixels.number_of_frames
    size = os.path.getsize(pixels.path)
    with open(pixels.path, "rb") as fp:
        fp.seek(pixels._offset)  # PixelData has no public accessor for its value's offset
        items, ending = _items(fp, size)
        if not items:
            raise CorruptPixelDataError(
                f"pixel data incomplete: no Basic Offset Table item ({pixels.transfer_syntax.name})"
            )
        (table_at, table_length), fragments = items[0], items[1:]
        fp.seek(table_at)
        table = fp.read(table_length)
        offsets = list(struct.unpack(f"<{len(table) // 4}L", table[: len(table) // 4 * 4]))
        present = _frames_present(
            fp, offsets, fragments, frames, cut=ending == "cut", rle=pixels.transfer_syntax == _RLE
        )
    if present < frames:
        if ending == "cut":
            why = f"the file ends inside fragment {len(fragments) + 1}"
        else:
            why = f"{len(fragments)} fragment(s)"
        raise CorruptPixelDataError(
            f"pixel data incomplete: {present} of {frames} frame(s) in the file ({why}; "
            f"{pixels.transfer_syntax.name})"
        )
    if ending == "eof":
        instance.warnings.append(
            "encapsulated pixel data ends without its sequence delimiter (file truncated?)"
        )


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

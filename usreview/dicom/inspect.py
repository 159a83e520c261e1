"""What ``usreview inspect`` reports of one instance, as a JSON-ready dict and as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usreview.dicom.reader import read

__all__ = ["format_summary", "summarize"]


def summarize(path: str | Path) -> dict[str, Any]:
    """Describe one instance (keys documented in the README under ``usreview inspect``).

    Raises an :class:`~usreview.errors.InputError` for anything that cannot be read.
    """
    instance = read(path)
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

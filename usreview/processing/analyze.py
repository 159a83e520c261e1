"""Run the pipeline on local files without a hub: one JSON-ready summary per instance.

An image that usreview derived (:func:`~usreview.processing.filters.derived.usreview_derivation`)
is not processed again: its summary says why under ``skipped`` and as its only finding
(code ``not_processed``), with no quantities and no processors run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from usreview.dicom import iter_dicom_paths, read
from usreview.dicom.header import is_uid
from usreview.errors import InputError
from usreview.processing.filters.derived import usreview_derivation
from usreview.processing.pipeline import run_pipeline
from usreview.processing.png import write_png
from usreview.processing.registry import Registry
from usreview.processing.results import ProcessorResult

__all__ = ["analyze_file", "analyze_paths", "summarize"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def summarize(
    path: Path, kinds: Iterable[str], uid: str, results: list[ProcessorResult]
) -> dict[str, Any]:
    """The JSON view of one instance's results: kinds, quantities, findings, recommendations."""
    quantities, findings, recommendations = [], [], []
    for result in results:
        name = result.provenance.processor
        quantities += [{**q.as_dict(), "processor": name} for q in result.output.quantities]
        findings += [{**f.as_dict(), "processor": name} for f in result.output.findings]
        recommendations += [
            {**r.as_dict(), "processor": name} for r in result.output.recommendations
        ]
    return {
        "file": str(path),
        "sop_instance_uid": uid,
        "kinds": list(kinds),
        "quantities": quantities,
        "findings": findings,
        "recommendations": recommendations,
        "images": [],
        "processors": [
            {
                "processor": r.provenance.processor,
                "version": r.provenance.version,
                "parameters": dict(r.provenance.parameters),
                "status": r.status.value,
                "reason": r.reason,
                "seconds": round(r.seconds, 4),
            }
            for r in results
        ],
    }


def analyze_file(
    path: Path, out: Path | None = None, registry: Registry | None = None
) -> dict[str, Any]:
    """Read one file, run the pipeline, write derived images into ``out`` as PNG.

    Images are named ``UID.PROCESSOR.IMAGE.png`` inside ``out``, with the file's stem (made
    safe) instead of a missing or malformed SOP Instance UID. A multi-frame image (a filtered
    cine) gives one PNG per frame, ``NAME.0001.png`` ...
    """
    instance = read(path)
    kinds = [k.value for k in instance.kinds]
    derivation = usreview_derivation(instance.dataset)
    if derivation is not None:
        summary = summarize(path, kinds, instance.sop_instance_uid, [])
        reason = f"not processed: {derivation}"
        summary["skipped"] = reason
        summary["findings"] = [
            {"code": "not_processed", "text": reason, "evidence": {}, "processor": None}
        ]
        return summary
    results = run_pipeline(instance, registry=registry)
    summary = summarize(path, kinds, instance.sop_instance_uid, results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = _output_stem(instance.sop_instance_uid, path)
        for result in results:
            for image in result.output.images:
                base = f"{stem}.{result.provenance.processor}.{image.name}"
                for index in range(image.number_of_frames):  # a cine: one PNG per frame
                    suffix = f".{index + 1:04d}" if image.multiframe else ""
                    target = out / f"{base}{suffix}.png"
                    write_png(target, image.frame(index))
                    summary["images"].append(
                        {"file": os.fspath(target), "description": image.description}
                    )
    return summary


def _output_stem(uid: str, path: Path) -> str:
    """The start of output names: ``uid`` if it is a DICOM UID, else ``path``'s stem made safe."""
    if is_uid(uid):
        return uid
    return _UNSAFE.sub("_", path.stem)


def analyze_paths(
    paths: Iterable[str | os.PathLike[str]], out: Path | None = None
) -> list[dict[str, Any]]:
    """:func:`analyze_file` for every file under ``paths``; unreadable ones get an ``error``."""
    summaries: list[dict[str, Any]] = []
    for path in iter_dicom_paths(paths):
        try:
            summaries.append(analyze_file(path, out))
        except InputError as exc:
            summaries.append({"file": str(path), "error": str(exc)})
    return summaries

"""Run the pipeline on local files without a hub: one JSON-ready summary per instance.

An image that usreview derived (:func:`~usreview.processing.filters.derived.usreview_derivation`)
is not processed again: its summary says why under ``skipped`` and as its only finding
(code ``not_processed``), with no quantities and no processors run.

A file whose pixel data is incomplete, or whose frames do not decode when a processor has
failed, is unreadable (an :class:`~usreview.errors.InputError`), as one whose header is: a
processor's failure is reported in its summary only when the pixels are sound. Warnings
raised while processing (pydicom's about odd pixel data, say) become the summary's
``warnings``, after the reader's, instead of reaching the terminal.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from usreview.dicom import UltrasoundInstance, iter_dicom_paths, read
from usreview.dicom.header import is_uid
from usreview.errors import InputError
from usreview.processing.filters.derived import usreview_derivation
from usreview.processing.pipeline import run_pipeline
from usreview.processing.png import write_png
from usreview.processing.registry import Registry
from usreview.processing.results import ProcessorResult, ResultStatus

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
    cine) gives one PNG per frame, ``NAME.0001.png`` ... Each is written atomically, mode
    0600; if one cannot be written, those of this file are removed and the
    :class:`OSError` names it.

    Raises
    ------
    InputError
        The file cannot be read, its pixel data is incomplete, or a processor failed and
        its frames do not decode.
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
        summary["warnings"] = list(instance.warnings)
        return summary
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_pipeline(instance, registry=registry)
        if any(r.status == ResultStatus.FAILED for r in results):
            _decode_every_frame(instance)  # corrupt pixels make the file unreadable
    for warning in caught:
        text = (str(warning.message).strip().splitlines() or [warning.category.__name__])[0]
        if text not in instance.warnings:
            instance.warnings.append(text)
    summary = summarize(path, kinds, instance.sop_instance_uid, results)
    summary["warnings"] = list(instance.warnings)
    if out is not None:
        summary["images"] = _write_images(
            out, _output_stem(instance.sop_instance_uid, path), results
        )
    return summary


def _decode_every_frame(instance: UltrasoundInstance) -> None:
    """Decode each frame, one at a time; raise the reader's InputError for the first that
    cannot be."""
    for index in range(instance.number_of_frames):
        instance.frame(index)


def _write_images(out: Path, stem: str, results: list[ProcessorResult]) -> list[dict[str, Any]]:
    """Write the derived images of ``results`` into ``out`` as PNG; describe each file.

    If one cannot be written, those already written are removed before the error goes on.
    """
    out.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    try:
        for result in results:
            for image in result.output.images:
                base = f"{stem}.{result.provenance.processor}.{image.name}"
                for index in range(image.number_of_frames):  # a cine: one PNG per frame
                    suffix = f".{index + 1:04d}" if image.multiframe else ""
                    target = write_png(out / f"{base}{suffix}.png", image.frame(index))
                    images.append({"file": os.fspath(target), "description": image.description})
    except BaseException:
        _remove_images(images)
        raise
    return images


def _remove_images(images: Iterable[dict[str, Any]]) -> None:
    """Remove the files that :func:`_write_images` wrote (a run that failed)."""
    for image in images:
        Path(image["file"]).unlink(missing_ok=True)


def _output_stem(uid: str, path: Path) -> str:
    """The start of output names: ``uid`` if it is a DICOM UID, else ``path``'s stem made safe."""
    if is_uid(uid):
        return uid
    return _UNSAFE.sub("_", path.stem)


def analyze_paths(
    paths: Iterable[str | os.PathLike[str]], out: Path | None = None
) -> list[dict[str, Any]]:
    """:func:`analyze_file` for every file under ``paths``; unreadable ones get an ``error``.

    Any other error (an image that cannot be written) stops the run: the images it wrote
    are removed and the error goes on.
    """
    summaries: list[dict[str, Any]] = []
    try:
        for path in iter_dicom_paths(paths):
            try:
                summaries.append(analyze_file(path, out))
            except InputError as exc:
                summaries.append({"file": str(path), "error": str(exc)})
    except BaseException:
        _remove_images(image for summary in summaries for image in summary.get("images", ()))
        raise
    return summaries

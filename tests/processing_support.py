"""Helpers shared by the processing tests: edited ultrasound regions, a plug-in package
as pip installs it, the similarity tests' classes, a small simulated volume, a full disk."""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from usreview.dicom import read
from usreview.processing import (
    ProcessorResult,
    default_registry,
)

Edit = Callable[[Any], None]


def run_edited(
    source: Path, folder: Path, edit: Edit, processor: str = "doppler_indices"
) -> ProcessorResult:
    """Run ``processor`` on ``source`` with its last region edited by ``edit``."""
    ds = pydicom.dcmread(source)
    edit(ds.SequenceOfUltrasoundRegions[-1])
    path = folder / "edited.dcm"
    ds.save_as(path)
    return default_registry().get(processor).run(read(path))


def set_attributes(**values: Any) -> Edit:
    """An edit that sets the region's attributes ``values``."""

    def edit(region: Any) -> None:
        for keyword, value in values.items():
            setattr(region, keyword, value)

    return edit


HOTPLUG = """
from usreview.processing import Code, CodingScheme, Context, Output, Quantity, Registry, processor


@processor("hotplug_kinds", kinds={"pw_doppler"}, version="0.1", registry=Registry())
def hotplug_kinds(context: Context) -> Output:
    code = Code("x-2", CodingScheme.USREVIEW, "Kinds")
    return Output(quantities=(Quantity("kinds", code, len(context.instance.kinds), "1"),))
"""


def install_fake_package(folder: Path, name: str, source: str, entry_points: str) -> Path:
    """A package as pip leaves it in ``folder``: module ``name`` and its ``.dist-info``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[usreview.processors]\n{entry_points}\n")
    return folder


CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "carotid, normal": ("pw", {"psv_cm_s": 80, "edv_cm_s": 25}),
    "carotid, stenosis": ("pw", {"psv_cm_s": 260, "edv_cm_s": 110}),
    "renal": ("pw", {"waveform": "renal", "psv_cm_s": 60, "edv_cm_s": 20}),
    "tissue, plain": ("bmode", {"inclusions": 0}),
    "tissue, lesions": ("bmode", {"inclusions": 6, "min_radius_mm": 8, "max_radius_mm": 14}),
    "LV normal": ("mmode", {}),
    "LV dilated": ("mmode", {"lvidd_mm": 68, "lvids_mm": 58}),
}


SMALL_VOLUME = {
    "frames": 56,
    "rows": 72,
    "columns": 80,
    "semi_axis_x_mm": 15.0,
    "semi_axis_y_mm": 11.0,
    "semi_axis_z_mm": 9.0,
}


def disk_full_on(monkeypatch: pytest.MonkeyPatch, folder: Path, nth: int) -> None:
    """Make the ``nth`` file opened for writing in ``folder`` (by name or by descriptor, as
    atomic writers do) meet a full disk."""
    real_open, folder, opened = io.open, folder.resolve(), 0

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        f = real_open(file, mode, *args, **kwargs)
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else file
        if "r" not in mode and Path(name).resolve().parent == folder:
            opened += 1
            if opened == nth:
                return _FullDisk(f)
        return f

    monkeypatch.setattr(io, "open", fake_open)  # pathlib and os.fdopen
    monkeypatch.setattr(builtins, "open", fake_open)


class _FullDisk:
    """A file on a nearly full disk: half of what is written gets there, then ENOSPC."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        self._file.write(bytes(data)[: len(data) // 2])
        self._file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

"""The descriptor's format: one length for every image, and a version the library keeps.

Version 1.0 of :mod:`usreview.processing.similarity` made 314 numbers for a calibrated
image and 200 for one that is not, so the two were never compared; its descriptors
measured the display more than the image, so a library described by it must be described
again, not compared with new descriptors.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.processing_support import CLASSES
from usreview.dicom import read
from usreview.dicom.enum import PhysicalUnits, RegionDataType
from usreview.hub.audit import AuditLog
from usreview.processing.case_library import CaseLibrary
from usreview.processing.similarity import (
    DIMENSION,
    VERSION,
    Descriptor,
    LibraryEntry,
    describe,
    rank,
)
from usreview.simulate import simulate
from usreview.store.teaching import LibraryItem


def _simulated(folder: Path, name: str, seed: int) -> Path:
    kind, params = CLASSES[name]
    [path] = simulate(kind, folder / f"{name}-{seed}".replace(" ", "_"), seed=seed, **params)
    return path


def _described(path: Path) -> Descriptor:
    descriptor = describe(read(path))
    assert descriptor is not None
    return descriptor


def _without_depth_unit(path: Path) -> Path:
    """The same image, its tissue region's depth axis without a unit (not calibrated)."""
    dataset = pydicom.dcmread(path)
    for region in dataset.SequenceOfUltrasoundRegions:
        if region.RegionDataType == RegionDataType.TISSUE:
            region.PhysicalUnitsYDirection = PhysicalUnits.NONE
    out = path.with_name(f"{path.stem}.uncalibrated.dcm")
    dataset.save_as(out)
    return out


def test_calibrated_and_uncalibrated_images_are_compared_on_the_parts_they_share(
    tmp_path: Path,
) -> None:
    path = _simulated(tmp_path, "tissue, lesions", 5)
    calibrated, uncalibrated = _described(path), _described(_without_depth_unit(path))
    assert len(calibrated.vector) == len(uncalibrated.vector) == DIMENSION
    assert calibrated.vector != uncalibrated.vector  # the physical profiles are left out
    others = [
        LibraryEntry(
            f"{name} {seed}", f"{name} {seed}", _described(_simulated(tmp_path, name, seed))
        )
        for name in ("tissue, plain", "tissue, lesions")
        for seed in (1, 2)
    ]
    # Either way, the same image is found first, alike on every part they share.
    for query, copy in ((calibrated, uncalibrated), (uncalibrated, calibrated)):
        matches = rank(query, [*others, LibraryEntry("copy", "copy", copy)], limit=5)
        assert len(matches) == 5 and matches[0].entry.case_uid == "copy", matches
        assert matches[0].similarity == pytest.approx(1.0, abs=1e-9)


class _Store:
    """A teaching store holding one de-identified instance and its recorded descriptor."""

    def __init__(self, item: LibraryItem, data: bytes, record: Mapping[str, Any]) -> None:
        self.item, self.data = item, data
        self.records: dict[str, Mapping[str, Any]] = {item.sop_instance_uid: record}

    def library_mark(self) -> tuple[int, int]:
        return (1, 1)

    def library(self) -> list[LibraryItem]:
        return [self.item]

    def descriptors(self, sop_instance_uids: Collection[str]) -> dict[str, Mapping[str, Any]]:
        return {uid: self.records[uid] for uid in sop_instance_uids if uid in self.records}

    def set_descriptor(self, sop_instance_uid: str, descriptor: Mapping[str, Any]) -> None:
        self.records[sop_instance_uid] = descriptor

    def read_instance(self, case_uid: str, sop_instance_uid: str) -> tuple[None, bytes]:
        assert (case_uid, sop_instance_uid) == (self.item.case_uid, self.item.sop_instance_uid)
        return None, self.data


def test_a_library_described_by_version_1_0_is_described_again(tmp_path: Path) -> None:
    path = _simulated(tmp_path, "tissue, lesions", 6)
    # What version 1.0 recorded for a calibrated image: 314 numbers of unit length.
    old = {"kind": "bmode", "version": "1.0", "vector": [1 / math.sqrt(314)] * 314}
    item = LibraryItem("1.2.826.0.9.1", "1.2.826.0.9.1.1", "1.2.826.0.9.2")
    store = _Store(item, path.read_bytes(), old)
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    audit = AuditLog(tmp_path / "audit.log", secrets.token_bytes(32))
    library = CaseLibrary(store, scratch, audit, "worker")  # type: ignore[arg-type]

    [(study, entry)] = library.entries()
    expected = _described(path)
    assert study == item.study_instance_uid and entry.descriptor == expected
    assert VERSION != "1.0" and store.records[item.sop_instance_uid] == expected.as_dict()
    assert "described" in audit.path.read_text()  # read from its copy, audited
    # Nor does a descriptor of version 1.0 rank against one of this version.
    old_entry = LibraryEntry("old", "old", Descriptor("bmode", tuple(old["vector"]), "1.0"))
    query = Descriptor("bmode", tuple(old["vector"]))  # the same numbers, this version
    assert rank(query, [old_entry]) == []

"""Shared fixtures: the real ultrasound files beside the checkout, and a builder of small files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

# The hub configuration's, for its tests and the processing queue's command tests.
from tests.hub_config_support import configured, fake_proxy  # noqa: F401

# Fixtures of every test file: one PostgreSQL server per test process.
from tests.postgres_support import db_url, postgres_server  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files that hold slow tests first, each file's tests in their own order.

    ``make test`` hands whole files to its processes in this order (pytest-xdist
    ``--dist loadfile --no-loadscope-reorder``; by default xdist hands out the files with
    the most tests first, so the kill -9 test of the service, one test of four minutes,
    ran last and alone): a long file handed out last would end the run alone.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session", autouse=True)
def _passable_temp_folders() -> None:
    """Let other accounts pass (not list) the folders pytest makes, as root.

    A hub run as root starts each person's server under an account of its own
    (:mod:`usreview.hub.spawner`), which must pass every folder above its home in the
    state directory; pytest makes its temporary folders 0700. Mode 0711 lets them pass
    without listing anything.
    """
    if os.geteuid() != 0:
        return
    original = pytest.TempPathFactory.mktemp

    def mktemp(self: pytest.TempPathFactory, basename: str, numbered: bool = True) -> Path:
        made = original(self, basename, numbered)
        base = self.getbasetemp()  # pytest-of-USER/pytest-N, or its popen-gwK under xdist
        top = next((p for p in (base, *base.parents) if p.name.startswith("pytest-of-")), base)
        for folder in (made, *made.parents):
            folder.chmod(folder.stat().st_mode & 0o777 | 0o011)
            if folder == top:
                break
        return made

    pytest.TempPathFactory.mktemp = mktemp  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _same_umask() -> Iterator[None]:
    """Give each test the umask it started with: ``configure()`` sets 077 as root."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


SHARED_DATA = Path(
    os.environ.get("USREVIEW_SHARED_DATA", REPO.parent / "shared" / "data" / "ultrasound")
)
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def _manifest() -> list[dict[str, Any]]:
    path = SHARED_DATA / "files.json"
    if not path.is_file():
        raise RuntimeError(
            f"the real ultrasound files are missing: expected {path} "
            "(set USREVIEW_SHARED_DATA to their folder)"
        )
    return list(json.loads(path.read_text()))


REAL_FILES = _manifest()


def real_file(name: str) -> Path:
    """Path of a real file from the shared ultrasound data."""
    return SHARED_DATA / name


def region_item(**values: Any) -> Dataset:
    """One Sequence of Ultrasound Regions item with sensible B-mode defaults."""
    item = Dataset()
    defaults: dict[str, Any] = {
        "RegionSpatialFormat": 1,
        "RegionDataType": 1,
        "RegionFlags": 0,
        "RegionLocationMinX0": 0,
        "RegionLocationMinY0": 0,
        "RegionLocationMaxX1": 63,
        "RegionLocationMaxY1": 47,
        "PhysicalUnitsXDirection": 3,
        "PhysicalUnitsYDirection": 3,
        "PhysicalDeltaX": 0.02,
        "PhysicalDeltaY": 0.02,
    }
    for keyword, value in {**defaults, **values}.items():
        setattr(item, keyword, value)
    return item


def write_us(
    path: Path,
    pixels: np.ndarray,
    *,
    sop_class: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str | None = None,
    regions: Sequence[Dataset] = (),
    encapsulated_frames: Sequence[bytes] | None = None,
    **attributes: Any,
) -> Path:
    """Write a small ultrasound file from ``pixels`` shaped ``(frames, rows, cols[, 3])``."""
    frames, rows, cols = pixels.shape[:3]
    samples = 3 if pixels.ndim == 4 else 1
    meta = FileMetaDataset()
    sop_class = sop_class or (US_MULTIFRAME if frames > 1 else US_IMAGE)
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = attributes.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", generate_uid())
    ds.Modality = "US"
    ds.PatientName = "TEST^SYNTHETIC"
    ds.PatientID = "SYN-1"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = attributes.pop("FrameTime", 40.0)
    if regions:
        ds.SequenceOfUltrasoundRegions = list(regions)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if encapsulated_frames is not None:
        ds.PixelData = encapsulate(list(encapsulated_frames))
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def gradient_cine(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 12-frame 48x64 native cine whose frame k is filled with value 10*k + position."""
    base = (np.arange(48)[:, None] + np.arange(64)[None, :]).astype(np.uint8)
    frames = np.stack([base + 10 * k for k in range(12)]).astype(np.uint8)
    return write_us(tmp_path / "cine.dcm", frames, regions=[region_item()]), frames

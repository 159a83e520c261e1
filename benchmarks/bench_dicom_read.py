"""Reading a 100-frame 600x800 cine: all frames, and frame 50 alone.

Baseline, measured in the same run: ``np.fromfile`` of the same pixel bytes. Goals: all frames
at >= 50% of the baseline's throughput (pydicom alone reaches about 27%), and frame 50 alone in
under 2% of the all-frames time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from usreview.dicom import read

FRAMES, ROWS, COLUMNS = 100, 600, 800
REPEATS = 9


def _write_cine(path: Path) -> int:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(FRAMES, ROWS, COLUMNS), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.3.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, FRAMES
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.FrameTime = 20.0
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size - FRAMES * ROWS * COLUMNS  # pixel data is last


def _median_seconds(work: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print the throughputs and the ratios against the goals."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cine.dcm"
        offset = _write_cine(path)
        size = FRAMES * ROWS * COLUMNS
        baseline = _median_seconds(
            lambda: np.fromfile(path, dtype=np.uint8, count=size, offset=offset)
        )
        ours_all = _median_seconds(lambda: read(path).frames())
        opened = read(path)
        ours_50 = _median_seconds(lambda: opened.frame(50))
        ours_open_50 = _median_seconds(lambda: read(path).frame(50))
        header = _median_seconds(lambda: pydicom.dcmread(path, stop_before_pixels=True))
        pydicom_all = _median_seconds(lambda: pydicom.dcmread(path).pixel_array)
    mb = size / 1e6
    print(f"cine {FRAMES} x {ROWS} x {COLUMNS} uint8 ({mb:.0f} MB), median of {REPEATS}")
    print(f"  np.fromfile baseline    {mb / baseline:8.0f} MB/s")
    print(
        f"  usreview all frames     {mb / ours_all:8.0f} MB/s  "
        f"ratio {baseline / ours_all:.0%} (goal >= 50%)"
    )
    print(
        f"  pydicom pixel_array     {mb / pydicom_all:8.0f} MB/s  "
        f"ratio {baseline / pydicom_all:.0%}"
    )
    print(
        f"  usreview frame 50 alone {ours_50 * 1e3:8.2f} ms    "
        f"{ours_50 / ours_all:.2%} of all frames (goal < 2%), instance already open"
    )
    print(
        f"  open + frame 50         {ours_open_50 * 1e3:8.2f} ms    "
        f"{ours_open_50 / ours_all:.2%} of all frames; of which pydicom's header parse "
        f"{header * 1e3:.2f} ms"
    )

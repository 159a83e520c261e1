"""The parsing pool on hostile input: every failure typed, and the pool keeps serving."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, CTImageStorage, RLELossless, generate_uid

from tests.conftest import real_file, write_us
from usreview.dicom import ImageKind
from usreview.errors import InputError
from usreview.ingest import (
    ParsedInstance,
    RejectedInstanceError,
    RejectReason,
    WorkerPool,
    WorkerPoolError,
)
from usreview.simulate import simulate

MiB = 1024**2
HOOKS = "tests.ingest_hooks:parse_or_misbehave"


def rle_bomb(path: Path, rows: int, columns: int, frames: int = 1) -> Path:
    """A tiny RLE file declaring ``frames`` RGB frames of ``rows`` x ``columns``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.3.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 1, "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    header = struct.pack("<16I", 3, 64, 66, 68, *([0] * 12))  # 3 segments of 2 bytes
    ds.PixelData = encapsulate([header + b"\x81\x00" * 3] * frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(2, timeout=30) as started:
        started.start()
        yield started


@pytest.fixture(scope="module")
def bmode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate("bmode", tmp_path_factory.mktemp("bmode"), seed=3)[0]


def test_parses_a_simulated_instance_in_a_long_lived_worker(pool: WorkerPool, bmode: Path) -> None:
    pids = pool.pids
    assert len(pids) == 2 and os.getpid() not in pids
    parsed = [pool.parse(bmode) for _ in range(40)]
    assert pool.pids == pids, "no process is spawned per task"
    first = parsed[0]
    assert all(p == first for p in parsed)
    assert first.kinds == (ImageKind.BMODE,)
    assert (first.rows, first.columns, first.number_of_frames) == (480, 640, 1)
    assert first.sop_class_uid == "1.2.840.10008.5.1.4.1.1.6.1"
    assert first.transfer_syntax == "1.2.840.10008.1.2.1"
    assert first.sop_instance_uid.startswith("1.2.826.0.1.3680043")
    meta = first.metadata(plaintext_sha256="ab" * 32, size=bmode.stat().st_size)
    assert meta.sop_instance_uid == first.sop_instance_uid


def test_a_real_multiframe_compressed_file_decodes_first_and_last_frame(pool: WorkerPool) -> None:
    parsed = pool.parse(real_file("dcm4che__US-PAL-8-10x-echo.dcm"))
    assert (parsed.number_of_frames, parsed.rows, parsed.columns) == (10, 430, 600)
    assert parsed.transfer_syntax == RLELossless


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_memory_file_is_parsed_through_its_descriptor(pool: WorkerPool, bmode: Path) -> None:
    """The hub's small uploads never reach a disk: the worker reads the caller's memory file."""
    pool.start()
    pids = pool.pids
    before = {pid: open_fds(pid) for pid in pids}
    with open(os.memfd_create("plaintext"), "w+b") as memory:
        memory.write(bmode.read_bytes())
        parsed = [pool.parse(memory.fileno()) for _ in range(20)]
        assert memory.tell() == bmode.stat().st_size, "the caller's file offset is untouched"
        with open(os.memfd_create("junk"), "w+b") as junk:
            junk.write(b"not DICOM" * 100)
            with pytest.raises(RejectedInstanceError) as info:
                pool.parse(junk.fileno())
            assert info.value.reason is RejectReason.NOT_DICOM
        assert pool.parse(memory.fileno()) == parsed[0]
    assert set(parsed) == {pool.parse(bmode)}
    assert pool.pids == pids
    assert {pid: open_fds(pid) for pid in pids} == before, "each worker closes its copy"


def test_threads_share_the_pool(pool: WorkerPool, bmode: Path) -> None:
    results: list[ParsedInstance] = []

    def run() -> None:
        results.extend(pool.parse(bmode) for _ in range(10))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40 and len(set(results)) == 1


def test_the_worker_that_finished_last_takes_the_next_task(bmode: Path, tmp_path: Path) -> None:
    """One task at a time stays on one worker, whose caches are warm; under load both run."""
    probe = tmp_path / "whoami.dcm"
    shutil.copy(bmode, probe)
    with WorkerPool(2, timeout=30, parser=HOOKS) as two:
        two.start()
        one_at_a_time = {pool_worker(two.parse(probe)) for _ in range(6)}
        assert len(one_at_a_time) == 1
        with ThreadPoolExecutor(2) as threads:
            at_once = {pool_worker(p) for p in threads.map(two.parse, [probe] * 40)}
        assert at_once == {str(pid) for pid in two.pids}


def test_a_worker_imports_the_reader_before_its_limits_and_first_task(
    bmode: Path, tmp_path: Path
) -> None:
    """Its memory limit is its size after the imports plus the task's allowance: a reader
    imported by the first task would count against that task (and make it slow)."""
    probe = tmp_path / "modules.dcm"
    shutil.copy(bmode, probe)
    with WorkerPool(1, timeout=30, parser=HOOKS) as one:
        one.start()
        parsed = one.parse(probe)
    assert "loaded before usreview.dicom.reader,pydicom,numpy" in parsed.warnings


def test_a_starting_replacement_delays_no_task(bmode: Path, tmp_path: Path) -> None:
    """A worker retired after its tasks is replaced; the idle ready one works meanwhile."""
    probe = tmp_path / "whoami.dcm"
    shutil.copy(bmode, probe)
    with WorkerPool(2, timeout=30, parser=HOOKS, max_tasks_per_worker=3) as two:
        two.start()
        started = {str(pid) for pid in two.pids}
        [retired] = {pool_worker(two.parse(probe)) for _ in range(3)}  # retires after these
        [other] = started - {retired}
        assert pool_worker(two.parse(probe)) == other  # not the replacement, still importing
        assert retired not in {str(pid) for pid in two.pids}


def pool_worker(parsed: ParsedInstance) -> str:
    """The process id a ``whoami`` file's parse reports (see tests/ingest_hooks.py)."""
    [note] = [w for w in parsed.warnings if w.startswith("worker ")]
    return note.removeprefix("worker ")


def test_hostile_files_are_rejected_with_their_reason(
    pool: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    (tmp_path / "noise").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "huge-length").write_bytes(b"x" * 100)  # pydicom asks for 2 GB
    ct = write_us(tmp_path / "ct.dcm", np.zeros((1, 8, 8), np.uint8), sop_class=CTImageStorage)
    data = bmode.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 1000])
    bomb = rle_bomb(tmp_path / "bomb.dcm", 65535, 65535, frames=4)
    assert bomb.stat().st_size < 2048
    no_uid = write_us(tmp_path / "no-uid.dcm", np.zeros((1, 8, 8), np.uint8), SOPInstanceUID="")
    # Compressed cines cut by 3 KB: their last frame still decodes (the decoder fills the
    # rest in), so only the item structure shows it is cut. Both were accepted before.
    for name in ("pydicom-data__color3d_jpeg_baseline.dcm", "dcm4che__jpeg-ls-Palette.dcm"):
        (tmp_path / f"cut-{name}").write_bytes(real_file(name).read_bytes()[:-3072])
    expected = {
        tmp_path / "noise": (RejectReason.NOT_DICOM, "not a DICOM file"),
        tmp_path / "empty": (RejectReason.NOT_DICOM, "DICOM"),
        tmp_path / "huge-length": (RejectReason.NOT_DICOM, "DICOM"),
        tmp_path / "missing": (RejectReason.NOT_DICOM, "no such file"),
        ct: (RejectReason.NOT_ULTRASOUND, "CT Image Storage"),
        tmp_path / "truncated.dcm": (RejectReason.CORRUPT_PIXEL_DATA, "truncated"),
        tmp_path / "cut-pydicom-data__color3d_jpeg_baseline.dcm": (
            RejectReason.CORRUPT_PIXEL_DATA,
            "119 of 120 frame",
        ),
        tmp_path / "cut-dcm4che__jpeg-ls-Palette.dcm": (
            RejectReason.CORRUPT_PIXEL_DATA,
            "9 of 10 frame",
        ),
        bomb: (RejectReason.IMAGE_TOO_LARGE, "over the cap"),
    }
    pids = pool.pids
    for path, (reason, words) in expected.items():
        with pytest.raises(RejectedInstanceError, match=words) as caught:
            pool.parse(path)
        assert caught.value.reason is reason, path.name
        assert isinstance(caught.value, InputError)
    parsed = pool.parse(no_uid)
    with pytest.raises(RejectedInstanceError) as caught:
        parsed.metadata(plaintext_sha256="00" * 32, size=1)
    assert caught.value.reason is RejectReason.INVALID_HEADER
    assert "sop_instance_uid" in str(caught.value)
    assert pool.pids == pids, "typed rejections do not cost a worker"
    assert pool.parse(bmode).rows == 480


def test_a_malformed_answer_is_rejected() -> None:
    good = {
        "sop_instance_uid": "1.2",
        "study_instance_uid": "1.3",
        "series_instance_uid": "1.4",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.6.1",
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "number_of_frames": 1,
        "rows": 2,
        "columns": 3,
        "kinds": ["bmode"],
        "warnings": [],
    }
    assert ParsedInstance.from_dict(good).kinds == (ImageKind.BMODE,)
    for change in ({"rows": "2"}, {"kinds": ["x-ray"]}, {"rows": True}, {"warnings": [1]}):
        with pytest.raises(RejectedInstanceError) as caught:
            ParsedInstance.from_dict({**good, **change})
        assert caught.value.reason is RejectReason.INVALID_HEADER
    with pytest.raises(RejectedInstanceError):
        ParsedInstance.from_dict({k: v for k, v in good.items() if k != "rows"})


# -- limits: a pool whose parser misbehaves on demand --------------------------------------


@pytest.fixture(scope="module")
def limited() -> Iterator[WorkerPool]:
    with WorkerPool(
        1,
        memory_limit=256 * MiB,
        max_decoded_bytes=2 * 1024**3,
        cpu_seconds=1,
        timeout=4,
        parser=HOOKS,
    ) as started:
        started.start()
        yield started


def test_memory_limit_is_a_typed_rejection(
    limited: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    """12000 x 12000 RGB (412 MiB) is under the decode cap but over the 256 MiB limit."""
    big = rle_bomb(tmp_path / "big.dcm", 12000, 12000)
    assert big.stat().st_size < 1024
    with pytest.raises(RejectedInstanceError, match=r"412\. MiB") as caught:
        limited.parse(big)
    assert caught.value.reason is RejectReason.RESOURCE_LIMIT
    assert limited.parse(bmode).rows == 480


def test_timeout_kills_and_replaces_the_worker(
    limited: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    (tmp_path / "sleep.dcm").write_bytes(b"")
    before, replaced = limited.pids, limited.replaced
    started = time.monotonic()
    with pytest.raises(RejectedInstanceError, match="longer than 4 s") as caught:
        limited.parse(tmp_path / "sleep.dcm")
    assert 3.9 < time.monotonic() - started < 8
    assert caught.value.reason is RejectReason.TIMED_OUT
    assert limited.replaced == replaced + 1
    assert limited.parse(bmode).rows == 480
    assert limited.pids != before


def test_cpu_limit_ends_the_worker_with_a_typed_error(
    limited: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    (tmp_path / "spin.dcm").write_bytes(b"")
    replaced = limited.replaced
    with pytest.raises(RejectedInstanceError, match="CPU time") as caught:
        limited.parse(tmp_path / "spin.dcm")
    assert caught.value.reason is RejectReason.RESOURCE_LIMIT
    assert limited.replaced == replaced + 1
    assert limited.parse(bmode).rows == 480


def test_a_worker_killed_mid_task_is_replaced(
    limited: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    (tmp_path / "sleep.dcm").write_bytes(b"")
    limited.parse(bmode)  # the worker is ready
    [pid] = limited.pids
    errors: list[BaseException] = []

    def run() -> None:
        try:
            limited.parse(tmp_path / "sleep.dcm")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    [error] = errors
    assert isinstance(error, RejectedInstanceError)
    assert error.reason is RejectReason.WORKER_CRASHED
    assert "SIGKILL" in str(error)
    assert limited.parse(bmode).rows == 480
    assert limited.pids != [pid]


def test_a_worker_that_died_while_idle_costs_no_task(limited: WorkerPool, bmode: Path) -> None:
    limited.parse(bmode)
    [pid] = limited.pids
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert limited.parse(bmode).rows == 480
    assert limited.pids != [pid]


def test_a_worker_that_exits_answers_and_is_replaced(
    limited: WorkerPool, bmode: Path, tmp_path: Path
) -> None:
    (tmp_path / "exit.dcm").write_bytes(b"")
    replaced = limited.replaced
    with pytest.raises(RejectedInstanceError) as caught:
        limited.parse(tmp_path / "exit.dcm")
    assert caught.value.reason is RejectReason.WORKER_CRASHED
    assert limited.replaced == replaced + 1
    assert limited.parse(bmode).rows == 480


def test_a_closed_pool_refuses_work(bmode: Path) -> None:
    pool = WorkerPool(1, timeout=10)
    assert pool.parse(bmode).rows == 480
    pool.close()
    with pytest.raises(WorkerPoolError, match="closed"):
        pool.parse(bmode)
    assert pool.pids == []
    with pytest.raises(ValueError, match="memory_limit"):
        WorkerPool(1, memory_limit=1024)

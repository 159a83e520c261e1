"""``usreview processors`` and ``usreview analyze``; real files through the pipeline."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from tests.conftest import SHARED_DATA, real_file
from tests.processing_support import disk_full_on
from usreview.cli import main
from usreview.dicom import read
from usreview.processing import ResultStatus, default_registry, run_pipeline
from usreview.processing.quantification import doppler
from usreview.simulate import simulate


def test_processors_lists_kinds_version_and_availability(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["processors", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listing["doppler_indices"]["kinds"] == ["cw_doppler", "pw_doppler"]
    assert (
        listing["doppler_indices"]["version"] == default_registry().get("doppler_indices").version
    )
    assert listing["volume"]["available"] is True
    assert main(["processors"]) == 0
    mmode = default_registry().get("mmode_motion").version
    assert f"mmode_motion\t{mmode}\tmmode\tavailable" in capsys.readouterr().out


def test_analyze_json_and_derived_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = simulate("pw", tmp_path / "in", seed=2, snr_db=20.0, vessel="ica", side="left")[0]
    (tmp_path / "in" / "junk.dcm").write_bytes(b"not dicom")
    status = main(["analyze", str(tmp_path / "in"), "--json", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 2 and "junk.dcm" in captured.err
    summaries = {Path(s["file"]).name: s for s in json.loads(captured.out)}
    assert "error" in summaries["junk.dcm"]
    summary = summaries[pw.name]
    assert summary["kinds"] == ["bmode", "pw_doppler", "duplex"]
    quantities = {q["name"]: q for q in summary["quantities"]}
    assert set(quantities) >= {
        "peak_systolic_velocity",
        "end_diastolic_velocity",
        "resistive_index",
        "pulsatility_index",
        "velocity_time_integral",
        "heart_rate",
    }
    assert {k: quantities["resistive_index"][k] for k in ("code", "unit")} == {
        "code": "12023-8",
        "unit": "1",
    }
    assert quantities["heart_rate"]["unit"] == "/min"
    assert summary["recommendations"][0]["rule"] == "sru_ica_stenosis_psv"
    (image,) = summary["images"]
    assert Path(image["file"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert main(["analyze", str(pw)]) == 0
    assert "peak_systolic_velocity = " in capsys.readouterr().out


def test_real_files_run_through_the_pipeline_without_errors() -> None:
    files = sorted(p for p in SHARED_DATA.glob("*.dcm"))
    assert files
    for path in files:
        results = run_pipeline(read(path))
        for result in results:
            assert result.status != ResultStatus.FAILED, (path.name, result.reason)
            if result.status == ResultStatus.SKIPPED:
                assert result.reason


# --- unreadable pixel data ---------------------------------------------------------------


def _rle_pw(folder: Path) -> Path:
    """A simulated PW image (480 x 640, one frame), RLE Lossless: one fragment."""
    ds = pydicom.dcmread(simulate("pw", folder / "sim", seed=2, snr_db=20.0)[0])
    ds.compress(RLELossless)
    path = folder / "pw_rle.dcm"
    ds.save_as(path)
    return path


def test_analyze_refuses_a_file_whose_pixel_data_is_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "pw_rle_trunc.dcm"
    cut.write_bytes(_rle_pw(tmp_path).read_bytes()[:-3072])  # the last 3 KB lost
    assert main(["analyze", str(cut), "--json"]) == 2
    captured = capsys.readouterr()
    message = (
        "pixel data incomplete: 0 of 1 frame(s) in the file (the file ends inside fragment 1; "
        "RLE Lossless)"
    )
    assert captured.err == f"usreview: error: {cut}: {message}\n"
    assert json.loads(captured.out) == [{"file": str(cut), "error": message}]


def test_analyze_of_a_cut_cine_is_one_line_without_library_warnings(tmp_path: Path) -> None:
    data = real_file("pydicom-data__color3d_jpeg_baseline.dcm").read_bytes()
    cut = tmp_path / "cine_trunc.dcm"
    cut.write_bytes(data[: len(data) * 2 // 3])  # 80 of 120 JPEG frames and a part of one
    run = subprocess.run(
        [sys.executable, "-m", "usreview.cli", "analyze", str(cut)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (
        f"usreview: error: {cut}: pixel data incomplete: 80 of 120 frame(s) in the file (the "
        "file ends inside fragment 81; JPEG Baseline (Process 1))\n"
    )


def test_a_failure_because_frames_do_not_decode_makes_the_file_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = pydicom.dcmread(_rle_pw(tmp_path))
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    broken = bytearray(frame)
    broken[4:8] = struct.pack("<L", 10**6)  # the segment starts past the end: complete, undecodable
    ds.PixelData = encapsulate([bytes(broken)])
    corrupt = tmp_path / "pw_rle_corrupt.dcm"
    ds.save_as(corrupt)
    assert main(["analyze", str(corrupt)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"usreview: error: {corrupt}: frame 0 cannot be decoded (RLE Lossless): "
    )
    assert captured.err.count("\n") == 1


def test_a_processor_failing_on_sound_pixels_is_reported_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = _rle_pw(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(doppler, "detect_cycles", broken)
    assert main(["analyze", str(pw)]) == 0
    captured = capsys.readouterr()
    uid = pydicom.dcmread(pw, stop_before_pixels=True).SOPInstanceUID
    assert captured.err == ""
    assert (
        f"  doppler_indices: failed (applying processor doppler_indices to instance {uid}: "
        "RuntimeError: boom)\n"
    ) in captured.out


def test_warnings_while_processing_are_notes_of_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = simulate("pw", tmp_path, seed=2, snr_db=20.0)[0]
    detect_cycles = doppler.detect_cycles

    def noisy(*args: Any, **kwargs: Any) -> Any:  # as pydicom warns of odd pixel data
        warnings.warn("odd pixel data\nsecond line", UserWarning, stacklevel=2)
        return detect_cycles(*args, **kwargs)

    monkeypatch.setattr(doppler, "detect_cycles", noisy)
    assert main(["analyze", str(pw), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    [summary] = json.loads(captured.out)
    assert summary["warnings"] == ["odd pixel data"]
    assert len(summary["quantities"]) == 7
    assert main(["analyze", str(pw)]) == 0
    assert "\n  warning: odd pixel data\n" in capsys.readouterr().out


# --- derived images: private, complete or absent ----------------------------------------------


def _cine_and_pw(folder: Path) -> tuple[str, str]:
    """A 6-frame cine (6 filtered PNGs) and a PW image (1 PNG) in ``folder``; their UIDs."""
    cine = simulate("cine", folder, seed=1, frames=6, rows=128, columns=160)[0]
    pw = simulate("pw", folder, seed=2, snr_db=20.0)[0]
    return tuple(  # type: ignore[return-value]
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (cine, pw)
    )


@pytest.mark.parametrize("nth", [4, 7])  # inside the cine's frames; the PW's after them
def test_a_full_disk_leaves_no_image_and_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    cine, pw = _cine_and_pw(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    disk_full_on(monkeypatch, out, nth)
    assert main(["analyze", str(tmp_path / "in"), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    failed = (
        f"{cine}.speckle_fast.filtered.0004.png"
        if nth == 4
        else f"{pw}.doppler_indices.doppler_envelope.png"
    )
    assert captured.out == ""
    assert captured.err == f"usreview: error: {out / failed}: No space left on device\n"
    assert list(out.iterdir()) == []  # no truncated file, and none of this run's images


@pytest.mark.parametrize("nth", [1, 7])  # the first image; the PW's after the cine's
def test_a_failed_run_removes_the_out_folder_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """The folders the run made for --out go, those that were there stay."""
    _cine_and_pw(tmp_path / "in")
    there = tmp_path / "there"
    there.mkdir()
    out = there / "made" / "out"
    disk_full_on(monkeypatch, out, nth)
    assert main(["analyze", str(tmp_path / "in"), "--out", str(out)]) == 1
    assert capsys.readouterr().err.endswith(": No space left on device\n")
    assert there.is_dir() and list(there.iterdir()) == []


def test_unreadable_files_leave_no_empty_out_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 with nothing written: no --out folder; with an image written, it stays."""
    mmode = simulate("mmode", tmp_path / "in", seed=1)[0]  # no derived image
    pw = simulate("pw", tmp_path / "in", seed=2, snr_db=20.0, vessel="ica", side="left")[0]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk" * 100)
    out = tmp_path / "out"
    for inputs in ([junk], [mmode, junk]):
        assert main(["analyze", *map(str, inputs), "--out", str(out)]) == 2
        assert "not a DICOM file" in capsys.readouterr().err
        assert not out.exists(), inputs
    assert main(["analyze", str(pw), str(junk), "--out", str(out)]) == 2
    [image] = out.iterdir()
    assert image.name.endswith(".doppler_indices.doppler_envelope.png")


def test_an_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = simulate("pw", tmp_path / "in", seed=2)[0]
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(["analyze", str(pw), "--out", str(taken)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"usreview: error: --out {taken}: not a folder (name a folder for the images)\n"
    )
    assert taken.read_text() == "mine"


def test_images_are_private_and_a_second_run_replaces_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cine_and_pw(tmp_path / "in")
    out = tmp_path / "out"
    umask = os.umask(0o022)
    try:
        for _ in range(2):
            assert main(["analyze", str(tmp_path / "in"), "--out", str(out), "--json"]) == 0
    finally:
        os.umask(umask)
    capsys.readouterr()
    written = sorted(out.iterdir())
    assert len(written) == 7
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o600}

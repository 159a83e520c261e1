"""``usreview inspect``: text, JSON keys, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, real_file, region_item, write_us
from usreview.cli import main

JSON_KEYS = {
    "path",
    "sop_class_uid",
    "sop_class",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "transfer_syntax_uid",
    "transfer_syntax",
    "rows",
    "columns",
    "frames",
    "frame_time_ms",
    "frame_time_source",
    "photometric_interpretation",
    "kinds",
    "regions",
    "warnings",
}
REGION_KEYS = {
    "data_type",
    "spatial_format",
    "flags",
    "bounds",
    "units",
    "deltas",
    "reference_pixel",
    "reference_value",
    "transducer_frequency_khz",
    "pulse_repetition_frequency_hz",
    "doppler_correction_angle_deg",
}


def test_json_describes_every_real_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(SHARED_DATA)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == len(list(SHARED_DATA.glob("*.dcm")))
    for summary in out:
        assert set(summary) == JSON_KEYS
        for region in summary["regions"]:
            assert set(region) == REGION_KEYS
    aloka = next(s for s in out if "ALOKA" in s["path"])
    assert aloka["regions"][0]["reference_pixel"] == [154, 21]
    assert aloka["regions"][0]["units"] == ["cm", "cm"]
    cine = next(s for s in out if "color3d" in s["path"])
    assert (cine["frames"], cine["frame_time_ms"], cine["kinds"]) == (
        120,
        33.333,
        ["bmode", "cine"],
    )


def test_text_output_names_regions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(real_file("pydicom-data__OBXXXX1A.dcm"))]) == 0
    out = capsys.readouterr().out
    assert "Ultrasound Image Storage" in out
    assert "tissue (two_d) x 120-800, y 60-518" in out
    assert "ecg_trace (waveform)" in out
    assert "kinds           bmode, ecg" in out


def test_bad_files_are_one_line_each_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 100)
    good = write_us(tmp_path / "good.dcm", np.zeros((1, 48, 64), np.uint8), regions=[region_item()])
    status = main(
        ["inspect", "--json", str(tmp_path / "junk.dcm"), str(good), str(tmp_path / "none.dcm")]
    )
    captured = capsys.readouterr()
    assert status == 2
    junk, good_summary, none = json.loads(captured.out)  # failed files too, where found
    assert (junk["path"], good_summary["path"], none["path"]) == (
        str(tmp_path / "junk.dcm"),
        str(good),
        str(tmp_path / "none.dcm"),
    )
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("usreview: error: ") for line in lines)
    assert "not a DICOM file" in lines[0] and "no such file" in lines[1]


def test_json_lists_a_failed_file_with_its_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each unreadable file is in the array where it was found, with analyze's error."""
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk" * 100)
    good = write_us(tmp_path / "good.dcm", np.zeros((1, 48, 64), np.uint8), regions=[region_item()])
    assert main(["analyze", "--json", str(junk)]) == 2
    [failed] = json.loads(capsys.readouterr().out)
    assert main(["inspect", "--json", str(good), str(junk)]) == 2
    captured = capsys.readouterr()
    described, listed = json.loads(captured.out)
    assert set(described) == JSON_KEYS and described["path"] == str(good)
    assert listed == {"path": str(junk), "error": failed["error"]}
    assert listed["error"].startswith("not a DICOM file")
    assert captured.err == f"usreview: error: {junk}: {listed['error']}\n"
    assert main(["inspect", str(good), str(junk)]) == 2  # the text lists readable files only
    assert "junk" not in capsys.readouterr().out


def test_console_script_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "usreview.cli", "inspect", str(tmp_path / "x.dcm")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_json_is_strict_non_finite_numbers_are_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    region = region_item(PhysicalDeltaX=float("nan"), PhysicalDeltaY=float("inf"))
    path = write_us(tmp_path / "nan.dcm", np.zeros((1, 48, 64), np.uint8), regions=[region])
    assert main(["inspect", "--json", str(path)]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    (summary,) = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert summary["regions"][0]["deltas"] == [None, None]


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder with one good file, a broken symbolic link and a sub-folder holding a file."""
    tree = tmp_path / "tree"
    tree.mkdir()
    good = write_us(tree / "good.dcm", np.zeros((1, 48, 64), np.uint8), regions=[region_item()])
    (tree / "broken.dcm").symlink_to(tree / "nowhere.dcm")
    locked = tree / "locked"
    locked.mkdir()
    write_us(locked / "hidden.dcm", np.zeros((1, 48, 64), np.uint8))
    return tree, good, locked


def test_broken_links_and_unlistable_folders_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, good, locked = _tree(tmp_path)
    scandir = os.scandir

    def refuse_locked(path: Any = ".") -> Any:  # what a mode 000 folder does to a non-root user
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    assert main(["inspect", "--json", str(tree)]) == 2
    captured = capsys.readouterr()
    broken, summary, unlisted = json.loads(captured.out)
    assert broken == {"path": str(tree / "broken.dcm"), "error": "broken symbolic link"}
    assert summary["path"] == str(good)
    assert unlisted == {"path": str(locked), "error": "cannot list the folder: Permission denied"}
    assert captured.err.splitlines() == [
        f"usreview: error: {tree / 'broken.dcm'}: broken symbolic link",
        f"usreview: error: {locked}: cannot list the folder: Permission denied",
    ]
    assert main(["inspect", str(locked)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"usreview: error: {locked}: cannot list the folder: Permission denied\n"


def test_mode_000_folder_is_reported(tmp_path: Path) -> None:
    """Run as a user the folder's mode stops: as root, without the capabilities that let
    root read any folder (so the test also runs, and can fail, in CI as root)."""
    import shutil
    import subprocess
    import sys

    tree, good, locked = _tree(tmp_path)
    command = [sys.executable, "-m", "usreview.cli", "inspect"]
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop root's rights"
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    locked.chmod(0)
    try:
        runs = [
            subprocess.run(
                [*command, str(path)], capture_output=True, text=True, timeout=120, check=False
            )
            for path in (tree, locked)
        ]
    finally:
        locked.chmod(0o755)
    assert [run.returncode for run in runs] == [2, 2]
    assert str(good) in runs[0].stdout and "hidden.dcm" not in runs[0].stdout
    for run in runs:
        assert run.stderr.count(f"{locked}: cannot list the folder: Permission denied") == 1


@pytest.mark.parametrize(
    ("name", "cut", "missing"),
    [
        (
            "pydicom-data__color3d_jpeg_baseline.dcm",
            "a third",
            "80 of 120 frame(s) in the file (the file ends inside fragment 81; "
            "JPEG Baseline (Process 1))",
        ),
        (
            "dcm4che__US-PAL-8-10x-echo.dcm",
            "3 KB",
            "9 of 10 frame(s) in the file (the file ends inside fragment 10; RLE Lossless)",
        ),
        (
            "dcm4che__jpeg-ls-Palette.dcm",
            "3 KB",
            "9 of 10 frame(s) in the file (the file ends inside fragment 10; "
            "JPEG-LS Lossless Image Compression)",
        ),
    ],
)
def test_cut_compressed_pixel_data_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, cut: str, missing: str
) -> None:
    """A JPEG frame cut short still decodes (the decoder fills it in): the item structure
    of the pixel data says what is missing, without decoding."""
    data = real_file(name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) * 2 // 3] if cut == "a third" else data[:-3072])
    assert main(["inspect", "--json", str(path)]) == 2
    captured = capsys.readouterr()
    error = f"pixel data incomplete: {missing}"
    assert json.loads(captured.out) == [{"path": str(path), "error": error}]
    assert captured.err == f"usreview: error: {path}: {error}\n"


def test_pixel_data_without_its_sequence_delimiter_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = real_file("dcm4che__jpeg-ls-Palette.dcm").read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # the delimiter ends the file
    path = tmp_path / "no_delimiter.dcm"
    path.write_bytes(data[:-8])
    assert main(["inspect", "--json", str(path)]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 10
    assert (
        "encapsulated pixel data ends without its sequence delimiter (file truncated?)"
        in summary["warnings"]
    )

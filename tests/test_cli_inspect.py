"""``usreview inspect``: text, JSON keys, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert len(json.loads(captured.out)) == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("usreview: error: ") for line in lines)
    assert "not a DICOM file" in lines[0] and "no such file" in lines[1]


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

"""``usreview processors`` and ``usreview analyze``; real files through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from usreview.cli import main
from usreview.dicom import read
from usreview.processing import ResultStatus, run_pipeline
from usreview.simulate import simulate


def test_processors_lists_kinds_version_and_availability(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["processors", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listing["doppler_indices"]["kinds"] == ["cw_doppler", "pw_doppler"]
    assert listing["doppler_indices"]["version"] == "1.2"
    assert listing["volume"]["available"] is True
    assert main(["processors"]) == 0
    assert "mmode_motion\t1.2\tmmode\tavailable" in capsys.readouterr().out


def test_analyze_json_and_derived_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = simulate("pw", tmp_path / "in", seed=2, snr_db=20.0)[0]
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

"""``usreview analyze --out DIR``: output names stay inside DIR whatever the file says."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
import pytest

from usreview.cli import main
from usreview.simulate import simulate

HOSTILE_UIDS = {
    "dotdot": "../../escaped",
    "absolute": "/tmp/usreview-test-escape/evil",
    "nul": "1.2.3\x00evil",
}


def test_hostile_sop_instance_uids_write_inside_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = simulate("pw", tmp_path / "sim", seed=2, snr_db=20.0)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    for name, uid in HOSTILE_UIDS.items():
        dataset = pydicom.dcmread(pw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid UI value
            dataset.SOPInstanceUID = uid
            dataset.save_as(folder / f"{name}.dcm")
    out = tmp_path / "work" / "a" / "b"
    status = main(["analyze", str(folder), "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    summaries = json.loads(captured.out)
    assert {s["sop_instance_uid"] for s in summaries} == set(HOSTILE_UIDS.values())
    written = sorted(p for p in tmp_path.rglob("*.png"))
    assert written and all(p.parent == out for p in written)
    assert {p.name.split(".")[0] for p in written} == set(HOSTILE_UIDS)
    for summary in summaries:
        (image,) = summary["images"]
        assert Path(image["file"]).parent == out
    assert not Path(HOSTILE_UIDS["absolute"]).parent.exists()


def test_valid_uid_names_the_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = simulate("pw", tmp_path / "in", seed=2, snr_db=20.0)[0]
    uid = str(pydicom.dcmread(pw, stop_before_pixels=True).SOPInstanceUID)
    assert main(["analyze", str(pw), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    (png,) = (tmp_path / "out").iterdir()
    assert png.name.startswith(f"{uid}.")


def test_broken_link_in_a_folder_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulate("pw", tmp_path, seed=2, snr_db=20.0)
    (tmp_path / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    status = main(["analyze", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == f"usreview: error: {tmp_path / 'gone.dcm'}: broken symbolic link\n"
    errors = [s for s in json.loads(captured.out) if "error" in s]
    assert errors == [{"file": str(tmp_path / "gone.dcm"), "error": "broken symbolic link"}]

"""The simulator's contract: API, determinism, DICOM validity, errors and the CLI."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.processing_support import disk_full_on
from usreview import cli
from usreview.cli import files as cli_files
from usreview.errors import SimulationError
from usreview.simulate import KINDS, describe_kind, simulate

SOP_CLASSES = {
    "bmode": "1.2.840.10008.5.1.4.1.1.6.1",
    "cine": "1.2.840.10008.5.1.4.1.1.3.1",
    "mmode": "1.2.840.10008.5.1.4.1.1.6.1",
    "pw": "1.2.840.10008.5.1.4.1.1.6.1",
    "cw": "1.2.840.10008.5.1.4.1.1.6.1",
    "color": "1.2.840.10008.5.1.4.1.1.6.1",
    "volume": "1.2.840.10008.5.1.4.1.1.6.2",
}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One study of every kind at default parameters, seed 1."""
    root = tmp_path_factory.mktemp("studies")
    out = {}
    for kind in KINDS:
        paths = simulate(kind, root / kind, seed=1)
        assert len(paths) == 1
        out[kind] = paths[0]
    return out


def test_kinds_are_the_public_tuple() -> None:
    assert KINDS == ("bmode", "cine", "mmode", "pw", "cw", "color", "volume")
    assert ", ".join(KINDS) == cli_files._SIMULATE_KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_files_sop_class_and_sidecar(studies: dict[str, Path], kind: str) -> None:
    path = studies[kind]
    assert path.name == f"{kind}.dcm"
    ds = pydicom.dcmread(path)
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    assert ds.SOPClassUID == SOP_CLASSES[kind] == truth["sop_class_uid"]
    assert ds.SOPInstanceUID == truth["sop_instance_uid"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == truth["study_instance_uid"]
    assert str(ds.PatientName) == f"SIM^{kind.upper()}^S1"
    assert ds.PatientID == f"SIM-{kind.upper()}-1"
    assert ds.Modality == "US"
    assert (truth["kind"], truth["seed"], truth["file"]) == (kind, 1, path.name)
    assert truth["params"] == {name: default for name, default, _ in describe_kind(kind)}
    assert ds.pixel_array.dtype.name == "uint8"
    assert path.stat().st_size < 5_000_000
    files = sorted(path.parent.iterdir())  # no temporary file left behind
    assert [p.name for p in files] == [path.name, f"{kind}.truth.json"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


@pytest.mark.external
@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_reports_no_error(studies: dict[str, Path], kind: str) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    run = subprocess.run(
        ["dciodvfy", str(studies[kind])], capture_output=True, text=True, timeout=60, check=False
    )
    report = run.stdout + run.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == []
    iod = {"cine": "USMultiFrameImage", "volume": "EnhancedUltrasoundVolume"}.get(kind, "USImage")
    assert iod in report.split()


@pytest.mark.parametrize("kind", ["bmode", "pw", "volume"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, kind: str) -> None:
    first = simulate(kind, tmp_path / "a", seed=5)[0]
    again = simulate(kind, tmp_path / "b", seed=5)[0]
    other = simulate(kind, tmp_path / "c", seed=6)[0]
    assert first.read_bytes() == again.read_bytes()
    truth = first.with_suffix(".truth.json")
    assert truth.read_bytes() == again.with_suffix(".truth.json").read_bytes()
    assert first.read_bytes() != other.read_bytes()
    a, c = pydicom.dcmread(first), pydicom.dcmread(other)
    assert a.SOPInstanceUID != c.SOPInstanceUID
    assert a.StudyInstanceUID != c.StudyInstanceUID
    assert a.PixelData != c.PixelData


def test_parameters_change_uids_and_snr_changes_pixels(tmp_path: Path) -> None:
    base = pydicom.dcmread(simulate("pw", tmp_path / "a")[0])
    faster = pydicom.dcmread(simulate("pw", tmp_path / "b", psv_cm_s=120)[0])
    noisy = pydicom.dcmread(simulate("pw", tmp_path / "c", snr_db=5)[0])
    assert len({base.SOPInstanceUID, faster.SOPInstanceUID, noisy.SOPInstanceUID}) == 3
    region = base.SequenceOfUltrasoundRegions[1]
    rows = slice(region.RegionLocationMinY0, region.RegionLocationMaxY1 + 1)
    cols = slice(region.RegionLocationMinX0, region.RegionLocationMaxX1 + 1)
    # more noise lifts the background of the spectral strip
    assert noisy.pixel_array[rows, cols].mean() > base.pixel_array[rows, cols].mean() + 10


def test_string_parameters_are_converted(tmp_path: Path) -> None:
    path = simulate("cine", tmp_path, frames="4", frame_time_vector="true", rows="160")[0]
    ds = pydicom.dcmread(path)
    assert (ds.NumberOfFrames, ds.Rows) == (4, 160)
    assert ds.FrameIncrementPointer == 0x00181065
    assert len(ds.FrameTimeVector) == 4


@pytest.mark.parametrize(
    ("kind", "kwargs", "named"),
    [
        ("doppler", {}, "kind"),
        ("bmode", {"colour": 3}, "colour"),
        ("bmode", {"rows": 5}, "rows"),
        ("bmode", {"rows": 480.5}, "rows"),
        ("bmode", {"rows": True}, "rows"),
        ("pw", {"psv_cm_s": "fast"}, "psv_cm_s"),
        ("pw", {"psv_cm_s": float("nan")}, "psv_cm_s"),
        ("pw", {"flow": "sideways"}, "flow"),
        ("pw", {"edv_cm_s": 90.0}, "edv_cm_s"),
        ("pw", {"prf_hz": 500.0}, "prf_hz"),
        ("pw", {"sweep_s": 1.0, "heart_rate_bpm": 40}, "sweep_s"),
        ("cw", {"ejection_ms": 600, "heart_rate_bpm": 150}, "ejection_ms"),
        ("mmode", {"lvids_mm": 50.0}, "lvids_mm"),
        ("mmode", {"depth_cm": 10.0, "lvidd_mm": 70.0}, "depth_cm"),
        ("volume", {"semi_axis_x_mm": 60.0}, "semi_axis_x_mm"),
        ("cine", {"amplitude_mm": 20.0, "radius_mm": 20.0, "rows": 128}, "amplitude_mm"),
        ("bmode", {"inclusions": 6, "min_radius_mm": 29.0, "max_radius_mm": 30.0}, "inclusions"),
    ],
)
def test_invalid_parameters_name_the_parameter(
    tmp_path: Path, kind: str, kwargs: dict[str, object], named: str
) -> None:
    with pytest.raises(SimulationError, match=f"'{named}'"):
        simulate(kind, tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.dcm"))


@pytest.mark.parametrize(
    ("seed", "snr", "named"),
    [(-1, None, "seed"), (1.5, None, "seed"), (0, 200.0, "snr_db"), (0, "loud", "snr_db")],
)
def test_invalid_seed_or_snr(tmp_path: Path, seed: object, snr: object, named: str) -> None:
    with pytest.raises(SimulationError, match=f"'{named}'"):
        simulate("bmode", tmp_path, seed=seed, snr_db=snr)  # type: ignore[arg-type]


def test_cli_writes_and_prints_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "cw", "--out", str(tmp_path), "--seed", "2", "--snr", "15"]
    status = cli.main([*argv, "--param", "psv_cm_s=300", "--param", "flow=away"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out == [str(tmp_path / "cw.dcm")]
    truth = json.loads((tmp_path / "cw.truth.json").read_text())
    assert (truth["seed"], truth["snr_db"], truth["flow"]) == (2, 15.0, "away")
    assert truth["params"]["psv_cm_s"] == 300.0
    assert max(truth["envelope_cm_s"]) <= 0 < -min(truth["envelope_cm_s"])


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "ultrasound", "--out", "X"],
        ["simulate", "pw", "--out", "X", "--param", "psv_cm_s=-4"],
        ["simulate", "pw", "--out", "X", "--param", "nonsense"],
        ["simulate", "pw", "--out", "X", "--seed", "-3"],
        ["simulate", "pw"],
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [str(tmp_path / "out") if a == "X" else a for a in argv]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("usreview: error: ")
    assert not (tmp_path / "out").exists()


def test_cli_lists_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "volume", "--list-params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "semi_axis_x_mm=20.0\tellipsoid semi-axis, lateral (mm)" in lines
    assert len(lines) == len(describe_kind("volume"))


REFUSED = "exists: refusing to overwrite it (--force, or overwrite=True in Python, replaces it)"


@pytest.mark.parametrize("existing", ["bmode.dcm", "bmode.truth.json"])
def test_cli_refuses_to_overwrite_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    (tmp_path / existing).write_text("precious\n")
    assert cli.main(["simulate", "bmode", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"usreview: error: {tmp_path / existing} {REFUSED}\n"
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "precious\n"
    with pytest.raises(SimulationError, match="refusing to overwrite"):
        simulate("bmode", tmp_path)


def test_cli_force_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bmode.dcm").write_text("precious\n")
    assert cli.main(["simulate", "bmode", "--out", str(tmp_path), "--force"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'bmode.dcm'}\n"
    assert pydicom.dcmread(tmp_path / "bmode.dcm").Modality == "US"
    truth = json.loads((tmp_path / "bmode.truth.json").read_text())
    assert truth["file"] == "bmode.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bmode.dcm", "bmode.truth.json"]


@pytest.mark.parametrize(("nth", "failed"), [(1, "cine.truth.json"), (2, "cine.dcm")])
def test_a_full_disk_leaves_neither_file_and_names_the_one_it_was_writing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    nth: int,
    failed: str,
) -> None:
    out = tmp_path / "simcine"
    out.mkdir()
    disk_full_on(monkeypatch, out, nth)
    argv = ["simulate", "cine", "--out", str(out), "--param", "frames=4", "--param", "rows=128"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"usreview: error: {out / failed}: No space left on device\n"
    assert list(out.iterdir()) == []

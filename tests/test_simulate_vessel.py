"""Simulated PW images name their vessel and side as scanners do; a study label groups them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from usreview.errors import SimulationError
from usreview.simulate import simulate


def test_vessel_and_side_are_written_coded_and_as_text(tmp_path: Path) -> None:
    [path] = simulate("pw", tmp_path / "ica", seed=2, vessel="ica", side="left", study="s1")
    ds = pydicom.dcmread(path)
    [region] = ds.AnatomicRegionSequence
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("86117002", "SCT")
    [modifier] = region.AnatomicRegionModifierSequence
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("7771000", "Left")
    assert ds.ImageLaterality == "L" and "Laterality" not in ds
    assert ds.ImageComments == "LT ICA" and ds.SeriesDescription.endswith("LT ICA")
    truth = json.loads(path.with_name("pw.truth.json").read_text())
    assert truth["vessel"] == {"name": "ica", "side": "left", "code": "86117002", "label": "LT ICA"}
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in checked.stderr, checked.stderr


def test_a_study_label_groups_instances_of_one_seed(tmp_path: Path) -> None:
    [ica] = simulate("pw", tmp_path / "a", seed=2, vessel="ica", side="right", study="s1")
    [cca] = simulate("pw", tmp_path / "b", seed=2, vessel="cca", side="right", study="s1")
    [other] = simulate("pw", tmp_path / "c", seed=3, vessel="cca", side="right", study="s1")
    [plain] = simulate("pw", tmp_path / "d", seed=2)
    a, b, c, d = (pydicom.dcmread(p) for p in (ica, cca, other, plain))
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.PatientID == b.PatientID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert c.StudyInstanceUID != a.StudyInstanceUID != d.StudyInstanceUID
    assert "AnatomicRegionSequence" not in d and "ImageLaterality" not in d


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vessel": "aorta"}, "parameter 'vessel'"),
        ({"side": "both"}, "parameter 'side'"),
        ({"study": "a b"}, "parameter 'study'"),
    ],
)
def test_bad_vessel_parameters_are_refused(
    tmp_path: Path, params: dict[str, str], message: str
) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate("pw", tmp_path, **params)

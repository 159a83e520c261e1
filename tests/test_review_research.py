"""The case library for data scientists (:mod:`usreview.review.research`) and its notebook,
against a library of simulated, de-identified cases served by a fake client."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import pytest

from usreview.dicom import ImageKind, UltrasoundInstance, read
from usreview.errors import ReviewError
from usreview.processing import Code, CodingScheme, Context, Output, Quantity, Registry, processor
from usreview.review.research import CASE_COLUMNS, case_table, run_on_cases
from usreview.simulate import simulate
from usreview.teaching import UidMap, deidentify

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "research.ipynb"
#: Case label -> (simulated kind, its parameters), each case one instance but the last.
CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "renal": [("pw", {"vessel": "renal", "side": "right"})],
    "carotid": [("pw", {"vessel": "ica", "side": "left"}), ("bmode", {})],
}


class Library:
    """What :class:`usreview.review.client.ReviewClient` gives a scientist, from files."""

    def __init__(self, folder: Path) -> None:
        self.cases: list[dict[str, Any]] = []
        self.files: dict[tuple[str, str], Path] = {}
        self.downloads: Counter[str] = Counter()
        for number, (name, instances) in enumerate(CASES.items()):
            case_uid, uids, items = f"1.2.826.0.1.{number}", UidMap(), []
            for index, (kind, params) in enumerate(instances):
                [path] = simulate(kind, folder / f"{name}-{index}", seed=index, **params)
                copy = deidentify(read(path), uids, label=f"TEACHING-{number}")
                out = folder / f"{name}-{index}.dcm"
                copy.save_as(out, enforce_file_format=True)
                instance = read(out)
                self.files[case_uid, instance.sop_instance_uid] = out
                items.append(
                    {
                        "sop_instance_uid": instance.sop_instance_uid,
                        "kinds": [k.value for k in instance.kinds],
                        "frames": instance.number_of_frames,
                        "size": out.stat().st_size,
                    }
                )
            self.cases.append(
                {
                    "case_uid": case_uid,
                    "exam_type": "vascular",
                    "findings": f"{name} spectrum",
                    "impression": f"{name}: no stenosis.",
                    "recommendations": "None.",
                    "measurements": [],
                    "instances": items,
                }
            )

    def teaching_cases(self) -> list[dict[str, Any]]:
        return self.cases

    def teaching_instance(self, case_uid: str, sop_instance_uid: str) -> UltrasoundInstance:
        self.downloads[sop_instance_uid] += 1
        try:
            return read(self.files[case_uid, sop_instance_uid])
        except KeyError:
            raise ReviewError(f"no instance {sop_instance_uid} in case {case_uid}") from None


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    return Library(tmp_path_factory.mktemp("library"))


def _lab() -> Registry:
    lab = Registry()

    @processor(
        "mean_grey", kinds={ImageKind.BMODE, ImageKind.PW_DOPPLER}, version="0.1", registry=lab
    )
    def mean_grey(context: Context) -> Output:
        frame = context.instance.pixels.frames()[0]
        code = Code("mean_grey", CodingScheme.USREVIEW, "Mean grey level")
        return Output(quantities=(Quantity("mean_grey", code, float(frame.mean()), "1"),))

    return lab


def test_the_case_table_names_the_vessel_and_side_of_spectral_doppler(library: Library) -> None:
    cases = case_table(library)  # type: ignore[arg-type]
    assert list(cases.columns) == list(CASE_COLUMNS)
    named = {
        (row.impression, "pw_doppler" in row.kinds): (row.vessel, row.side)
        for row in cases.fillna("-").itertuples()
    }
    assert named == {
        ("renal: no stenosis.", True): ("renal", "right"),
        ("carotid: no stenosis.", True): ("ica", "left"),
        ("carotid: no stenosis.", False): ("-", "-"),  # a B-mode image names no vessel
    }
    bmode = cases[cases["kinds"].map(lambda kinds: "pw_doppler" not in kinds)]
    assert library.downloads[bmode["sop_instance_uid"].iloc[0]] == 0  # not downloaded


def test_a_registry_alone_runs_its_own_processors(library: Library) -> None:
    """It ran the hub's pipeline in the lab's registry: no processor 'doppler_indices'."""
    cases = case_table(library)  # type: ignore[arg-type]
    mine = run_on_cases(library, cases, registry=_lab(), progress=None)  # type: ignore[arg-type]
    assert set(mine["processor"]) == {"mean_grey"}
    assert list(mine["status"]) == ["done"] * 3 and mine["value"].notna().all()


def test_the_default_progress_is_a_line_per_case(
    library: Library, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = case_table(library)  # type: ignore[arg-type]
    lab = _lab()
    capsys.readouterr()
    run_on_cases(library, cases, registry=lab)  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == ["case 1/2: 1 instance", "case 2/2: 2 instances"]
    seen: list[tuple[int, int]] = []
    run_on_cases(library, cases, registry=lab, progress=lambda *done: seen.append(done))  # type: ignore[arg-type]
    run_on_cases(library, cases, registry=lab, progress=None)  # type: ignore[arg-type]
    assert seen == [(1, 3), (2, 3), (3, 3)] and capsys.readouterr().out == ""


def test_the_research_notebook_runs_on_the_library(
    library: Library, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.review.client import ReviewClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells)  # committed without
    assert "(File > Save Notebook As…) stay." in notebook.cells[0].source
    monkeypatch.setattr(ReviewClient, "from_environment", staticmethod(lambda: library))
    namespace: dict[str, Any] = {"__name__": "research_notebook"}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, str(NOTEBOOK), "exec"), namespace)
    assert {"vessel", "side"} <= set(namespace["cases"].columns)
    assert "peak_systolic_velocity" in set(namespace["runs"]["quantity"])
    assert len(namespace["both"]) > 0 and "value_60db" in namespace["both"].columns
    assert list(namespace["mine"]["quantity"]) == ["mean_grey"] * 3
    assert "case 2/2: 2 instances" in capsys.readouterr().out

"""End to end: a study's labelled ICA and CCA spectra give a study-level SRU evaluation.

Simulated left CCA and ICA spectra of one study are ingested and processed by a worker; the
site's feed then holds the study's own JSON summary and SR with the ICA/CCA ratio and the
SRU category. A further ICA spectrum with a higher PSV makes a new evaluation that
supersedes the first.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pydicom

from tests.processing_queue_support import SITE, HubSetup, ingest, open_result
from usreview.ingest import WorkerPool
from usreview.processing.execution import LocalExecutor
from usreview.processing.recommendations.study import SRU_ICA_CCA
from usreview.processing.study_results import STUDY_SUMMARY_KIND
from usreview.processing.worker import Worker
from usreview.simulate import simulate
from usreview.store import Archive


def _work(setup: HubSetup, archive: Archive) -> None:
    worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30)
    try:
        worker.run(threading.Event(), until_idle=True)
    finally:
        worker.close()


def _spectrum(folder: Path, vessel: str, psv: float, edv: float) -> Path:
    [path] = simulate(
        "pw", folder, seed=11, study="e2e", vessel=vessel, side="left", psv_cm_s=psv, edv_cm_s=edv
    )
    return path


def test_ica_and_cca_spectra_give_a_study_evaluation(tmp_path: Path) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    cca = _spectrum(tmp_path / "cca", "cca", 60.0, 15.0)
    ica = _spectrum(tmp_path / "ica", "ica", 180.0, 60.0)
    jet = _spectrum(tmp_path / "jet", "ica", 320.0, 130.0)
    uids = {p: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (cca, ica, jet)}
    with setup.open_archive() as archive, WorkerPool(1, timeout=30) as pool:
        ingest(setup, archive, pool, [cca, ica])
        _work(setup, archive)
        feed = archive.results.results_since(SITE)
        study = [r for r in feed if r.kind == STUDY_SUMMARY_KIND]
        assert len(study) == 1 and len([r for r in feed if r.kind == "sr"]) == 3
        first = json.loads(
            open_result(setup, archive, study[0].cursor, tmp_path / "a.json").read_text()
        )
        [evaluation] = first["evaluations"]
        ratio = next(q for q in evaluation["evidence"] if q["name"] == "ica_cca_psv_ratio")
        expected = SRU_ICA_CCA.category("ica_psv", 180.0)
        assert expected is not None and evaluation["category"] == expected.name
        assert abs(ratio["value"] - 180.0 / 60.0) < 0.08 * 3.0
        assert evaluation["ica_sop_instance_uid"] == uids[ica]
        assert evaluation["cca_sop_instance_uids"] == [uids[cca]]
        assert evaluation["source"].startswith("Grant EG")
        [sr_record] = [
            r for r in feed if (r.label or "").startswith("Automatic study evaluation (SR")
        ]
        sr = pydicom.dcmread(open_result(setup, archive, sr_record.cursor, tmp_path / "a.dcm"))
        assert sr.SOPInstanceUID == first["sr_sop_instance_uid"]
        [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
        referenced = {
            ref.ReferencedSOPInstanceUID
            for series in evidence.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        }
        assert referenced == {uids[ica], uids[cca]}

        ingest(setup, archive, pool, [jet])  # a higher ICA velocity: a new evaluation
        _work(setup, archive)
        feed = archive.results.results_since(SITE)
        study = [r for r in feed if r.kind == STUDY_SUMMARY_KIND]
        assert len(study) == 2 and study[1].supersedes == study[0].cursor
        assert study[0].superseded_by == study[1].cursor
        second = json.loads(
            open_result(setup, archive, study[1].cursor, tmp_path / "b.json").read_text()
        )
        [evaluation] = second["evaluations"]
        expected = SRU_ICA_CCA.category("ica_psv", 320.0)
        assert expected is not None and evaluation["category"] == expected.name
        assert evaluation["ica_sop_instance_uid"] == uids[jet]
        assert second["supersedes"]["sr_sop_instance_uid"] == first["sr_sop_instance_uid"]
        [old_sr, new_sr] = [
            r for r in feed if (r.label or "").startswith("Automatic study evaluation (SR")
        ]
        assert second["supersedes"]["sr_result"] == old_sr.cursor == new_sr.supersedes
        sr = pydicom.dcmread(open_result(setup, archive, new_sr.cursor, tmp_path / "b.dcm"))
        assert sr.SOPInstanceUID == second["sr_sop_instance_uid"] != first["sr_sop_instance_uid"]
        [item] = sr.PredecessorDocumentsSequence
        [ref] = item.ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == first["sr_sop_instance_uid"]

"""Reviewers see the study-level evaluation (SRU ICA/CCA criteria) of a study.

Simulated left CCA and ICA spectra of one study (``simulate pw --param vessel=... side=...
study=...``). Without a hub: the processing pipeline's summaries give the evaluation the
study detail returns, with the worker's own signature, matched to the current study summary
of the results feed only; the study page's results panel shows it above the per-instance
results. Through a real hub (proxy, TLS, service, worker): a site uploads the spectra, the
worker publishes the study summary, ``GET /studies/{uid}`` returns that evaluation, the
study page built with the reviewer's client shows it, and a later ICA spectrum with a higher
velocity replaces it (the superseded one is no longer shown).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.hub_api_support import ENVELOPE, HubRun, Site, service_launch, service_pids
from usreview.envelope import PublicKeys, load_public_keys, seal_file
from usreview.hub.api.handlers_review import study_evaluation
from usreview.processing.execution import execute_file
from usreview.processing.recommendations.study import SRU_ICA_CCA, evaluate_study
from usreview.processing.study_results import STUDY_SUMMARY_KIND, study_documents
from usreview.simulate import simulate
from usreview.store import Archive

CONTRACT = yaml.safe_load((Path(__file__).parents[1] / "docs" / "openapi.yaml").read_text())
# (vessel, PSV, EDV) in cm/s: a 50-69% ICA by the SRU table, then a >= 70% jet.
CCA, ICA, JET = ("cca", 60.0, 15.0), ("ica", 180.0, 60.0), ("ica", 320.0, 130.0)


def conforms(body: Any, schema: str) -> None:
    validator = Draft202012Validator(
        {"components": CONTRACT["components"], "$ref": f"#/components/schemas/{schema}"}
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


def spectrum(folder: Path, spec: tuple[str, float, float], label: str = "eval") -> Path:
    vessel, psv, edv = spec
    [path] = simulate(
        "pw", folder, seed=21, study=label, vessel=vessel, side="left", psv_cm_s=psv, edv_cm_s=edv
    )
    return path


def truth(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.with_name(path.stem + ".truth.json").read_text()))


def check_values(evaluation: dict[str, Any], ica: Path, cca: Path) -> None:
    """The values shown are the spectra's, within the Doppler processor's accuracy."""
    [side] = evaluation["evaluations"]
    values = side["values"]
    ica_psv, cca_psv = truth(ica)["psv_cm_s"], truth(cca)["psv_cm_s"]
    assert values["ica_psv"] == pytest.approx(ica_psv, rel=0.08)
    assert values["cca_psv"] == pytest.approx(cca_psv, rel=0.08)
    assert values["ica_cca_psv_ratio"] == pytest.approx(ica_psv / cca_psv, rel=0.12)
    assert values["ica_cca_psv_ratio"] == pytest.approx(
        values["ica_psv"] / values["cca_psv"], abs=1e-3
    )
    assert values["ica_edv"] == pytest.approx(truth(ica)["edv_cm_s"], rel=0.15)
    category = SRU_ICA_CCA.category("ica_psv", values["ica_psv"])
    assert category is not None
    assert (side["category"], side["statement"]) == (category.name, category.statement)
    assert side["side"] == "left" and side["source"].startswith("Grant EG")
    assert side["ica_sop_instance_uid"] == str(pydicom.dcmread(ica).SOPInstanceUID)
    assert side["cca_sop_instance_uids"] == [str(pydicom.dcmread(cca).SOPInstanceUID)]
    assert "not a diagnosis" in evaluation["notice"]
    conforms(evaluation, "StudyEvaluation")


# -- without a hub: the evaluation, its signature, the current summary, the panel ---------


def test_the_evaluation_matches_the_workers_and_only_its_current_summary(
    tmp_path: Path,
) -> None:
    from usreview.review.results import ResultsPanel

    cca, ica = spectrum(tmp_path / "cca", CCA), spectrum(tmp_path / "ica", ICA)
    summaries = {}
    for path in (cca, ica):
        outputs = execute_file(str(path))
        assert outputs.summary is not None
        summaries[outputs.sop_instance_uid] = json.loads(outputs.summary)
    study = str(pydicom.dcmread(ica).StudyInstanceUID)
    headers = {
        str(h.SOPInstanceUID): h
        for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in (cca, ica))
    }
    signature, _, document = study_documents(study, evaluate_study(summaries), headers)

    with Archive.open(None, tmp_path / "archive") as archive:
        feed = archive.results
        view = study_evaluation(feed, study, summaries)
        assert view is not None and view["signature"] == signature
        assert view["published"] is None  # nothing sent to the site yet
        check_values(view, ica, cca)
        assert view["instances"] == json.loads(document)["instances"]
        assert study_evaluation(feed, study, {k: summaries[k] for k in list(summaries)[:1]}) is None

        prefix = f"auto-study/{study}/summary"
        sent = feed.publish_result(
            b"sealed", sites=["site-a"], study_instance_uid=study, kind=STUDY_SUMMARY_KIND,
            key=f"{prefix}/{signature}",
        )  # fmt: skip
        view = study_evaluation(feed, study, summaries)
        assert view is not None and view["published"]["result"] == sent.cursor
        assert view["published"]["supersedes"] is None
        newer = feed.publish_result(
            b"sealed 2", sites=["site-a"], study_instance_uid=study, kind=STUDY_SUMMARY_KIND,
            key=f"{prefix}/0123456789abcdef/after/{sent.cursor}", supersedes=sent.cursor,
        )  # fmt: skip
        # The current summary holds other values (being re-evaluated): not claimed as sent.
        view = study_evaluation(feed, study, summaries)
        assert view is not None and view["published"] is None
        assert feed.get_result("site-a", sent.cursor).superseded_by == newer.cursor

    records = [
        {"sop_instance_uid": uid, "kinds": ["pw_doppler"], "analysis": summary,
         "processing": {"status": "done", "reason": None}}
        for uid, summary in summaries.items()
    ]  # fmt: skip
    panel = ResultsPanel(records, evaluation=view)
    shown = panel.children[1].value
    assert 'class="usreview-study-evaluation"' in shown
    assert "decision support" in shown and "not a diagnosis" in shown
    values = view["evaluations"][0]["values"]
    assert (
        f"{values['ica_psv']:.1f} cm/s" in shown and f"{values['ica_cca_psv_ratio']:.2f}" in shown
    )
    assert html.escape(view["evaluations"][0]["statement"]) in shown and "Grant EG" in shown
    assert "not sent to the site yet" in shown
    first_uid = records[0]["sop_instance_uid"]
    assert first_uid in panel.children[2].children[0].value  # then each instance's results
    plain = ResultsPanel(records).children
    assert not any("usreview-study-evaluation" in getattr(c, "value", "") for c in plain)


# -- through a real hub ---------------------------------------------------------------------


@dataclass
class World:
    hub: HubRun
    site: Site
    rev: str
    hub_public: PublicKeys
    folder: Path
    paths: dict[str, Path] = field(default_factory=dict)
    study: str = ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hub = HubRun(tmp_path_factory.mktemp("studyeval"), {"parse_workers": 1})
    with hub.running() as folder:
        yield World(
            hub,
            hub.add_site("north"),
            hub.add_person("rev", "reviewer"),
            load_public_keys(hub.state / "hub.pub"),
            folder,
        )


def upload(world: World, path: Path) -> None:
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    sealed = path.with_suffix(".env")
    seal_file(path, sealed, sender=world.site.keys, recipients=[world.hub_public])
    stored = world.hub.upload(uid, sealed.read_bytes(), world.site.token, ENVELOPE)
    assert stored.status_code == 201, stored.text


def evaluated(world: World, ica_uid: str) -> dict[str, Any]:
    """The study detail once its evaluation uses ``ica_uid`` and was sent to the site."""
    deadline = time.monotonic() + 180
    while True:
        answer = world.hub.get(f"/studies/{world.study}", world.rev)
        if answer.status_code == 200:
            detail: dict[str, Any] = answer.json()
            found = detail.get("study_evaluation") or {}
            sides = found.get("evaluations") or [{}]
            if found.get("published") and sides[0].get("ica_sop_instance_uid") == ica_uid:
                return detail
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)


def study_summaries(world: World) -> list[dict[str, Any]]:
    feed = world.hub.get("/results?cursor=0&limit=1000", world.site.token).json()["results"]
    return [r for r in feed if r["kind"] == STUDY_SUMMARY_KIND]


@pytest.mark.slow
def test_reviewers_see_the_study_evaluation_the_site_was_sent(world: World) -> None:
    from usreview.review.client import ReviewClient
    from usreview.review.pages import StudyPage

    for name, spec in (("cca", CCA), ("ica", ICA)):
        world.paths[name] = spectrum(world.folder / name, spec)
        upload(world, world.paths[name])
    world.study = str(pydicom.dcmread(world.paths["ica"]).StudyInstanceUID)
    ica_uid = str(pydicom.dcmread(world.paths["ica"]).SOPInstanceUID)
    detail = evaluated(world, ica_uid)
    evaluation = detail["study_evaluation"]
    check_values(evaluation, world.paths["ica"], world.paths["cca"])
    [sent] = study_summaries(world)
    assert evaluation["published"]["result"] == sent["id"]
    assert evaluation["published"]["supersedes"] is None
    conforms(detail, "StudyDetail")

    service = service_launch(service_pids(world.hub.state)[0])[1]["JUPYTERHUB_SERVICE_URL"]
    with ReviewClient(f"{service.rstrip('/')}/services/usreview/", world.rev) as client:
        page = StudyPage(client, world.study)
        page.teaching_button.click()  # not published yet: refused, said on the page
        refused = page.message.value
        page.close()
    assert "Not made a teaching case" in refused and "publish" in refused.lower(), refused
    shown = page.results.children[1].value
    values = evaluation["evaluations"][0]["values"]
    assert "usreview-study-evaluation" in shown and f"{values['ica_psv']:.1f} cm/s" in shown
    assert f"sent to the site as result {sent['id']}" in shown


@pytest.mark.slow
def test_a_newer_evaluation_replaces_the_superseded_one(world: World) -> None:
    assert world.study, "runs after the first evaluation"
    first = study_summaries(world)[0]
    world.paths["jet"] = spectrum(world.folder / "jet", JET)
    upload(world, world.paths["jet"])
    jet_uid = str(pydicom.dcmread(world.paths["jet"]).SOPInstanceUID)
    evaluation = evaluated(world, jet_uid)["study_evaluation"]
    check_values(evaluation, world.paths["jet"], world.paths["cca"])
    assert evaluation["evaluations"][0]["category"] != "ica_50_69"
    [old, new] = study_summaries(world)
    assert old["id"] == first["id"] and new["supersedes"] == old["id"]
    assert evaluation["published"] == {
        "result": new["id"],
        "published_at": new["published_at"],
        "supersedes": old["id"],
    }
    assert len(evaluation["evaluations"]) == 1  # one side, the newest only


def test_a_low_ica_psv_is_shown_as_not_graded_with_what_to_exclude(tmp_path: Path) -> None:
    """Study evaluation 1.3 grades the ICA PSV as one spectrum is graded: below 50 cm/s it
    meets no criterion (1.2 said "normal or < 50% stenosis"); the page says so."""
    from usreview.processing.quantification.vessel import SIDES, VESSELS
    from usreview.review.results import study_evaluation_html

    def summary(psv: float, vessel: str) -> dict[str, Any]:
        where = {"location": VESSELS[vessel].as_dict(), "laterality": SIDES["left"].as_dict()}
        return {
            "quantities": [
                {"processor": "doppler_indices", "name": name, "value": value,
                 "unit": "cm/s", "details": {"finding_site": where}}
                for name, value in (("peak_systolic_velocity", psv),
                                    ("end_diastolic_velocity", psv / 4))
            ]
        }  # fmt: skip

    summaries = {
        "1.2.3.1": summary(60.0, "cca"),
        "1.2.3.2": summary(30.0, "ica"),
    }
    with Archive.open(None, tmp_path / "archive") as archive:
        view = study_evaluation(archive.results, "1.2.3", summaries)
    assert view is not None
    conforms(view, "StudyEvaluation")
    [side] = view["evaluations"]
    assert (side["category"], side["graded"], side["findings"]) == ("ica_low_psv", False, [])
    assert side["statement"].startswith("a low ICA velocity (< 50 cm/s)")
    shown = study_evaluation_html(view)
    assert "ICA PSV not graded:" in shown and "exclude near occlusion" in shown
    assert "meets the criterion" not in shown

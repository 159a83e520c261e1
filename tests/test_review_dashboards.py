"""The review dashboards through a real JupyterHub, in real headless chromium.

One deployment for the module (see ``tests/review_support.py``): a hub with its proxy,
service and worker; sites north and south sending studies by C-STORE through their
gateways; west, a referring clinic, sending nothing. Two reviewers log in with the hub's
login form and land on their Voila worklist; a trainee lands on the teaching page and
opens the case a reviewer made. Screenshots of each page are written to
``$USREVIEW_SCREENSHOTS`` when it is set (the README's come from there).
"""

from __future__ import annotations

import io
import json
import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests import browser_support, review_support
from tests.review_support import Deployment, start_deployment, wait_until
from usreview.demo import c_store

pytestmark = pytest.mark.slow

chromium = browser_support.chromium


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    running = start_deployment(tmp_path_factory.mktemp("review"))
    try:
        yield running
    finally:
        running.stop()


def _screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("USREVIEW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _login(chromium: Any, deployment: Deployment, person: str) -> Any:
    """Log ``person`` in through the hub's form; return the page once the worklist shows."""
    context = chromium.new_context(
        ignore_https_errors=True, viewport={"width": 1500, "height": 1000}
    )
    page = context.new_page()
    page.goto(deployment.url + "/hub/login")
    page.fill("input[name=username]", person)
    page.fill("input[name=password]", deployment.passwords[person])
    page.click("[type=submit]")
    page.wait_for_selector(
        ".usr-worklist[data-total]", timeout=browser_support.DASHBOARD_TIMEOUT_MS
    )
    return page


def _row(page: Any, uid: str) -> Any:
    """The worklist's row of ``uid``, once the search for it has filtered the list.

    The search applies 120 ms after the typing and redraws the list: a click sent before
    then could land where the row was, on another row or on nothing.
    """
    page.fill(".usr-wl-query", uid)  # the row is in view whatever the sort
    page.wait_for_function(
        "uid => { const rows = [...document.querySelectorAll('.usr-wl-row')];"
        " return rows.some(r => r.dataset.uid === uid)"
        " && rows.every(r => r.dataset.uid.includes(uid)); }",
        arg=uid,
        timeout=60_000,
    )
    return page.locator(f".usr-wl-row[data-uid='{uid}']")


@pytest.fixture(scope="module")
def rita(chromium: Any, deployment: Deployment) -> Iterator[Any]:
    page = _login(chromium, deployment, "rita")
    yield page
    page.context.close()


def test_a_reviewer_lands_on_the_worklist_with_studies_of_both_sites(
    rita: Any, deployment: Deployment
) -> None:
    assert re.search(r"/user/rita/voila/render/usreview/worklist\.ipynb", rita.url), rita.url
    rita.wait_for_function(
        f"Number(document.querySelector('.usr-worklist').dataset.total) >= "
        f"{len(deployment.studies)}",
        timeout=30_000,
    )
    shown = {
        rita.get_attribute(f".usr-wl-row[data-uid='{s.study_uid}']", "data-uid")
        for s in deployment.studies
        if rita.locator(f".usr-wl-row[data-uid='{s.study_uid}']").count()
    }
    text = rita.locator(".usr-worklist").inner_text()
    assert "north" in text and "south" in text
    assert shown, "no study row in view"
    _screenshot(rita, "worklist")


# What a kernel of rita's tries to read of the hub (run in her warm worklist kernel).
_PROBE = """
import json, os
seen = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
for name, path in json.loads(%r).items():
    try:
        os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1)
        seen[name] = "read"
    except PermissionError:
        seen[name] = "denied"
with open(os.path.join(os.environ["HOME"], "mine.txt"), "w") as mine:
    seen["home"] = mine.write("mine")
print("PROBE" + json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give people accounts of their own")
def test_a_persons_kernel_runs_under_their_own_account_and_reads_nothing_of_the_hub(
    rita: Any, deployment: Deployment
) -> None:
    from jupyter_client import BlockingKernelClient

    from usreview.hub.accounts import Accounts

    state = deployment.hub.state.root
    home = state / "users" / "rita"
    uid = Accounts(state / "accounts.sqlite").system_uid("rita")
    assert home.stat().st_uid == uid and uid >= 1 << 24
    runtime = home / ".local" / "share" / "jupyter" / "runtime"
    connections = wait_until(
        lambda: sorted(runtime.glob("kernel-*.json")), 60, "a kernel of rita's server"
    )
    targets = {
        "hub.key": state / "hub.key",
        "at-rest.key": state / "at-rest.key",
        "jupyterhub.sqlite": state / "jupyterhub.sqlite",
        "accounts.sqlite": state / "accounts.sqlite",
        "audit.log": state / "audit.log",
        "archive": state / "archive",
        "state listing": state,
        "homes listing": state / "users",
        "omar's home": state / "users" / "omar",
    }
    (state / "users" / "omar").mkdir(mode=0o700, exist_ok=True)  # as his first start makes it
    client = BlockingKernelClient(connection_file=str(connections[0]))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        printed: list[str] = []
        client.execute_interactive(
            _PROBE % json.dumps({k: str(v) for k, v in targets.items()}),
            timeout=60,
            output_hook=lambda m: printed.append(m["content"].get("text", "")),
        )
    finally:
        client.stop_channels()
    [line] = [x for x in "".join(printed).splitlines() if x.startswith("PROBE")]
    seen = json.loads(line.removeprefix("PROBE"))
    assert (seen["uid"], seen["gid"], seen["groups"]) == (uid, uid, [])
    assert {name: seen[name] for name in targets} == dict.fromkeys(targets, "denied")
    assert seen["home"] == 4 and (home / "mine.txt").stat().st_uid == uid


def test_a_claimed_study_cannot_be_claimed_by_a_second_reviewer(
    rita: Any, chromium: Any, deployment: Deployment
) -> None:
    study = deployment.study("north", "pw")
    _row(rita, study.study_uid).locator(".usr-claim").click()
    rita.locator(".usreview-message:has-text('You hold this study')").wait_for(timeout=60_000)
    rita.wait_for_function(  # the list names who holds it
        "uid => document.querySelector(`.usr-wl-row[data-uid='${uid}'] "
        ".usr-wl-td[data-key=claim]`)?.textContent === 'rita'",
        arg=study.study_uid,
        timeout=30_000,
    )

    omar = _login(chromium, deployment, "omar")
    try:
        _row(omar, study.study_uid).locator(".usr-claim").click()
        refused = omar.locator(".usreview-message:has-text('claimed by rita')")
        refused.wait_for(timeout=60_000)
        _screenshot(omar, "claim-refused")
    finally:
        omar.context.close()
    status, body = deployment.api("POST", f"/studies/{study.study_uid}/claim", "omar")
    assert status == 409 and body["claim"]["reviewer"] == "rita"


def test_the_caliper_measures_the_inclusion_within_one_pixel(
    rita: Any, deployment: Deployment
) -> None:
    study = deployment.study("north", "bmode")
    _row(rita, study.study_uid).locator(".usr-open").click()
    rita.wait_for_selector(".usreview-study-page .usr-caliper[data-ready=true]", timeout=90_000)
    truth = study.truth
    spacing = truth["pixel_spacing_mm"]
    circle = next(i for i in truth["inclusions"] if i["shape"] == "circle")
    cx, cy = circle["centre_pixel"]
    r_px = circle["radius_mm"] / spacing
    canvas = rita.locator(".usreview-study-page canvas.usr-canvas").first.element_handle()
    browser_support.click_pixel(rita, canvas, cx - r_px, cy)
    browser_support.click_pixel(rita, canvas, cx + r_px, cy)
    text = rita.locator(".usreview-study-page .usr-measure-text[data-name=distance]")
    text.wait_for(timeout=60_000)
    shown = float(text.get_attribute("data-value") or "nan")
    print(f"\ncaliper through the hub: {shown:.3f} mm, truth {circle['diameters_mm'][0]:.3f} mm")
    assert shown == pytest.approx(circle["diameters_mm"][0], abs=spacing)
    rita.locator(".usreview-add-measurement").first.click()
    rita.locator(".usreview-own[data-name=distance]").wait_for(timeout=60_000)
    _screenshot(rita, "study-bmode")
    rita.fill(".usreview-impression textarea", "Round inclusion, measured.")
    rita.locator(".usreview-back").click()
    rita.wait_for_selector(".usr-worklist[data-total]", timeout=30_000)
    rita.locator(".usreview-message:has-text('kept as a draft')").wait_for(timeout=30_000)


def test_published_report_reaches_origin_and_second_site_only(
    rita: Any, deployment: Deployment
) -> None:
    study = deployment.study("north", "pw")
    _row(rita, study.study_uid).locator(".usr-open").click()
    rita.wait_for_selector(".usreview-study-page .usr-plot", timeout=90_000)
    rita.locator(".usreview-title").first.scroll_into_view_if_needed()
    _screenshot(rita, "study-doppler")
    status, body = deployment.api("GET", f"/studies/{study.study_uid}", "rita")
    assert status == 200
    analysis = body["series"][0]["instances"][0]["analysis"]
    automatic = {q["name"]: q["value"] for q in analysis["quantities"]}
    accepted = ("peak_systolic_velocity", "end_diastolic_velocity", "resistive_index")
    for name in accepted:
        row = rita.locator(
            f".usreview-results .widget-hbox:has(.usreview-quantity[data-name={name}])"
        )
        row.locator("button:has-text('Accept')").click()
    rita.fill(".usreview-impression textarea", "Normal internal carotid Doppler.")
    rita.fill(".usreview-findings textarea", "Low-resistance flow, no stenosis criteria met.")
    rita.locator(".usreview-recipients select").select_option(["west"])
    rita.locator(".usreview-publish").click()
    rita.locator(".usreview-publish-status [data-version='1']").wait_for(timeout=60_000)
    # the claim went with the publication: the page says so, and an amendment waits for a claim
    rita.locator(".usreview-claimant:has-text('nobody')").wait_for(timeout=30_000)
    assert rita.locator(".usreview-publish").is_disabled()
    rita.locator(".usreview-versions [data-version='1']").wait_for(timeout=30_000)
    _screenshot(rita, "published")

    def delivered(site: str) -> Path | None:
        folder = deployment.sites[site].outbox / study.study_uid
        return next(iter(sorted(folder.glob("*-report.dcm"))), None) if folder.is_dir() else None

    reports = {
        site: wait_until(lambda s=site: delivered(s), 90, f"the report at {site}")
        for site in ("north", "west")
    }
    summary = wait_until(
        lambda: next(iter((deployment.sites["west"].outbox / study.study_uid).glob("*.txt")), None),
        60,
        "the readable summary at west",
    )
    assert "Normal internal carotid Doppler." in summary.read_text(encoding="utf-8")
    for site, path in reports.items():
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in check.stderr.splitlines() if line.startswith("Error")]
        assert not errors, f"{site}: {errors}"
        values = _numbers(dcmread(path))
        for name in accepted:
            assert any(abs(v - automatic[name]) < 1e-3 for v in values), (site, name, values)
    time.sleep(3)  # the south gateway follows its feed: nothing may arrive there
    south = deployment.sites["south"].outbox / study.study_uid
    assert not south.exists() or not list(south.iterdir())
    status, body = deployment.api("GET", f"/studies/{study.study_uid}/reports", "rita")
    assert status == 200 and [r["version"] for r in body["reports"]] == [1]
    assert json.dumps(body["reports"][0]).count("west") >= 1


def _numbers(dataset: Any) -> list[float]:
    found: list[float] = []
    for item in getattr(dataset, "ContentSequence", []):
        for measured in getattr(item, "MeasuredValueSequence", []):
            found.append(float(measured.NumericValue))
        found += _numbers(item)
    return found


def test_a_study_opens_directly_from_its_link(rita: Any, deployment: Deployment) -> None:
    study = deployment.study("south", "mmode")
    base = rita.url.split("/voila/")[0]
    rita.goto(f"{base}/voila/render/usreview/study.ipynb?study={study.study_uid}")
    rita.wait_for_selector(".usreview-study-page .usr-plot", timeout=90_000)
    header = rita.locator(".usreview-study-page h2").first.inner_text()
    assert "MMODE" in header  # the simulated patient of that study
    assert rita.locator(".usr-plot[data-kind=MModeViewer]").count() == 1
    # the thumbnails are the instances' first frames, rendered by the service
    rita.wait_for_selector(".usreview-thumbnails img", timeout=30_000)
    size = rita.evaluate(
        "() => { const i = document.querySelector('.usreview-thumbnails img');"
        " return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size[1] >= 96 and size[0] > 0, size
    _screenshot(rita, "study-mmode")
    rita.goto(f"{base}/voila/render/usreview/study.ipynb?study=1.2.3.404")
    rita.locator(".usreview-message:has-text('Cannot open the study')").wait_for(timeout=90_000)


def test_a_trainee_opens_the_case_a_reviewer_marked(chromium: Any, deployment: Deployment) -> None:
    """omar publishes south's M-mode study and makes it a teaching case; tina, a trainee,
    logs in, lands on her teaching page, opens the case and sees its image. The copy is
    encrypted at rest, and what tina downloads is the de-identified instance."""
    from usreview.hub.commands import add_user
    from usreview.store import Archive
    from usreview.store.teaching import TeachingStore

    study = deployment.study("south", "mmode")
    uid = study.study_uid
    findings = "Normal left ventricular dimensions and wall motion."
    _publish(deployment, uid, "omar", "Normal M-mode study.", exam_type="echo", findings=findings)
    status, case = deployment.api("POST", "/teaching", "omar", {"study_instance_uid": uid})
    assert status == 201, case
    [item] = case["instances"]

    tina = add_user(deployment.hub.state.root, "tina", "trainee").password
    deployment.passwords["tina"] = tina
    deployment.tokens["tina"] = review_support._token(deployment, "tina")
    path = f"/teaching/{case['case_uid']}/instances/{item['sop_instance_uid']}"
    downloaded = _download(deployment, path, "tina")
    copy = dcmread(io.BytesIO(downloaded))
    assert copy.PatientIdentityRemoved == "YES" and copy.StudyInstanceUID == case["case_uid"]
    assert "MMODE" not in str(copy.get("PatientName", "")).upper()
    [sealed] = (deployment.hub.state.root / "archive" / "teaching").rglob("*.sealed")
    assert item["sop_instance_uid"].encode() not in sealed.read_bytes()  # no plaintext
    key = deployment.hub.state.at_rest_key.read_bytes()
    with Archive.open(None, deployment.hub.state.root / "archive") as archive:
        _, stored = TeachingStore(archive, key).read_instance(
            case["case_uid"], item["sop_instance_uid"]
        )
    assert stored == downloaded and len(downloaded) == item["size"]

    context = chromium.new_context(
        ignore_https_errors=True, viewport={"width": 1500, "height": 1000}
    )
    try:
        page = context.new_page()
        page.goto(deployment.url + "/hub/login")
        page.fill("input[name=username]", "tina")
        page.fill("input[name=password]", tina)
        page.click("[type=submit]")
        page.wait_for_selector(
            ".usreview-teaching-page", timeout=browser_support.DASHBOARD_TIMEOUT_MS
        )
        assert re.search(r"/user/tina/voila/render/usreview/teaching\.ipynb", page.url), page.url
        cases = page.locator(".usreview-teaching-cases select option")
        assert cases.count() == 1 and "Echo" in cases.first.inner_text()
        page.locator(".usreview-teaching-cases select").select_option(index=0)
        page.locator(".usreview-teaching-case:has-text('Normal M-mode study.')").wait_for(
            timeout=60_000
        )
        plot = page.locator(".usreview-teaching-viewer .usr-plot[data-kind=MModeViewer]")
        plot.wait_for(timeout=60_000)
        assert plot.locator("canvas, img, svg").count() >= 1
        assert page.locator(".usreview-message").count() == 0
        _screenshot(page, "teaching")
    finally:
        context.close()
    status, _ = deployment.api("GET", f"/studies/{uid}", "tina")
    assert status == 403 or status == 404  # trainees never reach the studies


def test_a_reviewer_opens_a_similar_case_from_the_study_page(
    rita: Any, deployment: Deployment
) -> None:
    """rita makes north's published Doppler study a teaching case; south then sends a new
    Doppler study, whose analysis names the case among its similar cases; on that study's
    page the case is a link, and the page it opens shows the case."""
    from usreview.review.teaching import case_label
    from usreview.simulate import simulate

    north = deployment.study("north", "pw")
    if deployment.api("GET", f"/studies/{north.study_uid}", "rita")[1]["status"] != "published":
        _publish(deployment, north.study_uid, "rita", "Normal internal carotid Doppler.")
    status, case = deployment.api(
        "POST", "/teaching", "rita", {"study_instance_uid": north.study_uid}
    )
    assert status in (200, 201), case  # the worker reads the library again at its next job

    [path] = simulate("pw", deployment.root / "studies" / "south" / "pw-later", seed=77)
    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
    assert not c_store([path], deployment.sites["south"].port).failed

    def named() -> bool:
        uid = truth["sop_instance_uid"]
        status, analysis = deployment.api("GET", f"/instances/{uid}/analysis", "rita")
        found = [f for f in analysis.get("findings", []) if f["code"] == "similar_cases"]
        return status == 200 and any(
            m["case_uid"] == case["case_uid"] for f in found for m in f["evidence"]["matches"]
        )

    wait_until(named, 120, "the teaching case among the new study's similar cases", step=1)
    base = rita.url.split("/voila/")[0]
    rita.goto(f"{base}/voila/render/usreview/study.ipynb?study={truth['study_instance_uid']}")
    link = rita.locator(".usreview-similar a.usreview-case-link").first
    link.wait_for(timeout=90_000)
    with rita.context.expect_page() as opened:
        link.click()
    page = opened.value
    try:
        page.locator(f".usreview-teaching-case:has-text('{case['impression']}')").wait_for(
            timeout=browser_support.DASHBOARD_TIMEOUT_MS
        )
        assert re.search(r"/usreview/teaching\.ipynb\?case=", page.url), page.url
        selected = page.locator(".usreview-teaching-cases select").input_value()
        assert selected == case_label(case)  # the option shown is the case's label
        page.locator(".usreview-teaching-viewer .usr-plot").first.wait_for(timeout=60_000)
    finally:
        page.close()


def _publish(
    deployment: Deployment, study_uid: str, person: str, impression: str, **fields: str
) -> None:
    """Claim the study and publish, as ``person``, a report of ``impression`` (and
    ``fields``: ``exam_type``, ``findings``)."""
    assert deployment.api("POST", f"/studies/{study_uid}/claim", person)[0] == 200
    report = {
        "exam_type": "vascular",
        "findings": "",
        "impression": impression,
        "recommendations": "",
        "urgency": "routine",
        "measurements": [],
        "key_images": [],
        "recipients": [],
        **fields,
    }
    status, body = deployment.api("POST", f"/studies/{study_uid}/reports", person, report)
    assert status == 201, body


def _download(deployment: Deployment, path: str, person: str) -> bytes:
    request = urllib.request.Request(
        deployment.url + review_support.API + path,
        headers={"Authorization": f"token {deployment.tokens[person]}"},
    )
    context = ssl.create_default_context(cafile=str(deployment.hub.state.tls_cert))
    with urllib.request.urlopen(request, context=context, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/dicom"
        return bytes(response.read())

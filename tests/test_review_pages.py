"""The study page's buttons, driven as the reviewer's kernel runs them, against a real hub.

One hub (proxy, TLS, service, processing worker) for the module; a site uploads a PW
Doppler and a B-mode study, and reviewer ``rev``'s pages call the service with her own
client (:class:`~usreview.review.client.ReviewClient`), as in Voila. The tests run in file
order: the Doppler study is published, then amended; the B-mode study is claimed, released,
left with a draft, and made to fail in every way a button can.

A failure that the service did not cause is made by replacing one client call with a
function that raises (or that calls the real one and then raises: the report went out, the
answer did not come back).
"""

from __future__ import annotations

import html
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.hub_api_support import ENVELOPE, HubRun, Site, service_launch, service_pids
from usreview.envelope import PublicKeys, load_public_keys, seal_file

pytestmark = pytest.mark.slow

ME = "rev"


@dataclass
class World:
    hub: HubRun
    site: Site
    rev: str
    hub_public: PublicKeys
    folder: Path
    studies: dict[str, str] = field(default_factory=dict)  # kind -> study UID

    @property
    def service_url(self) -> str:
        """The service's URL as a reviewer's server sees it (``$USREVIEW_SERVICE_URL``)."""
        service = service_launch(service_pids(self.hub.state)[0])[1]["JUPYTERHUB_SERVICE_URL"]
        return f"{service.rstrip('/')}/services/usreview/"

    def detail(self, kind: str) -> dict[str, Any]:
        answer = self.hub.get(f"/studies/{self.studies[kind]}", self.rev)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from usreview.simulate import simulate

    hub = HubRun(tmp_path_factory.mktemp("pages"), {"parse_workers": 1})
    with hub.running() as folder:
        running = World(
            hub,
            hub.add_site("north"),
            hub.add_person(ME, "reviewer"),
            load_public_keys(hub.state / "hub.pub"),
            folder,
        )
        for kind, seed in (("pw", 31), ("bmode", 32)):
            [path] = simulate(kind, folder / kind, seed=seed)
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            running.studies[kind] = str(dataset.StudyInstanceUID)
            sealed = path.with_suffix(".env")
            seal_file(path, sealed, sender=running.site.keys, recipients=[running.hub_public])
            uid = str(dataset.SOPInstanceUID)
            stored = hub.upload(uid, sealed.read_bytes(), running.site.token, ENVELOPE)
            assert stored.status_code == 201, stored.text
        deadline = time.monotonic() + 180
        for kind in running.studies:
            while (status := running.detail(kind)["status"]) != "processed":
                assert status == "received" and time.monotonic() < deadline, status
                time.sleep(0.5)
        yield running


@pytest.fixture
def client(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``rev``'s client, in a kernel whose ``$JUPYTERHUB_USER`` is ``rev``."""
    from usreview.review.client import ReviewClient

    monkeypatch.setenv("JUPYTERHUB_USER", ME)
    with ReviewClient(world.service_url, world.rev) as opened:
        yield opened


def raising(exc: BaseException) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return call


def claimant(page: Any) -> str:
    return str(page.header.value).split("class='usreview-claimant'>")[1].split("<")[0]


def test_publish_is_disabled_while_in_flight_and_a_second_click_sends_nothing(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["pw"], renew_seconds=3600)
    try:
        form = page.form
        assert form is not None
        page.claim_button.click()
        assert "You hold this study" in page.message.value and claimant(page) == "you"
        form.impression.value = "Normal internal carotid Doppler."
        seen: list[tuple[bool, str, str]] = []
        real = client.publish

        def publish(uid: str, body: dict[str, Any]) -> dict[str, Any]:
            seen.append(
                (form.publish_button.disabled, form.publish_button.description, form.status.value)
            )
            if len(seen) == 1:
                form.publish_button.click()  # clicked again while the first is in flight
            return dict(real(uid, body))

        monkeypatch.setattr(client, "publish", publish)
        form.publish_button.click()
        assert len(seen) == 1, seen
        disabled, label, status = seen[0]
        assert disabled and label == "Publishing…" and "Publishing…" in status
        assert 'data-version="1"' in form.status.value
        form.publish_button.click()  # a double click's second click, handled after the first
        assert len(seen) == 1 and "Not published" not in form.status.value, form.status.value
        assert 'data-version="1"' in form.status.value
        assert "Claim the study again" in form.status.value
        assert form.publish_button.disabled
        assert form.publish_button.description == "Publish amendment"
        assert "Report version 1 published to north" in page.message.value
    finally:
        page.close()
    reports = world.hub.get(f"/studies/{world.studies['pw']}/reports", world.rev).json()
    assert [r["version"] for r in reports["reports"]] == [1]


def test_once_published_the_claim_is_not_renewed_until_claimed_again(
    world: World, client: Any
) -> None:
    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["pw"], renew_seconds=0.2)
    try:
        form = page.form
        assert form is not None
        page.claim_button.click()
        form.impression.value = "Normal internal carotid Doppler, amended."
        form.urgency.value = "urgent"
        form.publish_button.click()
        assert 'data-version="2"' in form.status.value, form.status.value
        # the page reads the study again: published, nobody's claim
        assert claimant(page) == "nobody" and page.claim_button.description == "Claim"
        assert "<b class='usreview-status'>published</b>" in page.header.value
        time.sleep(1.5)  # seven renewal periods
        assert world.detail("pw")["claim"] is None  # not claimed again behind her back
        assert form.publish_button.disabled and "Claim the study again" in form.status.value
        form.publish_button.click()
        assert 'data-version="2"' in form.status.value and "Not published" not in form.status.value
        page.claim_button.click()  # the explicit action: now an amendment may go
        assert not form.publish_button.disabled and "Claim the study again" not in form.status.value
        assert 'data-version="2"' in form.status.value  # the confirmation stays
        assert world.detail("pw")["claim"]["reviewer"] == ME
        assert "data-version='2'" in page.versions.value  # the versions read again
        page.release_button.click()
    finally:
        page.close()
    assert len(world.detail("pw")["reports"]) == 2


def test_the_study_page_shows_the_published_versions_and_amends_the_latest(
    world: World, client: Any
) -> None:
    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["pw"], renew_seconds=3600)
    page.close()
    assert page.form is not None
    assert page.form.impression.value == "Normal internal carotid Doppler, amended."
    assert page.form.urgency.value == "urgent"
    assert page.form.publish_button.description == "Publish amendment"
    shown = page.versions.value
    assert "Published versions" in shown and "<th>Published (UTC)</th>" in shown
    assert shown.index("data-version='2'") < shown.index("data-version='1'")  # newest first
    row = shown.split("data-version='2'>")[1].split("</tr>")[0]
    for cell in (ME, "urgent", "Normal internal carotid Doppler, amended."):
        assert f"<td>{cell}</td>" in row, row
    published = world.detail("pw")["reports"][1]["published_at"][:16].replace("T", " ")
    assert f"<td>{published}</td>" in row
    assert not page.form.unsent


def test_a_publication_the_service_failed_after_recording_is_shown_as_published(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5xx (the audit failing after the commit, say) is not a refusal: the versions are
    read again, and the page says the report went out instead of inviting a second one."""
    from usreview.review.client import ServiceError
    from usreview.review.pages import StudyPage

    uid = world.studies["pw"]
    before = len(world.hub.get(f"/studies/{uid}/reports", world.rev).json()["reports"])
    page = StudyPage(client, uid, renew_seconds=3600, refresh_seconds=0)
    try:
        form = page.form
        assert form is not None
        page.claim_button.click()
        form.impression.value = "Amended once more."
        real = client.publish

        def publish(uid: str, body: dict[str, Any]) -> dict[str, Any]:
            real(uid, body)  # recorded; then the service fails
            raise ServiceError(503, "unavailable", "the audit log cannot be written", {})

        monkeypatch.setattr(client, "publish", publish)
        form.publish_button.click()
        assert "Not published" not in form.status.value, form.status.value
        assert f'data-version="{before + 1}"' in form.status.value
        assert form.publish_button.disabled  # claim again to amend
        assert f"Report version {before + 1} published" in page.message.value
    finally:
        page.close()
    after = world.hub.get(f"/studies/{uid}/reports", world.rev).json()["reports"]
    assert len(after) == before + 1


def test_a_reading_that_finishes_late_is_not_shown_over_a_newer_one(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's own re-read and its timer can overlap: the older answer must not undo
    the newer (an instance back to "queued", its decisions dropped)."""
    import threading

    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["bmode"], renew_seconds=3600, refresh_seconds=0)
    try:
        real = client.study
        calls: list[int] = []
        release = threading.Event()

        def study(uid: str) -> dict[str, Any]:
            first = not calls
            calls.append(len(calls))
            answer = dict(real(uid))
            if first:  # the first reading is slow, and older
                release.wait(10)
                answer["status"] = "stale"
            return answer

        monkeypatch.setattr(client, "study", study)
        slow = threading.Thread(target=page.refresh)
        slow.start()
        while not calls:
            threading.Event().wait(0.01)
        assert page.refresh()  # begun later, finished first
        shown = page.study["status"]
        release.set()
        slow.join(20)
        assert page.study["status"] == shown != "stale"
    finally:
        page.close()


def test_release_gives_the_study_back(world: World, client: Any) -> None:
    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["bmode"], renew_seconds=3600)
    try:
        assert page.release_button.disabled  # nothing to release
        page.claim_button.click()
        assert world.detail("bmode")["claim"]["reviewer"] == ME
        assert not page.release_button.disabled
        page.release_button.click()
        assert "Study released" in page.message.value
        assert claimant(page) == "nobody" and page.release_button.disabled
        assert "<b class='usreview-status'>processed</b>" in page.header.value
    finally:
        page.close()
    detail = world.detail("bmode")
    assert detail["claim"] is None and detail["status"] == "processed"


def test_release_on_the_worklist_gives_back_the_reviewers_own_claim(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is told who is signed in (its rows held by her offer *Release*); the
    row's *Release* reaches the service and says what the study page's does."""
    from usreview.review.pages import StudyPage, WorklistPage

    uid = world.studies["bmode"]
    worklist = WorklistPage(client, refresh_seconds=0)
    study = StudyPage(client, uid, renew_seconds=3600, refresh_seconds=0)
    try:

        def row() -> dict[str, Any]:
            [found] = [r for r in worklist.table.rows if r["study_instance_uid"] == uid]
            return found

        assert worklist.table.user == ME  # the browser offers Release on her rows only
        worklist.table.action = {"kind": "claim", "study": uid, "n": 1}  # as the browser does
        assert world.detail("bmode")["claim"]["reviewer"] == ME
        assert row()["claim"] == ME == worklist.table.user

        worklist.table.action = {"kind": "release", "study": uid, "n": 2}
        said = html.unescape(worklist.message.value)
        assert "Study released: other reviewers may claim it." in said, said
        assert world.detail("bmode")["claim"] is None and row()["claim"] == ""
        study.claim_button.click()
        study.release_button.click()  # the same words on the study page
        assert "Study released: other reviewers may claim it." in html.unescape(study.message.value)

        worklist.table.action = {"kind": "claim", "study": uid, "n": 3}
        with monkeypatch.context() as patch:
            patch.setattr(client, "release", raising(RuntimeError("boom")))
            worklist.table.action = {"kind": "release", "study": uid, "n": 4}
        said = worklist.message.value
        assert "Not done (release): unexpected error (RuntimeError: boom)" in said, said
        assert world.detail("bmode")["claim"]["reviewer"] == ME  # still hers
        worklist.table.action = {"kind": "release", "study": uid, "n": 5}
        assert world.detail("bmode")["claim"] is None

        other = world.hub.add_person("ada", "reviewer")  # a row another reviewer holds
        assert world.hub.request("POST", f"/studies/{uid}/claim", other).status_code == 200
        worklist.refresh()
        assert row()["claim"] == "ada"  # no Release in the browser; a stale one is refused
        worklist.table.action = {"kind": "release", "study": uid, "n": 6}
        assert "Not released: " in worklist.message.value, worklist.message.value
        assert world.detail("bmode")["claim"]["reviewer"] == "ada"
        assert world.hub.request("DELETE", f"/studies/{uid}/claim", other).status_code == 204
    finally:
        worklist.close()
        study.close()


def test_switching_instances_leaves_one_results_callback_per_live_viewer(
    world: World, client: Any
) -> None:
    from usreview.review.pages import StudyPage

    page = StudyPage(client, world.studies["bmode"], renew_seconds=3600, refresh_seconds=0)
    try:
        assert page.loading is not None
        page.loading.join(30)  # the first viewer, completed once the instance arrived
        assert len(page.results._observers) == 1
        [uid] = page.records
        viewers = []
        for _ in range(6):  # the reviewer clicks the thumbnail again and again
            page.show(uid)
            viewers.append(page.viewer_box.children[0])
            assert len(page.results._observers) == 1
        assert all(v.comm is None for v in viewers[:-1]) and viewers[-1].comm is not None
    finally:
        page.close()


def test_back_to_the_worklist_keeps_a_draft_and_releases_the_claim(
    world: World, client: Any
) -> None:
    from usreview.review.pages import WorklistPage

    uid = world.studies["bmode"]
    worklist = WorklistPage(client, refresh_seconds=0)
    try:
        worklist.open_study(uid)
        study = worklist._study
        assert study is not None and study.form is not None
        study.claim_button.click()
        assert world.detail("bmode")["claim"]["reviewer"] == ME
        study.form.impression.value = "Hypoechoic lesion, 12 mm."
        back = worklist.children[0].children[1]
        assert "usreview-back" in back._dom_classes
        back.click()
        assert worklist.children[0] is worklist._list_view
        assert world.detail("bmode")["claim"] is None
        said = worklist.message.value
        assert "kept as a draft" in said and "Study released" in said, said

        worklist.open_study(uid)  # the same session: the draft is back
        again = worklist._study
        assert again is not None and again.form is not None
        assert again.form.impression.value == "Hypoechoic lesion, 12 mm."
        assert "not published yet" in again.message.value
        again.form.impression.value = ""  # nothing left unsent: no draft, nothing to say
        worklist.show_list()
        assert worklist.message.value == ""
        worklist.open_study(uid)
        assert worklist._study is not None and worklist._study.form is not None
        assert worklist._study.form.impression.value == ""
    finally:
        worklist.close()
        if worklist._study is not None:
            worklist._study.close()


def test_every_button_says_what_went_wrong_even_unexpectedly(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.review.pages import StudyPage

    uid = world.studies["bmode"]
    assert world.hub.request("DELETE", f"/studies/{uid}/claim", world.rev).status_code == 204
    page = StudyPage(client, uid, renew_seconds=3600)
    try:
        form = page.form
        assert form is not None
        with monkeypatch.context() as patch:
            patch.setattr(client, "claim", raising(OSError(101, "Network is unreachable")))
            page.claim_button.click()
        assert "Not claimed: unexpected error (OSError: [Errno 101] Network is unreachable)" in (
            page.message.value
        )
        with monkeypatch.context() as patch:  # never published: refused at once, not asked
            patch.setattr(client, "mark_teaching", raising(ssl.SSLError("bad record mac")))
            page.teaching_button.click()
        assert "Not made a teaching case: publish its report first" in page.message.value
        assert page.teaching_button.description == "Make teaching case"

        form.impression.value = "No focal lesion."
        form.publish_button.click()  # refused by the service: not claimed
        assert "Not published: claim study" in form.status.value
        assert not form.publish_button.disabled and form.publish_button.description == (
            "Publish report"
        )

        page.claim_button.click()
        assert "You hold this study" in page.message.value
        with monkeypatch.context() as patch:
            patch.setattr(client, "release", raising(RuntimeError("boom")))
            page.release_button.click()
        assert "Not released: unexpected error (RuntimeError: boom)" in page.message.value

        with monkeypatch.context() as patch:  # nothing went out, and the page finds so
            patch.setattr(client, "publish", raising(TimeoutError("timed out")))
            form.publish_button.click()
        assert "unexpected error (TimeoutError: timed out)" in form.status.value
        assert "No new version was recorded" in form.status.value
        assert not form.publish_button.disabled
        assert world.detail("bmode")["reports"] == []

        real = client.publish

        def lost_answer(uid: str, body: dict[str, Any]) -> dict[str, Any]:
            real(uid, body)
            raise TimeoutError("timed out")

        with monkeypatch.context() as patch:  # it went out; the answer was lost
            patch.setattr(client, "publish", lost_answer)
            form.publish_button.click()
        assert 'data-version="1"' in form.status.value, form.status.value
        assert "Report version 1 published" in page.message.value
        assert form.publish_button.disabled and claimant(page) == "nobody"

        with monkeypatch.context() as patch:  # published: asked, then made, unexpectedly not
            patch.setattr(client, "mark_teaching", raising(ssl.SSLError("bad record mac")))
            page.teaching_button.click()
            page.teaching_button.click()
        assert "Not made a teaching case: unexpected error (SSLError:" in page.message.value
    finally:
        page.close()
    assert [r["version"] for r in world.detail("bmode")["reports"]] == [1]


# -- a study open during a live exam ------------------------------------------------------


def send(world: World, path: Path, study: str | None = None) -> str:
    """Upload the simulated instance at ``path`` as the site does, into ``study`` (the
    patient and study of the live exam) if given; its SOP Instance UID."""
    if study is not None:
        dataset = pydicom.dcmread(path)
        first = pydicom.dcmread(world.folder / "live" / "first.dcm", stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            if keyword in first:
                setattr(dataset, keyword, first.data_element(keyword).value)
        dataset.StudyInstanceUID = study
        dataset.save_as(path)
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    sealed = path.with_suffix(".env")
    seal_file(path, sealed, sender=world.site.keys, recipients=[world.hub_public])
    uid = str(dataset.SOPInstanceUID)
    stored = world.hub.upload(uid, sealed.read_bytes(), world.site.token, ENVELOPE)
    assert stored.status_code == 201, stored.text
    return uid


def within(seconds: float, what: str, predicate: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def live(world: World) -> str:
    """A Doppler study of its own, processed: the exam goes on while it is open."""
    from usreview.simulate import simulate

    [path] = simulate("pw", world.folder / "live", seed=41)
    path = path.rename(path.with_name("first.dcm"))
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    send(world, path)
    world.studies["live"] = uid
    within(120, "the live study processed", lambda: world.detail("live")["status"] == "processed")
    return uid


def processing(page: Any, sop_instance_uid: str) -> str:
    """The results panel's processing line for one instance."""
    for section in page.results.children:
        parts = getattr(section, "children", ())
        if parts and sop_instance_uid in getattr(parts[0], "value", ""):
            return str(parts[1].value)
    return ""


def test_an_open_study_shows_what_arrives_and_keeps_what_the_reviewer_did(
    world: World, client: Any, live: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.review.pages import StudyPage
    from usreview.simulate import simulate

    answers: list[int] = []
    request = client._request

    def counted(method: str, path: str, **kwargs: Any) -> Any:
        response = request(method, path, **kwargs)
        if path == f"/studies/{live}":
            answers.append(response.status)
        return response

    monkeypatch.setattr(client, "_request", counted)
    page = StudyPage(client, live, renew_seconds=3600, refresh_seconds=0.2)
    try:
        form = page.form
        assert form is not None and page.loading is not None
        page.loading.join(30)
        viewer = page.viewer_box.children[0]
        [first] = page.records
        shown = dict(page.thumbnails)
        page.claim_button.click()
        form.impression.value = "Exam in progress: no stenosis so far."
        quantity = page.results._rows[0].quantity["name"]
        page.results.decide(quantity, "accept")
        mine = {"name": "Distance", "value": 12.5, "unit": "mm", "code": None,
                "source_instance": first, "points": [[10, 10], [40, 30]]}  # fmt: skip
        assert page.results.add_measurement(mine, label="Plaque")
        before = page.results.measurements()
        within(10, "an unchanged study answered 304", lambda: 304 in answers)

        [path] = simulate("bmode", world.folder / "live-2", seed=42)
        new = send(world, path, live)
        within(20, "the new thumbnail", lambda: new in page.thumbnails)
        within(5, "the banner", lambda: "1 new instance" in page.news.value)
        assert re.search(r"New at \d\d:\d\d UTC: ", page.news.value), page.news.value
        assert [*page.thumbnail_box.children] == [*shown.values(), page.thumbnails[new]]
        assert all(page.thumbnails[uid] is box for uid, box in shown.items())  # not reloaded
        assert processing(page, new)  # its results (or that they are coming)
        assert new in {uid for _, uid in form.key_images.options}
        # what the reviewer was doing is as she left it
        assert form.impression.value == "Exam in progress: no stenosis so far."
        assert page.viewer_box.children[0] is viewer
        assert page.results.measurements() == before
        assert claimant(page) == "you"
        within(60, "the new instance processed", lambda: "done" in processing(page, new)
               or "nothing to measure" in processing(page, new))  # fmt: skip
        assert page.results.measurements() == before
        assert form.impression.value == "Exam in progress: no stenosis so far."
    finally:
        page.leave()  # releases her claim


def test_the_results_line_follows_processing_and_a_failed_read_is_one_line(
    world: World, client: Any, live: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.review.pages import StudyPage
    from usreview.simulate import simulate

    page = StudyPage(client, live, renew_seconds=3600, refresh_seconds=0.1)
    try:
        [path] = simulate("pw", world.folder / "live-3", seed=43)
        new = send(world, path, live)
        # The refresh thread knows the instance (page.records) just before it draws its line.
        within(20, "the new instance's processing line", lambda: processing(page, new) != "")
        first_seen = processing(page, new)
        # seen at once, before the worker (which looks for jobs every second) is done
        assert "queued" in first_seen or "running" in first_seen, first_seen
        within(60, "its results", lambda: "Automatic processing done." in processing(page, new))
        within(5, "the banner", lambda: "results ready for 1 instance" in page.news.value)
        assert any(row.source_instance == new for row in page.results._rows)

        said = page.message.value
        with monkeypatch.context() as patch:  # the service is away: said, and tried again
            patch.setattr(client, "study", raising(OSError(111, "Connection refused")))
            within(5, "the note", lambda: "Connection refused" in page.stale.value)
            assert "Not up to date since" in page.stale.value and page.message.value == said
            assert re.search(r"since \d\d:\d\d UTC: ", page.stale.value), page.stale.value
        within(5, "the note gone", lambda: page.stale.value == "")
    finally:
        page.close()


# -- times, claims and teaching cases, as the pages say them -------------------------------

#: A claim's end as the pages say it: HH:MM UTC, after its date when that is another day
#: (a run near midnight UTC).
TODAY = r"(?:\d{4}-\d\d-\d\d )?\d\d:\d\d UTC"


def test_times_are_to_the_minute_and_say_utc() -> None:
    from usreview.review.pages import _worklist_row
    from usreview.review.widgets.worklist import normalise_rows
    from usreview.review.wording import utc as _utc

    sent = "2024-03-14T14:05:09.123456Z"  # as the service sends times
    assert _utc(sent) == "2024-03-14 14:05 UTC"
    assert _utc("2024-03-14T16:05:09+02:00") == "2024-03-14 14:05 UTC"
    assert _utc(sent, short=True) == "2024-03-14 14:05 UTC"  # not today: the date too
    assert _utc("2024-03-14") == "2024-03-14" and _utc("not a time at all") == "not a time at all"
    assert _utc(None) == ""
    row = _worklist_row({"study_instance_uid": "1.2", "received_at": sent, "status": "processed"})
    [shown] = normalise_rows([row])
    assert shown["received_at"] == "2024-03-14 14:05"  # its column says UTC
    assert shown["received_ms"] == 1710425100000  # the waiting time still reads it


def test_what_a_teaching_case_left_out_is_said() -> None:
    from usreview.review.pages import _teaching_said

    case = {"instances": [{}, {}], "refused": ["instance 3 of 3: no ultrasound regions"]}
    made = _teaching_said(case, made=True)
    assert made.startswith("Teaching case made: 2 de-identified instances for trainees.")
    assert "Left out: instance 3 of 3: no ultrasound regions." in made
    assert "Check its images" in made
    earlier = _teaching_said({"instances": [{}], "refused": []}, made=False)
    assert earlier.startswith(
        "This study's teaching case (made earlier) is up to date: 1 de-identified instance."
    )
    assert "Left out" not in earlier


def test_claims_say_until_when_in_utc(world: World, client: Any) -> None:
    from usreview.review.pages import StudyPage, WorklistPage

    uid = world.studies["pw"]
    other = world.hub.add_person("oli", "reviewer")
    assert world.hub.request("POST", f"/studies/{uid}/claim", other).status_code == 200
    worklist = WorklistPage(client, refresh_seconds=0)
    page = StudyPage(client, uid, renew_seconds=3600, refresh_seconds=0)
    try:
        [received] = [c for c in worklist.table.columns if c["key"] == "received_at"]
        assert received["label"] == "Received (UTC)"
        times = [r["received_at"] for r in worklist.table.rows]
        assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", t) for t in times)
        assert "usreview · Worklist" in worklist._list_view.children[0].value
        worklist.claim(uid)  # oli holds it
        said = worklist.message.value
        assert re.search(rf"Not claimed: claimed by oli until {TODAY}<", said), said
        assert re.search(rf"claimed by <b class='usreview-claimant'>oli</b> until {TODAY}<",
                         page.header.value), page.header.value  # fmt: skip
        form = page.form
        assert form is not None and form.publish_button.disabled  # oli holds it
        assert re.search(rf"oli holds this study until {TODAY}: you may publish", form.status.value)
        form.publish_button.click()  # does nothing while locked
        assert "Publishing" not in form.status.value and "Not published" not in form.status.value
        page.claim_button.click()
        said = page.message.value
        assert re.search(rf"Not claimed: claimed by oli until {TODAY}<", said), said
        assert form.publish_button.disabled
        assert world.hub.request("DELETE", f"/studies/{uid}/claim", other).status_code == 204
        page.refresh()  # oli released it: the form is as it was before
        assert claimant(page) == "nobody" and "oli holds" not in form.status.value
        assert form.publish_button.disabled == (form.locked is not None)
        assert "oli holds" not in (form.locked or "")

        worklist.claim(uid)
        said = worklist.message.value
        assert re.search(rf"You hold this study until {TODAY}\.<", said), said
        page.claim_button.click()  # renewed
        said = page.message.value
        assert re.search(rf"You hold this study until {TODAY}; this page renews", said), said
        assert re.search(rf"'usreview-claimant'>you</b> until {TODAY}<", page.header.value)
        page.release_button.click()
        assert claimant(page) == "nobody" and " until " not in page.header.value
    finally:
        worklist.close()
        page.close()


def test_making_a_teaching_case_asks_first_and_says_whether_it_was_made_now(
    world: World, client: Any
) -> None:
    from usreview.review.pages import StudyPage

    uid = world.studies["pw"]  # published
    page = StudyPage(client, uid, renew_seconds=3600, refresh_seconds=0)
    try:
        before = page.message.value
        page.teaching_button.click()  # asks: patient images are copied for trainees
        assert page.teaching_button.description == (
            "Click again to make de-identified copies for trainees"
        )
        assert page.message.value == before
        assert world.hub.get("/teaching", world.rev).json() == {"cases": []}
        page.teaching_button.click()
        said = page.message.value
        assert "Teaching case made: 1 de-identified instance for trainees." in said, said
        assert "Check its images" in said and "Left out" not in said
        [case] = world.hub.get("/teaching", world.rev).json()["cases"]
        assert f'href="teaching.ipynb?case={case["case_uid"]}"' in said
        assert page.teaching_button.description == "Make teaching case"

        page.teaching_button.click()
        page.teaching_button.click()  # the study's case already
        said = html.unescape(page.message.value)
        assert "This study's teaching case (made earlier) is up to date" in said, said
        assert "Teaching case made" not in said
        assert len(world.hub.get("/teaching", world.rev).json()["cases"]) == 1
    finally:
        page.close()


def test_the_teaching_page_says_an_unexpected_failure_and_keeps_one_callback_per_viewer(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Voila shows no traceback: an image the viewer cannot decode is one line (and
    logged); showing instances again and again leaves the practice panel one callback."""
    from usreview.review.teaching import TeachingPage

    [case] = world.hub.get("/teaching", world.rev).json()["cases"]  # made above
    page = TeachingPage(client, case["case_uid"])
    try:
        assert page.practice is not None and page.viewer.children
        [record] = case["instances"]
        for _ in range(5):
            page.show(case["case_uid"], record)
            assert len(page.practice._observers) == 1
        shown = page.viewer.children
        with monkeypatch.context() as patch:
            patch.setattr(client, "teaching_instance", raising(ValueError("bad JPEG 2000 frame")))
            page.show(case["case_uid"], record)
        said = page.message.value
        assert "Cannot show this image: unexpected error (ValueError: bad JPEG 2000 frame)" in (
            said
        ), said
        assert "usreview-message" in said and "#b00020" in said  # as an error
        assert page.viewer.children == shown  # the viewer stays as it was
        logged = [r for r in caplog.records if r.exc_info and "Cannot show this image" in r.message]
        assert logged and logged[0].exc_info is not None
        assert isinstance(logged[0].exc_info[1], ValueError)
    finally:
        page.close()


def test_the_teaching_page_says_loading_and_forgets_an_old_error(
    world: World, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download says "Loading the image…" first; the red line of a download that failed
    goes once an image shows or a case opens (it was left above the working viewer)."""
    from usreview.errors import ReviewError
    from usreview.review.teaching import TeachingPage

    [case] = world.hub.get("/teaching", world.rev).json()["cases"]  # made above
    page = TeachingPage(client, case["case_uid"])
    try:
        [record] = case["instances"]
        said_while_loading: list[str] = []
        download = client.teaching_instance

        def slow_download(*args: Any) -> Any:
            said_while_loading.append(page.message.value)
            return download(*args)

        monkeypatch.setattr(client, "teaching_instance", slow_download)
        page.show(case["case_uid"], record)
        assert len(said_while_loading) == 1 and "Loading the image…" in said_while_loading[0]
        assert page.message.value == "" and page.viewer.children
        timed_out = ReviewError("the usreview service does not answer (timed out)")
        for opened_again in (lambda: page.show(case["case_uid"], record),
                             lambda: page.open_case(case["case_uid"])):  # fmt: skip
            with monkeypatch.context() as patch:
                patch.setattr(client, "teaching_instance", raising(timed_out))
                page.show(case["case_uid"], record)
            assert "Cannot show this image: the usreview service does not answer (timed out)" in (
                page.message.value
            )
            opened_again()  # it shows now
            assert page.message.value == "" and page.viewer.children
        with monkeypatch.context() as patch:  # a case that opens, its image failing
            patch.setattr(client, "teaching_instance", raising(timed_out))
            page.open_case(case["case_uid"])
        assert "timed out" in page.message.value and "Loading" not in page.message.value
    finally:
        page.close()

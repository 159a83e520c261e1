"""The two dashboards, as composite widgets the notebooks display.

``notebooks/worklist.ipynb`` shows :func:`worklist_page`, ``notebooks/study.ipynb``
shows :func:`study_page` for ``?study=UID``. Both run in the reviewer's Voila kernel and
call the service as the reviewer (:class:`~usreview.review.client.ReviewClient`).

- :class:`WorklistPage`: every study the reviewer may read, from every site, refreshed
  every few seconds once a browser shows it; *Claim* takes a study (another reviewer's
  claim is refused with who holds it and until when), *Release* (on the rows the reviewer
  holds) gives it back, *Open* shows it in place.
- :class:`StudyPage`: the patient's prior studies at the site (each a link to its own
  page), the study's instances as thumbnails, a viewer for the selected one
  (:func:`viewer_for`), the study-level evaluation (decision support) above the
  automatic results to accept, correct or reject
  (:class:`~usreview.review.results.ResultsPanel`), the published versions and the report
  form (:class:`~usreview.review.form.ReportForm`, filled from the latest version to amend).
  *Claim* and *Release* take and give back the study; the page renews the reviewer's
  claim while it is open. It reads the study again every few seconds (a live exam):
  new instances come as new thumbnails, finished processing as results, and the header
  shows the status and who holds the claim; a line says what is new. What the reviewer
  is doing stays: the viewer, the form's text, the decisions on the results and her own
  measurements. A read that fails is said in one discreet line, and tried again. A
  publication releases the claim (the service does): the page reads the study again,
  stops renewing and locks the form until the study is claimed again. While another
  reviewer holds the study, the form is locked too and says who and until when.
  *Back to worklist*
  (:meth:`StudyPage.leave`) releases the claim and keeps unsent text as a draft, per
  study, for the rest of the session (the kernel). *Make teaching case* asks for a second
  click (patient images are copied for trainees), then says whether the case was made now
  or earlier, what was left out, and that its images are to be checked.

Every button says what happened, in the page's message: a refusal with the service's
words, anything unexpected as one line (and logged), since Voila shows no tracebacks.
Times are to the minute in UTC, and say so (``2024-03-14 14:05 UTC``, ``until 14:05
UTC``; in a table, the column's heading): the kernel cannot know the reviewer's time zone.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote

import ipywidgets as w

from usreview.errors import UsreviewError
from usreview.review.client import ClaimedError, ReviewClient, ServiceError
from usreview.review.form import ReportForm
from usreview.review.results import ResultsPanel
from usreview.review.wording import one_line, utc

if TYPE_CHECKING:  # the worklist opens fast: DICOM and processing load with a study
    from usreview.dicom import UltrasoundInstance

__all__ = [
    "REFRESH_SECONDS",
    "RENEW_SECONDS",
    "StudyPage",
    "WorklistPage",
    "query_value",
    "study_page",
    "worklist_page",
]

REFRESH_SECONDS: Final = 5.0
#: How often an open study renews its reviewer's claim (claims last 20 minutes by default).
RENEW_SECONDS: Final = 240.0
_log = logging.getLogger(__name__)
_THUMB: Final = 96
#: Unsent reports left with *Back to worklist*, by study UID, for this kernel's session.
_DRAFTS: dict[str, dict[str, Any]] = {}
_MAKE_TEACHING: Final = "Make teaching case"
_CONFIRM_TEACHING: Final = "Click again to make de-identified copies for trainees"
#: What *Release* says, on the worklist as on the study page.
_RELEASED: Final = "Study released: other reviewers may claim it."


def query_value(name: str, query: str | None = None) -> str | None:
    """The parameter ``name`` of the page's query string (Voila's ``$QUERY_STRING``):
    ``study`` on the study page, ``case`` on the teaching page."""
    values = parse_qs(query if query is not None else os.environ.get("QUERY_STRING", ""))
    found = values.get(name)
    return found[0] if found else None


def _me() -> str:
    return os.environ.get("JUPYTERHUB_USER", "")


def _title(page: str) -> w.HTML:
    return w.HTML(
        '<div class="usreview-title" style="display:flex;justify-content:space-between;'
        'align-items:baseline;border-bottom:2px solid #1565c0;margin-bottom:6px">'
        f"<h2 style='margin:4px 0'>usreview · {html.escape(page)}</h2>"
        f"<span>Signed in as <b>{html.escape(_me())}</b></span></div>"
    )


def _until(claim: Mapping[str, Any] | None) -> str:
    """`` until 14:05 UTC``: when a claim (the service's ``Claim``) ends, or ""."""
    expires = utc((claim or {}).get("expires_at"), short=True)
    return f" until {expires}" if expires else ""


def _refused_claim(exc: ServiceError) -> str:
    """Why a claim was refused: who holds the study and until when (a 409 ``claimed``
    carries the claim), else the service's words."""
    claim = exc.body.get("claim") if isinstance(exc, ClaimedError) else None
    if isinstance(claim, Mapping) and claim.get("reviewer"):
        return f"claimed by {claim['reviewer']}{_until(claim)}"
    return str(exc)


#: The worklist's *Received* column, whose times (:func:`_worklist_row`) do not say the zone.
_RECEIVED_HEADING: Final = "Received (UTC)"


def _worklist_row(study: Mapping[str, Any]) -> dict[str, Any]:
    """A study of ``GET /studies`` as a worklist row: times to the minute, in UTC (the
    column says so: the table reads the waiting time from this text, which must stay ISO
    8601), the claim as the name of the reviewer who holds it."""
    row = dict(study)
    for key in ("received_at", "updated_at"):
        row[key] = utc(row.get(key), zone=False)
    claim = row.get("claim")
    if isinstance(claim, Mapping):
        row["claim"] = claim.get("reviewer") or ""
    return row


def _banner(text: str, *, error: bool = False, link: tuple[str, str] | None = None) -> str:
    """A page's message; ``link``: ``(href, text)`` of a link after it (in a new tab)."""
    colour = "#b00020" if error else "#1b5e20"
    after = (
        f' <a href="{html.escape(link[0])}" target="_blank" rel="noopener">'
        f"{html.escape(link[1])}</a>"
        if link
        else ""
    )
    return f'<div class="usreview-message" style="color:{colour}">{html.escape(text)}{after}</div>'


def _unexpected(exc: BaseException) -> str:
    """An exception nobody foresaw, as one line of a message (the traceback is logged)."""
    return f"unexpected error ({one_line(exc)})"


def _guarded(message: w.HTML, failure: str, action: Callable[[], None]) -> Callable[..., None]:
    """A button's (or observer's) handler running ``action``: what it did not foresee is
    logged and said in ``message`` as ``failure: unexpected error (...)``."""

    def handle(*_: Any) -> None:
        try:
            action()
        except Exception as exc:  # Voila hides tracebacks: the reviewer must be told
            _log.exception("%s", failure)
            message.value = _banner(f"{failure}: {_unexpected(exc)}", error=True)

    return handle


class WorklistPage(w.VBox):  # type: ignore[misc]
    """The worklist, its messages and, once a study is opened, that study in place."""

    def __init__(self, client: ReviewClient, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        from usreview.review.widgets import WorklistTable

        self.client = client
        self.message = w.HTML()
        self.table = WorklistTable(rows=[], user=_me())  # her rows offer Release
        self.table.observe(self._on_action, "action")
        self.table.on_shown(self._on_shown)
        self._stop = threading.Event()
        self._following = False
        self._refresh_seconds = refresh_seconds
        self._study: StudyPage | None = None
        self.table.columns = [
            dict(c, label=_RECEIVED_HEADING) if c["key"] == "received_at" else c
            for c in self.table.columns
        ]
        self._list_view = w.VBox([_title("Worklist"), self.message, self.table])
        super().__init__([self._list_view])
        self.add_class("usreview-worklist-page")
        self.refresh()
        threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()

    def _on_shown(self) -> None:
        """A browser shows the list: catch up, then refresh every few seconds.

        A warm kernel (:mod:`usreview.hub.kernel_pool`) builds this page before anyone asks
        for it; until someone sees it, it does not poll the service.
        """
        self.refresh()
        if self._refresh_seconds > 0 and not self._following:
            self._following = True
            self.client.thread(self._refresh_loop, name="worklist")

    def refresh(self) -> None:
        """Read the studies again (sort and filters are kept)."""
        try:
            # normalised once, by the table; unchanged rows send nothing to the browser
            self.table.rows = [_worklist_row(s) for s in self.client.studies()]
        except UsreviewError as exc:
            self.message.value = _banner(f"Cannot read the worklist: {exc}", error=True)
        except Exception as exc:
            _log.exception("reading the worklist failed")
            self.message.value = _banner(
                f"Cannot read the worklist: {_unexpected(exc)}", error=True
            )

    def close(self) -> None:
        """Stop refreshing, and the open study's threads (its claim stays until it expires)."""
        self._stop.set()
        if self._study is not None:
            self._study.close()
        super().close()

    def show_list(self) -> None:
        """Back from a study to the list: the study is left (:meth:`StudyPage.leave`: its
        claim released, unsent text kept as a draft), and the list says so."""
        said, error = "", False
        if self._study is not None:
            study, self._study = self._study, None
            said, error = study.leave()
        self.children = [self._list_view]
        self.message.value = ""
        self.refresh()
        if said and not self.message.value:
            self.message.value = _banner(said, error=error)

    def open_study(self, uid: str) -> None:
        """Show one study in place of the list."""
        back = w.Button(description="Back to worklist", icon="arrow-left")
        back.add_class("usreview-back")
        self._study = StudyPage(self.client, uid)
        back.on_click(_guarded(self._study.message, "Not back to the worklist", self.show_list))
        self.children = [w.VBox([_title("Study"), back, self._study])]

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            if self.children and self.children[0] is self._list_view:
                try:
                    self.refresh()
                except Exception:  # a kernel thread must not die on one bad refresh
                    _log.exception("worklist refresh failed")

    def _on_action(self, change: dict[str, Any]) -> None:
        action = change["new"] or {}
        uid = action.get("study")
        if not uid:
            return
        kind = action.get("kind")
        try:
            if kind == "claim":
                self.claim(uid)
            elif kind == "release":
                self.release(uid)
            elif kind == "open":
                self.open_study(uid)
        except Exception as exc:  # Voila hides tracebacks: the reviewer must be told
            _log.exception("worklist action %s on %s failed", kind, uid)
            self.children = [self._list_view]
            self.message.value = _banner(f"Not done ({kind}): {_unexpected(exc)}", error=True)

    def claim(self, uid: str) -> None:
        """Claim a study and say so (or who holds it)."""
        try:
            claim = self.client.claim(uid)
        except ServiceError as exc:
            self.message.value = _banner(f"Not claimed: {_refused_claim(exc)}", error=True)
        except UsreviewError as exc:
            self.message.value = _banner(f"Not claimed: {exc}", error=True)
        else:
            self.message.value = _banner(f"You hold this study{_until(claim)}.")
        self.refresh()

    def release(self, uid: str) -> None:
        """Give a study the reviewer holds back (a row's *Release*), and say so."""
        try:
            self.client.release(uid)
        except UsreviewError as exc:
            self.message.value = _banner(f"Not released: {exc}", error=True)
        else:
            self.message.value = _banner(_RELEASED)
        self.refresh()


class StudyPage(w.VBox):  # type: ignore[misc]
    """One study: thumbnails, the selected instance's viewer, results, versions, report."""

    def __init__(
        self,
        client: ReviewClient,
        study_instance_uid: str,
        *,
        renew_seconds: float = RENEW_SECONDS,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        """``refresh_seconds``: how often the study is read again while the page is
        open (0: never; it is then read again only after the page's own actions)."""
        self.client = client
        self.uid = study_instance_uid
        self._closed = threading.Event()
        self._renew_seconds = renew_seconds
        self._refresh_seconds = refresh_seconds
        #: Held while the claim is renewed, published on or released (one at a time).
        self._claiming = threading.Lock()
        #: Counts the page's own changes of ``study["claim"]`` (under ``_claiming``): a
        #: read that began before one is not shown (the next one is).
        self._changes = 0
        #: Held while a new reading of the study is shown (one at a time), and while a
        #: publication collects the results' decisions.
        self._showing = threading.Lock()
        #: Readings begun (under ``_claiming``) and the last one shown: an older reading
        #: that finishes after a newer one is not shown over it.
        self._readings = self._shown = 0
        #: While another reviewer holds the study, the form's lock before it (see
        #: :meth:`_follow_holder`): a list of one reason (or ``None``), else empty.
        self._lock_before_other: list[str | None] = []
        self.message = w.HTML()
        #: What came since the page was opened (new instances, results, claim, versions).
        self.news = w.HTML()
        self.news.add_class("usreview-news")
        #: One discreet line while the study cannot be read again.
        self.stale = w.HTML()
        self.stale.add_class("usreview-stale")
        self.viewer_box = w.VBox([w.HTML("<i>Choose an image.</i>")])
        self.viewer_box.add_class("usreview-viewer")
        self.instances: dict[str, UltrasoundInstance] = {}
        self.thumbnails: dict[str, w.VBox] = {}
        self.form: ReportForm | None = None
        #: The thread downloading the instance shown last (``None`` if it was there).
        self.loading: threading.Thread | None = None
        try:
            self.study = client.study(study_instance_uid)
        except Exception as exc:
            if not isinstance(exc, UsreviewError):
                _log.exception("opening study %s failed", study_instance_uid)
            said = str(exc) if isinstance(exc, UsreviewError) else _unexpected(exc)
            self.study = {}
            super().__init__([_error_html(f"Cannot open the study: {said}")])
            return
        records = [i for s in self.study["series"] for i in s["instances"]]
        self.records = {r["sop_instance_uid"]: r for r in records}
        self.results = ResultsPanel(records, evaluation=self.study.get("study_evaluation"))
        self.form = ReportForm(
            key_images=[_key_image(r) for r in records],
            sites=self._other_sites(),
            exam_type=_exam_type(records),
            on_publish=self._publish,
        )  # fmt: skip
        self.header = w.HTML()
        self.claim_button = w.Button(description="Claim", icon="lock")
        self.claim_button.add_class("usreview-claim")
        self.claim_button.on_click(_guarded(self.message, "Not claimed", self._claim))
        self.release_button = w.Button(
            description="Release", icon="unlock", tooltip="Give the study back to the worklist"
        )
        self.release_button.add_class("usreview-release")
        self.release_button.on_click(_guarded(self.message, "Not released", self._release))
        self.teaching_button = w.Button(
            description=_MAKE_TEACHING,
            icon="graduation-cap",
            tooltip="De-identified copies for trainees (published studies only; a second "
            "click confirms)",
            layout=w.Layout(width="auto"),
        )
        #: Whether a first click on *Make teaching case* asked for a second one.
        self._confirming_teaching = False
        self.teaching_button.add_class("usreview-make-teaching")
        self.teaching_button.on_click(
            _guarded(self.message, "Not made a teaching case", self._make_teaching)
        )
        self.versions = w.HTML()
        self.versions.add_class("usreview-versions")
        self._render_header()
        self._render_versions()
        self._fill_form()
        self.priors = self._priors()
        self.thumbnails = {r["sop_instance_uid"]: self._thumbnail(r) for r in records}
        self.thumbnail_box = w.HBox(list(self.thumbnails.values()))
        self.thumbnail_box.add_class("usreview-thumbnails")
        super().__init__(
            [
                w.HBox([self.header, self.claim_button, self.release_button, self.teaching_button]),
                self.message,
                self.news,
                self.stale,
                self.priors,
                self.thumbnail_box,
                w.HBox([self.viewer_box, w.VBox([self.results], layout=w.Layout(width="48%"))]),
                self.versions,
                self.form,
            ]
        )
        self.add_class("usreview-study-page")
        if records:
            self.show(records[0]["sop_instance_uid"])
        self.client.thread(lambda: self._load_thumbnails(list(self.thumbnails)), name="thumbnails")
        self.client.thread(self._keep_claim, name="claim")
        if refresh_seconds > 0:
            self.client.thread(self._follow, name="study")

    def close(self) -> None:
        """Stop renewing the claim (the study stays claimed until it expires or is released)."""
        self._closed.set()
        super().close()

    def leave(self) -> tuple[str, bool]:
        """Leave the study (*Back to worklist*): keep unsent text as a draft (restored
        when the study is opened again in this session), release the reviewer's claim,
        close. What to tell the reviewer, and whether it is an error."""
        said: list[str] = []
        error = False
        self._closed.set()  # no renewal from now on
        if self.form is not None:
            if self.form.unsent:
                _DRAFTS[self.uid] = self.form.values()
                said.append(
                    "Your unsent report is kept as a draft: it is back when you open "
                    "the study again (until this page is reloaded)."
                )
            else:
                _DRAFTS.pop(self.uid, None)
        with self._claiming:
            if self._mine():
                try:
                    self.client.release(self.uid)
                except Exception as exc:
                    if not isinstance(exc, UsreviewError):
                        _log.exception("releasing study %s failed", self.uid)
                    why = str(exc) if isinstance(exc, UsreviewError) else _unexpected(exc)
                    said.append(f"Not released: {why}; it stays claimed until the claim expires.")
                    error = True
                else:
                    self._changes += 1
                    self.study["claim"] = None
                    said.append("Study released.")
        self.close()
        return " ".join(said), error

    def _mine(self) -> bool:
        return bool(self.study) and (self.study.get("claim") or {}).get("reviewer") == _me()

    def _keep_claim(self) -> None:
        """While the page is open, renew the reviewer's own claim before it expires
        (not once published or released: the study is then claimed again explicitly)."""
        while not self._closed.wait(self._renew_seconds):
            with self._claiming:
                if self._closed.is_set() or not self._mine():
                    continue
                self._changes += 1
                try:
                    self.study["claim"] = self.client.claim(self.uid)
                except Exception as exc:  # taken over after expiry, or the service is away
                    if not isinstance(exc, UsreviewError):
                        _log.exception("renewing the claim on %s failed", self.uid)
                    why = str(exc) if isinstance(exc, UsreviewError) else _unexpected(exc)
                    self.study["claim"] = None
                    self.message.value = _banner(f"Your claim lapsed: {why}", error=True)
                self._render_header()  # until when it is held now

    # Actions ---------------------------------------------------------------------------

    def show(self, sop_instance_uid: str) -> None:
        """Show one instance in the viewer that fits its kind.

        An instance not downloaded yet shows at once with its first frame, rendered by
        the service; a background thread downloads it and completes the viewer (a cine
        streams its frames and plays those arrived). The viewer it replaces is closed
        (:func:`~usreview.review.viewers.close_viewer`).
        """
        from usreview.review.viewers import progressive_viewer, viewer_for

        record = self.records[sop_instance_uid]
        try:
            if sop_instance_uid in self.instances:
                instance = self.instances[sop_instance_uid]
                self._view(viewer_for(instance, record, self.results))
                return
            first = self.client.frame(sop_instance_uid)
            progressive = progressive_viewer(record, first, self.results)
        except UsreviewError as exc:
            self._view(_error_html(f"Cannot show this image: {exc}"))
            return
        except Exception as exc:
            _log.exception("showing instance %s failed", sop_instance_uid)
            self._view(_error_html(f"Cannot show this image: {_unexpected(exc)}"))
            return
        self._view(progressive.widget)

        def complete() -> None:
            try:
                progressive.complete(self._instance(sop_instance_uid))
            except UsreviewError as exc:
                if progressive.widget in self.viewer_box.children:
                    self._view(_error_html(f"Cannot show this image: {exc}"))
            except Exception:  # a kernel thread must not die silently
                if self._closed.is_set():
                    return  # the page went away while loading
                _log.exception("loading instance %s failed", sop_instance_uid)
                self._view(_error_html("Cannot show this image."))

        self.loading = self.client.thread(complete, name="instance")

    def _view(self, widget: w.Widget) -> None:
        """Show ``widget`` in the viewer's place, and close the viewer it replaces (its
        *Add to report* bar stops following the results; its images are let go)."""
        from usreview.review.viewers import close_viewer

        shown, self.viewer_box.children = self.viewer_box.children, [widget]
        for old in shown:
            if old is not widget:
                close_viewer(old)

    def _claim(self) -> None:
        with self._claiming:
            self._changes += 1
            try:
                self.study["claim"] = self.client.claim(self.uid)
            except ServiceError as exc:
                self.message.value = _banner(f"Not claimed: {_refused_claim(exc)}", error=True)
                return
            except UsreviewError as exc:
                self.message.value = _banner(f"Not claimed: {exc}", error=True)
                return
            finally:
                self._render_header()
        if self.form is not None:
            self.form.allow()
        amend = " You may publish an amendment." if self.study.get("reports") else ""
        self.message.value = _banner(
            f"You hold this study{_until(self.study['claim'])}; this page renews the claim "
            f"while it is open.{amend}"
        )
        self._reread()  # its status (in review)

    def _release(self) -> None:
        with self._claiming:
            try:
                self.client.release(self.uid)
            except UsreviewError as exc:
                self.message.value = _banner(f"Not released: {exc}", error=True)
                return
            self._changes += 1
            self.study["claim"] = None
        self.message.value = _banner(_RELEASED)
        self._reread()  # its status (processed again)

    def _make_teaching(self) -> None:
        """*Make teaching case*: the first click asks (patient images are copied for
        trainees), the second makes it; the message says what was copied, what was left
        out and that the images are to be checked, with a link to the case. A study
        never published is refused at once (the service would refuse it too)."""
        if not self.study.get("reports"):
            self.message.value = _banner(
                "Not made a teaching case: publish its report first (a teaching case is "
                "made of a published study).",
                error=True,
            )
            return
        if not self._confirming_teaching:
            self._confirming_teaching = True
            self.teaching_button.description = _CONFIRM_TEACHING
            return
        self._confirming_teaching = False
        self.teaching_button.description = _MAKE_TEACHING
        try:
            case, made = self.client.mark_teaching(self.uid)
        except UsreviewError as exc:
            self.message.value = _banner(f"Not made a teaching case: {exc}", error=True)
            return
        self.message.value = _banner(
            _teaching_said(case, made),
            link=(
                f"teaching.ipynb?case={quote(str(case.get('case_uid', '')), safe='')}",
                "Open it on the teaching page",
            ),
        )

    def _publish(self, form: ReportForm) -> None:
        """Publish the form's report; then the study as the service has it (published, the
        claim released: no renewal, and the form locked until the study is claimed again).

        A refusal (4xx) is said with the service's words. Without an answer (no connection,
        time-out, anything unexpected) or with a failure of the service (5xx) the report
        may have gone out: the versions are read again to say which.
        """
        with self._showing:  # not while a new reading rebuilds the results
            body = form.report(self.results.measurements())
        before = {r.get("version") for r in self.study.get("reports") or []}
        with self._claiming:
            try:
                answer = self.client.publish(self.uid, body)
            except ServiceError as exc:
                if exc.status < 500:  # refused (4xx): nothing went out
                    form.failed(str(exc))
                    return
                # The service failed after, or before, recording it: find out which.
                found = self._published_meanwhile(before, str(exc), form)
                if found is None:
                    return
                answer = found
            except Exception as exc:  # no answer: find out whether it went out
                if not isinstance(exc, UsreviewError):
                    _log.exception("publishing a report of %s failed", self.uid)
                why = str(exc) if isinstance(exc, UsreviewError) else _unexpected(exc)
                found = self._published_meanwhile(before, why, form)
                if found is None:
                    return
                answer = found
            self._changes += 1
            self.study["claim"] = None  # the service released it with the publication
        self._reread()
        form.published(answer)
        self._render_header()
        self._render_versions()
        self.message.value = _banner(
            f"Report version {answer['version']} published to {self.study['site']}"
            + (f" and {', '.join(body['recipients'])}" if body["recipients"] else "")
            + "."
        )

    def _published_meanwhile(
        self, before: set[Any], why: str, form: ReportForm
    ) -> dict[str, Any] | None:
        """After a publication without an answer: the new version the service recorded,
        if any (``None``: the form then says that none was, or that this is not known)."""
        try:
            reports = self.client.reports(self.uid)
        except Exception as exc:
            if not isinstance(exc, UsreviewError):
                _log.exception("reading the reports of %s failed", self.uid)
            form.lock("Reload the page and check the published versions first.")
            form.status.value = (
                '<span style="color:#b00020">It is not known whether the report went out '
                f"({html.escape(why)}). Reload the page and check the published versions "
                "before publishing again.</span>"
            )
            return None
        new = [r for r in reports if r.get("version") not in before and r.get("reviewer") == _me()]
        if not new:
            form.failed(f"{why}. No new version was recorded: you may publish again.")
            return None
        return new[-1]

    # Parts -----------------------------------------------------------------------------

    def _instance(self, uid: str) -> UltrasoundInstance:
        if uid not in self.instances:
            self.instances[uid] = self.client.instance(uid)
        return self.instances[uid]

    def _priors(self) -> w.HTML:
        """The patient's prior studies (or why they cannot be shown)."""
        try:
            shown = _priors_html(self.client.priors(self.uid))
        except UsreviewError as exc:
            shown = _banner(f"Cannot read the prior studies: {exc}", error=True)
        priors = w.HTML(f"<b>Prior studies of this patient</b>{shown}")
        priors.add_class("usreview-priors")
        return priors

    def _thumbnail(self, record: Mapping[str, Any]) -> w.Widget:
        uid = record["sop_instance_uid"]
        button = w.Button(description=", ".join(record["kinds"])[:28], tooltip=uid)
        button.add_class("usreview-thumbnail")
        button.on_click(lambda _: self.show(uid))
        placeholder = w.HTML("<i>…</i>", layout=w.Layout(height=f"{_THUMB}px"))
        return w.VBox([placeholder, button], layout=w.Layout(width="140px"))

    def _load_thumbnails(self, uids: Sequence[str]) -> None:
        """Put each instance's first frame, rendered by the service, on its thumbnail."""
        for uid in uids:
            box = self.thumbnails[uid]
            if self._closed.is_set():
                return
            try:
                image: w.Widget = w.Image(value=self.client.frame(uid, rows=_THUMB), format="png")
            except UsreviewError as exc:
                image = _error_html(str(exc))
            except Exception as exc:  # a kernel thread must not die silently
                _log.exception("thumbnail of %s failed", uid)
                image = _error_html(_unexpected(exc))
            box.children = [image, *box.children[1:]]

    def _reread(self) -> None:
        """The study as the service has it now, shown (after one of the page's actions)."""
        self.refresh()

    def refresh(self) -> bool:
        """Read the study again and show what changed (:meth:`_show_changes`); whether
        it could be read. A failure is said in one line (:attr:`stale`), never raised."""
        if self._closed.is_set() or not self.study:
            return False
        with self._claiming:
            changes = self._changes
            self._readings += 1
            reading = self._readings
        try:
            study = self.client.study(self.uid)
        except Exception as exc:
            if self._closed.is_set():
                return False
            if not isinstance(exc, UsreviewError):
                _log.exception("reading study %s again failed", self.uid)
            why = str(exc) if isinstance(exc, UsreviewError) else _unexpected(exc)
            again = (
                f"; trying again every {self._refresh_seconds:g} s"
                if self._refresh_seconds > 0
                else ""
            )
            self.stale.value = (
                '<div style="color:#777;font-size:smaller">'
                f"Not up to date since {_now()}: {html.escape(why)}{again}.</div>"
            )
            return False
        self.stale.value = ""
        with self._showing:
            with self._claiming:
                if self._closed.is_set():
                    return False
                if changes != self._changes:  # the page's own claim changed meanwhile
                    return True  # this reading may not show it; the next one will
                if reading < self._shown:  # a reading begun later is shown already
                    return True
                self._shown = reading
                before, self.study = self.study, study
            self._show_changes(before, study)
        return True

    def _follow(self) -> None:
        """While the page is open, read the study every ``refresh_seconds``."""
        while not self._closed.wait(self._refresh_seconds):
            try:
                self.refresh()
            except Exception:  # a kernel thread must not die on one bad refresh
                _log.exception("refreshing study %s failed", self.uid)

    def _show_changes(self, before: Mapping[str, Any], study: Mapping[str, Any]) -> None:
        """Show ``study`` in place of ``before``: new thumbnails, results in place, the
        header and versions; say what is new in :attr:`news`. The viewer, the form's
        text and the results' decisions and measurements stay."""
        records = [i for s in study.get("series") or [] for i in s["instances"]]
        shown = self.records
        self.records = {r["sop_instance_uid"]: r for r in records}
        new = [r for r in records if r["sop_instance_uid"] not in shown]
        ended = {"done": 0, "failed": 0}
        for record in records:
            old = shown.get(record["sop_instance_uid"])
            status = (record.get("processing") or {}).get("status")
            if old is not None and _pending(old) and status in ended:
                ended[status] += 1
        changed = self.results.update(records, evaluation=study.get("study_evaluation"))
        redone = sum(  # analysed again (a new processor version, say)
            1
            for uid in changed
            if uid in shown and not _pending(shown[uid]) and not _pending(self.records[uid])
        )
        if new:
            self._add_thumbnails(new)
        self._render_header()
        self._render_versions()
        said = []
        if new:
            said.append(_count(len(new), "new instance"))
        if ended["done"]:
            said.append(f"results ready for {_count(ended['done'], 'instance')}")
        if ended["failed"]:
            said.append(f"processing failed for {_count(ended['failed'], 'instance')}")
        if redone > 0:
            said.append(f"new results for {_count(redone, 'instance')}")
        said += _claim_news(before.get("claim"), study.get("claim"))
        versions = {r.get("version") for r in before.get("reports") or []}
        said += [
            f"version {r.get('version')} published by {r.get('reviewer')}"
            for r in study.get("reports") or []
            if r.get("version") not in versions and r.get("reviewer") != _me()
        ]
        if said:
            text = f"New at {_now()}: " + "; ".join(said) + "."
            self.news.value = (
                '<div class="usreview-news-line" style="background:#e3f2fd;border-left:4px '
                f'solid #1565c0;padding:2px 8px;margin:2px 0">{html.escape(text)}</div>'
            )

    def _add_thumbnails(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Thumbnails (and key image choices) for instances that arrived while open."""
        added = {r["sop_instance_uid"]: self._thumbnail(r) for r in records}
        self.thumbnails.update(added)
        self.thumbnail_box.children = [*self.thumbnail_box.children, *added.values()]
        if self.form is not None:
            chosen = self.form.key_images.value
            options = [*self.form.key_images.options, *(_key_image(r) for r in records)]
            self.form.key_images.options = options
            self.form.key_images.value = chosen
            self.form.key_images.rows = min(6, len(options))
        self.client.thread(lambda: self._load_thumbnails(list(added)), name="thumbnails")

    def _fill_form(self) -> None:
        """The draft left with *Back to worklist*, else the latest version (to amend)."""
        assert self.form is not None
        draft = _DRAFTS.pop(self.uid, None)
        reports = self.study.get("reports") or []
        if reports:
            self.form.fill(reports[-1].get("content") or {}, sent=True)
        if draft is not None:
            self.form.fill(draft)
            self.message.value = _banner(
                "Your unsent report is back as you left it: it is not published yet."
            )

    def _render_versions(self) -> None:
        reports = self.study.get("reports") or []
        if not reports:
            self.versions.value = "<b>Published versions</b><div>None yet.</div>"
            return
        rows = []
        for report in reversed(reports):  # newest first
            content = report.get("content") or {}
            cells = (
                f"version {report.get('version')}",
                utc(report.get("published_at"), zone=False),
                report.get("reviewer") or "",
                report.get("urgency") or content.get("urgency") or "",
                content.get("impression") or "",
            )
            rows.append(
                f"<tr data-version='{html.escape(str(report.get('version')))}'>"
                + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                + "</tr>"
            )
        self.versions.value = (
            "<b>Published versions</b> <small>(newest first)</small>"
            "<table style='border-spacing:8px 2px'><tr><th>Version</th><th>Published (UTC)</th>"
            "<th>Reviewer</th><th>Urgency</th><th>Impression</th></tr>" + "".join(rows) + "</table>"
        )

    def _render_header(self) -> None:
        s = self.study
        claim = s.get("claim") or {}
        who = "you" if claim.get("reviewer") == _me() else (claim.get("reviewer") or "nobody")
        self.claim_button.description = "Renew claim" if who == "you" else "Claim"
        self.release_button.disabled = who != "you"
        patient = s.get("patient_name") or "(no name)"
        self.header.value = (
            f"<h2>{html.escape(patient)} <small>{html.escape(s.get('patient_id') or '')}</small>"
            f"</h2><div>{html.escape(s.get('study_description') or 'Ultrasound study')} · "
            f"site <b>{html.escape(s['site'])}</b> · status <b class='usreview-status'>"
            f"{html.escape(s['status'])}</b> · claimed by <b class='usreview-claimant'>"
            f"{html.escape(who)}</b>{html.escape(_until(claim))}</div>"
        )
        self._follow_holder()

    def _follow_holder(self) -> None:
        """Lock the form while another reviewer holds the study (the service would refuse
        the publication), saying who and until when; once they no longer hold it, the
        form is locked or not as it was before."""
        if self.form is None:
            return
        claim = self.study.get("claim") or {}
        holder = claim.get("reviewer")
        if holder and holder != _me():
            if not self._lock_before_other:
                self._lock_before_other.append(self.form.locked)
            reason = (
                f"{holder} holds this study{_until(claim)}: you may publish once you claim "
                "it after they release it."
            )
            if self.form.locked != reason:
                self.form.lock(reason, shown=True)
        elif self._lock_before_other:
            [before] = self._lock_before_other
            self._lock_before_other.clear()
            if before is None:
                self.form.allow()
            else:
                self.form.lock(before, shown=True)

    def _other_sites(self) -> list[str]:
        """The registered sites a report may also go to (the referring clinic)."""
        return sorted(set(self.study.get("known_sites", [])) - {self.study["site"]})


#: Seconds the worklist waits before loading the study viewers' modules in the background.
WARM_UP_DELAY: Final = 1.0


def _warm_up() -> None:
    """Import what opening a study needs (DICOM, processing, viewers: about a second),
    once the worklist is built: a study then opens without waiting for it. In a warm
    kernel (:mod:`usreview.hub.kernel_pool`) this is done before anyone asks for the page."""
    time.sleep(WARM_UP_DELAY)  # the worklist's own messages go first
    try:
        import usreview.review.viewers  # noqa: F401
    except Exception:  # opening a study will say what is wrong
        _log.exception("loading the study viewers failed")


def _priors_html(priors: Sequence[Mapping[str, Any]]) -> str:
    """Prior studies (``GET /studies/{uid}/priors``), one line each, as links to their
    study page (``study.ipynb?study=UID``, beside this page, in a new tab)."""
    if not priors:
        return "<div>No prior study of this patient at the hub.</div>"
    lines = []
    for prior in priors:
        href = html.escape(f"study.ipynb?study={quote(prior['study_instance_uid'], safe='')}")
        parts = (
            prior.get("study_date") or str(prior.get("received_at") or "")[:10],
            prior.get("study_description") or "Ultrasound study",
            prior.get("status"),
            ", ".join(prior.get("kinds") or ()),
        )
        text = html.escape(" · ".join(str(part) for part in parts if part))
        lines.append(f'<li><a href="{href}" target="_blank" rel="noopener">{text}</a></li>')
    return f"<ul style='margin:2px 0'>{''.join(lines)}</ul>"


def _key_image(record: Mapping[str, Any]) -> tuple[str, str]:
    """An instance as a choice of the form's key images: ``(label, SOP Instance UID)``."""
    uid = record["sop_instance_uid"]
    return f"{', '.join(record['kinds'])} {uid[-8:]}", uid


def _pending(record: Mapping[str, Any]) -> bool:
    """Whether the instance's automatic processing has not ended yet."""
    return (record.get("processing") or {}).get("status") in ("queued", "running")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _now() -> str:
    return utc(datetime.now(UTC), short=True)


def _teaching_said(case: Mapping[str, Any], made: bool) -> str:
    """What *Make teaching case* did: the case made now, or the study's case made earlier
    (``made`` false: its words follow the latest report); its copies, what was left out
    and why; and that whoever makes a case checks its images."""
    copies = _count(len(case.get("instances") or []), "de-identified instance")
    said = (
        f"Teaching case made: {copies} for trainees."
        if made
        else f"This study's teaching case (made earlier) is up to date: {copies}."
    )
    refused = [str(r) for r in case.get("refused") or []]
    if refused:
        said += f" Left out: {'; '.join(refused)}."
    return (
        said + " Check its images for text burned into them (text inside the ultrasound "
        "regions is not removed) and withdraw it on the teaching page if you find any."
    )


def _claim_news(before: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[str]:
    """What a change of claim that the page did not make itself says."""
    was, holder = (before or {}).get("reviewer"), (now or {}).get("reviewer")
    if was == holder:
        return []
    if holder:
        taken = "your claim was taken over by" if was == _me() else "claimed by"
        return [f"{taken} {'you' if holder == _me() else holder}"]
    return ["your claim ended" if was == _me() else f"released by {was}"]


def _exam_type(records: list[Mapping[str, Any]]) -> str:
    kinds = {k for r in records for k in r["kinds"]}
    if kinds & {"pw_doppler", "cw_doppler"}:  # ImageKind values
        return "vascular"
    if "mmode" in kinds:
        return "echo"
    return "general"


def _error_html(text: str) -> w.HTML:
    return w.HTML(_banner(text, error=True))


def worklist_page(client: ReviewClient | None = None) -> WorklistPage:
    """The worklist dashboard of the person whose server this is."""
    return WorklistPage(client or ReviewClient.from_environment())


def study_page(
    study_instance_uid: str | None = None, client: ReviewClient | None = None
) -> w.Widget:
    """The review dashboard of ``study_instance_uid`` (default: the page's ``?study=``)."""
    uid = study_instance_uid or query_value("study")
    if not uid:
        return _error_html("No study given: open a study from the worklist.")
    return w.VBox([_title("Study"), StudyPage(client or ReviewClient.from_environment(), uid)])

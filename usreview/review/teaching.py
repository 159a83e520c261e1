"""The trainees' dashboard: teaching cases, their de-identified images and the expert's words.

``notebooks/teaching.ipynb`` shows :func:`teaching_page` (trainees land there after
logging in; reviewers open it on one case, ``?case=UID``, from a study's similar cases).
The list holds every case (exam, image kinds, how many instances); a case shows the
reviewer's findings, impression, recommendations and measurements (so a trainee can check
their calipers against the expert's), what was done to de-identify it, and
its instances as buttons; the selected one opens in the viewer the reviewers use
(:func:`usreview.review.viewers.viewer_for`), calipers included, whose *Keep for practice*
puts measurements in the case's practice panel ("Practice: your measurements (not sent
anywhere)", kept while the case is open), which is never sent anywhere. Everything comes
from the service as the person (:class:`~usreview.review.client.ReviewClient`), which
serves de-identified copies only.

Reviewers (the review scope) also get **Withdraw this case**, for a case that must not be
shown (text burned into its images, say): a second click confirms, and the case is gone
for everyone (``DELETE /teaching/{case}``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from usreview.errors import UsreviewError
from usreview.review.client import ReviewClient

if TYPE_CHECKING:  # the list opens fast: the viewers load with a case
    from usreview.review.results import ResultsPanel

__all__ = ["TeachingPage", "case_label", "teaching_page"]

#: The scope of reviewers, who may withdraw a case (``usreview.hub.api.base.REVIEW``).
_REVIEW_SCOPE = "custom:usreview:review"
#: The message while an instance downloads (the study page's viewer says the same).
_LOADING = "<div class='usreview-message' style='color:#555'><i>Loading the image…</i></div>"


def case_label(case: Mapping[str, Any]) -> str:
    """How a case is listed: exam type, image kinds, number of instances."""
    kinds = ", ".join(str(k).replace("_", " ") for k in case.get("kinds", [])) or "images"
    count = len(case.get("instances", []))
    exam = str(case.get("exam_type") or "ultrasound").capitalize()
    return f"{exam} · {kinds} · {count} instance{'s' if count != 1 else ''}"


class TeachingPage(w.VBox):  # type: ignore[misc]
    """Every teaching case; the selected one (``case_uid``, if given) with its words and a
    viewer."""

    def __init__(self, client: ReviewClient, case_uid: str | None = None) -> None:
        self.client = client
        self.message = w.HTML()
        self.cases: list[dict[str, Any]] = []
        self.picker = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.picker.observe(self._on_pick, names="value")
        self.details = w.HTML()
        self.thumbnails = w.HBox()
        self.viewer = w.VBox()
        #: The open case's practice panel (the trainee's measurements; sent nowhere).
        self.practice: ResultsPanel | None = None
        self.withdraw = w.Button(
            description="Withdraw this case",
            button_style="danger",
            tooltip="Trainees and scientists will no longer see it (a second click confirms)",
            layout=w.Layout(display="none", width="auto"),
        )
        self.withdraw.on_click(self._on_withdraw)
        self.withdraw.add_class("usreview-withdraw-case")
        self._confirming: str | None = None  # the case a first click asked to withdraw
        user = html.escape(os.environ.get("JUPYTERHUB_USER", ""))
        title = w.HTML(
            "<div style='border-bottom:2px solid #1565c0;margin-bottom:6px'>"
            f"<h2 style='margin:4px 0'>usreview · Teaching cases</h2>"
            f"<span>Signed in as <b>{user}</b></span></div>"
        )
        super().__init__(
            [
                title,
                self.message,
                self.picker,
                self.details,
                self.withdraw,
                self.thumbnails,
                self.viewer,
            ]
        )
        self.add_class("usreview-teaching-page")
        self.picker.add_class("usreview-teaching-cases")
        self.details.add_class("usreview-teaching-case")
        self.viewer.add_class("usreview-teaching-viewer")
        self._may_withdraw = self._reviewer()
        self.refresh()
        if case_uid:
            if any(c["case_uid"] == case_uid for c in self.cases):
                self.picker.value = case_uid  # opens it
            else:
                self.open_case(case_uid)  # says there is none

    def refresh(self) -> None:
        """Fetch the cases again."""
        try:
            self.cases = self.client.teaching_cases()
        except UsreviewError as exc:
            self._say(f"Cannot read the teaching cases: {exc}", error=True)
            return
        self.picker.options = [(case_label(c), c["case_uid"]) for c in self.cases]
        if not self.cases:
            self._say("No teaching case yet: reviewers add them from published studies.")

    def open_case(self, case_uid: str) -> None:
        """Show one case: the reviewer's words and its instances."""
        case = next((c for c in self.cases if c["case_uid"] == case_uid), None)
        self.message.value = ""  # what was said of the case shown before
        self._confirming = None
        self.withdraw.description = "Withdraw this case"
        self.withdraw.layout.display = "" if case is not None and self._may_withdraw else "none"
        if case is None:
            self._say(f"No teaching case {case_uid}.", error=True)
            return
        parts = [
            f"<h3>{html.escape(case_label(case))}</h3>",
            *(
                f"<p><b>{title}</b><br>{html.escape(str(case.get(key) or '—'))}</p>"
                for key, title in (
                    ("findings", "Findings"),
                    ("impression", "Impression"),
                    ("recommendations", "Recommendations"),
                )
            ),
            _measurements_html(case.get("measurements") or []),
            "<p style='color:#555'><small>De-identified: "
            + html.escape("; ".join(case.get("deidentification", [])))
            + "</small></p>",
        ]
        if case.get("refused"):
            left_out = "; ".join(case["refused"])
            parts.append(f"<p><small>Left out: {html.escape(left_out)}</small></p>")
        self.details.value = "".join(parts)
        buttons = []
        for record in case["instances"]:
            button = w.Button(description=", ".join(record["kinds"])[:28] or "image")
            button.on_click(lambda _, r=record: self.show(case_uid, r))
            buttons.append(button)
        self.thumbnails.children = buttons
        self.viewer.children = []
        self.practice = _practice_panel()
        if case["instances"]:
            self.show(case_uid, case["instances"][0])

    def show(self, case_uid: str, record: Mapping[str, Any]) -> None:
        """Open one de-identified instance in the reviewers' viewer for its kind, above
        the case's practice panel (what was kept on its other instances stays); the
        viewer it replaces is closed (:func:`~usreview.review.viewers.close_viewer`).

        The message says "Loading the image…" while it downloads (as the study page's
        viewer), nothing once it shows; a refusal is said with the service's words,
        anything unexpected (an image that cannot be decoded, say) in one line, and
        logged: Voila shows no tracebacks.
        """
        from usreview.review.pages import _guarded

        _guarded(self.message, "Cannot show this image", lambda: self._show(case_uid, record))()

    def _show(self, case_uid: str, record: Mapping[str, Any]) -> None:
        from usreview.review.viewers import close_viewer, viewer_for

        if self.practice is None:
            self.practice = _practice_panel()
        self.message.value = _LOADING  # sent to the browser now: the download takes a while
        try:
            instance = self.client.teaching_instance(case_uid, record["sop_instance_uid"])
            viewer = viewer_for(instance, record, self.practice)
        except UsreviewError as exc:
            self._say(f"Cannot show this image: {exc}", error=True)
            return
        self.message.value = ""
        shown, self.viewer.children = self.viewer.children, [viewer, self.practice]
        for old in shown:
            if old is not self.practice:
                close_viewer(old)

    def withdraw_case(self, case_uid: str) -> bool:
        """Withdraw a case (reviewers): whether it is gone; the message says why not."""
        from usreview.teaching import case_name

        try:
            self.client.withdraw_teaching(case_uid)
        except UsreviewError as exc:
            self._say(f"Not withdrawn: {exc}", error=True)
            return False
        self.details.value = ""
        self.thumbnails.children = self.viewer.children = []
        self.withdraw.layout.display = "none"
        self.refresh()
        if self.cases:
            self.picker.value = None
        self._say(f"Case {case_name(case_uid)} withdrawn: nobody sees it any more.")
        return True

    def _on_withdraw(self, _: Any) -> None:
        case_uid = self.picker.value
        if not case_uid:
            return
        if self._confirming != case_uid:  # the first click asks
            self._confirming = case_uid
            self.withdraw.description = "Click again to withdraw it for everyone"
            return
        self._confirming = None
        self.withdraw.disabled = True
        try:
            self.withdraw_case(str(case_uid))
        finally:
            self.withdraw.disabled = False
            self.withdraw.description = "Withdraw this case"

    def _reviewer(self) -> bool:
        try:
            return _REVIEW_SCOPE in self.client.whoami().get("scopes", [])
        except UsreviewError:
            return False  # the button stays hidden; the service would refuse anyway

    def _on_pick(self, change: Mapping[str, Any]) -> None:
        if change.get("new"):
            self.open_case(str(change["new"]))

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#b00020" if error else "#1b5e20"
        self.message.value = (
            f"<div class='usreview-message' style='color:{colour}'>{html.escape(text)}</div>"
        )


def _practice_panel() -> ResultsPanel:
    from usreview.review.results import ResultsPanel

    return ResultsPanel([], practice=True)


def _measurements_html(measurements: list[Mapping[str, Any]]) -> str:
    """The expert's measurements, one line each: label or name, value, unit."""
    if not measurements:
        return ""
    lines = []
    for m in measurements:
        name = str(m.get("name", "")).replace("_", " ")
        label = f"{m['label']} ({name})" if m.get("label") else name.capitalize()
        value = m.get("value")
        shown = f"{value:.4g}" if isinstance(value, int | float) else "—"
        lines.append(
            f"{html.escape(label)}: {html.escape(shown)} {html.escape(str(m.get('unit', '')))}"
        )
    return (
        "<p class='usreview-expert-measurements'><b>Expert's measurements</b><br>"
        + "<br>".join(lines)
        + "</p>"
    )


def teaching_page(client: ReviewClient | None = None) -> TeachingPage:
    """The teaching dashboard of the person whose server this is, on the page's ``?case=``
    if it names one (a reviewer's link from a similar case)."""
    from usreview.review.pages import query_value

    return TeachingPage(client or ReviewClient.from_environment(), query_value("case"))

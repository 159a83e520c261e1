"""The diagnosis form: one report per exam, published to the sites.

:class:`ReportForm` holds the exam type (vascular, echo, obstetric, abdominal, general:
each with a findings template the reviewer edits), findings, impression,
recommendations, urgency, the key images, and the second site that should also receive
the report (the referring clinic). :meth:`ReportForm.report` gives the JSON body of
``POST /studies/{uid}/reports``; the measurements come from the
:class:`~usreview.review.results.ResultsPanel`. After a publication the form says which
version went out; publishing again makes an amendment that supersedes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import ipywidgets as w

__all__ = ["EXAM_TYPES", "URGENCIES", "ReportForm"]

EXAM_TYPES: Final = {
    "vascular": "Vessels examined: \nFlow: \nPlaque / stenosis: ",
    "echo": "LV size and function: \nValves: \nPericardium: ",
    "obstetric": "Fetal number and presentation: \nBiometry: \nPlacenta and liquor: ",
    "abdominal": "Liver: \nGallbladder and bile ducts: \nKidneys: \nSpleen: ",
    "general": "",
}
"""Exam types and the findings template each starts from."""

URGENCIES: Final = ("routine", "urgent", "critical")


class ReportForm(w.VBox):  # type: ignore[misc]
    """Findings, impression, recommendations, urgency, key images, recipients, Publish."""

    def __init__(
        self,
        *,
        key_images: Sequence[tuple[str, str]] = (),
        sites: Sequence[str] = (),
        exam_type: str = "general",
        on_publish: Callable[[ReportForm], None] | None = None,
    ) -> None:
        """``key_images`` are ``(label, sop_instance_uid)``; ``sites`` the possible recipients."""
        self.exam_type = w.Dropdown(options=list(EXAM_TYPES), value=exam_type, description="Exam")
        self.findings = w.Textarea(
            value=EXAM_TYPES[exam_type], description="Findings", rows=6,
            layout=w.Layout(width="98%"),
        )  # fmt: skip
        self.impression = w.Textarea(description="Impression", rows=3, layout=w.Layout(width="98%"))
        self.recommendations = w.Textarea(
            description="Advice", rows=2, layout=w.Layout(width="98%")
        )
        self.urgency = w.ToggleButtons(options=list(URGENCIES), value="routine")
        self.key_images = w.SelectMultiple(
            options=list(key_images), description="Key images", rows=min(6, len(key_images) or 1)
        )
        self.recipients = w.SelectMultiple(
            options=list(sites), description="Also to", rows=min(5, len(sites) or 1)
        )
        self.publish_button = w.Button(
            description="Publish report", button_style="primary", icon="paper-plane"
        )
        for widget, name in (
            (self.exam_type, "exam-type"),
            (self.findings, "findings"),
            (self.impression, "impression"),
            (self.recommendations, "recommendations"),
            (self.urgency, "urgency"),
            (self.key_images, "key-images"),
            (self.recipients, "recipients"),
        ):
            widget.add_class(f"usreview-{name}")  # stable hooks for tests and styling
        self.status = w.HTML()
        self.status.add_class("usreview-publish-status")
        self.publish_button.add_class("usreview-publish")
        self._on_publish = on_publish
        self.exam_type.observe(self._template, "value")
        self.publish_button.on_click(lambda _: self._publish())
        super().__init__(
            [
                w.HTML("<h3>Report</h3>"),
                self.exam_type,
                self.findings,
                self.impression,
                self.recommendations,
                w.HBox([w.Label("Urgency"), self.urgency]),
                self.key_images,
                self.recipients,
                w.HBox([self.publish_button, self.status]),
            ]
        )
        self.add_class("usreview-report-form")

    def report(self, measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of a publication with ``measurements``."""
        return {
            "exam_type": self.exam_type.value,
            "findings": self.findings.value,
            "impression": self.impression.value,
            "recommendations": self.recommendations.value,
            "urgency": self.urgency.value,
            "measurements": list(measurements),
            "key_images": list(self.key_images.value),
            "recipients": list(self.recipients.value),
        }

    def published(self, answer: dict[str, Any]) -> None:
        """Show what went out; the next publication is an amendment."""
        version = answer.get("version")
        self.status.value = (
            f'<span data-version="{version}">Published version {version} '
            f"at {answer.get('published_at', '')}.</span>"
        )
        self.publish_button.description = "Publish amendment"

    def failed(self, message: str) -> None:
        """Show why a publication was refused."""
        self.status.value = f'<span style="color:#b00020">Not published: {message}</span>'

    def _template(self, change: dict[str, Any]) -> None:
        old = EXAM_TYPES.get(change["old"], "")
        if self.findings.value.strip() in ("", old.strip()):
            self.findings.value = EXAM_TYPES[change["new"]]

    def _publish(self) -> None:
        if self._on_publish is not None:
            self._on_publish(self)

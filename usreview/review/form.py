"""The diagnosis form: one report per exam, published to the sites.

:class:`ReportForm` holds the exam type (vascular, echo, obstetric, abdominal, general:
each with a findings template the reviewer edits), findings, impression,
recommendations, urgency, the key images, and the second site that should also receive
the report (the referring clinic). :meth:`ReportForm.report` gives the JSON body of
``POST /studies/{uid}/reports``; the measurements come from the
:class:`~usreview.review.results.ResultsPanel`.

*Publish* is disabled, and the form says "Publishing…", while a publication is in flight;
a click meanwhile does nothing. After a publication the form says which version went out
and stays locked (the service released the claim with it) until :meth:`ReportForm.allow`:
publishing again, once the study is claimed again, makes an amendment that supersedes it.
:meth:`ReportForm.values` and :meth:`ReportForm.fill` keep and restore what was typed (a
draft, or a published version to amend); :attr:`ReportForm.unsent` says whether the form
holds anything not published.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import ipywidgets as w

from usreview.review.wording import one_line

__all__ = ["EXAM_TYPES", "URGENCIES", "ReportForm"]

_log = logging.getLogger(__name__)

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

        def text(description: str, rows: int) -> w.Textarea:
            return w.Textarea(
                description=description, rows=rows, layout=w.Layout(width="98%"),
                style={"description_width": "120px"},
            )  # fmt: skip

        self.findings = text("Findings", 6)
        self.findings.value = EXAM_TYPES[exam_type]
        self.impression = text("Impression", 3)
        # "Recommendations" as in the SR, the summary and the teaching page
        self.recommendations = text("Recommendations", 2)
        self.urgency = w.ToggleButtons(options=list(URGENCIES), value="routine")
        self.key_images = w.SelectMultiple(
            options=list(key_images), description="Key images", rows=min(6, len(key_images) or 1)
        )
        self.recipients = w.SelectMultiple(
            options=list(sites), description="Also to", rows=min(5, len(sites) or 1)
        )
        self._label = "Publish report"
        self.publish_button = w.Button(
            description=self._label, button_style="primary", icon="paper-plane"
        )
        self._busy = False
        self._confirmation = ""
        #: Why publishing waits for :meth:`allow` (``None``: it does not).
        self.locked: str | None = None
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
        self._sent = self.values()

    def report(self, measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of a publication with ``measurements``."""
        return {**self.values(), "measurements": list(measurements)}

    def values(self) -> dict[str, Any]:
        """What the reviewer typed and chose (the report without its measurements)."""
        return {
            "exam_type": self.exam_type.value,
            "findings": self.findings.value,
            "impression": self.impression.value,
            "recommendations": self.recommendations.value,
            "urgency": self.urgency.value,
            "key_images": list(self.key_images.value),
            "recipients": list(self.recipients.value),
        }

    @property
    def unsent(self) -> bool:
        """Whether the form differs from what it started with or last published."""
        return self.values() != self._sent

    def fill(self, values: Mapping[str, Any], *, sent: bool = False) -> None:
        """Put ``values`` (:meth:`values`, or a published version's ``content``) in the
        form; key images and recipients it does not offer are left out. ``sent``: they
        were published (the form holds nothing unsent)."""
        if values.get("exam_type") in EXAM_TYPES:
            self.exam_type.value = values["exam_type"]
        for widget, name in (
            (self.findings, "findings"),
            (self.impression, "impression"),
            (self.recommendations, "recommendations"),
        ):
            if isinstance(values.get(name), str):
                widget.value = values[name]
        if values.get("urgency") in URGENCIES:
            self.urgency.value = values["urgency"]
        for choice, name in ((self.key_images, "key_images"), (self.recipients, "recipients")):
            offered = {o[1] if isinstance(o, tuple) else o for o in choice.options}
            choice.value = tuple(v for v in values.get(name) or () if v in offered)
        if sent:
            self._sent = self.values()
            self._amending()

    def published(self, answer: Mapping[str, Any]) -> None:
        """Show what went out; lock publishing until :meth:`allow` (the service released
        the claim); the next publication is an amendment."""
        version = answer.get("version")
        self._sent = self.values()
        self._amending()
        self._confirmation = (
            f'<span data-version="{html.escape(str(version))}">Published version {version} '
            f"at {html.escape(str(answer.get('published_at', '')))}.</span>"
        )
        self.lock("Claim the study again to publish an amendment.", shown=True)

    def allow(self) -> None:
        """The study is claimed again: publishing (an amendment) is possible."""
        if "usreview-publish-hint" in self.status.value:
            self.status.value = self._confirmation  # the hint no longer holds
        self.locked = None
        self._show_button()

    def lock(self, reason: str, *, shown: bool = False) -> None:
        """Refuse to publish until :meth:`allow` (``reason``: the button's tooltip, and
        with ``shown`` a hint under it, after what was last published)."""
        self.locked = reason
        self._show_button()
        if shown:
            self.status.value = (
                f"{self._confirmation} <span class='usreview-publish-hint'>"
                f"{html.escape(reason)}</span>"
            )

    def failed(self, message: str) -> None:
        """Show why a publication was refused."""
        self.status.value = (
            f'<span style="color:#b00020">Not published: {html.escape(message)}</span>'
        )

    def _amending(self) -> None:
        self._label = "Publish amendment"
        self._show_button()

    def _show_button(self) -> None:
        self.publish_button.description = "Publishing…" if self._busy else self._label
        self.publish_button.disabled = self._busy or self.locked is not None
        self.publish_button.tooltip = self.locked or ""

    def _template(self, change: dict[str, Any]) -> None:
        old = EXAM_TYPES.get(change["old"], "")
        if self.findings.value.strip() in ("", old.strip()):
            self.findings.value = EXAM_TYPES[change["new"]]

    def _publish(self) -> None:
        """One publication at a time: a click while one is in flight, or while the form
        is locked, does nothing; the button comes back whatever happened."""
        if self._busy or self.locked is not None or self._on_publish is None:
            return
        self._busy = True
        self._show_button()
        self.status.value = '<span class="usreview-publishing">Publishing…</span>'
        try:
            self._on_publish(self)
        except Exception as exc:  # Voila hides tracebacks: say it, on one line
            _log.exception("publishing the report failed")
            self.status.value = (
                '<span style="color:#b00020">Publishing failed unexpectedly '
                f"({html.escape(one_line(exc))}): reload the page and check the published "
                "versions before publishing again.</span>"
            )
        finally:
            self._busy = False
            self._show_button()
            if "usreview-publishing" in self.status.value:  # nothing said what happened
                self.status.value = ""

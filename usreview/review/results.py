"""The automatic results of a study, for the reviewer to accept, correct or reject.

:class:`ResultsPanel` shows, for each instance, what the hub's processors found: each
measured quantity with its unit, cycle count and processor (provenance: name, version,
parameters), the findings and recommendations with their evidence, and any processing
failure stated plainly. Above them, the study-level evaluation when the study has one
(:func:`study_evaluation_html`: the SRU ICA/CCA criteria per side, worded as decision
support, with the rule, its source and provenance). Each quantity has three decisions:
*accept* (goes in the report as measured), *correct* (the reviewer's value goes in the
report) and *reject* (left out); nothing is accepted by default. The reviewer's own
measurements from the viewers are added with :meth:`ResultsPanel.add_measurement`, each
once and with an optional label, and each has a *Remove* button until the report is
published. :meth:`ResultsPanel.measurements` gives the report's ``measurements`` (see
:mod:`usreview.review.report`). :meth:`ResultsPanel.update` shows the results as they are
now (an open study page reads them every few seconds) in place: the reviewer's decisions
and measurements stay. A *practice* panel (``practice=True``, the trainees' teaching
page) holds only the trainee's own measurements, titled as sent nowhere.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import ipywidgets as w

from usreview.review.wording import utc

__all__ = ["DECISIONS", "ResultsPanel", "processing_line", "study_evaluation_html"]

DECISIONS: Final = ("pending", "accept", "correct", "reject")
_VALUES: Final = (
    ("ica_psv", "ICA PSV", " cm/s", ".1f"),
    ("cca_psv", "CCA PSV", " cm/s", ".1f"),
    ("ica_cca_psv_ratio", "ICA/CCA PSV ratio", "", ".2f"),
    ("ica_edv", "ICA EDV", " cm/s", ".1f"),
)


@dataclass
class _Row:
    """One automatic quantity and the reviewer's decision widgets."""

    quantity: dict[str, Any]
    source_instance: str
    decision: w.ToggleButtons
    corrected: w.FloatText

    def measurement(self) -> dict[str, Any] | None:
        choice = self.decision.value
        if choice in ("pending", "reject"):
            return None
        q = self.quantity
        code = None
        if q.get("code") and q.get("scheme"):
            code = {"value": q["code"], "scheme": q["scheme"], "meaning": q.get("meaning", "")}
        value = float(self.corrected.value if choice == "correct" else q["value"])
        return {
            "name": q["name"],
            "value": value,
            "unit": q["unit"],
            "code": code,
            "origin": "automatic",
            "decision": "corrected" if choice == "correct" else "accepted",
            "source_instance": self.source_instance,
        }


@dataclass(eq=False)
class _Own:
    """One of the reviewer's measurements: the report's entry and what identifies it."""

    entry: dict[str, Any]
    key: str
    frame_number: int | None


def _identity(measurement: Mapping[str, Any]) -> str:
    """Instance, name, value, unit, points and details: equal for the same measurement."""
    return json.dumps(
        [
            measurement.get("source_instance"),
            str(measurement["name"]),
            float(measurement["value"]),
            str(measurement["unit"]),
            measurement.get("points") or [],
            measurement.get("details") or {},
        ],
        sort_keys=True,
        default=str,
    )


def _shown(instance: Mapping[str, Any]) -> str:
    """What an instance's section shows, as a string equal for equal sections."""
    keys = ("kinds", "processing", "analysis")
    return json.dumps([instance.get(k) for k in keys], sort_keys=True, default=str)


def _same(quantity: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a quantity the same one again (a decision on it still holds)."""
    return (quantity.get("name"), quantity.get("value"), quantity.get("unit"))


def processing_line(instance: Mapping[str, Any]) -> str:
    """One sentence on how processing of ``instance`` (a study's instance view) went."""
    processing = instance.get("processing") or {}
    status = processing.get("status")
    reason = processing.get("reason")
    if status is None:
        return "Automatic processing: not known yet."
    if status == "failed":
        return f"Automatic processing FAILED: {reason or 'no reason recorded'}"
    if status in ("queued", "running"):
        return f"Automatic processing is {status}."
    if instance.get("analysis") is None:
        return "Processed: nothing to measure on this kind of image (filtered images only)."
    return "Automatic processing done."


#: The title of a practice panel (the trainees' teaching page).
_PRACTICE_TITLE: Final = "Practice: your measurements (not sent anywhere)"


class ResultsPanel(w.VBox):  # type: ignore[misc]
    """Automatic results of a study's instances with accept / correct / reject per quantity.

    ``practice=True``: a trainee's practice panel instead, titled "Practice: your
    measurements (not sent anywhere)", with the trainee's own measurements only (no
    ``instances``, no ``evaluation``); the viewers then *Keep for practice* rather than
    *Add to report* (:func:`~usreview.review.viewers.viewer_for`).
    """

    def __init__(
        self,
        instances: Sequence[Mapping[str, Any]],
        *,
        evaluation: Mapping[str, Any] | None = None,
        practice: bool = False,
    ) -> None:
        #: Whether this is a trainee's practice panel (nothing of it is ever sent).
        self.practice = practice
        self._rows: list[_Row] = []
        self._own: list[_Own] = []
        self._own_box = w.VBox()
        #: :meth:`on_change` callbacks, in the order registered.
        self._observers: list[Callable[[], None]] = []
        title = _PRACTICE_TITLE if practice else "Automatic results"
        self._heading = w.HTML(f"<h3>{html.escape(title)}</h3>")
        self._own_heading = w.HTML("<h3>Your measurements</h3>")
        #: Each instance's section and what it shows (:func:`_shown`), in the study's order.
        self._sections: dict[str, tuple[str, w.Widget]] = {}
        self._evaluation: tuple[Mapping[str, Any], w.HTML] | None = None
        super().__init__()
        self.update(instances, evaluation=evaluation)
        self.add_class("usreview-results")
        if practice:
            self.add_class("usreview-practice")
        self._render_own()

    def update(
        self,
        instances: Sequence[Mapping[str, Any]],
        *,
        evaluation: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Show the results of ``instances`` (and the study-level ``evaluation``) as they
        are now, in place.

        An instance not shown yet gets its section; one whose processing or analysis
        changed gets a new section, in which each quantity keeps the reviewer's decision
        (and corrected value) if it is the same quantity with the same value. Every other
        section, with its decisions, and the reviewer's own measurements stay as they are.

        Returns
        -------
        list of str
            The SOP Instance UIDs whose section was added or replaced.

        Raises
        ------
        ValueError
            ``instances`` or ``evaluation`` given to a practice panel.
        """
        if self.practice and (instances or evaluation):
            raise ValueError("argument 'instances': a practice panel shows no automatic results")
        changed: list[str] = []
        sections: dict[str, tuple[str, w.Widget]] = {}
        for instance in instances:
            uid = str(instance["sop_instance_uid"])
            shown = _shown(instance)
            known = self._sections.get(uid)
            if known is not None and known[0] == shown:
                sections[uid] = known
                continue
            kept: dict[tuple[Any, ...], list[tuple[str, float]]] = {}
            for row in self._rows:
                if row.source_instance == uid:
                    state = (row.decision.value, row.corrected.value)
                    kept.setdefault(_same(row.quantity), []).append(state)
            self._rows = [row for row in self._rows if row.source_instance != uid]
            sections[uid] = (shown, self._section(instance))
            for row in self._rows:
                if row.source_instance == uid and (states := kept.get(_same(row.quantity))):
                    decision, corrected = states.pop(0)
                    row.corrected.value = corrected
                    row.decision.value = decision  # last: it enables the corrected value
            changed.append(uid)
        self._rows = [row for row in self._rows if row.source_instance in sections]
        self._sections = sections
        if not evaluation:
            self._evaluation = None
        elif self._evaluation is None or self._evaluation[0] != evaluation:
            self._evaluation = (dict(evaluation), w.HTML(study_evaluation_html(evaluation)))
        self.children = [
            self._heading,
            *([self._evaluation[1]] if self._evaluation else []),
            *(section for _, section in sections.values()),
            *([] if self.practice else [self._own_heading]),  # the title says it
            self._own_box,
        ]
        return changed

    # The report's view ------------------------------------------------------------------

    def measurements(self) -> list[dict[str, Any]]:
        """Accepted and corrected automatic values, then the reviewer's own measurements."""
        order = {uid: number for number, uid in enumerate(self._sections)}
        rows = sorted(self._rows, key=lambda row: order.get(row.source_instance, len(order)))
        chosen = [m for row in rows if (m := row.measurement()) is not None]
        return chosen + [dict(own.entry) for own in self._own]

    def decide(self, name: str, decision: str, value: float | None = None) -> None:
        """Set the decision on every automatic quantity called ``name`` (for scripts)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        for row in self._rows:
            if row.quantity["name"] == name:
                if value is not None:
                    row.corrected.value = value
                row.decision.value = decision

    def add_measurement(self, measurement: Mapping[str, Any], *, label: str | None = None) -> bool:
        """Add one of the reviewer's measurements, unless it is already there.

        Parameters
        ----------
        measurement
            ``name``, ``value``, ``unit``, ``code`` and ``source_instance``, and the
            ``points`` and ``details`` it was measured from
            (:meth:`~usreview.review.measure.Measurement.as_dict`), which tell it from
            another measurement of the same value; ``details["frame_number"]`` is shown.
        label
            The reviewer's name for it (``"Left kidney length"``), carried to the report;
            blank for none.

        Returns
        -------
        bool
            ``False`` (and nothing added) when the same measurement is already there.
        """
        key = _identity(measurement)
        if any(own.key == key for own in self._own):
            return False
        entry = {
            "name": str(measurement["name"]),
            "value": float(measurement["value"]),
            "unit": str(measurement["unit"]),
            "code": measurement.get("code"),
            "origin": "reviewer",
            "decision": "accepted",
            "source_instance": measurement.get("source_instance"),
        }
        if label is not None and label.strip():
            entry["label"] = label.strip()
        frame = (measurement.get("details") or {}).get("frame_number")
        self._own.append(_Own(entry, key, frame if isinstance(frame, int) else None))
        self._changed()
        return True

    def has_measurement(self, measurement: Mapping[str, Any]) -> bool:
        """Whether the same measurement is among the reviewer's (see :meth:`add_measurement`)."""
        key = _identity(measurement)
        return any(own.key == key for own in self._own)

    def remove_measurement(self, index: int) -> None:
        """Leave out the reviewer's measurement ``index`` (0-based, as listed), as its
        *Remove* button does.

        Raises
        ------
        IndexError
            There is no such measurement.
        """
        if not 0 <= index < len(self._own):
            raise IndexError(f"argument 'index': no measurement {index} of {len(self._own)}")
        self._remove(self._own[index])

    def on_change(
        self, callback: Callable[[], None], *, owner: w.Widget | None = None
    ) -> Callable[[], None]:
        """Call ``callback()`` whenever a measurement of the reviewer's is added or removed.

        Registering the same callback again changes nothing. ``owner``: the widget the
        callback serves (a viewer's *Add to report* bar); the callback is forgotten when it
        is closed (a page closes the viewer it replaces,
        :func:`~usreview.review.viewers.close_viewer`), so a panel whose viewer is built
        again and again calls one callback per live viewer.

        Returns
        -------
        callable
            Forgets the callback when called (again: nothing more).
        """

        def forget() -> None:
            self._observers = [known for known in self._observers if known is not callback]

        def closed(change: dict[str, Any]) -> None:
            if change["new"] is None:  # closing a widget drops its comm
                forget()

        if callback in self._observers:
            return forget
        if owner is not None:
            if owner.comm is None:  # closed already: it will never be shown
                return forget
            owner.observe(closed, names="comm")
        self._observers.append(callback)
        return forget

    def _remove(self, own: _Own) -> None:
        if own in self._own:  # a second click on the same button removes nothing more
            self._own.remove(own)
            self._changed()

    def _changed(self) -> None:
        self._render_own()
        for callback in list(self._observers):
            callback()

    # Layout ----------------------------------------------------------------------------

    def _section(self, instance: Mapping[str, Any]) -> w.Widget:
        uid = str(instance["sop_instance_uid"])
        kinds = ", ".join(instance.get("kinds", []))
        analysis = instance.get("analysis") or {}
        parts: list[w.Widget] = [
            w.HTML(f"<b>{html.escape(kinds)}</b> <small>{html.escape(uid)}</small>"),
        ]
        line = processing_line(instance)
        style = "color:#b00020;font-weight:bold" if "FAILED" in line else "color:#555"
        parts.append(w.HTML(f'<div class="usreview-processing" style="{style}">{line}</div>'))
        for quantity in analysis.get("quantities", []):
            parts.append(self._quantity_row(quantity, uid))
        for item in (*analysis.get("findings", []), *analysis.get("recommendations", [])):
            parts.append(w.HTML(_finding_html(item)))
        failed = [p for p in analysis.get("processors", []) if p.get("status") == "failed"]
        for p in failed:
            parts.append(
                w.HTML(
                    '<div class="usreview-processing" style="color:#b00020">'
                    f"{html.escape(p['processor'])} {html.escape(str(p['version']))} failed: "
                    f"{html.escape(str(p.get('reason') or ''))}</div>"
                )
            )
        provenance = [
            f"{p['processor']} {p['version']} "
            + ", ".join(f"{k}={v}" for k, v in sorted(p.get("parameters", {}).items()))
            for p in analysis.get("processors", [])
        ]
        if provenance:
            parts.append(
                w.HTML(
                    "<details><summary>Provenance</summary><ul>"
                    + "".join(f"<li>{html.escape(p)}</li>" for p in provenance)
                    + "</ul></details>"
                )
            )
        return w.VBox(parts, layout=w.Layout(border="1px solid #ddd", padding="4px"))

    def _quantity_row(self, quantity: dict[str, Any], uid: str) -> w.Widget:
        decision = w.ToggleButtons(
            options=[("?", "pending"), ("Accept", "accept"), ("Correct", "correct"),
                     ("Reject", "reject")],
            value="pending",
            tooltips=["Not decided", "Report it as measured", "Report your value",
                      "Leave it out of the report"],
            style={"button_width": "68px"},
        )  # fmt: skip
        corrected = w.FloatText(
            value=float(quantity["value"]), layout=w.Layout(width="80px"), disabled=True
        )

        def toggle(change: dict[str, Any]) -> None:
            corrected.disabled = change["new"] != "correct"

        decision.observe(toggle, "value")
        self._rows.append(_Row(quantity, uid, decision, corrected))
        cycles = f" ({quantity['cycles']} cycles)" if quantity.get("cycles") else ""
        unit = "" if quantity["unit"] == "1" else f" {html.escape(quantity['unit'])}"
        label = w.HTML(
            f'<span class="usreview-quantity" data-name="{html.escape(quantity["name"])}">'
            f"{html.escape(quantity.get('meaning') or quantity['name'])}: "
            f"<b>{quantity['value']:.4g}{unit}</b>{cycles}</span>",
            layout=w.Layout(width="220px"),
        )
        return w.HBox([label, decision, corrected])

    def _render_own(self) -> None:
        if not self._own:
            self._own_box.children = [w.HTML("<i>None yet: measure on the images.</i>")]
            return
        self._own_box.children = [self._own_row(own) for own in self._own]

    def _own_row(self, own: _Own) -> w.Widget:
        m = own.entry
        label = m.get("label") or ""
        named = f"{html.escape(label)}, " if label else ""
        frame = f" <small>(frame {own.frame_number})</small>" if own.frame_number else ""
        text = w.HTML(
            f'<span class="usreview-own" data-name="{html.escape(m["name"])}"'
            f' data-label="{html.escape(label)}" data-frame="{own.frame_number or ""}">'
            f"{named}{html.escape(m['name'])}: <b>{m['value']:.4g} {html.escape(m['unit'])}</b>"
            f"{frame}</span>"
        )
        remove = w.Button(
            description="Remove",
            icon="trash",
            tooltip="Remove it" if self.practice else "Leave it out of the report",
            layout=w.Layout(width="auto"),
        )
        remove.add_class("usreview-own-remove")
        remove.on_click(lambda _: self._remove(own))
        return w.HBox([text, remove])


def _finding_html(item: Mapping[str, Any]) -> str:
    if item.get("code") == "similar_cases" and (links := _case_links(item.get("evidence"))):
        return f'<div class="usreview-finding usreview-similar">• {links}</div>'
    text = html.escape(str(item.get("text") or item.get("statement") or item.get("name", "")))
    source = item.get("source")
    cite = f" <small>({html.escape(str(source))})</small>" if source else ""
    return f'<div class="usreview-finding">• {text}{cite}</div>'


#: What a reviewer reads of the similar cases' order (the page's tooltip).
_SIMILAR_HELP = (
    "Ranked by the image's resemblance to the de-identified instances of the case library, "
    "closest first. Only the order means something: images of one kind resemble each other "
    "in most of what is compared, so unrelated ones still score high. The cases say what the "
    "image looks like, not what it is."
)


def _case_links(evidence: Any) -> str:
    """The matches of a ``similar_cases`` finding as links to the teaching page, each on
    its case (``teaching.ipynb?case=UID``, beside this page), by rank, closest first, and
    how many cases were compared when the finding says (``compared``); "" if they are
    malformed.

    The cosine similarity of each match is not shown: it orders the cases, but its size says
    little (unrelated images of one kind score high too; see
    :mod:`usreview.processing.similarity`). The rank is the match's ``rank``, else its
    place in the list (findings made before ranks were recorded).
    """
    from usreview.dicom.header import is_uid
    from usreview.processing.similarity import ordinal
    from usreview.teaching import case_name

    matches = evidence.get("matches") if isinstance(evidence, Mapping) else None
    links = []
    for place, match in enumerate(matches if isinstance(matches, list) else [], start=1):
        uid = match.get("case_uid") if isinstance(match, Mapping) else None
        similarity = match.get("similarity") if isinstance(match, Mapping) else None
        if not isinstance(uid, str) or not is_uid(uid) or not isinstance(similarity, float | int):
            return ""
        rank = match.get("rank", place)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            return ""
        href = html.escape(f"teaching.ipynb?case={quote(uid, safe='')}")
        links.append(
            f'<span class="usreview-case-rank">{ordinal(rank)}</span> '
            f'<a href="{href}" target="_blank" rel="noopener" class="usreview-case-link">'
            f"{html.escape(case_name(uid))}</a>"
        )
    if not links:
        return ""
    compared = evidence.get("compared")
    among = (
        f" of {compared} compared"
        if isinstance(compared, int) and not isinstance(compared, bool) and compared > 0
        else ""
    )
    return (
        f'<span title="{html.escape(_SIMILAR_HELP)}">Most similar cases{among}, closest '
        f"first:</span> " + ", ".join(links)
    )


def study_evaluation_html(evaluation: Mapping[str, Any]) -> str:
    """The study-level evaluation (``GET /studies/{uid}``'s ``study_evaluation``) as HTML."""
    sides = []
    for side in evaluation.get("evaluations") or []:
        values = side.get("values") or {}
        shown = " · ".join(
            f"{label} <b>{format(float(values[key]), spec)}{unit}</b>"
            for key, label, unit, spec in _VALUES
            if isinstance(values.get(key), int | float)
        )
        category = side.get("statement") or side.get("category") or ""
        # An ungraded band (a low ICA PSV) says what to exclude: it meets no criterion.
        said = "meets the criterion for" if side.get("graded", True) else "ICA PSV not graded:"
        sides.append(
            f'<div class="usreview-study-side" data-side="{html.escape(str(side.get("side")))}"'
            f' data-category="{html.escape(str(side.get("category")))}">'
            f"<div>{html.escape(str(side.get('side', '')).capitalize())} carotid: {said} "
            f"<b>{html.escape(category)}</b></div><div>{shown}</div>"
            f"<div style='color:#555'>{html.escape(str(side.get('text') or ''))}</div>"
            f"<details><summary>Rule and source</summary>"
            f"<div>{html.escape(str(side.get('criterion') or ''))}</div>"
            f"<div><i>{html.escape(str(side.get('source') or ''))}</i></div></details></div>"
        )

    published = evaluation.get("published")
    sent = (
        f"sent to the site as result {published['result']} ({utc(published['published_at'])})"
        if published
        else "not sent to the site yet"
    )
    uids = ", ".join(str(u)[-12:] for u in evaluation.get("instances") or [])
    return (
        '<div class="usreview-study-evaluation" style="border-left:4px solid #1565c0;'
        'padding:4px 8px;margin-bottom:6px;background:#f5f8fc">'
        "<b>Study-level evaluation</b> <small>(automatic decision support for you to judge, "
        "not a diagnosis)</small>"
        + "".join(sides)
        + f"<details><summary>Provenance</summary><div>{html.escape(str(evaluation['rule']))} "
        f"{html.escape(str(evaluation['version']))}, from the spectra of instances …{uids}; "
        f"{html.escape(sent)}.</div><div>{html.escape(str(evaluation.get('notice') or ''))}"
        "</div></details></div>"
    )

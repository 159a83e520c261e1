"""WorklistTable: the reviewers' study list, sorted and filtered in the browser."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anywidget
import traitlets

from usreview.review.form import URGENCIES
from usreview.review.widgets._assets import css, esm

__all__ = ["COLUMNS", "URGENCY_ORDER", "WorklistTable", "columnar", "normalise_rows"]

#: The columns shown, in order: (key, label, CSS grid width). ``waiting`` is computed in
#: the browser from ``received_ms`` (the time since the study was received, kept current).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("urgency", "Urgency", "96px"),
    ("received_at", "Received", "150px"),
    ("waiting", "Waiting", "70px"),
    ("site", "Site", "110px"),
    ("patient_name", "Patient", "1.2fr"),
    ("patient_id", "ID", "100px"),
    ("study_description", "Study", "1.4fr"),
    ("kinds", "Kinds", "1fr"),
    ("status", "Status", "90px"),
    ("findings", "Findings", "1fr"),
    ("claim", "Claimed by", "100px"),
)
_KEYS = {key for key, _, _ in COLUMNS} | {"study_instance_uid"}
_COMPUTED = frozenset({"waiting"})
#: Statuses of a study whose report is out: its waiting time is not shown.
_ANSWERED = frozenset({"published", "delivered"})
_ORDER = tuple(sorted(_KEYS - _COMPUTED | {"received_ms"}))
#: What a row's buttons send: *Open*, *Claim* and, on a study the signed-in reviewer
#: (:attr:`WorklistTable.user`) holds, *Release*.
ACTIONS = ("open", "claim", "release")
#: The report urgencies, most urgent first: the form's (and the report's) own, reversed.
URGENCY_ORDER: tuple[str, ...] = tuple(reversed(URGENCIES))


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(v) for v in value]
    raise ValueError(f"worklist column {key!r}: cannot show a {type(value).__name__}")


def _epoch_ms(value: Any) -> int | str:
    """Milliseconds since 1970 (UTC) of a received time, or "" without one.

    Datetimes and ISO 8601 text with a time of day; without an offset they are UTC (as the
    service sends them). A date alone, or text that is not a time, gives "".
    """
    if isinstance(value, str):
        if len(value) <= 10:  # no time of day
            return ""
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return ""
    if not isinstance(value, _dt.datetime):
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return int(value.timestamp() * 1000)


def normalise_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts of the known columns; each needs a ``study_instance_uid``.

    Datetimes become ``YYYY-MM-DD HH:MM:SS`` (sortable as text), lists stay lists of text,
    missing columns are empty; unknown keys are dropped. ``received_ms`` is added: the
    received time (``received_at``, UTC unless it says otherwise) in milliseconds since
    1970, or "" when it has no time of day or the study is answered (published or
    delivered: nobody waits any more); the browser shows the waiting time from it.

    Raises
    ------
    ValueError
        A row without ``study_instance_uid``, or two rows with the same one, or a value
        that is not text, a number, a date or a list (a mapping, for instance).
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        uid = str(row.get("study_instance_uid") or "")
        if not uid:
            raise ValueError(f"worklist row {index} has no study_instance_uid")
        if uid in seen:
            raise ValueError(f"worklist row {index}: study {uid} is listed twice")
        seen.add(uid)
        clean = {}
        for key in _ORDER:
            value = row.get(key)
            # the common case first: text as it came from the service
            clean[key] = value if type(value) is str else _cell(key, value)
        clean["study_instance_uid"] = uid
        status = row.get("status")
        answered = str(getattr(status, "value", status)) in _ANSWERED
        clean["received_ms"] = "" if answered else _epoch_ms(row.get("received_at"))
        out.append(clean)
    return out


def columnar(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Normalised rows as ``{"count": n, "columns": {key: [value of each row]}}``.

    The form the browser receives: each key is sent once instead of once per row, about
    half the bytes of a list of rows for a worklist of thousands of studies.
    """
    return {"count": len(rows), "columns": {key: [r[key] for r in rows] for key in _ORDER}}


class WorklistTable(anywidget.AnyWidget):  # type: ignore[misc]
    """The study worklist, rendered and virtualised in the browser.

    Only the rows in view exist in the page, so thousands of studies scroll smoothly;
    sorting (click a header or press Enter or Space on it, again to reverse), the free-text
    filter (every word must match some column) and the site and status filters run in the
    browser and are kept when :attr:`rows` is replaced from Python. Sorting by urgency
    follows :attr:`urgencies` (most urgent first; other values after them, studies without
    one last); critical and urgent studies are highlighted, and say so in words. The
    *Waiting* column shows how long ago each study was received ("12 min", "3 h", "2 d",
    kept current) until its report is published; sorting by it puts the shortest wait
    first, again the longest.
    Each row has *Open* and *Claim*, and *Release* when the study is held by :attr:`user`
    (its ``claim`` column is that name); they are buttons (Tab reaches them, Enter or Space
    clicks). Clicking one sets :attr:`action`; :meth:`on_action` registers a handler,
    :meth:`on_shown` one for each time a browser draws the table.

    Parameters
    ----------
    rows
        Studies as mappings with ``study_instance_uid``, ``site``, ``patient_name``,
        ``patient_id``, ``study_description``, ``kinds``, ``received_at``, ``status``,
        ``urgency`` (``routine``, ``urgent``, ``critical``: the report's), ``findings`` and
        ``claim`` (the name of the reviewer who holds the study, "" for nobody).
    height
        Height of the scrolling list in CSS pixels.
    user
        The signed-in reviewer's name (``$JUPYTERHUB_USER``): rows she holds offer
        *Release*.

    Traitlets
    ---------
    rows : list of dict
        The studies (normalised by :func:`normalise_rows`); the browser receives them as
        ``table`` (:func:`columnar`), and only when they change.
    sort : dict
        ``{"key": column, "descending": bool}``; ``{}`` keeps the given order.
    urgencies : list of str
        The urgencies, most urgent first (:data:`URGENCY_ORDER`); the browser sorts by it.
    query, site_filter, status_filter : str
        The filters ("" for none).
    user : str
        The signed-in reviewer's name; "" (nobody signed in) offers no *Release*.
    action : dict
        ``{"kind": "open" | "claim" | "release", "study": uid, "n": counter}``, set by the
        browser.

    DOM hooks: ``.usr-worklist[data-total, data-shown, data-render-ms, data-sort-key,
    data-sort-dir, data-first-uid, data-drawn, data-last-action, data-ready]``,
    ``.usr-wl-th[data-key, data-dir, aria-sort]`` (``role=columnheader``) each with a
    ``button.usr-wl-sort``, ``input.usr-wl-query``, ``select.usr-wl-site``,
    ``select.usr-wl-status``, ``.usr-wl-row[data-uid, data-urgency, data-index]`` with
    ``.usr-wl-td[data-key]`` cells, ``button.usr-open``, ``button.usr-claim``,
    ``button.usr-release`` (rows held by :attr:`user` only), ``.usr-wl-count``.
    """

    _esm = esm("worklist")
    _css = css()

    rows = traitlets.List(traitlets.Dict())
    table = traitlets.Dict().tag(sync=True)
    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    height = traitlets.Int(480).tag(sync=True)
    sort = traitlets.Dict().tag(sync=True)
    urgencies = traitlets.List(
        traitlets.Unicode(),
        default_value=list(URGENCY_ORDER),
        help="The urgencies, most urgent first: the order of a sort by urgency.",
    ).tag(sync=True)
    query = traitlets.Unicode("").tag(sync=True)
    site_filter = traitlets.Unicode("").tag(sync=True)
    status_filter = traitlets.Unicode("").tag(sync=True)
    user = traitlets.Unicode(
        "", help="The signed-in reviewer's name: the rows she holds offer Release."
    ).tag(sync=True)
    action = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]] = (),
        *,
        height: int = 480,
        user: str = "",
        **kwargs: Any,
    ) -> None:
        self._handlers: list[Callable[[str, str], None]] = []
        self._shown: list[Callable[[], None]] = []
        columns = [{"key": k, "label": label, "width": w} for k, label, w in COLUMNS]
        rows = normalise_rows(rows)
        super().__init__(
            rows=rows, table=columnar(rows), columns=columns, height=height, user=user, **kwargs
        )
        self.on_msg(self._on_message)

    @traitlets.validate("rows")
    def _check_rows(self, proposal: dict[str, Any]) -> list[dict[str, Any]]:
        return normalise_rows(proposal["value"])

    @traitlets.observe("rows")
    def _send_rows(self, change: dict[str, Any]) -> None:
        self.table = columnar(change["new"])

    @traitlets.validate("sort")
    def _check_sort(self, proposal: dict[str, Any]) -> dict[str, Any]:
        value = dict(proposal["value"] or {})
        if value and value.get("key") not in _KEYS:
            raise traitlets.TraitError(f"WorklistTable.sort: unknown column {value.get('key')!r}")
        return {"key": value["key"], "descending": bool(value.get("descending"))} if value else {}

    def sort_by(self, key: str, *, descending: bool = False) -> None:
        """Sort by column ``key`` (as clicking its header does)."""
        self.sort = {"key": key, "descending": descending}

    def on_shown(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` each time a browser has drawn the table."""
        self._shown.append(handler)

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "shown":
            for handler in self._shown:
                handler()

    def on_action(self, handler: Callable[[str, str], None]) -> None:
        """Call ``handler(kind, study_instance_uid)`` when a row's Open, Claim or Release is
        clicked (``kind``: one of :data:`ACTIONS`)."""
        self._handlers.append(handler)

    @traitlets.observe("action")
    def _on_action(self, change: dict[str, Any]) -> None:
        action = change["new"] or {}
        kind, study = action.get("kind"), action.get("study")
        if kind not in ACTIONS or not isinstance(study, str):
            return
        for handler in self._handlers:
            handler(kind, study)

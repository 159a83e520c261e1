"""The case library for data scientists: its de-identified instances as tables, and runs of
the pipeline (or a prototype processor) on them.

Scientists (scope ``custom:usreview:research``) read what trainees read: the hub's teaching
cases, de-identified copies of published studies with the expert's findings, impression,
recommendations and measurements (``GET /teaching``, see
:mod:`usreview.hub.api.handlers_teaching`); never a
study, never an identified instance. In a scientist's JupyterLab (``research.ipynb``):

>>> client = ReviewClient.from_environment()                    # doctest: +SKIP
>>> cases = case_table(client)              # one row per de-identified instance
>>> pw = cases[cases["kinds"].map(lambda kinds: "pw_doppler" in kinds)]   # doctest: +SKIP
>>> runs = run_on_cases(client, pw)         # the hub's pipeline, one row per quantity
>>> mine = run_on_cases(client, pw, registry=my_registry)   # your processors only

Every download is checked and audited by the service, and kept in the session's private
cache (a second run does not download again). An instance that cannot be downloaded or
read gives a row with ``status`` ``"error"`` and the reason; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal

import pandas as pd

from usreview.errors import ReviewError, UsreviewError

if TYPE_CHECKING:
    from usreview.dicom import ImageKind, UltrasoundInstance
    from usreview.processing import ProcessorResult, Registry
    from usreview.review.client import ReviewClient

__all__ = ["CASE_COLUMNS", "RUN_COLUMNS", "case_table", "run_on_cases"]

CASE_COLUMNS: Final = (
    "case_uid",
    "sop_instance_uid",
    "kinds",
    "frames",
    "size",
    "vessel",
    "side",
    "exam_type",
    "findings",
    "impression",
    "recommendations",
    "measurements",
)
"""The columns of :func:`case_table`: the instance (with the vessel and side its header
names), then its case's words (the labels) and the expert's measurements (``{"name",
"label", "value", "unit"}`` each, a tuple)."""

RUN_COLUMNS: Final = (
    "case_uid",
    "sop_instance_uid",
    "processor",
    "version",
    "status",
    "reason",
    "quantity",
    "value",
    "unit",
    "cycles",
)
"""The columns of :func:`run_on_cases` (then the case's labels, if the table has them)."""

_LABELS: Final = ("exam_type", "impression")
#: The kinds whose vessel the pipeline reads (spectral Doppler): ``case_table`` reads theirs.
_VESSEL_KINDS: Final = frozenset({"pw_doppler", "cw_doppler"})


def case_table(client: ReviewClient) -> pd.DataFrame:
    """The case library, one row per de-identified instance (:data:`CASE_COLUMNS`).

    ``kinds`` holds a tuple of image kinds (``"pw_doppler"``, ``"bmode"``, ...). ``vessel``
    (``"ica"``, ``"renal"``, ...) and ``side`` (``"left"``, ``"right"``) are what the
    pipeline reads in a spectral Doppler instance's header (coded anatomy, image
    laterality; :func:`usreview.processing.quantification.vessel.vessel_of`): those
    instances are downloaded (into the cache :func:`run_on_cases` reads), and ``None``
    when the header names no vessel, for other kinds, or when the download fails. A case
    whose instances were all left out does not appear.
    """
    rows = [
        {
            "case_uid": case["case_uid"],
            "sop_instance_uid": item["sop_instance_uid"],
            "kinds": tuple(item["kinds"]),
            "frames": item["frames"],
            "size": item["size"],
            **_vessel(client, case["case_uid"], item),
            "exam_type": case["exam_type"],
            "findings": case["findings"],
            "impression": case["impression"],
            "recommendations": case["recommendations"],
            "measurements": tuple(
                {key: m.get(key) for key in ("name", "label", "value", "unit")}
                for m in case.get("measurements", ())
            ),
        }
        for case in client.teaching_cases()
        for item in case["instances"]
    ]
    return pd.DataFrame(rows, columns=list(CASE_COLUMNS))


def _vessel(client: ReviewClient, case_uid: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """``vessel`` and ``side`` of a case's instance (``None`` each when unknown)."""
    from usreview.processing.quantification.vessel import vessel_of

    found = None
    if _VESSEL_KINDS & set(item["kinds"]):
        try:
            found = vessel_of(client.teaching_instance(case_uid, item["sop_instance_uid"]).dataset)
        except UsreviewError:
            found = None
    return {"vessel": found.name if found else None, "side": found.side if found else None}


def run_on_cases(
    client: ReviewClient,
    table: pd.DataFrame,
    *,
    registry: Registry | None = None,
    steps: tuple[tuple[str, frozenset[ImageKind]], ...] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[int, int], None] | Literal["text"] | None = "text",
) -> pd.DataFrame:
    """Run the pipeline on each instance of ``table`` (rows of :func:`case_table`).

    ``registry``, ``steps`` and ``params`` are those of
    :func:`usreview.processing.run_pipeline` (the hub's pipeline by default); a
    ``registry`` of your own without ``steps`` runs its processors, each on its kinds, in
    the order they were registered. One row per quantity (:data:`RUN_COLUMNS`), and one
    per processor that gave none (skipped or failed, with its reason); the table's
    ``exam_type`` and ``impression`` follow.

    ``progress``: ``"text"`` (the default) prints a line as each case starts, before its
    downloads (``case 3/40: 2 instances``), into the notebook cell's output; a callable is
    called as ``progress(done, total)`` after each instance (instances done, of all);
    ``None`` reports nothing.

    A table without rows (an empty library, or a selection that kept nothing: pandas
    then also drops the columns) gives a run without rows, with every column.

    Raises
    ------
    ReviewError
        ``table`` has rows but lacks ``case_uid`` or ``sop_instance_uid``.
    """
    from usreview.processing import run_pipeline  # scipy: only when a run is asked for

    if len(table) == 0:
        return pd.DataFrame([], columns=[*RUN_COLUMNS, *_LABELS])
    missing = {"case_uid", "sop_instance_uid"} - set(table.columns)
    if missing:
        raise ReviewError(f"the table has no column {', '.join(sorted(missing))}")
    if registry is not None and steps is None:
        steps = _own_steps(registry)
    wanted = table.drop_duplicates(["case_uid", "sop_instance_uid"])
    by_case: dict[str, list[dict[str, Any]]] = {}
    for record in wanted.to_dict("records"):
        by_case.setdefault(str(record["case_uid"]), []).append(record)
    run = partial(run_pipeline, registry=registry, steps=steps, params=params)
    rows: list[dict[str, Any]] = []
    done, total = 0, len(wanted)
    for number, (case_uid, records) in enumerate(by_case.items(), 1):
        if progress == "text":
            count = len(records)
            print(f"case {number}/{len(by_case)}: {count} instance{'s' * (count != 1)}", flush=True)
        for record in records:
            rows += _run_one(client, case_uid, record, run)
            done += 1
            if callable(progress):
                progress(done, total)
    columns = [*RUN_COLUMNS, *(name for name in _LABELS if name in table.columns)]
    return pd.DataFrame(rows, columns=columns)


def _own_steps(registry: Registry) -> tuple[tuple[str, frozenset[ImageKind]], ...] | None:
    """The steps of ``registry`` alone: its processors on their kinds (the hub's: ``None``,
    its pipeline)."""
    from usreview.processing.registry import REGISTRY

    return None if registry is REGISTRY else tuple((p.name, p.kinds) for p in registry)


def _run_one(
    client: ReviewClient,
    case_uid: str,
    record: Mapping[str, Any],
    run: Callable[[UltrasoundInstance], list[ProcessorResult]],
) -> list[dict[str, Any]]:
    """The rows of one instance of ``table``: its quantities, or why there are none."""
    uid = str(record["sop_instance_uid"])
    labels = {name: record[name] for name in _LABELS if name in record}
    base = {"case_uid": case_uid, "sop_instance_uid": uid}
    try:
        instance = client.teaching_instance(case_uid, uid)
    except UsreviewError as exc:
        return [{**base, "status": "error", "reason": str(exc), **labels}]
    rows: list[dict[str, Any]] = []
    for result in run(instance):
        about = {
            **base,
            "processor": result.provenance.processor,
            "version": result.provenance.version,
            "status": result.status.value,
            "reason": result.reason,
        }
        quantities = result.output.quantities
        rows += [
            {**about, "quantity": q.name, "value": q.value, "unit": q.unit, "cycles": q.cycles}
            | labels
            for q in quantities
        ]
        if not quantities and not result.ok:
            rows.append({**about, **labels})
    return rows

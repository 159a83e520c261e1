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
>>> mine = run_on_cases(client, pw, registry=my_registry, steps=(("my_psv", kinds),))

Every download is checked and audited by the service. An instance that cannot be
downloaded or read gives a row with ``status`` ``"error"`` and the reason; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from usreview.errors import ReviewError, UsreviewError

if TYPE_CHECKING:
    from usreview.dicom import ImageKind
    from usreview.processing import Registry
    from usreview.review.client import ReviewClient

__all__ = ["CASE_COLUMNS", "RUN_COLUMNS", "case_table", "run_on_cases"]

CASE_COLUMNS: Final = (
    "case_uid",
    "sop_instance_uid",
    "kinds",
    "frames",
    "size",
    "exam_type",
    "findings",
    "impression",
    "recommendations",
    "measurements",
)
"""The columns of :func:`case_table`: the instance, then its case's words (the labels) and
the expert's measurements (``{"name", "label", "value", "unit"}`` each, a tuple)."""

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


def case_table(client: ReviewClient) -> pd.DataFrame:
    """The case library, one row per de-identified instance (:data:`CASE_COLUMNS`).

    ``kinds`` holds a tuple of image kinds (``"pw_doppler"``, ``"bmode"``, ...). A case
    whose instances were all left out does not appear.
    """
    rows = [
        {
            "case_uid": case["case_uid"],
            "sop_instance_uid": item["sop_instance_uid"],
            "kinds": tuple(item["kinds"]),
            "frames": item["frames"],
            "size": item["size"],
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


def run_on_cases(
    client: ReviewClient,
    table: pd.DataFrame,
    *,
    registry: Registry | None = None,
    steps: tuple[tuple[str, frozenset[ImageKind]], ...] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run the pipeline on each instance of ``table`` (rows of :func:`case_table`).

    ``registry``, ``steps`` and ``params`` are those of
    :func:`usreview.processing.run_pipeline` (the hub's pipeline by default). One row per
    quantity (:data:`RUN_COLUMNS`), and one per processor that gave none (skipped or
    failed, with its reason); the table's ``exam_type`` and ``impression`` follow.
    ``progress(done, total)`` is called after each instance.

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
    wanted = table.drop_duplicates(["case_uid", "sop_instance_uid"])
    rows: list[dict[str, Any]] = []
    total = len(wanted)
    for done, record in enumerate(wanted.to_dict("records"), 1):
        case_uid, uid = str(record["case_uid"]), str(record["sop_instance_uid"])
        labels = {name: record[name] for name in _LABELS if name in record}
        base = {"case_uid": case_uid, "sop_instance_uid": uid}
        try:
            instance = client.teaching_instance(case_uid, uid)
        except UsreviewError as exc:
            rows.append({**base, "status": "error", "reason": str(exc), **labels})
        else:
            results = run_pipeline(instance, registry=registry, steps=steps, params=params)
            for result in results:
                about = {
                    **base,
                    "processor": result.provenance.processor,
                    "version": result.provenance.version,
                    "status": result.status.value,
                    "reason": result.reason,
                }
                quantities = result.output.quantities
                rows += [
                    {
                        **about,
                        "quantity": q.name,
                        "value": q.value,
                        "unit": q.unit,
                        "cycles": q.cycles,
                        **labels,
                    }
                    for q in quantities
                ]
                if not quantities and not result.ok:
                    rows.append({**about, **labels})
        if progress is not None:
            progress(done, total)
    columns = [*RUN_COLUMNS, *(name for name in _LABELS if name in table.columns)]
    return pd.DataFrame(rows, columns=columns)

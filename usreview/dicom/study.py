"""Group instances into studies and series."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from usreview.dicom.reader import UltrasoundInstance

__all__ = ["Series", "Study", "group_studies"]


@dataclass
class Series:
    """The instances of one Series Instance UID, ordered by Instance Number then UID."""

    series_instance_uid: str
    instances: list[UltrasoundInstance] = field(default_factory=list)

    @property
    def description(self) -> str:
        """Series Description of the first instance (may be empty)."""
        return str(self.instances[0].dataset.get("SeriesDescription", "")) if self.instances else ""


@dataclass
class Study:
    """The series of one Study Instance UID, ordered by Series Number then UID."""

    study_instance_uid: str
    series: list[Series] = field(default_factory=list)

    @property
    def instances(self) -> list[UltrasoundInstance]:
        """Every instance of the study, series by series."""
        return [instance for s in self.series for instance in s.instances]

    @property
    def patient_id(self) -> str:
        """Patient ID of the first instance (may be empty)."""
        first = self.instances[:1]
        return str(first[0].dataset.get("PatientID", "")) if first else ""


def _number(instance: UltrasoundInstance, keyword: str) -> int:
    try:
        return int(instance.dataset.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def group_studies(instances: Iterable[UltrasoundInstance]) -> list[Study]:
    """Group instances by Study then Series Instance UID.

    Studies keep the order in which they were first seen; series are sorted by Series Number,
    instances by Instance Number (UID as tie-break). An instance seen twice (same SOP Instance
    UID) is kept once. Missing UIDs group under the empty string.
    """
    studies: dict[str, dict[str, Series]] = {}
    seen: set[str] = set()
    series_number: dict[str, int] = {}
    for instance in instances:
        uid = instance.sop_instance_uid
        if uid and uid in seen:
            continue
        seen.add(uid)
        by_series = studies.setdefault(instance.study_instance_uid, {})
        key = instance.series_instance_uid
        by_series.setdefault(key, Series(key)).instances.append(instance)
        series_number.setdefault(key, _number(instance, "SeriesNumber"))
    result = []
    for study_uid, by_series in studies.items():
        ordered = sorted(
            by_series.values(),
            key=lambda s: (series_number[s.series_instance_uid], s.series_instance_uid),
        )
        for s in ordered:
            s.instances.sort(key=lambda i: (_number(i, "InstanceNumber"), i.sop_instance_uid))
        result.append(Study(study_uid, ordered))
    return result

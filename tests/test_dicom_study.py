"""Grouping instances into studies and series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_us
from usreview.dicom import group_studies, iter_dicom_paths, read


def test_group_by_study_and_series_in_order(tmp_path: Path) -> None:
    pixels = np.zeros((1, 8, 8), np.uint8)
    layout = [("s1", "a", 2, 3), ("s1", "a", 2, 1), ("s1", "b", 1, 1), ("s2", "c", 1, 1)]
    for n, (study, series, series_number, instance_number) in enumerate(layout):
        write_us(
            tmp_path / f"{n}.dcm",
            pixels,
            StudyInstanceUID=f"1.2.3.{study[1]}",
            SeriesInstanceUID=f"1.2.3.{study[1]}.{ord(series)}",
            SeriesNumber=series_number,
            InstanceNumber=instance_number,
        )
    (tmp_path / "0.truth.json").write_text("{}")
    paths = list(iter_dicom_paths([tmp_path]))
    assert len(paths) == 4
    instances = [read(p) for p in paths]
    instances.append(read(paths[0]))  # the same instance twice counts once
    studies = group_studies(instances)
    assert [s.study_instance_uid for s in studies] == ["1.2.3.1", "1.2.3.2"]
    first = studies[0]
    assert [s.series_instance_uid for s in first.series] == ["1.2.3.1.98", "1.2.3.1.97"]
    numbers = [int(i.dataset.InstanceNumber) for i in first.series[1].instances]
    assert numbers == [1, 3]
    assert len(first.instances) == 3
    assert first.patient_id == "SYN-1"

"""A teaching case made as the hub makes one: a de-identified copy and its description."""

from __future__ import annotations

import hashlib
from pathlib import Path

from usreview.dicom import read
from usreview.store.teaching import (
    TeachingCase,
    TeachingInstance,
)
from usreview.teaching import UidMap, deidentify


def teaching_case(
    folder: Path, source: Path, study: str, *, impression: str = "simple cyst"
) -> TeachingCase:
    """A de-identified copy of ``source`` in ``folder`` and the case describing it."""
    folder.mkdir(mode=0o700)
    uids = UidMap()
    instance = read(source)
    copy = deidentify(instance, uids, label="TEACHING-1")
    path = folder / f"{copy.SOPInstanceUID}.dcm"
    copy.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    kinds = tuple(k.value for k in instance.kinds)
    item = TeachingInstance(
        str(copy.SOPInstanceUID),
        str(copy.SOPClassUID),
        kinds,
        instance.pixels.number_of_frames,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    return TeachingCase(uids(study), "general", "cyst", impression, "", kinds, (), (item,))

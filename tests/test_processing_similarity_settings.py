"""The similarity index measures what an image shows, not how the scanner displayed it.

Ground truth: simulated studies of the seven classes of ``test_processing_similarity``.
The same anatomy (the same simulation, seed 0) is shown again with other display settings:
the gain 6 dB up and down (a shift of the log-compressed grey levels of 6 dB worth at the
image's dynamic range), a dynamic range of 45 and of 70 dB (simulated again), and for
tissue and M-mode the depth moved by 1 cm (the region's depth origin, and the anatomy
itself 1 cm deeper). Each must rank above every image of another class of the same kind:
a re-acquisition of the same patient is more alike than another disease. Version 1.0 of
the descriptor failed both: the same lesion image with the gain 6 dB up scored 0.74 and
other patients' plain tissue 0.93; lesion and plain tissue differed by 0.01. The checks
are ranks, not similarity thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.processing_support import CLASSES
from usreview.dicom import read
from usreview.dicom.enum import RegionDataType
from usreview.processing.similarity import Descriptor, LibraryEntry, describe, rank
from usreview.simulate import simulate

#: Seeds of the images of the other classes (and of the class itself, for the separation).
OTHER_SEEDS = (1, 2, 3, 4)
BASE_SEED = 0

pytestmark = pytest.mark.slow


def _simulated(folder: Path, name: str, seed: int, **settings: float) -> Path:
    kind, params = CLASSES[name]
    label = "-".join(f"{k}{v}" for k, v in settings.items())
    out = folder / f"{name}-{seed}-{label}".replace(" ", "_").replace(",", "")
    [path] = simulate(kind, out, seed=seed, **params, **settings)
    return path


def _described(path: Path) -> Descriptor:
    descriptor = describe(read(path))
    assert descriptor is not None
    return descriptor


def _edited(path: Path, label: str, edit: Callable[[pydicom.Dataset], None]) -> Path:
    dataset = pydicom.dcmread(path)
    edit(dataset)
    out = path.with_name(f"{path.stem}.{label}.dcm")
    dataset.save_as(out)
    return out


def _gain(db: float, dynamic_range_db: float) -> Callable[[pydicom.Dataset], None]:
    """The display's gain changed by ``db``: every grey level that is not black moves by
    as many levels as ``db`` is worth at the dynamic range, clipped to 0-255."""
    shift = round(255 * db / dynamic_range_db)

    def edit(dataset: pydicom.Dataset) -> None:
        pixels = dataset.pixel_array.astype(np.int16)
        shown = pixels > 0
        pixels[shown] = np.clip(pixels[shown] + shift, 0, 255)
        dataset.PixelData = pixels.astype(np.uint8).tobytes()

    return edit


def _tissue_regions(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [
        r for r in dataset.SequenceOfUltrasoundRegions if r.RegionDataType == RegionDataType.TISSUE
    ]


def _depth_origin_moved(dataset: pydicom.Dataset) -> None:
    """The same pixels, the depth of every tissue region 1 cm further from the probe."""
    for region in _tissue_regions(dataset):
        region.ReferencePixelPhysicalValueY = float(region.ReferencePixelPhysicalValueY) + 1.0


def _anatomy_deeper(dataset: pydicom.Dataset) -> None:
    """The anatomy of the largest tissue region 1 cm deeper (its rows moved down 1 cm, the
    last centimetre coming back at the top)."""
    region = max(
        _tissue_regions(dataset),
        key=lambda r: (
            (r.RegionLocationMaxX1 - r.RegionLocationMinX0)
            * (r.RegionLocationMaxY1 - r.RegionLocationMinY0)
        ),
    )
    y0, y1 = region.RegionLocationMinY0, region.RegionLocationMaxY1 + 1
    x0, x1 = region.RegionLocationMinX0, region.RegionLocationMaxX1 + 1
    pixels = dataset.pixel_array.copy()
    rows = round(1.0 / abs(float(region.PhysicalDeltaY)))
    pixels[y0:y1, x0:x1] = np.roll(pixels[y0:y1, x0:x1], rows, axis=0)
    dataset.PixelData = pixels.tobytes()


def _same_anatomy(folder: Path, name: str) -> tuple[Path, dict[str, Path]]:
    """The image of ``name`` (seed 0) and the same anatomy under other settings."""
    base = _simulated(folder, name, BASE_SEED)
    truth = json.loads(base.with_suffix(".truth.json").read_text())
    dynamic_range = float(truth["params"]["dynamic_range_db"])
    variants = {
        "gain +6 dB": _edited(base, "gain+6", _gain(6.0, dynamic_range)),
        "gain -6 dB": _edited(base, "gain-6", _gain(-6.0, dynamic_range)),
        "dynamic range 45 dB": _simulated(folder, name, BASE_SEED, dynamic_range_db=45),
        "dynamic range 70 dB": _simulated(folder, name, BASE_SEED, dynamic_range_db=70),
    }
    if CLASSES[name][0] != "pw":  # a depth axis
        variants["depth origin 1 cm deeper"] = _edited(base, "origin", _depth_origin_moved)
        variants["anatomy 1 cm deeper"] = _edited(base, "deeper", _anatomy_deeper)
    return base, variants


@pytest.fixture(scope="module")
def patients(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Descriptor]:
    """Other patients: each class's images of :data:`OTHER_SEEDS`."""
    folder = tmp_path_factory.mktemp("patients")
    return {
        (name, seed): _described(_simulated(folder, name, seed))
        for name in CLASSES
        for seed in OTHER_SEEDS
    }


@pytest.mark.parametrize("name", list(CLASSES))
def test_the_same_anatomy_under_other_settings_ranks_above_every_other_class(
    name: str, patients: dict[tuple[str, int], Descriptor], tmp_path: Path
) -> None:
    kind = CLASSES[name][0]
    base, variants = _same_anatomy(tmp_path, name)
    library = [
        LibraryEntry(f"same anatomy, {label}", label, _described(path))
        for label, path in variants.items()
    ] + [
        LibraryEntry(f"other class, {other} {seed}", f"{other} {seed}", descriptor)
        for (other, seed), descriptor in patients.items()
        if other != name and CLASSES[other][0] == kind
    ]
    order = [m.entry.case_uid for m in rank(_described(base), library, limit=len(library))]
    assert len(order) == len(library)
    same = [i for i, case in enumerate(order) if case.startswith("same anatomy")]
    assert same == list(range(len(variants))), order  # all of them first


def test_every_tissue_image_finds_all_of_its_class_before_any_other_class(
    patients: dict[tuple[str, int], Descriptor],
) -> None:
    # Plain tissue and tissue with lesions: version 1.0 told them apart by 0.01 and put a
    # plain image before another patient's lesions (or the reverse) for 3 of 12 B-mode
    # images of seeds 1-6. (Spectra and M-mode were apart already: the first test file
    # checks that each finds its own class first.)
    images = {key: d for key, d in patients.items() if CLASSES[key[0]][0] == "bmode"}
    for (name, seed), descriptor in images.items():
        library = [
            LibraryEntry(f"{other} {s}", f"{other} {s}", d)
            for (other, s), d in images.items()
            if (other, s) != (name, seed)
        ]
        found = rank(descriptor, library, limit=len(library))
        order = [m.entry.case_uid.rsplit(" ", 1)[0] for m in found]
        own = len(OTHER_SEEDS) - 1
        assert order[:own] == [name] * own, (name, seed, order)

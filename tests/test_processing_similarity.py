"""The index of similarity against the case library (:mod:`usreview.processing.similarity`).

Ground truth: simulated studies of seven classes whose answer is known (normal, stenotic
and renal spectra; plain tissue and tissue with large lesions; normal and dilated left
ventricles in M-mode). Two studies of each class are the library; new studies (other
seeds) must find a case of their own class first. On the real files beside the checkout,
the same image in another encoding (MANIFEST.md says which) is the most similar other file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import REAL_FILES, real_file
from tests.processing_support import CLASSES
from usreview.dicom import read
from usreview.processing.similarity import (
    DIMENSION,
    KINDS,
    PARTS,
    VERSION,
    Descriptor,
    LibraryEntry,
    describe,
    rank,
    similar_cases_finding,
)
from usreview.simulate import simulate
from usreview.teaching import UidMap, deidentify

LIBRARY_SEEDS = (1, 2)
QUERY_SEEDS = tuple(range(3, 13))


def _simulated(folder: Path, name: str, seed: int) -> Path:
    kind, params = CLASSES[name]
    [path] = simulate(kind, folder / f"{name}-{seed}".replace(" ", "_"), seed=seed, **params)
    return path


def _part(descriptor: Descriptor | tuple[float, ...], name: str) -> tuple[float, ...]:
    """The numbers of the part ``name`` (:data:`PARTS`) of a descriptor or its vector."""
    vector = descriptor.vector if isinstance(descriptor, Descriptor) else descriptor
    start = 0
    for part in PARTS:
        if part.name == name:
            return tuple(vector[start : start + part.size])
        start += part.size
    raise KeyError(name)


def _described(path: Path) -> Descriptor:
    descriptor = describe(read(path))
    assert descriptor is not None
    return descriptor


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[LibraryEntry]:
    folder = tmp_path_factory.mktemp("library")
    return [
        LibraryEntry(name, f"uid-{name}-{seed}", _described(_simulated(folder, name, seed)))
        for name in CLASSES
        for seed in LIBRARY_SEEDS
    ]


def test_new_studies_find_a_case_of_their_own_class_first(
    library: list[LibraryEntry], tmp_path: Path
) -> None:
    found = []
    for name, (kind, _) in CLASSES.items():
        for seed in QUERY_SEEDS:
            matches = rank(_described(_simulated(tmp_path, name, seed)), library, limit=3)
            found.append((name, seed, [m.entry.case_uid for m in matches]))
            # Only images of the same kind are compared, most similar first.
            kinds = {CLASSES[m.entry.case_uid][0] for m in matches}
            assert kinds == {kind}, (name, seed, kinds)
            scores = [m.similarity for m in matches]
            assert scores == sorted(scores, reverse=True) and scores[0] <= 1.0
    misses = [f for f in found if f[2][0] != f[0]]
    assert not misses, misses  # 70 of 70


def test_the_deidentified_copy_is_described_as_its_original(tmp_path: Path) -> None:
    # The library holds de-identified copies (pixels outside the regions blanked); the
    # queries are the originals: both must give the same descriptor.
    for name in ("carotid, normal", "tissue, lesions", "LV normal"):
        original = read(_simulated(tmp_path, name, 7))
        copy_path = tmp_path / f"{name}.copy.dcm"
        deidentify(original, UidMap(), label="CASE").save_as(copy_path, enforce_file_format=True)
        np.testing.assert_allclose(
            _described(copy_path).vector, _described(original.path).vector, atol=1e-6
        )


def test_rank_gives_one_match_per_case_of_the_same_kind_and_version() -> None:
    def entry(
        case: str, uid: str, kind: str, vector: list[float], version: str = VERSION
    ) -> LibraryEntry:
        unit = np.array(vector) / np.linalg.norm(vector)
        return LibraryEntry(case, uid, Descriptor(kind, tuple(unit), version))

    query = Descriptor("pw_doppler", (1.0, 0.0))
    entries = [
        entry("a", "a1", "pw_doppler", [1, 0.1]),
        entry("a", "a2", "pw_doppler", [1, 0.2]),  # the same case again: once only
        entry("b", "b1", "pw_doppler", [1, 1]),
        entry("c", "c1", "bmode", [1, 0]),  # another kind
        entry("d", "d1", "pw_doppler", [1, 0], version="0"),  # another version
        entry("e", "e1", "pw_doppler", [0, 1]),
        entry("f", "f1", "pw_doppler", [1, 0, 0]),  # another length (a damaged record)
    ]
    matches = rank(query, entries, limit=5)
    assert [(m.entry.case_uid, m.entry.sop_instance_uid) for m in matches] == [
        ("a", "a1"),
        ("b", "b1"),
        ("e", "e1"),
    ]
    assert matches[0].similarity == pytest.approx(1 / math.sqrt(1.01))
    assert matches[2].similarity == pytest.approx(0.0)
    assert [m.entry.case_uid for m in rank(query, entries, limit=1)] == ["a"]
    assert rank(query, entries, limit=0) == [] and rank(query, [], limit=3) == []


def test_descriptors_round_trip_and_garbage_is_refused() -> None:
    descriptor = Descriptor("bmode", (0.6, 0.8))
    assert Descriptor.from_dict(descriptor.as_dict()) == descriptor
    for garbage in (
        None,
        [],
        {"kind": "bmode", "version": VERSION},
        {"kind": "bmode", "version": VERSION, "vector": [0.6, "x"]},
        {"kind": "bmode", "version": VERSION, "vector": [float("nan")]},
        {"kind": 3, "version": VERSION, "vector": [1.0]},
        # Damaged records: an integer no float holds (it raised OverflowError), booleans,
        # vectors that are not of unit length (they ranked first, or gave a similarity of
        # -5, 1e300, ...).
        {"kind": "bmode", "version": VERSION, "vector": [10**400, 0]},
        {"kind": "bmode", "version": VERSION, "vector": [True, False]},
        {"kind": "bmode", "version": VERSION, "vector": [3.0, 4.0]},
        {"kind": "bmode", "version": VERSION, "vector": [-3.0, -4.0]},
        {"kind": "bmode", "version": VERSION, "vector": [1e300, 1e300]},
    ):
        assert Descriptor.from_dict(garbage) is None, garbage
    # A descriptor describe() made, its JSON, and the zero vector are taken as they are.
    assert Descriptor.from_dict({"kind": "bmode", "version": VERSION, "vector": [0, 1]}) == (
        Descriptor("bmode", (0.0, 1.0))
    )
    assert Descriptor.from_dict({"kind": "bmode", "version": VERSION, "vector": [0.0, 0.0]})


def test_a_recorded_descriptor_ranks_by_its_true_similarity() -> None:
    # A vector five times too long in the query's direction once ranked before the query's
    # own copy (similarity 5, shown as 1.00); read from the archive, it is refused.
    query = Descriptor("bmode", (0.6, 0.8))
    same = LibraryEntry("same", "s1", query)
    damaged = Descriptor.from_dict({"kind": "bmode", "version": VERSION, "vector": [4.0, 3.0]})
    assert damaged is None
    near = Descriptor.from_dict({"kind": "bmode", "version": VERSION, "vector": [0.8, 0.6]})
    assert near is not None
    matches = rank(query, [LibraryEntry("near", "n1", near), same])
    assert [(m.entry.case_uid, round(m.similarity, 4)) for m in matches] == [
        ("same", 1.0),
        ("near", 0.96),
    ]


def test_the_finding_names_the_cases_and_nothing_of_their_patients() -> None:
    first = LibraryEntry("1.2.3.45678901", "1.2.3.4", Descriptor("bmode", (1.0,)))
    second = LibraryEntry("1.2.5", "1.2.5.6", Descriptor("bmode", (0.6, 0.8)))
    third = LibraryEntry("1.2.7", "1.2.7.8", Descriptor("bmode", (1.0,)))
    matches = rank(Descriptor("bmode", (1.0,)), [first, third])
    finding = similar_cases_finding(matches)
    assert finding["code"] == "similar_cases" and finding["processor"] == "similarity"
    assert finding["text"] == (
        "Most similar cases of the case library (2 compared), closest first: "
        "TEACHING-45678901 (1st), TEACHING-1.2.7 (2nd)"
    )  # by rank: the cosine orders the cases, it does not say how alike they are
    evidence = finding["evidence"]
    assert set(evidence) == {"matches", "compared", "method"}
    assert evidence["method"] == f"similarity {VERSION}" and evidence["compared"] == 2
    # De-identified UIDs, the similarity and rank only: the case's words stay in the library.
    assert evidence["matches"][0] == {
        "case_uid": "1.2.3.45678901",
        "sop_instance_uid": "1.2.3.4",
        "similarity": 1.0,
        "rank": 1,
    }
    assert rank(Descriptor("bmode", (1.0,)), [second]) == []  # another length


#: Real files with the same image in another encoding (MANIFEST.md): lossy JPEG 2000 of the
#: lossless one; JPEG-LS of the RLE cine.
SAME_IMAGE = (
    ("pydicom-data__US1_J2KI.dcm", "pydicom-data__US1_J2KR.dcm", 0.95),
    ("dcm4che__jpeg-ls-Palette.dcm", "dcm4che__US-PAL-8-10x-echo.dcm", 0.999),
)


def test_real_files_are_described_and_the_same_image_is_found_in_another_encoding() -> None:
    library = []
    for entry in REAL_FILES:
        descriptor = _described(real_file(entry["file"]))
        vector = np.array(descriptor.vector)
        assert descriptor.kind in {k.value for k in KINDS}, entry["file"]
        assert np.all(np.isfinite(vector)) and np.linalg.norm(vector) == pytest.approx(1.0)
        library.append(LibraryEntry(entry["file"], entry["file"], descriptor))
    assert len(library) == len(REAL_FILES) >= 10
    for one, other, least in SAME_IMAGE:
        for query, expected in ((one, other), (other, one)):
            [entry] = [e for e in library if e.case_uid == query]
            found = rank(entry.descriptor, [e for e in library if e is not entry], limit=1)
            assert found[0].entry.case_uid == expected, (query, found)
            assert found[0].similarity >= least, (query, found[0].similarity)


def test_a_region_past_the_image_edge_is_clipped_not_ignored(tmp_path: Path) -> None:
    # This scanner's tissue region ends one column past its 800-column image.
    path = real_file("pydicom-data__OBXXXX1A.dcm")
    dataset = pydicom.dcmread(path)
    [tissue] = [r for r in dataset.SequenceOfUltrasoundRegions if r.RegionDataType == 1]
    assert tissue.RegionLocationMaxX1 == dataset.Columns
    tissue.RegionLocationMaxX1 = dataset.Columns - 1
    inside = tmp_path / "inside.dcm"
    dataset.save_as(inside)
    tissue.RegionDataType = 0  # no tissue region at all: the whole frame is described
    whole = tmp_path / "whole.dcm"
    dataset.save_as(whole)
    described = _described(path).vector
    np.testing.assert_allclose(described, _described(inside).vector, atol=1e-9)
    # Ignored, the region would leave the frame's rows as the profile's axis, not depth in cm:
    # the descriptor would have the same length, without its physical profile.
    assert len(_described(whole).vector) == len(described) == DIMENSION
    assert not any(_part(_described(whole), "profile")) and any(_part(described, "profile"))


def test_a_huge_frame_is_described_in_little_memory(tmp_path: Path) -> None:
    import tracemalloc

    [path] = simulate("bmode", tmp_path / "b", seed=1)
    dataset = pydicom.dcmread(path)
    big = np.repeat(np.repeat(dataset.pixel_array, 4, axis=0), 4, axis=1)  # 1920 x 2560
    dataset.Rows, dataset.Columns = big.shape
    dataset.PixelData = big.tobytes()
    for region in dataset.SequenceOfUltrasoundRegions:
        for keyword in ("MinX0", "MinY0", "MaxX1", "MaxY1"):
            setattr(
                region, f"RegionLocation{keyword}", 4 * getattr(region, f"RegionLocation{keyword}")
            )
        region.ReferencePixelX0, region.ReferencePixelY0 = (
            4 * region.ReferencePixelX0,
            4 * region.ReferencePixelY0,
        )
        region.PhysicalDeltaX, region.PhysicalDeltaY = (
            region.PhysicalDeltaX / 4,
            region.PhysicalDeltaY / 4,
        )
    dataset.save_as(tmp_path / "big.dcm")
    instance = read(tmp_path / "big.dcm")
    frame_bytes = instance.display_frame(0).nbytes
    tracemalloc.start()
    try:
        descriptor = describe(instance)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert descriptor is not None and np.isfinite(descriptor.vector).all()
    assert peak < 4 * frame_bytes, peak / frame_bytes  # 2.4x; 17x before it was sampled down
    # Sampled down, it is still much the same image as at its own size.
    similarity = float(np.dot(descriptor.vector, _described(path).vector))
    assert similarity > 0.95, similarity  # 0.96: its texture, enlarged, is smoother

"""Derived images leave the hub as DICOM: filtered stills and cines, the Doppler overlay.

:func:`~usreview.processing.execution.execute_file` turns every processor's images into
derived Ultrasound (Multi-frame) Image instances of the source (never Secondary Capture):
regions copied, the source referenced, the derivation recorded; dciodvfy finds no error;
the site delivers them as DICOM (outbox ``.dcm`` and C-STORE to its PACS). They are marked as
usreview's (Contributing Equipment, Manufacturer and model), so that one a PACS forwards back
to the hub is not processed again, and ``usreview analyze`` says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from usreview.cli import main
from usreview.dicom import read
from usreview.processing import (
    Code,
    CodingScheme,
    DerivedImage,
    Provenance,
    plausible,
    similarity,
)
from usreview.processing.execution import Outputs, execute_file
from usreview.processing.filters.derived import derived_dataset, usreview_derivation
from usreview.processing.recommendations import study as study_rule
from usreview.processing.registry import default_registry
from usreview.simulate import simulate
from usreview.site.config import PacsDestination
from usreview.site.deliver import deliver_to_outbox, is_dicom, send_to_pacs

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Outputs]]:
    """Per kind: the simulated source and what execute_file made of it."""
    folder = tmp_path_factory.mktemp("derived")
    out = {}
    for kind, params in (
        ("pw", {}),
        ("bmode", {"rows": 300, "columns": 400}),
        ("cine", {"frames": 4}),
    ):
        path = simulate(kind, folder / kind, seed=5, **params)[0]
        out[kind] = (path, execute_file(str(path)))
    return out


def _written(outputs: Outputs, folder: Path) -> list[Path]:
    paths = []
    for image in outputs.derived:
        path = folder / f"{image.processor}.{image.name}.dcm"
        path.write_bytes(image.data)
        paths.append(path)
    return paths


def test_the_doppler_overlay_is_a_derived_us_image_of_its_source(
    executed: dict[str, tuple[Path, Outputs]], tmp_path: Path
) -> None:
    source_path, outputs = executed["pw"]
    assert outputs.sr is not None and outputs.summary is not None
    [overlay] = outputs.derived
    assert (overlay.processor, overlay.version, overlay.name) == (
        "doppler_indices",
        default_registry().get("doppler_indices").version,
        "doppler_envelope",
    )
    [path] = _written(outputs, tmp_path)
    ds, source = pydicom.dcmread(path), pydicom.dcmread(source_path)
    assert ds.SOPClassUID == US_IMAGE != SECONDARY_CAPTURE
    assert ds.SOPInstanceUID == overlay.sop_instance_uid != source.SOPInstanceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (
        source.Rows,
        source.Columns,
    )
    assert ds.SequenceOfUltrasoundRegions == source.SequenceOfUltrasoundRegions
    assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)
    (code,) = ds.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113076",
        "DCM",
        "Segmentation",
    )
    assert f"doppler_indices {overlay.version}" in ds.DerivationDescription
    assert "envelope" in ds.DerivationDescription
    (ref,) = ds.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    # The envelope is drawn (yellow) inside the spectral region only, over the source's pixels.
    back = read(path)
    assert back.kinds == read(source_path).kinds
    spectral = next(r for r in back.regions if r.spatial_format.name == "SPECTRAL")
    x0, y0, x1, y1 = spectral.bounds
    rgb = back.frame(0)
    yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 220) & (rgb[..., 2] == 0)
    assert yellow[y0 : y1 + 1, x0 : x1 + 1].sum() > 100
    assert yellow.sum() == yellow[y0 : y1 + 1, x0 : x1 + 1].sum()
    grey = read(source_path).display_frame(0)
    assert np.array_equal(rgb[: y0 - 1, :, 1], grey[: y0 - 1])


def test_filters_give_a_still_and_one_multiframe_cine(
    executed: dict[str, tuple[Path, Outputs]], tmp_path: Path
) -> None:
    still_source, still = executed["bmode"]
    cine_source, cine = executed["cine"]
    assert still.sr is None and cine.sr is None  # nothing measured: images only
    assert [(d.processor, d.sop_class_uid, d.frames) for d in still.derived] == [
        ("speckle_obnlm", US_IMAGE, 1)
    ]
    assert [(d.processor, d.sop_class_uid, d.frames) for d in cine.derived] == [
        ("speckle_fast", US_MULTIFRAME, 4)
    ]
    [path] = _written(cine, tmp_path)
    back, source = read(path), read(cine_source)
    assert back.number_of_frames == 4 and back.regions == source.regions
    assert back.timing.frame_time_ms == source.timing.frame_time_ms
    assert pydicom.dcmread(path).DerivationCodeSequence[0].CodeValue == "113087"
    # Processing again gives the same instances: a retried job publishes nothing new.
    again = execute_file(str(still_source))
    assert [d.sop_instance_uid for d in again.derived] == [
        d.sop_instance_uid for d in still.derived
    ]
    assert [d.key for d in again.derived] == [d.key for d in still.derived]


FRAME_TIME, FRAME_TIME_VECTOR = 0x00181063, 0x00181065
_TIMING = ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate")
_NO_RATES = {"CineRate": None, "RecommendedDisplayFrameRate": None}


@pytest.mark.parametrize(
    ("edit", "left_out", "pointer"),
    [
        ({}, set(), FRAME_TIME),
        # no valid timing to point to (None: left out of the source): the pointer (Type 1C)
        # and what it names stay; with a valid rate, see the next test
        ({"FrameTime": 0.0, **_NO_RATES}, set(), FRAME_TIME),
        ({"FrameTime": -33.3, **_NO_RATES}, set(), FRAME_TIME),
        ({"FrameTime": float("nan"), **_NO_RATES}, set(), FRAME_TIME),
        ({"FrameTime": float("inf"), **_NO_RATES}, set(), FRAME_TIME),
        (
            {"CineRate": 0, "RecommendedDisplayFrameRate": -30},
            {"CineRate", "RecommendedDisplayFrameRate"},
            FRAME_TIME,
        ),
        ({"FrameTimeVector": [0, 33.3, -33.3, 33.3]}, {"FrameTimeVector"}, FRAME_TIME),
        ({"FrameTimeVector": [0, 33.3]}, {"FrameTimeVector"}, FRAME_TIME),  # 2 values, 4 frames
        (
            {
                "FrameTime": 0.0,
                "FrameTimeVector": [0, 25.0, 30.0, 25.0],
                "FrameIncrementPointer": [FRAME_TIME, FRAME_TIME_VECTOR],
            },
            {"FrameTime"},
            FRAME_TIME_VECTOR,
        ),
    ],
    ids=[
        "valid",
        "zero",
        "negative",
        "nan",
        "infinite",
        "rates",
        "vector-backwards",
        "vector-short",
        "two-pointers",
    ],
)
def test_a_derived_cine_leaves_out_invalid_timing_and_keeps_valid_timing(
    tmp_path: Path, edit: dict[str, object], left_out: set[str], pointer: int | None
) -> None:
    source_path = simulate("cine", tmp_path / "source", seed=5, frames=4)[0]
    source = pydicom.dcmread(source_path)
    for keyword, value in edit.items():
        if value is None:
            delattr(source, keyword)
        else:
            setattr(source, keyword, value)
    source.save_as(source_path)
    [path] = _written(execute_file(str(source_path)), tmp_path)
    derived = pydicom.dcmread(path)
    for keyword in _TIMING:
        if keyword in left_out:
            assert keyword not in derived, keyword
        else:
            assert str(derived.get(keyword)) == str(source.get(keyword)), keyword  # nan too
    assert derived.get("FrameIncrementPointer") == pointer
    # it says what the reader makes of the source, no more
    back, original = read(path).timing, read(source_path).timing
    assert (back.source, back.frame_time_ms) == (original.source, original.frame_time_ms)
    assert np.array_equal(back.offsets_ms, original.offsets_ms)


@pytest.mark.parametrize("rate", ["CineRate", "RecommendedDisplayFrameRate"])
@pytest.mark.parametrize("pointed", [True, False], ids=["pointer", "no-pointer"])
def test_a_derived_cine_times_its_frames_from_a_valid_rate(
    tmp_path: Path, rate: str, pointed: bool
) -> None:
    """Frame Time invalid, a rate valid: Frame Time = 1000 / rate, and the pointer names it."""
    source_path = simulate("cine", tmp_path / "source", seed=5, frames=4)[0]
    source = pydicom.dcmread(source_path)
    source.FrameTime = 0.0
    del source.CineRate, source.RecommendedDisplayFrameRate
    setattr(source, rate, 30)
    if not pointed:  # the source lacks the pointer (Type 1C): it gets one
        del source.FrameIncrementPointer
    source.save_as(source_path)
    [path] = _written(execute_file(str(source_path)), tmp_path)
    derived = pydicom.dcmread(path)
    assert int(derived.NumberOfFrames) == 4
    assert derived.FrameIncrementPointer == FRAME_TIME
    assert float(derived.FrameTime) == pytest.approx(1000 / 30, abs=1e-5)
    assert derived.get(rate) == 30  # the valid rate is kept
    back, original = read(path).timing, read(source_path).timing
    assert back.frame_time_ms == pytest.approx(original.frame_time_ms, abs=1e-5)
    assert np.allclose(back.offsets_ms, original.offsets_ms, atol=1e-4)
    if shutil.which("dciodvfy"):
        run = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert "FrameIncrementPointer" not in run.stdout + run.stderr


def test_derived_text_is_utf8_whatever_the_source_declared(tmp_path: Path) -> None:
    """A source in Latin-1, undeclared (as some scanners write) or declared: text kept."""
    path = simulate("bmode", tmp_path / "source", seed=1, rows=200, columns=240)[0]
    source = pydicom.dcmread(path)
    source.PatientName = "Ibáñez^José"
    source.SeriesDescription = "Ecografía"
    for charset in (None, "ISO_IR 100"):
        if charset is None:
            if "SpecificCharacterSet" in source:
                del source.SpecificCharacterSet
            source.save_as(path)  # pydicom's default encoding: Latin-1, undeclared
            assert b"Ib\xe1\xf1ez^Jos\xe9" in path.read_bytes()
        else:
            source.SpecificCharacterSet = charset
            source.save_as(path)
        folder = tmp_path / (charset or "none")
        folder.mkdir()
        [written] = _written(execute_file(str(path)), folder)
        derived = pydicom.dcmread(written)
        assert derived.SpecificCharacterSet == "ISO_IR 192", charset
        assert str(derived.PatientName) == "Ibáñez^José"
        assert derived.SeriesDescription.startswith("Ecografía ")
        assert "Ibáñez^José".encode() in written.read_bytes()


@pytest.mark.parametrize(
    ("offset", "kept"),
    [(None, False), ("+0130", True), ("+01:30", False)],
    ids=["hub", "source", "invalid"],
)
def test_derived_dates_and_times_are_local_with_their_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: str | None, kept: bool
) -> None:
    """Local time: in the source's valid offset (0008,0201) if it has one, else in the hub's,
    not written (it would date the site's copied study times too, whose zone is unknown)."""
    path = simulate("bmode", tmp_path / "source", seed=1, rows=200, columns=240)[0]
    if offset is not None:
        source = pydicom.dcmread(path)
        source.TimezoneOffsetFromUTC = offset
        source.save_as(path)
    monkeypatch.setenv("TZ", "America/New_York")  # the hub's zone, not UTC
    time.tzset()
    try:
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        [written] = _written(execute_file(str(path)), tmp_path)
        after = dt.datetime.now(dt.UTC)
        expected = offset if kept else dt.datetime.now().astimezone().strftime("%z")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert expected not in ("+0000", "", None)
    derived = pydicom.dcmread(written)
    assert derived.get("TimezoneOffsetFromUTC") == (offset if kept else None)
    for prefix in ("InstanceCreation", "Content", "Series"):
        moment = dt.datetime.strptime(
            f"{derived.get(prefix + 'Date')}{derived.get(prefix + 'Time')}{expected}",
            "%Y%m%d%H%M%S%z",
        )
        assert before <= moment <= after, prefix
    [contribution] = derived.ContributingEquipmentSequence
    assert str(contribution.ContributionDateTime).endswith(expected)


def test_each_derived_series_of_a_study_has_its_own_series_number(tmp_path: Path) -> None:
    """Every derived series was numbered the source's + 1000: a PACS showed the filtered
    images and the Doppler overlay of one source series under one Series Number."""
    path = simulate("bmode", tmp_path, seed=7, rows=200, columns=240)[0]
    second = pydicom.dcmread(path)  # another series of the study, and a sibling instance
    second.SeriesNumber, second.SeriesInstanceUID = 2, pydicom.uid.generate_uid()
    sibling = pydicom.dcmread(path)
    sibling.SOPInstanceUID = pydicom.uid.generate_uid()
    for name, ds in (("second", second), ("sibling", sibling)):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    sources = {
        "first": read(path),
        "second": read(tmp_path / "second.dcm"),
        "sibling": read(tmp_path / "sibling.dcm"),
    }
    registry = default_registry()
    processors = ("speckle_obnlm", "speckle_fast", "doppler_indices")

    def made(source: str, processor: str, version: str | None = None) -> pydicom.Dataset:
        instance = sources[source]
        known = registry.get(processor)
        provenance = Provenance(
            processor, version or known.version, dict(known.params), instance.sop_instance_uid
        )
        pixels = np.zeros((instance.rows, instance.columns), np.uint8)
        return derived_dataset(instance, pixels, provenance, description="filtered")

    numbers = {
        (s, p): int(made(s, p).SeriesNumber) for s in ("first", "second") for p in processors
    }
    assert len(set(numbers.values())) == len(numbers), numbers
    for (source, _), number in numbers.items():
        assert 10_000 <= number <= 2**31 - 1  # above the scanner's series and the SRs' 9001
        assert number % 10_000 == int(sources[source].dataset.SeriesNumber)
    for processor in processors:  # the same again; one series, one number for its instances
        again, sibling_ds = made("first", processor), made("sibling", processor)
        assert int(again.SeriesNumber) == numbers[("first", processor)]
        assert sibling_ds.SeriesInstanceUID == again.SeriesInstanceUID
        assert int(sibling_ds.SeriesNumber) == numbers[("first", processor)]
    newer = made("first", "speckle_obnlm", version="99")  # another series: its own number
    assert newer.SeriesInstanceUID != made("first", "speckle_obnlm").SeriesInstanceUID
    assert int(newer.SeriesNumber) not in numbers.values()


@pytest.mark.external
def test_dciodvfy_finds_no_error_in_the_derived_instances(
    executed: dict[str, tuple[Path, Outputs]], tmp_path: Path
) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    expected = {"pw": "USImage", "bmode": "USImage", "cine": "USMultiFrameImage"}
    for kind, (_, outputs) in executed.items():
        folder = tmp_path / kind
        folder.mkdir()
        [path] = _written(outputs, folder)
        run = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        report = run.stdout + run.stderr
        assert [line for line in report.splitlines() if line.startswith("Error")] == [], kind
        assert expected[kind] in report.split(), report


def test_usreview_derived_images_are_not_processed_again(
    executed: dict[str, tuple[Path, Outputs]], tmp_path: Path
) -> None:
    for kind, (source, outputs) in executed.items():
        assert outputs.derived and outputs.skipped is None, kind  # the original is processed
        assert usreview_derivation(pydicom.dcmread(source)) is None  # the simulator's own
        [path] = _written(outputs, tmp_path)
        ds = pydicom.dcmread(path)
        [contribution] = ds.ContributingEquipmentSequence
        assert contribution.Manufacturer == "usreview"
        assert contribution.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert outputs.derived[0].processor in contribution.ContributionDescription
        again = execute_file(str(path))  # forwarded back by the site's PACS
        assert (again.sr, again.summary, again.derived, again.problem) == (None, None, (), None)
        assert again.sop_instance_uid == ds.SOPInstanceUID
        assert again.skipped is not None and "usreview made" in again.skipped, kind
        assert outputs.derived[0].processor in again.skipped
        # The job records that nothing ran (``hub jobs --outdated`` then passes it over).
        assert again.processors == () and outputs.processors is not None
        assert f"{plausible.NAME}={plausible.VERSION}" in outputs.processors
        # marked before the Contributing Equipment Sequence: Manufacturer and model suffice
        del ds.ContributingEquipmentSequence
        assert usreview_derivation(ds) is not None
        ds.ManufacturerModelName = "usreview simulator"
        assert usreview_derivation(ds) is None
        ds.Manufacturer = "ACME"  # a scanner's derived image is processed as any other
        ds.ManufacturerModelName = "usreview processing"
        assert usreview_derivation(ds) is None


def test_analyze_says_a_usreview_derived_image_is_not_processed(
    executed: dict[str, tuple[Path, Outputs]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, outputs = executed["pw"]
    [path] = _written(outputs, tmp_path)
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not processed: a derived image that usreview made" in out
    assert "peak_systolic_velocity" not in out
    assert main(["analyze", str(path), "--json"]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    assert summary["skipped"].startswith("not processed: a derived image that usreview made")
    assert summary["quantities"] == [] and summary["processors"] == []


def test_a_job_records_the_descriptor_and_the_study_rule_its_results_depend_on(
    executed: dict[str, tuple[Path, Outputs]],
) -> None:
    """The similar cases of a summary are chosen by the descriptor (similarity 2.0): its
    version is in the job's record and the signature that names the outputs, so that
    ``hub jobs --outdated`` lists the jobs of an older descriptor. A PW spectrum may trigger
    the study evaluation: its version is recorded too, but not signed, since it changes
    nothing of the instance's own outputs."""
    descriptor = f"{similarity.NAME}={similarity.VERSION}"
    evaluation = f"{study_rule.NAME}={study_rule.VERSION}"
    for kind, (_, outputs) in executed.items():
        assert outputs.processors is not None and outputs.descriptor is not None, kind
        assert descriptor in outputs.processors
        assert (evaluation in outputs.processors) is (kind == "pw"), kind
        signed = sorted(p for p in outputs.processors if p != evaluation)
        digest = hashlib.sha256("\n".join(signed).encode()).hexdigest()[:16]
        assert outputs.signature == digest, kind
        if outputs.summary is not None:
            assert json.loads(outputs.summary)["signature"] == digest


def test_derived_image_holds_one_frame_or_a_cine() -> None:
    grey = np.zeros((4, 5), np.uint8)
    assert DerivedImage("a", grey, "x").number_of_frames == 1
    rgb = DerivedImage("a", np.zeros((4, 5, 3), np.uint8), "x")
    assert rgb.rgb and rgb.size == (4, 5) and rgb.frame(0).shape == (4, 5, 3)
    cine = DerivedImage("a", np.zeros((3, 4, 5), np.uint8), "x", multiframe=True)
    assert (cine.number_of_frames, cine.rgb, cine.size) == (3, False, (4, 5))
    assert cine.as_dict()["frames"] == 3
    colour_cine = DerivedImage("a", np.zeros((3, 4, 5, 3), np.uint8), "x", multiframe=True)
    assert colour_cine.rgb and colour_cine.frame(2).shape == (4, 5, 3)
    with pytest.raises(IndexError):
        cine.frame(3)
    for pixels, multiframe in (
        (np.zeros((3, 4, 5), np.uint8), False),  # frames without multiframe
        (np.zeros((4, 5), np.uint8), True),
        (np.zeros((3, 4, 5, 4), np.uint8), True),
        (np.zeros((4, 5), np.float32), False),
        (np.zeros((0, 4, 5), np.uint8), True),
    ):
        with pytest.raises(ValueError, match="'pixels'"):
            DerivedImage("a", pixels, "x", multiframe=multiframe)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'source_frame'"):
        DerivedImage("a", np.zeros((3, 4, 5), np.uint8), "x", multiframe=True, source_frame=1)
    code = Code("113076", CodingScheme.DCM, "Segmentation")
    assert DerivedImage("a", grey, "x", derivation=code).as_dict()["derivation"]["value"] == (
        "113076"
    )


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """A pynetdicom Storage SCP for US images on a free loopback port; what it received."""
    received: list[pydicom.Dataset] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PACS")
    for sop_class in (UltrasoundImageStorage, UltrasoundMultiFrameImageStorage):
        ae.add_supported_context(sop_class)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def test_the_site_delivers_derived_images_as_dicom(
    executed: dict[str, tuple[Path, Outputs]],
    tmp_path: Path,
    pacs: tuple[int, list[pydicom.Dataset]],
) -> None:
    port, received = pacs
    destination = PacsDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    sent = []
    for number, kind in enumerate(("pw", "cine"), start=1):
        _, outputs = executed[kind]
        [payload] = _written(outputs, tmp_path)
        assert is_dicom(payload)
        target = deliver_to_outbox(
            tmp_path / "outbox",
            payload,
            result_id=number,
            study_instance_uid=pydicom.dcmread(payload).StudyInstanceUID,
            kind="derived-image",
        )
        assert target.name == f"{number:08d}-derived-image.dcm"
        send_to_pacs(destination, target, calling_ae_title="GATEWAY")
        sent.append(outputs.derived[0].sop_instance_uid)
    assert [str(ds.SOPInstanceUID) for ds in received] == sent

"""A reviewer's calibrated measurements against simulated ground truth and real files' regions."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import real_file, region_item, write_us
from usreview.dicom import UltrasoundInstance, UltrasoundRegion, read
from usreview.errors import CalibrationError, MixedCalibrationError, ReportError
from usreview.processing.quantification.codes import CODES as PROCESSOR_CODES
from usreview.review import measure
from usreview.review.report import Report, build_report_sr, summary_text
from usreview.review.results import ResultsPanel
from usreview.review.widgets import ImageViewer
from usreview.simulate import simulate


def _study(root: Path, kind: str, **params: Any) -> tuple[UltrasoundInstance, dict[str, Any]]:
    (path,) = simulate(kind, root / kind, **params)
    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
    return read(path), truth


@pytest.fixture(scope="module")
def bmode(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("measure"), "bmode")


@pytest.fixture(scope="module")
def pw(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("measure"), "pw")


@pytest.fixture(scope="module")
def mmode(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("measure"), "mmode")


def _delta_px(truth: dict[str, Any]) -> float:
    return float(truth["region"]["physical_delta"][0])


# --- B-mode ------------------------------------------------------------------------------


def test_distance_between_point_targets_is_the_true_distance(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = bmode
    targets = [tuple(t["pixel"]) for t in truth["point_targets"]]
    for pair in truth["point_pairs"]:
        i, j = pair["points"]
        result = measure.distance(instance, targets[i], targets[j])
        assert result.value == pytest.approx(pair["distance_mm"], abs=1e-5)
        assert result.unit == "mm" and result.name == "distance"
        assert result.code is not None and result.code.value == "121206"
        in_cm = measure.distance(instance.regions, targets[i], targets[j], unit="cm")
        assert in_cm.value == pytest.approx(pair["distance_mm"] / 10.0, abs=1e-6)


def test_inclusion_diameter_and_ellipse_area_from_truth(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = bmode
    spacing_cm = _delta_px(truth)
    for inclusion in truth["inclusions"]:
        cx, cy = inclusion["centre_pixel"]
        a_px = inclusion["semi_axes_mm"][0] / 10.0 / spacing_cm
        b_px = inclusion["semi_axes_mm"][1] / 10.0 / spacing_cm
        lateral = measure.distance(instance, (cx - a_px, cy), (cx + a_px, cy))
        assert lateral.value == pytest.approx(inclusion["diameters_mm"][0], abs=1e-6)
        result = measure.ellipse(instance, (cx, cy), (cx + a_px, cy), (cx, cy + b_px))
        assert result.area.value == pytest.approx(inclusion["area_mm2"], rel=1e-6)
        assert result.area.unit == "mm2" and result.area.code is not None
        a, b = inclusion["semi_axes_mm"]
        assert result.circumference.value == pytest.approx(
            measure.ramanujan_circumference(a, b), rel=1e-9
        )
        assert result.major_axis.value == pytest.approx(2 * max(a, b))
        assert result.minor_axis.value == pytest.approx(2 * min(a, b))
        if inclusion["shape"] == "circle":
            assert result.circumference.value == pytest.approx(2 * math.pi * a, rel=1e-9)
        in_cm = measure.ellipse(instance, (cx, cy), (cx + a_px, cy), (cx, cy + b_px), unit="cm")
        assert in_cm.area.unit == "cm2"
        assert in_cm.area.value == pytest.approx(inclusion["area_mm2"] / 100.0, rel=1e-6)


def test_ramanujan_circumference_matches_the_elliptic_integral() -> None:
    a, b = 10.0, 1.0
    t = np.linspace(0.0, 2.0 * math.pi, 200_001)
    exact = float(np.trapezoid(np.hypot(a * np.sin(t), b * np.cos(t)), t))
    assert measure.ramanujan_circumference(a, b) == pytest.approx(exact, rel=4e-5)
    assert measure.ramanujan_circumference(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="negative"):
        measure.ramanujan_circumference(-1.0, 1.0)


def test_ellipse_third_point_need_not_be_perpendicular_and_anisotropic_pixels_count() -> None:
    region = UltrasoundRegion.from_dataset(
        region_item(
            RegionLocationMaxX1=199,
            RegionLocationMaxY1=199,
            PhysicalDeltaX=0.01,
            PhysicalDeltaY=0.02,
        )
    )
    # axis 40 px along x = 4 mm; third point 30 px below the axis line, 25 px sideways:
    # its distance from the axis is 30 px * 0.2 mm = 6 mm whatever the sideways offset
    result = measure.ellipse([region], (100, 100), (140, 100), (125, 130))
    assert result.area.value == pytest.approx(math.pi * 4.0 * 6.0)
    assert result.major_axis.value == pytest.approx(12.0)
    assert result.minor_axis.value == pytest.approx(8.0)
    with pytest.raises(ValueError, match="no width"):
        measure.ellipse([region], (100, 100), (140, 100), (160, 100))
    with pytest.raises(ValueError, match="coincide"):
        measure.ellipse([region], (100, 100), (100, 100), (120, 120))
    # the ellipse's far side leaves the region: refused, not silently measured
    with pytest.raises(CalibrationError, match="outside every"):
        measure.ellipse([region], (20, 100), (60, 100), (20, 120))


def test_distance_across_regions_of_different_calibration_is_refused(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    (bx0, by0), (bx1, by1) = (
        truth["bmode_region"]["location_min"],
        truth["bmode_region"]["location_max"],
    )
    (sx0, sy0), _ = truth["region"]["location_min"], truth["region"]["location_max"]
    inside_bmode = ((bx0 + bx1) / 2, (by0 + by1) / 2)
    inside_spectrum = (sx0 + 50, sy0 + 50)
    with pytest.raises(MixedCalibrationError) as caught:
        measure.distance(instance, inside_bmode, inside_spectrum)
    message = str(caught.value)
    assert "different calibration" in message and "measure within one region" in message
    assert "tissue" in message and "pw_spectral_doppler" in message
    # a distance inside the spectral display makes no sense either: cm/s by s
    with pytest.raises(CalibrationError, match="calibrated in cm"):
        measure.distance(instance, inside_spectrum, (sx0 + 80, sy0 + 90))


def test_real_dual_bmode_halves_are_separate_calibrations() -> None:
    instance = read(real_file("pydicom-data__gdcm-US-ALOKA-16.dcm"))
    left, right = instance.regions[0], instance.regions[1]
    delta_mm = left.delta_x * 10.0
    within = measure.distance(instance, (100, 100), (130, 140))
    assert within.value == pytest.approx(50.0 * delta_mm)
    assert within.details["region"]["bounds"] == list(left.bounds)
    with pytest.raises(MixedCalibrationError, match="different calibration"):
        measure.distance(instance, (300, 100), (400, 100))
    assert right.contains(400, 100)


def test_real_tissue_and_ecg_regions() -> None:
    instance = read(real_file("pydicom-data__OBXXXX1A.dcm"))
    tissue, ecg = instance.regions[0], instance.regions[1]
    with pytest.raises(MixedCalibrationError):
        measure.distance(instance, (400, 300), (400, 550))
    # the ECG trace has time on its x axis: two R waves give a heart rate
    x0 = ecg.min_x0 + 10
    beats = measure.heart_rate(instance, (x0, 550), (x0 + 100, 550))
    assert beats.value == pytest.approx(60.0 / (100 * ecg.delta_x))
    assert beats.unit == "/min"
    with pytest.raises(CalibrationError, match="time"):
        measure.heart_rate(instance, (400, 300), (450, 300))
    assert tissue.units_x.ucum == "cm"


# --- spectral Doppler --------------------------------------------------------------------


def _pw_pixel(truth: dict[str, Any], t: float, v: float) -> tuple[float, float]:
    """Image pixel of time ``t`` (s) and velocity ``v`` (cm/s, signed) in the spectral region."""
    x0 = truth["region"]["location_min"][0]
    return (x0 + t / truth["s_per_pixel"], truth["baseline_row"] - v / truth["cm_s_per_pixel"])


def _cycle_points(
    truth: dict[str, Any], cycle: dict[str, Any]
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Peak and end-diastole pixels of one true cycle, and the peak velocity at that column."""
    times = np.asarray(truth["column_times_s"])
    envelope = np.asarray(truth["envelope_cm_s"])
    start, end = cycle["start_s"], cycle["start_s"] + cycle["period_s"]
    inside = (times >= start) & (times < end)
    k = int(np.flatnonzero(inside)[np.argmax(np.abs(envelope[inside]))])
    peak_v = float(envelope[k])
    sign = 1.0 if truth["flow"] == "toward" else -1.0
    peak = _pw_pixel(truth, float(times[k]), peak_v)
    end_diastole = _pw_pixel(truth, end, sign * cycle["edv_cm_s"])
    return peak, end_diastole, abs(peak_v)


def test_velocity_follows_the_baseline_and_reference_value(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    x = truth["region"]["location_min"][0] + 100
    at_baseline = measure.velocity(instance, (x, truth["baseline_row"]))
    assert at_baseline.value == pytest.approx(0.0, abs=1e-9)
    up = measure.velocity(instance, (x, truth["baseline_row"] - 100))
    assert up.value == pytest.approx(100 * truth["cm_s_per_pixel"])
    assert up.details["flow"] == "toward" and up.details["time_s"] == pytest.approx(
        100 * truth["s_per_pixel"]
    )


@pytest.mark.parametrize("flow", ["toward", "away"])
def test_psv_edv_ri_from_picked_points_match_truth(tmp_path: Path, flow: str) -> None:
    instance, truth = _study(tmp_path, "pw", flow=flow)
    for cycle in truth["cycles"]:
        peak, end_diastole, peak_v = _cycle_points(truth, cycle)
        result = measure.doppler(instance, peak, end_diastole)
        assert result.psv.value == pytest.approx(peak_v, abs=1e-6)
        # the sampled maximum is within a column of the true peak
        assert result.psv.value == pytest.approx(cycle["psv_cm_s"], rel=0.01)
        assert result.edv.value == pytest.approx(cycle["edv_cm_s"], abs=1e-6)
        assert result.ri.value == pytest.approx(cycle["ri"], abs=0.005)
        assert result.psv.details["flow"] == flow
        assert result.edv.details["reversed"] is False
    assert truth["cycles"], "the simulation holds complete cycles"


def test_doppler_codes_are_the_processors_codes(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    peak, end_diastole, _ = _cycle_points(truth, truth["cycles"][0])
    result = measure.doppler(instance, peak, end_diastole)
    for m, name in zip(
        result.measurements,
        ("peak_systolic_velocity", "end_diastolic_velocity", "resistive_index"),
        strict=True,
    ):
        code, unit = PROCESSOR_CODES[name]
        assert m.name == name and m.code == code and m.unit == unit
        quantity = m.to_quantity()
        assert quantity.code == code and quantity.value == m.value
    assert result.psv.text.startswith("PSV ") and result.psv.text.endswith(" cm/s")
    assert result.ri.text == f"RI {result.ri.value:.3f}"


def test_reversed_diastolic_flow_gives_ri_above_one() -> None:
    region = UltrasoundRegion.from_dataset(
        region_item(
            RegionSpatialFormat=3,
            RegionDataType=3,
            RegionLocationMaxX1=399,
            RegionLocationMaxY1=199,
            PhysicalUnitsXDirection=4,
            PhysicalUnitsYDirection=7,
            PhysicalDeltaX=0.01,
            PhysicalDeltaY=-1.0,
            ReferencePixelY0=100,
        )
    )
    result = measure.doppler([region], (50, 20), (120, 110))  # +80 cm/s, then -10 cm/s
    assert result.psv.value == pytest.approx(80.0)
    assert result.edv.value == pytest.approx(-10.0)
    assert result.edv.details["reversed"] is True
    assert result.ri.value == pytest.approx(90.0 / 80.0)
    # flow away from the probe: magnitudes along the flow direction
    away = measure.doppler([region], (50, 180), (120, 110))
    assert away.psv.value == pytest.approx(80.0) and away.psv.details["flow"] == "away"
    assert away.edv.value == pytest.approx(10.0)
    with pytest.raises(ValueError, match="baseline"):
        measure.doppler([region], (50, 100), (120, 110))
    with pytest.raises(ValueError, match="exceeds the peak"):
        measure.doppler([region], (50, 90), (120, 20))


def test_velocity_outside_a_spectral_region_is_refused(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    (bx0, by0) = truth["bmode_region"]["location_min"]
    with pytest.raises(CalibrationError, match="s and cm/s"):
        measure.velocity(instance, (bx0 + 20, by0 + 20))
    with pytest.raises(CalibrationError, match="outside every"):
        measure.velocity(instance, (2, 2))


# --- M-mode ------------------------------------------------------------------------------


def _mmode_pixel(truth: dict[str, Any], t: float, row: float) -> tuple[float, float]:
    x0 = truth["region"]["location_min"][0]
    return (x0 + t / truth["region"]["physical_delta"][0], row)


def test_heart_rate_from_two_consecutive_beats(
    mmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = mmode
    y = truth["region"]["location_min"][1] + 20
    starts = truth["end_diastole_s"]
    for t0, t1 in itertools.pairwise(starts):
        beat, next_beat = _mmode_pixel(truth, t0, y), _mmode_pixel(truth, t1, y)
        result = measure.heart_rate(instance, beat, next_beat)
        assert result.value == pytest.approx(truth["heart_rate_bpm"], rel=1e-6)
        assert result.code == PROCESSOR_CODES["heart_rate"][0]
    with pytest.raises(ValueError, match="same time"):
        measure.heart_rate(instance, (100, y), (100, y + 10))


def test_wall_excursion_from_two_depths(
    mmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = mmode
    dt = truth["region"]["physical_delta"][0]
    x0 = truth["region"]["location_min"][0]
    septum = truth["septal_endocardium_row"]
    posterior = truth["posterior_endocardium_row"]
    for ed, es in zip(truth["end_diastole_s"], truth["end_systole_s"], strict=False):
        c_ed, c_es = round(ed / dt), round(es / dt)
        if not (0 <= c_ed < len(septum) and 0 <= c_es < len(septum)):
            continue
        sept = measure.excursion(instance, (x0 + c_ed, septum[c_ed]), (x0 + c_es, septum[c_es]))
        # the columns nearest end diastole and end systole: within a few hundredths of a mm
        assert sept.value == pytest.approx(truth["septal_excursion_mm"], abs=0.05)
        post = measure.excursion(
            instance, (x0 + c_ed, posterior[c_ed]), (x0 + c_es, posterior[c_es])
        )
        assert post.value == pytest.approx(truth["posterior_excursion_mm"], abs=0.05)
        assert post.unit == "mm" and post.code is None
    # the B-mode image above the strip is not an M-mode display
    (bx0, by0) = truth["bmode_region"]["location_min"]
    with pytest.raises(CalibrationError, match="M-mode"):
        measure.excursion(instance, (bx0 + 10, by0 + 10), (bx0 + 10, by0 + 40))
    with pytest.raises(MixedCalibrationError):
        measure.excursion(instance, (bx0 + 10, by0 + 10), (x0 + 10, septum[10]))


def test_measurement_views_and_validation() -> None:
    region = UltrasoundRegion.from_dataset(region_item())
    result = measure.distance([region], (0, 0), (30, 40))
    assert result.value == pytest.approx(10.0)  # 50 px x 0.2 mm
    assert result.text == "Distance 10.00 mm"
    view = result.as_dict()
    assert view["code"] == {"value": "121206", "scheme": "DCM", "meaning": "Distance"}
    assert view["points"] == [[0.0, 0.0], [30.0, 40.0]]
    json.dumps(view)
    with pytest.raises(ValueError, match="argument 'p1'"):
        measure.distance([region], (0, 0), ("a", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not 'mm' or 'cm'"):
        measure.distance([region], (0, 0), (1, 1), unit="in")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no concept code"):
        measure.excursion(
            [
                UltrasoundRegion.from_dataset(
                    region_item(RegionSpatialFormat=2, PhysicalUnitsXDirection=4)
                )
            ],
            (1, 1),
            (1, 5),
        ).to_quantity()


# --- regions that cannot calibrate -------------------------------------------------------


def test_the_caliper_shows_why_a_region_without_pixel_size_cannot_measure(
    tmp_path: Path,
) -> None:
    """A scanner that leaves PhysicalDeltaY out: the reader warns and reads 0; before, the
    caliper showed "Distance 10.00 mm" for a 22.36 mm diagonal (0.00 mm vertically)."""
    item = region_item(RegionLocationMaxX1=399, RegionLocationMaxY1=299)
    del item.PhysicalDeltaY
    path = write_us(tmp_path / "no-dy.dcm", np.zeros((1, 300, 400), np.uint8), regions=[item])
    instance = read(path)
    assert any("PhysicalDeltaY" in w for w in instance.warnings)
    reason = (
        "the tissue region at [0, 0, 399, 299] has no vertical pixel size (PhysicalDeltaY), "
        "so it cannot calibrate a measurement"
    )
    viewer = ImageViewer.from_instance(instance)
    for n, (tool, points) in enumerate(
        (
            ("distance", [[100.0, 100.0], [150.0, 200.0]]),
            ("distance", [[100.0, 100.0], [100.0, 200.0]]),
            ("ellipse", [[200.0, 150.0], [240.0, 150.0], [200.0, 180.0]]),
        ),
        start=1,
    ):
        viewer.request = {"tool": tool, "points": points, "n": n}
        assert viewer.error == reason
        assert viewer.result == {"n": n, "tool": tool, "points": points, "measurements": []}
        assert viewer.current == [] and viewer.measurements == []
    with pytest.raises(CalibrationError, match=r"no vertical pixel size \(PhysicalDeltaY\)"):
        measure.distance(instance, (100, 100), (150, 200))


def test_time_and_velocity_measurements_name_the_unusable_pixel_size() -> None:
    """Before: a velocity on a zero PhysicalDeltaY was "not calibrated in s and cm/s", a heart
    rate without PhysicalDeltaX "both beats are at the same time", an excursion read 0 mm."""
    spectral = region_item(
        RegionSpatialFormat=3,
        RegionDataType=3,
        PhysicalUnitsXDirection=4,
        PhysicalUnitsYDirection=7,
        PhysicalDeltaX=0.01,
        PhysicalDeltaY=0.0,
    )
    with pytest.raises(CalibrationError, match=r"vertical pixel size \(PhysicalDeltaY\) of 0,"):
        measure.velocity([UltrasoundRegion.from_dataset(spectral)], (10, 10))
    strip = region_item(RegionSpatialFormat=2, PhysicalUnitsXDirection=4)
    del strip.PhysicalDeltaX
    no_dx = [UltrasoundRegion.from_dataset(strip, [])]
    with pytest.raises(CalibrationError, match=r"no horizontal pixel size \(PhysicalDeltaX\)"):
        measure.heart_rate(no_dx, (10, 10), (40, 10))
    strip = region_item(RegionSpatialFormat=2, PhysicalUnitsXDirection=4)
    del strip.PhysicalDeltaY
    no_dy = [UltrasoundRegion.from_dataset(strip, [])]
    with pytest.raises(CalibrationError, match=r"no vertical pixel size \(PhysicalDeltaY\)"):
        measure.excursion(no_dy, (10, 10), (10, 40))


# --- a reviewer's measurement in the signed report -------------------------------------


def _measurement_groups(sr: Dataset) -> dict[str, list[tuple[str, float]]]:
    """Tracking Identifier -> (concept, value) of each TID 1501 group of ``sr``."""
    groups: dict[str, list[tuple[str, float]]] = {}
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        children = list(item.get("ContentSequence", []))
        stack.extend(children)
        if item.ConceptNameCodeSequence[0].CodeValue != "125007":  # Measurement Group
            continue
        (name,) = [
            c.TextValue for c in children if c.ConceptNameCodeSequence[0].CodeValue == "112039"
        ]  # Tracking Identifier
        groups[str(name)] = [
            (
                c.ConceptNameCodeSequence[0].CodeMeaning,
                float(c.MeasuredValueSequence[0].NumericValue),
            )
            for c in children
            if c.ValueType == "NUM"
        ]
    return groups


def test_a_labelled_reviewer_measurement_reaches_the_signed_report(tmp_path: Path) -> None:
    (path,) = simulate("bmode", tmp_path / "bmode", seed=3)
    instance, truth = read(path), json.loads(path.with_name(path.stem + ".truth.json").read_text())
    uid = instance.sop_instance_uid
    targets = [t["pixel"] for t in truth["point_targets"]]
    length = measure.distance(instance, targets[0], targets[1])
    width = measure.distance(instance, targets[0], targets[2])
    panel = ResultsPanel([])
    assert panel.add_measurement(
        {**length.as_dict(), "source_instance": uid}, label=" Left kidney length "
    )
    assert panel.add_measurement({**width.as_dict(), "source_instance": uid}, label="")
    body = {
        "exam_type": "abdominal",
        "impression": "Normal kidney.",
        "urgency": "routine",
        "measurements": panel.measurements(),
        "key_images": [uid],
    }
    report = Report.from_json(body)
    labelled, plain = report.measurements
    assert (labelled.label, plain.label) == ("Left kidney length", None)
    assert Report.from_json(report.to_json()) == report
    assert "label" not in report.to_json()["measurements"][1]  # unlabelled: JSON as before
    sr = build_report_sr(
        report,
        [pydicom.dcmread(path, stop_before_pixels=True)],
        reviewer="dr-x",
        organization="usreview hub",
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        version=1,
    )
    assert _measurement_groups(sr) == {
        "Left kidney length": [("Distance", pytest.approx(length.value))],
        "reviewer measurements": [("Distance", pytest.approx(width.value))],
    }
    sr.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    text = summary_text(report, reviewer="dr-x", version=1)
    assert (
        f"- Distance (Left kidney length): {length.value:g} mm (measured by the reviewer;" in text
    )
    for label, reason in (("x" * 65, "at most 64"), (3, "must be text"), ("a\x01", "control")):
        body["measurements"] = [{**panel.measurements()[0], "label": label}]
        with pytest.raises(ReportError, match=reason) as raised:
            Report.from_json(body)
        assert raised.value.field == "measurements[0].label"

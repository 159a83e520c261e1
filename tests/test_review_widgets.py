"""The review widgets' Python side: encoding, calibrated axes, picks, NIfTI bytes, worklist rows.

The browser side runs in ``test_review_widgets_browser.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import struct
from pathlib import Path
from typing import Any

import imagecodecs
import ipywidgets
import numpy as np
import pytest
import traitlets

from tests.conftest import region_item
from usreview.dicom import (
    PhysicalUnits,
    RegionSpatialFormat,
    UltrasoundInstance,
    UltrasoundRegion,
    read,
)
from usreview.errors import MixedCalibrationError
from usreview.review.results import ResultsPanel
from usreview.review.viewers import close_viewer, progressive_viewer, viewer_for
from usreview.review.widgets import (
    CineViewer,
    ImageViewer,
    MModeViewer,
    SpectralViewer,
    VolumeViewer,
    WorklistTable,
    volume,
)
from usreview.review.widgets._assets import css, esm
from usreview.review.widgets._axes import nice_step, ticks, trace_pixels
from usreview.review.widgets._encode import encode_frames
from usreview.review.widgets._nifti import nifti_bytes
from usreview.review.widgets.plot import angle_readout
from usreview.review.widgets.worklist import ACTIONS, COLUMNS, columnar, normalise_rows
from usreview.simulate import simulate
from usreview.store.status import StudyStatus

STATIC = Path(__file__).resolve().parents[1] / "usreview" / "review" / "widgets" / "static"
#: What a time display shows of its strip (unchanged by a look at the whole frame).
STRIP_TRAITS = ("image", "origin", "width", "height", "x_ticks", "y_ticks", "traces", "results")


def _study(root: Path, kind: str, **params: Any) -> tuple[UltrasoundInstance, dict[str, Any]]:
    (path,) = simulate(kind, root / kind, **params)
    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
    return read(path), truth


@pytest.fixture(scope="module")
def pw(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("widgets"), "pw")


@pytest.fixture(scope="module")
def bmode(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("widgets"), "bmode", seed=3)


@pytest.fixture(scope="module")
def mmode(tmp_path_factory: pytest.TempPathFactory) -> tuple[UltrasoundInstance, dict[str, Any]]:
    return _study(tmp_path_factory.mktemp("widgets"), "mmode")


# --- assets and encoding -----------------------------------------------------------------


def test_widget_code_is_bundled_and_fetches_nothing() -> None:
    for name in ("cine", "caliper", "plot", "worklist"):
        module = esm(name)
        assert "export default" in module and "function h(" in module
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name
        assert "import " not in text.replace("important", ""), path.name
    assert ".usr-worklist" in css()


@pytest.mark.parametrize("channels", [1, 3])
def test_frames_round_trip_through_each_encoding(channels: int) -> None:
    ramp = np.add.outer(np.arange(24) * 3, np.arange(32) * 2)  # smooth: JPEG keeps it
    grey = np.stack([ramp + 10 * k for k in range(4)]).astype(np.uint8)
    frames = grey if channels == 1 else np.stack([grey, grey // 2, 255 - grey], axis=-1)
    for encoding in ("jpeg", "png", "raw"):
        packed = encode_frames(frames, encoding)
        assert (packed.width, packed.height, packed.channels) == (32, 24, channels)
        assert len(packed.offsets) == 5 and packed.offsets[-1] == len(packed.data)
        for k in range(4):
            chunk = packed.data[packed.offsets[k] : packed.offsets[k + 1]]
            if encoding == "raw":
                decoded = np.frombuffer(chunk, np.uint8).reshape(frames[k].shape)
            elif encoding == "png":
                decoded = imagecodecs.png_decode(chunk)
            else:
                decoded = imagecodecs.jpeg8_decode(chunk)
            tolerance = 12 if encoding == "jpeg" else 0
            diff = np.abs(decoded.astype(int) - frames[k].astype(int))
            assert diff.max() <= tolerance, (encoding, diff.max())


def test_encoding_refuses_what_it_cannot_show() -> None:
    frames = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="encoding"):
        encode_frames(frames, "gif")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality"):
        encode_frames(frames, "jpeg", quality=0)
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(frames.astype(np.uint16))
    with pytest.raises(ValueError, match="frame 1"):
        encode_frames([frames[0], np.zeros((9, 8), np.uint8)])


# --- cine --------------------------------------------------------------------------------


def test_cine_takes_its_timing_from_the_dicom_header(tmp_path: Path) -> None:
    instance, truth = _study(tmp_path, "cine", frames=12, rows=128, columns=160, frame_rate_hz=40.0)
    viewer = CineViewer.from_instance(instance, encoding="png")
    assert viewer.number_of_frames == 12 and (viewer.width, viewer.height) == (160, 128)
    assert viewer.frame_rate == pytest.approx(40.0)
    assert viewer.frame_times_ms == pytest.approx([25.0 * k for k in range(12)])
    assert viewer.timing_source == "FrameTime" and viewer.encoding == "png"
    assert viewer.payload_bytes == viewer._offsets[-1] > 0
    vector, _ = _study(
        tmp_path / "v", "cine", frames=6, rows=128, columns=128, frame_time_vector=True
    )
    from_vector = CineViewer.from_instance(vector)
    assert from_vector.frame_times_ms == pytest.approx(
        np.asarray(vector.timing.offsets_ms).tolist()
    )
    assert from_vector.frame_time_ms == pytest.approx(1000.0 / 30.0)
    assert truth["kind"] == "cine"


def test_cine_controls_from_python() -> None:
    frames = np.zeros((5, 8, 8), np.uint8)
    viewer = CineViewer(frames, autoplay=True)
    assert viewer.playing and viewer.timing_source == "assumed 30 frames/s"
    viewer.step()
    assert (viewer.playing, viewer.frame) == (False, 1)
    viewer.step(-2)
    assert viewer.frame == 4  # wraps around the loop
    viewer.speed = 4.0
    with pytest.raises(traitlets.TraitError, match="speed"):
        viewer.speed = 8.0
    with pytest.raises(traitlets.TraitError, match="frame"):
        viewer.frame = 5
    with pytest.raises(ValueError, match="3 times for 5 frames"):
        CineViewer(frames, frame_time_ms=[0.0, 10.0, 20.0])
    with pytest.raises(ValueError, match="increase"):
        CineViewer(frames, frame_time_ms=[0.0, 10.0, 10.0, 20.0, 30.0])


# --- caliper -----------------------------------------------------------------------------


def _two_regions() -> list[UltrasoundRegion]:
    left = UltrasoundRegion.from_dataset(region_item(RegionLocationMaxX1=31, PhysicalDeltaX=0.02))
    right = UltrasoundRegion.from_dataset(
        region_item(
            RegionLocationMinX0=32,
            PhysicalDeltaX=0.05,
            PhysicalDeltaY=0.05,
        )
    )
    return [left, right]


def test_caliper_requests_are_measured_in_the_kernel() -> None:
    image = np.zeros((48, 64), np.uint8)
    viewer = ImageViewer(image, _two_regions(), filtered=image + 1)
    seen: list[list[Any]] = []
    viewer.on_measure(seen.append)
    viewer.request = {"tool": "distance", "points": [[2, 2], [5, 6]], "n": 1}
    assert viewer.error == ""
    (shown,) = viewer.result["measurements"]
    assert viewer.result["n"] == 1
    assert shown["name"] == "distance" and shown["value"] == pytest.approx(1.0)  # 5 px x 0.2 mm
    assert shown["text"] == "Distance 1.00 mm" and len(seen) == 1
    viewer.request = {"tool": "ellipse", "points": [[15, 20], [25, 20], [15, 25]], "n": 2}
    names = [m["name"] for m in viewer.result["measurements"]]
    assert names == ["area", "circumference", "major_axis", "minor_axis"]
    assert viewer.result["measurements"][0]["value"] == pytest.approx(np.pi * 2.0 * 1.0)
    # across the two regions: refused, the reason shown, nothing measured
    viewer.request = {"tool": "distance", "points": [[10, 10], [50, 10]], "n": 3}
    assert "different calibration" in viewer.error
    assert viewer.result == {
        "n": 3,
        "tool": "distance",
        "points": [[10.0, 10.0], [50.0, 10.0]],
        "measurements": [],
    }
    assert len(viewer.measurements) == 5
    with pytest.raises(MixedCalibrationError):
        viewer.measure([(10, 10), (50, 10)])
    viewer.request = {"tool": "distance", "points": [["a", 1], [2, 2]], "n": 4}
    assert "unreadable points" in viewer.error
    viewer.request = {"tool": "distance", "points": [[1, 1]], "n": 5}
    assert "needs 2 points" in viewer.error


def test_caliper_checks_its_images() -> None:
    regions = _two_regions()
    with pytest.raises(ValueError, match="filtered"):
        ImageViewer(np.zeros((48, 64), np.uint8), regions, filtered=np.zeros((40, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ImageViewer(np.zeros((48, 64), np.float32), regions)
    rgb = ImageViewer(np.zeros((48, 64, 3), np.uint8), regions, layout="side-by-side")
    assert imagecodecs.png_decode(rgb.original).shape == (48, 64, 3)
    assert rgb.filtered == b"" and rgb.layout == "side-by-side"
    rgb.set_image(np.full((48, 64, 3), 7, np.uint8), filtered=np.zeros((48, 64), np.uint8))
    assert imagecodecs.png_decode(rgb.original)[0, 0].tolist() == [7, 7, 7]
    assert imagecodecs.png_decode(rgb.filtered).shape == (48, 64)
    with pytest.raises(ValueError, match="differs"):
        rgb.set_image(np.zeros((40, 64), np.uint8))


def test_caliper_clear_and_frame_number_from_python() -> None:
    image = np.zeros((48, 64), np.uint8)
    viewer = ImageViewer(image, _two_regions())
    viewer.measure([(2, 2), (5, 6)])
    assert [m.name for m in viewer.current] == ["distance"]
    assert "frame_number" not in viewer.current[0].details  # a still: no frame
    viewer.clear()
    assert (viewer.current, viewer.result, viewer.error) == ([], {}, "")
    viewer.measure([(2, 2), (5, 6)])
    viewer.result = {}  # what the browser's Clear sends
    assert viewer.current == []
    viewer.set_image(image + 1, frame_number=4)
    (m,) = viewer.measure([(2, 2), (5, 6)])
    assert m.details["frame_number"] == 4 and viewer.result["measurements"][0]["details"] == {
        **m.details
    }
    with pytest.raises(MixedCalibrationError):
        viewer.measure([(10, 10), (50, 10)])
    assert viewer.current == []  # a refused pick leaves nothing current
    with pytest.raises(ValueError, match="frame_number"):
        viewer.set_image(image, frame_number=0)


# --- the report bar under each viewer ----------------------------------------------------


def _find(widget: Any, css_class: str) -> Any:
    """The one widget below ``widget`` with ``css_class`` (or of that type)."""
    found = []
    stack = [widget]
    while stack:
        item = stack.pop()
        classes = getattr(item, "_dom_classes", ())
        if css_class in classes or type(item).__name__ == css_class:
            found.append(item)
        stack.extend(getattr(item, "children", ()))
    assert len(found) == 1, f"{len(found)} widgets {css_class}"
    return found[0]


def _distance(caliper: ImageViewer, p0: list[float], p1: list[float], n: int) -> None:
    caliper.request = {"tool": "distance", "points": [p0, p1], "n": n}  # as the browser does
    assert caliper.error == ""


def test_add_to_report_adds_what_the_caliper_shows_once(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = bmode
    panel = ResultsPanel([])
    box = viewer_for(instance, {}, panel)
    caliper, add = _find(box, "ImageViewer"), _find(box, "usreview-add-measurement")
    (a, b), (c, d) = [truth["point_targets"][k]["pixel"] for k in (0, 1)], [[100, 100], [140, 100]]
    assert add.disabled  # nothing measured
    _distance(caliper, a, b, 1)
    assert not add.disabled

    # Clear: nothing is shown, so nothing is added
    caliper.result, caliper.error = {}, ""  # the browser's Clear
    assert add.disabled
    add.click()  # a click sent before the button was disabled
    assert panel.measurements() == []

    # measured again: added once, however often Add is clicked
    _distance(caliper, a, b, 2)
    add.click()
    assert add.disabled
    add.click()
    add.click()
    (first,) = panel.measurements()
    assert first["name"] == "distance" and first["origin"] == "reviewer"
    assert first["source_instance"] == instance.sop_instance_uid

    # a new measurement can be added after it
    _distance(caliper, c, d, 3)
    assert not add.disabled
    add.click()
    forty_px = 40 * truth["pixel_spacing_mm"]
    assert [m["value"] for m in panel.measurements()] == [first["value"], pytest.approx(forty_px)]

    # a refused pick leaves nothing to add (not the last good one again)
    caliper.request = {"tool": "distance", "points": [[1, 1], [2, 2]], "n": 4}  # outside
    assert caliper.error and add.disabled
    add.click()
    assert len(panel.measurements()) == 2


def test_reviewer_measurements_can_be_removed_before_publishing(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, _ = bmode
    panel = ResultsPanel([])
    box = viewer_for(instance, {}, panel)
    caliper, add = _find(box, "ImageViewer"), _find(box, "usreview-add-measurement")
    _distance(caliper, [100, 100], [140, 100], 1)
    add.click()
    caliper.request = {"tool": "ellipse", "points": [[200, 200], [230, 200], [200, 220]], "n": 2}
    add.click()
    assert [m["name"] for m in panel.measurements()] == [
        "distance", "area", "circumference", "major_axis", "minor_axis"
    ]  # fmt: skip
    removes = [row.children[1] for row in panel._own_box.children]
    assert all("usreview-own-remove" in r._dom_classes for r in removes)
    removes[1].click()
    removes[1].click()  # a double click removes that one only
    assert [m["name"] for m in panel.measurements()] == [
        "distance", "circumference", "major_axis", "minor_axis"
    ]  # fmt: skip
    assert not add.disabled  # the area is shown and no longer added: it can be again
    add.click()
    assert [m["name"] for m in panel.measurements()][-1] == "area"
    panel.remove_measurement(0)
    assert "distance" not in [m["name"] for m in panel.measurements()]
    with pytest.raises(IndexError, match="no measurement 9"):
        panel.remove_measurement(9)
    for _ in range(4):
        panel.remove_measurement(0)
    assert panel.measurements() == [] and "None yet" in panel._own_box.children[0].value


def test_a_label_goes_with_the_measurement(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, _ = bmode
    panel = ResultsPanel([])
    box = viewer_for(instance, {}, panel)
    caliper, add = _find(box, "ImageViewer"), _find(box, "usreview-add-measurement")
    label = _find(box, "usreview-measurement-label")
    assert isinstance(label, ipywidgets.Combobox) and "Kidney length" in label.options
    assert not label.ensure_option  # free text too
    _distance(caliper, [100, 100], [140, 100], 1)
    label.value = "  Left kidney length "
    add.click()
    (entry,) = panel.measurements()
    assert entry["label"] == "Left kidney length" and label.value == ""  # not carried over
    assert 'data-label="Left kidney length"' in panel._own_box.children[0].children[0].value
    _distance(caliper, [100, 100], [150, 100], 2)
    label.value = "x" * 65
    add.click()
    assert len(panel.measurements()) == 1 and "too long" in _find(box, "usreview-add-said").value
    label.value = ""
    add.click()
    assert "label" not in panel.measurements()[1]  # unlabelled: the JSON as before


def test_spectral_picks_are_added_once_and_only_what_changed_again(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    panel = ResultsPanel([])
    box = viewer_for(instance, {}, panel)
    spectral, add = _find(box, "SpectralViewer"), _find(box, "usreview-add-measurement")
    assert "Left ICA" in _find(box, "usreview-measurement-label").options
    x0, base = truth["region"]["location_min"][0], truth["baseline_row"]
    spectral.pick("peak", (x0 + 50, base - 100))
    spectral.pick("end_diastole", (x0 + 150, base - 40))
    add.click()
    add.click()
    assert [m["name"] for m in panel.measurements()] == [
        "peak_systolic_velocity", "end_diastolic_velocity", "resistive_index"
    ]  # fmt: skip
    assert add.disabled
    spectral.pick("end_diastole", (x0 + 150, base - 30))  # the same peak, another diastole
    add.click()
    names = [m["name"] for m in panel.measurements()]
    assert names.count("peak_systolic_velocity") == 1 and names.count("resistive_index") == 2


def test_a_caliper_on_a_cine_records_the_frame_it_measured_on(tmp_path: Path) -> None:
    instance, _ = _study(tmp_path, "cine", frames=12, rows=128, columns=160)
    panel = ResultsPanel([])
    box = viewer_for(instance, {}, panel)
    cine, caliper = _find(box, "CineViewer"), _find(box, "ImageViewer")
    add = _find(box, "usreview-add-measurement")
    cine.frame = 7  # paused on the 8th frame
    _distance(caliper, [40, 40], [60, 40], 1)
    assert caliper.current[0].details["frame_number"] == 8
    add.click()
    assert 'data-frame="8"' in panel._own_box.children[0].children[0].value
    cine.play()
    cine.frame = 2  # playing: the caliper keeps the frame it shows
    _distance(caliper, [40, 40], [70, 40], 2)
    assert caliper.current[0].details["frame_number"] == 8
    cine.pause()
    cine.frame = 0
    _distance(caliper, [40, 40], [60, 40], 3)
    assert caliper.current[0].details["frame_number"] == 1
    assert not add.disabled  # the same points on another frame: another measurement
    add.click()
    assert len(panel.measurements()) == 2


def test_a_practice_panel_keeps_measurements_for_practice_and_says_it_sends_nothing(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, _ = bmode
    practice = ResultsPanel([], practice=True)
    box = viewer_for(instance, {}, practice)
    add = _find(box, "usreview-add-measurement")
    assert add.description == "Keep for practice"
    shown = " ".join(getattr(c, "value", "") for c in practice.children)
    assert "Practice: your measurements (not sent anywhere)" in shown
    assert "Automatic results" not in shown and "report" not in shown
    _distance(_find(box, "ImageViewer"), [100, 100], [140, 100], 1)
    add.click()
    assert "Kept distance" in _find(box, "usreview-add-said").value
    assert [m["name"] for m in practice.measurements()] == ["distance"]
    [remove] = [row.children[1] for row in practice._own_box.children]
    assert "report" not in remove.tooltip
    with pytest.raises(ValueError, match="argument 'instances'"):
        ResultsPanel([{"sop_instance_uid": "1.2"}], practice=True)

    reviewers = ResultsPanel([])  # the study page's, as it was
    add = _find(viewer_for(instance, {}, reviewers), "usreview-add-measurement")
    assert add.description == "Add to report"
    assert reviewers.children[0].value == "<h3>Automatic results</h3>"
    assert "Your measurements" in reviewers.children[1].value


def test_a_viewer_built_again_and_again_leaves_one_callback_per_live_viewer(
    bmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    """A reviewer switching instances: the page closes the viewer it replaces, and the
    panel forgets that viewer's callback (it calls one per live viewer)."""
    instance, _ = bmode
    panel = ResultsPanel([])
    shown = viewer_for(instance, {}, panel)
    for _ in range(8):
        again = viewer_for(instance, {}, panel)
        close_viewer(shown)
        shown = again
        assert len(panel._observers) == 1
    other = viewer_for(instance, {}, panel)  # two viewers live at once: one callback each
    assert len(panel._observers) == 2
    assert all(w.comm is not None for w in (shown, other, *panel.children))  # panel kept
    caliper, add = _find(shown, "ImageViewer"), _find(shown, "usreview-add-measurement")
    _distance(caliper, [100, 100], [140, 100], 1)
    add.click()
    assert add.disabled
    panel.remove_measurement(0)
    assert not add.disabled  # the live viewer still follows the panel
    close_viewer(other)
    close_viewer(shown)
    panel.add_measurement({"name": "distance", "value": 1.0, "unit": "mm"})
    assert panel._observers == []

    heard: list[int] = []

    def callback() -> None:
        heard.append(1)

    forget = panel.on_change(callback)
    panel.on_change(callback)  # registering again changes nothing
    panel.remove_measurement(0)
    assert heard == [1]
    forget()
    forget()
    panel.add_measurement({"name": "distance", "value": 2.0, "unit": "mm"})
    assert heard == [1] and panel._observers == []

    # a viewer replaced while its instance was downloading is not completed
    progressive = progressive_viewer({"kinds": ["bmode"]}, b"png", panel)
    close_viewer(progressive.widget)
    progressive.complete(instance)
    assert panel._observers == [] and "usreview-first-frame" in (
        progressive.widget.children[0]._dom_classes
    )


def test_the_study_evaluation_says_when_it_was_sent_in_utc() -> None:
    from usreview.review.results import study_evaluation_html

    published = {"result": 7, "published_at": "2024-03-14T14:05:09.123456Z"}
    shown = study_evaluation_html({"rule": "sru", "version": "1", "published": published})
    assert "sent to the site as result 7 (2024-03-14 14:05 UTC)" in shown


# --- axes --------------------------------------------------------------------------------


def test_nice_steps_and_ticks_follow_the_calibration() -> None:
    assert nice_step(3.5) == 1.0 and nice_step(0.9) == 0.2 and nice_step(130) == 25.0
    with pytest.raises(ValueError):
        nice_step(0.0)
    region = UltrasoundRegion.from_dataset(
        region_item(
            RegionSpatialFormat=3,
            RegionDataType=3,
            RegionLocationMinY0=100,
            RegionLocationMaxX1=499,
            RegionLocationMaxY1=299,
            PhysicalUnitsXDirection=4,
            PhysicalUnitsYDirection=7,
            PhysicalDeltaX=0.005,
            PhysicalDeltaY=-0.75,
            ReferencePixelY0=150,
            ReferencePixelX0=0,
            ReferencePixelPhysicalValueX=0.25,
        )
    )
    for axis in ("x", "y"):
        marks = ticks(region, axis)  # type: ignore[arg-type]
        assert len(marks) >= 3
        for pixel, label in marks:
            x, y = (pixel, 200.0) if axis == "x" else (10.0, pixel)
            physical = region.to_physical(x, y)[0 if axis == "x" else 1]
            # pixels are rounded to 1/1000
            assert float(physical) == pytest.approx(float(label), abs=1e-3 * 0.75)
    assert "0" in [label for _, label in ticks(region, "y")]
    line = trace_pixels(region, [[0.5, 30.0], [float("nan"), 1.0], [1.0, -15.0]])
    assert line[1] is None
    assert line[0] == pytest.approx([50.0, 210.0]) and line[2] == pytest.approx([150.0, 270.0])


# --- spectral and M-mode ---------------------------------------------------------------


def test_spectral_viewer_axes_trace_and_picks(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    times, envelope = truth["column_times_s"], truth["envelope_cm_s"]
    viewer = SpectralViewer.from_instance(instance, trace=np.c_[times, envelope])
    x0, y0 = truth["region"]["location_min"]
    assert viewer.origin == [x0, y0] and viewer.baseline == pytest.approx(truth["baseline_row"])
    assert viewer.width == truth["region"]["location_max"][0] - x0 + 1
    (line,) = viewer.traces
    k = 100
    row = truth["baseline_row"] - envelope[k] / truth["cm_s_per_pixel"]
    assert line[k] == pytest.approx([x0 + times[k] / truth["s_per_pixel"], row], abs=0.01)
    assert [label for _, label in viewer.y_ticks].count("0") == 1
    assert [r["key"] for r in viewer.roles] == ["peak", "end_diastole", "next_peak"]

    viewer.pick("peak", (x0 + 50, truth["baseline_row"] - 100))
    (only,) = viewer.results
    assert only["name"] == "velocity"
    assert only["value"] == pytest.approx(100 * truth["cm_s_per_pixel"])
    viewer.pick("end_diastole", (x0 + 150, truth["baseline_row"] - 40))
    viewer.pick("next_peak", (x0 + 250, truth["baseline_row"] - 100))
    names = [r["name"] for r in viewer.results]
    assert names == [
        "peak_systolic_velocity",
        "end_diastolic_velocity",
        "resistive_index",
        "heart_rate",
    ]
    assert viewer.results[2]["value"] == pytest.approx(0.6)
    assert viewer.results[3]["value"] == pytest.approx(60.0 / (200 * truth["s_per_pixel"]))
    # an end-diastole point in the B-mode image above: refused, the reason shown
    bx0, by0 = truth["bmode_region"]["location_min"]
    viewer.pick("end_diastole", (bx0 + 5, by0 + 5))
    assert viewer.results == [] and "different calibration" in viewer.error
    with pytest.raises(ValueError, match="role"):
        viewer.pick("systole", (1, 1))


def test_mmode_viewer_depth_axis_traces_and_picks(
    mmode: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = mmode
    region = truth["region"]
    dt_s, dy_cm = region["physical_delta"]
    x0, y0 = region["location_min"]
    septum_rows = np.asarray(truth["septal_endocardium_row"])
    times = np.arange(len(septum_rows)) * dt_s
    depth_mm = (septum_rows - y0) * dy_cm * 10.0
    viewer = MModeViewer.from_instance(instance, trace=[np.c_[times, depth_mm]])
    assert viewer.y_label == "Depth (mm)"
    assert viewer.traces[0][7] == pytest.approx([x0 + 7, septum_rows[7]], abs=0.01)
    for pixel, label in viewer.y_ticks:
        assert (pixel - y0) * dy_cm * 10.0 == pytest.approx(float(label), abs=1e-6)
    ed = truth["end_diastole_s"]
    viewer.pick("beat", (x0 + ed[0] / dt_s, y0 + 10))
    viewer.pick("next_beat", (x0 + ed[1] / dt_s, y0 + 10))
    viewer.pick("depth0", (x0 + 20, y0 + 100))
    viewer.pick("depth1", (x0 + 30, y0 + 150))
    hr, excursion = viewer.results
    assert hr["name"] == "heart_rate" and hr["value"] == pytest.approx(truth["heart_rate_bpm"])
    assert excursion["value"] == pytest.approx(50 * dy_cm * 10.0)
    assert viewer.error == ""


def test_spectral_viewer_reads_out_the_doppler_correction_angle(
    pw: tuple[UltrasoundInstance, dict[str, Any]],
) -> None:
    instance, truth = pw
    # the simulated PW records 60° (the limit itself: no warning), 5 MHz and its PRF
    viewer = viewer_for(instance, {}, ResultsPanel([]))
    spectral = _find(viewer, "SpectralViewer")
    prf = f"{truth['prf_hz']:g}"
    assert spectral.readout == f"Angle correction 60° · 5 MHz · PRF {prf} Hz"
    assert spectral.warning == ""
    frame, region = instance.display_frame(0), spectral.region

    def shown(angle: float | None) -> SpectralViewer:
        changed = dataclasses.replace(region, doppler_correction_angle_deg=angle)
        return SpectralViewer(frame, instance.regions, region=changed)

    assert shown(52.0).readout.startswith("Angle correction 52° · ")
    assert shown(52.0).warning == "" and shown(60.04).warning == ""
    for angle, text in ((65.0, "65°"), (-70.0, "-70°"), (60.06, "60.1°")):
        above = shown(angle)
        assert above.readout.startswith(f"Angle correction {text} · ")
        assert f"{text} is above 60°" in above.warning
        assert "velocities are unreliable above 60°" in above.warning
    # a spectral region read without the angle, frequency or PRF (as some scanners write it)
    bare = UltrasoundRegion.from_dataset(
        region_item(
            RegionSpatialFormat=3,
            RegionDataType=3,
            PhysicalUnitsXDirection=4,
            PhysicalUnitsYDirection=7,
            PhysicalDeltaX=0.01,
            PhysicalDeltaY=-0.5,
            ReferencePixelY0=40,
        )
    )
    absent = SpectralViewer(np.zeros((48, 64), np.uint8), [bare])
    assert absent.readout == "No angle correction recorded" and absent.warning == ""
    assert angle_readout(bare) == ("No angle correction recorded", "")
    # M-mode has no Doppler angle to read out
    assert MModeViewer(np.zeros((48, 64), np.uint8), [dataclasses.replace(
        bare, spatial_format=RegionSpatialFormat.M_MODE, units_y=PhysicalUnits.CM
    )]).readout == ""  # fmt: skip


@pytest.mark.parametrize("kind", ["pw", "mmode"])
def test_time_displays_show_the_whole_frame_on_request_then_the_strip_as_it_was(
    kind: str, request: pytest.FixtureRequest
) -> None:
    instance, _ = request.getfixturevalue(kind)
    frame = instance.display_frame(0)
    viewer = (SpectralViewer if kind == "pw" else MModeViewer).from_instance(instance)
    x0, y0 = viewer.origin
    viewer.pick(viewer.roles[0]["key"], (x0 + 20, y0 + 20))
    strip = {name: viewer.trait_values()[name] for name in STRIP_TRAITS}
    assert viewer.view == "strip" and viewer.whole_image == b""  # sent only when asked for
    assert viewer.frame_size == [frame.shape[1], frame.shape[0]]
    assert imagecodecs.png_decode(viewer.image).shape[:2] == (strip["height"], strip["width"])

    viewer.view = "whole"
    whole = imagecodecs.png_decode(viewer.whole_image)
    assert whole.shape[0] == frame.shape[0] > strip["height"]
    assert np.array_equal(whole, frame)  # the B-mode above the strip with its gate or M-line
    bx0, by0, bx1, by1 = viewer.regions[0].bounds  # the 2D region, above the strip
    assert by1 < y0 and whole[by0 : by1 + 1, bx0 : bx1 + 1].any()

    viewer.view = "strip"
    assert {name: viewer.trait_values()[name] for name in STRIP_TRAITS} == strip
    assert viewer.picks and viewer.results == strip["results"]
    with pytest.raises(traitlets.TraitError):
        viewer.view = "bmode"


# --- volume ------------------------------------------------------------------------------


def test_nifti_header_carries_shape_spacing_and_orientation() -> None:
    voxels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = nifti_bytes(voxels, (0.5, 0.4, 0.3))
    assert struct.unpack_from("<i", data, 0)[0] == 348
    assert struct.unpack_from("<8h", data, 40)[:4] == (3, 4, 3, 2)
    assert struct.unpack_from("<hh", data, 70) == (2, 8)
    assert struct.unpack_from("<4f", data, 76)[1:4] == pytest.approx((0.3, 0.4, 0.5))
    assert struct.unpack_from("<f", data, 108)[0] == 352.0
    assert data[344:348] == b"n+1\x00"
    assert struct.unpack_from("<4f", data, 312) == pytest.approx((0.0, -0.4, 0.0, 0.0))
    assert data[352:] == voxels.tobytes()
    with pytest.raises(ValueError, match="spacing"):
        nifti_bytes(voxels, (0.5, 0.0, 0.3))


def test_volume_viewer_niivue_and_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    instance, truth = _study(tmp_path, "volume")
    viewer = VolumeViewer.from_instance(instance)
    assert viewer.backend == "niivue" and viewer.sliders == []
    (vol,) = viewer.viewer.volumes
    assert vol.data == nifti_bytes(instance.frames(), instance.voxel_spacing_mm or (1, 1, 1))
    slices = VolumeViewer.from_instance(instance, backend="slices")
    assert slices.backend == "slices" and len(slices.sliders) == 3
    image = slices.viewer.children[0].children[0]
    before = image.value
    slices.sliders[0].value = 0
    assert image.value != before
    assert imagecodecs.png_decode(image.value).shape == (instance.rows, instance.columns)
    monkeypatch.setattr(volume, "niivue_available", lambda: False)
    fallback = VolumeViewer(instance.frames(), (0.6, 0.6, 0.6))
    assert fallback.backend == "slices"
    assert "ipyniivue is not installed" in fallback.children[0].value
    with pytest.raises(ImportError, match="pip install"):
        VolumeViewer(instance.frames(), (0.6, 0.6, 0.6), backend="niivue")
    assert truth["kind"] == "volume"


# --- worklist ----------------------------------------------------------------------------


def test_worklist_rows_are_normalised_and_checked() -> None:
    received = dt.datetime(2024, 5, 6, 7, 8, 9, 123)
    (row,) = normalise_rows(
        [
            {
                "study_instance_uid": "1.2.3",
                "kinds": ("bmode", "pw_doppler"),
                "received_at": received,
                "findings": 2,
                "unknown": "dropped",
            }
        ]
    )
    assert row["received_at"] == "2024-05-06 07:08:09"
    assert row["kinds"] == ["bmode", "pw_doppler"] and row["findings"] == 2
    assert row["claim"] == "" and "unknown" not in row
    with pytest.raises(ValueError, match="row 0 has no study_instance_uid"):
        normalise_rows([{"site": "A"}])
    with pytest.raises(ValueError, match="listed twice"):
        normalise_rows([{"study_instance_uid": "1"}, {"study_instance_uid": "1"}])
    with pytest.raises(ValueError, match="cannot show"):
        normalise_rows([{"study_instance_uid": "1", "claim": object()}])
    with pytest.raises(ValueError, match="cannot show a dict"):  # not its keys as a list
        normalise_rows([{"study_instance_uid": "1", "claim": {"reviewer": "rita"}}])


def test_worklist_rows_reach_the_browser_by_column_and_only_when_changed() -> None:
    rows = [
        {"study_instance_uid": f"1.{n}", "site": f"S{n % 3}", "kinds": ["bmode"], "findings": n}
        for n in range(50)
    ]
    table = WorklistTable(rows)
    expected = normalise_rows(rows)
    assert table.table["count"] == 50
    columns = table.table["columns"]
    assert set(columns) == set(expected[0])
    assert [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ] == expected
    assert columnar(expected) == table.table
    as_rows = json.dumps(expected).encode()
    by_column = json.dumps(table.table).encode()
    assert len(by_column) < 0.75 * len(as_rows), (len(by_column), len(as_rows))
    assert "rows" not in table.keys and "table" in table.keys  # only the columns are synced

    sent: list[Any] = []
    table.observe(sent.append, "table")
    table.rows = [dict(r) for r in rows]  # the same studies, read again: nothing is sent
    assert sent == []
    table.rows = [*rows, {"study_instance_uid": "9.9", "site": "S9"}]
    assert len(sent) == 1 and sent[0]["new"]["count"] == 51
    assert sent[0]["new"]["columns"]["site"][-1] == "S9"

    shown: list[int] = []
    table.on_shown(lambda: shown.append(len(table.rows)))
    table._handle_custom_msg({"event": "other"}, [])
    assert shown == []
    table._handle_custom_msg({"event": "shown"}, [])  # as the browser says once drawn
    assert shown == [51]


def test_worklist_actions_and_sort_from_python() -> None:
    table = WorklistTable([{"study_instance_uid": "1.2", "site": "A"}])
    heard: list[tuple[str, str]] = []
    table.on_action(lambda kind, uid: heard.append((kind, uid)))
    table.action = {"kind": "claim", "study": "1.2", "n": 1}
    table.action = {"kind": "open", "study": "1.2", "n": 2}
    table.action = {"kind": "delete", "study": "1.2", "n": 3}  # not an action: ignored
    assert heard == [("claim", "1.2"), ("open", "1.2")]
    table.sort_by("received_at", descending=True)
    assert table.sort == {"key": "received_at", "descending": True}
    with pytest.raises(traitlets.TraitError, match="unknown column"):
        table.sort_by("password")
    table.rows = [*table.rows, {"study_instance_uid": "1.3", "received_at": dt.date(2024, 1, 2)}]
    assert [r["received_at"] for r in table.rows] == ["", "2024-01-02"]


def test_worklist_offers_release_on_the_rows_the_signed_in_reviewer_holds() -> None:
    table = WorklistTable(
        [{"study_instance_uid": "1.2", "claim": "rev"}, {"study_instance_uid": "1.3"}],
        user="rev",
    )
    assert table.user == "rev" and "user" in table.keys  # the browser compares the claim
    assert WorklistTable().user == ""  # nobody signed in: no Release anywhere
    assert ACTIONS == ("open", "claim", "release")
    heard: list[tuple[str, str]] = []
    table.on_action(lambda kind, uid: heard.append((kind, uid)))
    table.action = {"kind": "release", "study": "1.2", "n": 1}  # as the row's button does
    assert heard == [("release", "1.2")]
    code = esm("worklist")
    assert 'class: "usr-release", type: "button"' in code  # a real button: keyboard too
    assert 'act("release", r.study_instance_uid)' in code


def test_worklist_sorts_by_the_report_urgencies_and_styles_each_above_routine() -> None:
    from usreview.review.report import Urgency

    table = WorklistTable([{"study_instance_uid": "1.2", "urgency": "critical"}])
    # most urgent first, from the one list the form and the report share
    assert table.urgencies == ["critical", "urgent", "routine"]
    assert table.urgencies == [u.value for u in reversed(Urgency)]
    assert "urgencies" in table.keys  # the browser receives the order
    stylesheet = css()
    for urgency in table.urgencies[:-1]:
        assert f".usr-urgency-{urgency} {{" in stylesheet, urgency
    assert "usr-urgency-stat" not in stylesheet  # no second vocabulary


def test_worklist_rows_carry_the_received_time_for_the_waiting_column() -> None:
    rows = normalise_rows(
        [
            {"study_instance_uid": "1", "received_at": dt.datetime(2024, 5, 6, 7, 8, 9)},
            {"study_instance_uid": "2", "received_at": "2024-05-06 07:08"},  # as pages.py sends
            {"study_instance_uid": "3", "received_at": "2024-05-06T09:08:09.5+02:00"},
            {"study_instance_uid": "4", "received_at": dt.date(2024, 5, 6)},  # no time of day
            {"study_instance_uid": "5", "received_at": "yesterday"},
            {"study_instance_uid": "6"},
        ]
    )
    utc = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC).timestamp() * 1000
    assert [r["received_ms"] for r in rows] == [utc, utc - 9000, utc + 500, "", "", ""]
    assert rows[1]["received_at"] == "2024-05-06 07:08"  # shown as it came
    assert ("waiting", "Waiting", "70px") in COLUMNS
    table = WorklistTable(rows)
    assert "waiting" not in table.table["columns"]  # computed in the browser, kept current
    assert table.table["columns"]["received_ms"][0] == utc
    table.sort_by("waiting", descending=True)
    assert table.sort == {"key": "waiting", "descending": True}
    # A study whose report is out waits no more: no waiting time (but its received time).
    answered = normalise_rows(
        {"study_instance_uid": str(n), "received_at": "2024-05-06 07:08:09", "status": status}
        for n, status in enumerate(("in_review", "published", StudyStatus.DELIVERED, "failed"))
    )
    assert [r["received_ms"] for r in answered] == [utc, "", "", utc]
    assert {r["received_at"] for r in answered} == {"2024-05-06 07:08:09"}


# --- streamed cine -----------------------------------------------------------------------


def _messages(viewer: CineViewer) -> list[tuple[dict[str, Any], bytes]]:
    """The custom messages the viewer sends on its comm, as the kernel would publish them."""
    sent: list[tuple[dict[str, Any], bytes]] = []

    def publish(msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                **_: Any) -> None:  # fmt: skip
        if data and data.get("method") == "custom":
            sent.append((data["content"], bytes(buffers[0])))

    viewer.comm.publish_msg = publish
    return sent


def test_png_size_reads_the_header_and_refuses_other_images() -> None:
    from usreview.review.widgets._encode import png_size

    grey = bytes(imagecodecs.png_encode(np.zeros((6, 9), np.uint8)))
    rgb = bytes(imagecodecs.png_encode(np.zeros((4, 5, 3), np.uint8)))
    assert png_size(grey) == (9, 6, 1) and png_size(rgb) == (5, 4, 3)
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"\xff\xd8 a JPEG")
    with pytest.raises(ValueError, match="8-bit grey or RGB"):
        png_size(bytes(imagecodecs.png_encode(np.zeros((4, 5), np.uint16))))


def test_a_streamed_cine_shows_its_first_frame_then_receives_chunks(tmp_path: Path) -> None:
    instance, truth = _study(tmp_path, "cine", frames=23, rows=128, columns=160)
    first = bytes(imagecodecs.png_encode(instance.display_frame(0)))
    viewer = CineViewer.streaming(first)
    assert (viewer.width, viewer.height, viewer.channels) == (160, 128, 1)
    assert viewer._first == first and viewer.number_of_frames == 0
    sent = _messages(viewer)
    with pytest.raises(ValueError, match="start"):
        viewer.append_frames(np.zeros((1, 128, 160), np.uint8))

    viewer.stream_instance(instance, chunk=10)
    assert viewer.number_of_frames == 23 and viewer.frames_sent == 23
    assert viewer.frame_rate == pytest.approx(truth["frame_rate_hz"])
    assert [(m["start"], len(m["offsets"]) - 1) for m, _ in sent] == [(0, 10), (10, 10), (20, 3)]
    assert viewer.payload_bytes == sum(len(data) for _, data in sent)
    for head, data in sent:  # every chunk decodes to the instance's frames (JPEG, close)
        for i in range(len(head["offsets"]) - 1):
            pixels = imagecodecs.jpeg8_decode(data[head["offsets"][i] : head["offsets"][i + 1]])
            truth_frame = instance.display_frame(head["start"] + i).astype(float)
            assert np.abs(pixels.astype(float) - truth_frame).mean() < 3.0

    with pytest.raises(ValueError, match="24 frames sent, 23 announced"):
        viewer.append_frames(np.zeros((1, 128, 160), np.uint8))
    with pytest.raises(ValueError, match="first frame's"):
        viewer.append_frames(np.zeros((1, 64, 160), np.uint8))

    # A view rendered late asks for what it missed: every chunk again, in order.
    sent.clear()
    viewer._handle_msg(
        {"content": {"data": {"method": "custom", "content": {"kind": "want"}}}, "buffers": []}
    )
    assert [m["start"] for m, _ in sent] == [0, 10, 20]
    with pytest.raises(ValueError, match="not a PNG"):
        CineViewer.streaming(b"nothing")

"""The review widgets in real headless chromium, through a standalone Voila server.

One Voila server for the module; each test writes its notebook into the served folder and
opens it as a dashboard (a kernel per page). Numbers are printed (run with ``-s``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest

from tests import browser_support
from usreview.dicom import read
from usreview.simulate import simulate

pytestmark = pytest.mark.slow

chromium = browser_support.chromium
voila = browser_support.voila

CINE_FRAMES, CINE_RATE = 100, 50.0
PLOT_MARGIN_LEFT, PLOT_MARGIN_TOP = 64, 12  # plot.js MARGIN


@pytest.fixture(scope="module")
def studies(voila: browser_support.VoilaServer) -> dict[str, Path]:
    """Simulated studies inside the served folder (notebooks open them by relative path)."""
    data = voila.root / "data"
    return {
        "cine": simulate(
            "cine",
            data / "cine",
            frames=CINE_FRAMES,
            rows=600,
            columns=800,
            frame_rate_hz=CINE_RATE,
        )[0],
        "bmode": simulate("bmode", data / "bmode", seed=3)[0],
        "pw": simulate("pw", data / "pw", seed=1)[0],
    }


def _truth(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.with_name(path.stem + ".truth.json").read_text()))


def _rel(voila: browser_support.VoilaServer, path: Path) -> str:
    return str(path.relative_to(voila.root))


@pytest.fixture
def page(chromium: Any) -> Any:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


def _value(locator: Any) -> float:
    return float(locator.get_attribute("data-value") or "nan")


def _attr(page: Any, selector: str, name: str) -> str:
    value = page.get_attribute(selector, name)
    assert value is not None, f"{selector} has no {name}"
    return str(value)


# --- cine --------------------------------------------------------------------------------


def test_cine_plays_at_the_dicom_frame_rate_pauses_and_steps(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    browser_support.write_notebook(
        voila.root / "cine.ipynb",
        [
            "import ipywidgets\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import CineViewer\n"
            f"viewer = CineViewer.from_instance(read({_rel(voila, studies['cine'])!r}), "
            "autoplay=True)\n"
            # The kernel's frame as it is now: a pause on frame 0 changes nothing.
            "label = ipywidgets.Label(f'kernel frame {viewer.frame}')\n"
            "label.add_class('kernel-frame')\n"
            "viewer.observe(lambda c: setattr(label, 'value', f'kernel frame {c.new}'), 'frame')\n"
            "mb = viewer.payload_bytes / 1e6\n"
            "print(f'encoded {mb:.1f} MB in {viewer.encode_seconds:.2f} s')",
            "ipywidgets.VBox([viewer, label])",
        ],
    )
    started = time.monotonic()
    browser_support.open_dashboard(page, voila.url("cine.ipynb"), ".usr-cine[data-ready=true]")
    shown_after = time.monotonic() - started
    root = ".usr-cine"
    assert _attr(page, root, "data-frames") == str(CINE_FRAMES)
    assert _attr(page, root, "data-playing") == "true"
    time.sleep(2.3)  # two complete one-second windows of the fps meter
    fps = float(_attr(page, root, "data-fps"))
    decode_ms = float(_attr(page, root, "data-decode-ms"))
    print(
        f"\ncine {CINE_FRAMES} frames 600x800 at {CINE_RATE:g} frames/s: dashboard ready in "
        f"{shown_after:.1f} s (decode {decode_ms:.0f} ms), playing at {fps:.1f} frames/s"
    )
    # distinct frames drawn per second: the DICOM rate, never more
    assert 30.0 <= fps <= CINE_RATE * 1.05, fps

    # half speed halves the rate
    page.select_option(".usr-speed", "0.5")
    time.sleep(2.3)
    half = float(_attr(page, root, "data-fps"))
    print(f"cine at 0.5x: {half:.1f} frames/s")
    assert half == pytest.approx(CINE_RATE / 2, rel=0.2)

    # pause: the frame stops advancing and the kernel learns where
    page.click(".usr-play")
    assert _attr(page, root, "data-playing") == "false"
    frame = int(_attr(page, root, "data-frame"))
    time.sleep(0.6)
    assert int(_attr(page, root, "data-frame")) == frame
    page.wait_for_selector(f".kernel-frame:has-text('kernel frame {frame}')", timeout=60_000)

    # step: exactly one frame each way
    page.click(".usr-next")
    assert int(_attr(page, root, "data-frame")) == (frame + 1) % CINE_FRAMES
    page.click(".usr-prev")
    page.click(".usr-prev")
    assert int(_attr(page, root, "data-frame")) == (frame - 1) % CINE_FRAMES
    time.sleep(0.3)
    assert int(_attr(page, root, "data-frame")) == (frame - 1) % CINE_FRAMES
    assert "frame" in page.inner_text(".usr-frame-label")


def test_a_streamed_cine_shows_its_first_frame_and_plays_before_every_frame_arrived(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    browser_support.write_notebook(
        voila.root / "stream.ipynb",
        [
            "import threading, time\n"
            "import imagecodecs\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import CineViewer\n"
            f"instance = read({_rel(voila, studies['cine'])!r})\n"
            "first = bytes(imagecodecs.png_encode(instance.display_frame(0)))\n"
            "viewer = CineViewer.streaming(first, playing=True)\n"
            "def feed():\n"
            "    time.sleep(1.0)\n"
            "    viewer.start(instance.number_of_frames, instance.timing.frame_time_ms)\n"
            "    for begin in range(0, instance.number_of_frames, 10):\n"
            "        frames = [instance.display_frame(k) for k in range(begin, begin + 10)]\n"
            "        viewer.append_frames(frames)\n"
            "        time.sleep(0.5)  # a slow network: 20 frames/s arrive, 50 are played\n"
            "threading.Thread(target=feed, daemon=True).start()",
            "viewer",
        ],
    )
    browser_support.open_dashboard(page, voila.url("stream.ipynb"), ".usr-cine[data-shown=true]")
    root = ".usr-cine"
    assert float(_attr(page, root, "data-first-ms")) < 1000
    seen: list[list[int]] = []  # (loaded, frame shown) while frames still arrive
    deadline = time.monotonic() + 60
    while True:
        loaded, frame = page.evaluate(  # both at once: frames keep arriving
            "() => { const d = document.querySelector('.usr-cine').dataset;"
            " return [Number(d.loaded), Number(d.frame)]; }"
        )
        if loaded >= CINE_FRAMES:
            break
        assert time.monotonic() < deadline, seen
        seen.append([loaded, frame])
        time.sleep(0.1)
    # it played the frames arrived, never one that had not
    assert any(frame > 10 for _, frame in seen), seen
    assert all(frame < max(loaded, 1) for loaded, frame in seen), seen
    page.wait_for_selector(".usr-cine[data-ready=true]", timeout=60_000)
    time.sleep(2.3)
    fps = float(_attr(page, root, "data-fps"))
    print(
        f"\nstreamed cine: first frame in {_attr(page, root, 'data-first-ms')} ms, then {fps:.1f}/s"
    )
    assert 30.0 <= fps <= CINE_RATE * 1.05, fps


# --- caliper -----------------------------------------------------------------------------


def test_caliper_measures_inclusions_and_refuses_mixed_calibration(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    browser_support.write_notebook(
        voila.root / "caliper.ipynb",
        [
            "import ipywidgets\n"
            "from scipy import ndimage\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import ImageViewer\n"
            f"bmode = read({_rel(voila, studies['bmode'])!r})\n"
            "smooth = ndimage.gaussian_filter(bmode.display_frame(0), 2)\n"
            "caliper = ImageViewer.from_instance(bmode, filtered=smooth)\n"
            f"duplex = ImageViewer.from_instance(read({_rel(voila, studies['pw'])!r}))\n"
            "ipywidgets.VBox([caliper, duplex])",
        ],
    )
    browser_support.open_dashboard(
        page, voila.url("caliper.ipynb"), ".usr-caliper[data-ready=true]"
    )
    page.wait_for_function("document.querySelectorAll('.usr-caliper[data-ready=true]').length == 2")
    truth = _truth(studies["bmode"])
    spacing_mm = truth["pixel_spacing_mm"]
    first = page.locator(".usr-caliper").nth(0)
    canvas = first.locator("canvas.usr-canvas").first.element_handle()

    # distance across the anechoic circle: its diameter, within one pixel
    circle = next(i for i in truth["inclusions"] if i["shape"] == "circle")
    cx, cy = circle["centre_pixel"]
    r_px = circle["radius_mm"] / spacing_mm
    browser_support.click_pixel(page, canvas, cx - r_px, cy)
    browser_support.click_pixel(page, canvas, cx + r_px, cy)
    text = first.locator(".usr-measure-text[data-name=distance]")
    text.wait_for(timeout=60_000)
    shown = _value(text)
    print(f"\ncaliper: diameter {shown:.3f} mm, truth {circle['diameters_mm'][0]:.3f} mm")
    assert shown == pytest.approx(circle["diameters_mm"][0], abs=spacing_mm)
    assert text.inner_text().startswith("Distance ") and text.inner_text().endswith(" mm")

    # ellipse on the elliptical inclusion: area within one pixel on each semi-axis
    oval = next(i for i in truth["inclusions"] if i["shape"] == "ellipse")
    ex, ey = oval["centre_pixel"]
    a_mm, b_mm = oval["semi_axes_mm"]
    first.locator(".usr-tool[data-tool=ellipse]").click()
    page.wait_for_function(
        "document.querySelector('.usr-caliper').dataset.tool === 'ellipse'", timeout=60_000
    )
    browser_support.click_pixel(page, canvas, ex, ey)
    browser_support.click_pixel(page, canvas, ex + a_mm / spacing_mm, ey)
    browser_support.click_pixel(page, canvas, ex, ey + b_mm / spacing_mm)
    area = first.locator(".usr-measure-text[data-name=area]")
    area.wait_for(timeout=60_000)
    value = _value(area)
    slack = math.pi * ((a_mm + spacing_mm) * (b_mm + spacing_mm) - a_mm * b_mm)
    print(f"caliper: ellipse area {value:.2f} mm², truth {oval['area_mm2']:.2f} mm²")
    assert value == pytest.approx(oval["area_mm2"], abs=slack)
    assert "mm²" in area.inner_text()
    assert first.locator(".usr-measure-text[data-name=circumference]").count() == 1
    assert first.locator(".usr-measure-error").inner_text() == ""

    # original and filtered toggle on the same pixel grid
    first.locator(".usr-toggle").click()
    page.wait_for_function(
        "document.querySelector('.usr-caliper').dataset.showing === 'filtered'", timeout=60_000
    )
    assert first.locator("canvas.usr-canvas[data-role=filtered]").count() == 1

    # a distance from the B-mode image into the spectral display is refused
    pw = _truth(studies["pw"])
    (bx0, by0), (bx1, by1) = pw["bmode_region"]["location_min"], pw["bmode_region"]["location_max"]
    (sx0, sy0) = pw["region"]["location_min"]
    second = page.locator(".usr-caliper").nth(1)
    duplex = second.locator("canvas.usr-canvas").first.element_handle()
    browser_support.click_pixel(page, duplex, (bx0 + bx1) / 2, (by0 + by1) / 2)
    browser_support.click_pixel(page, duplex, sx0 + 100, sy0 + 60)
    second.locator(".usr-measure-error:has-text('different calibration')").wait_for(timeout=60_000)
    message = second.locator(".usr-measure-error").inner_text()
    print(f"caliper refusal: {message}")
    assert "measure within one region" in message
    assert second.locator(".usr-measure-text").count() == 0


def test_clear_and_add_to_report_add_what_is_shown_once_and_it_can_be_removed(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    browser_support.write_notebook(
        voila.root / "report_bar.ipynb",
        [
            "import ipywidgets\n"
            "from usreview.dicom import read\n"
            "from usreview.review.results import ResultsPanel\n"
            "from usreview.review.viewers import viewer_for\n"
            f"bmode = read({_rel(voila, studies['bmode'])!r})\n"
            "panel = ResultsPanel([])\n"
            "ipywidgets.VBox([viewer_for(bmode, {}, panel), panel])",
        ],
    )
    browser_support.open_dashboard(
        page, voila.url("report_bar.ipynb"), ".usr-caliper[data-ready=true]"
    )
    add = "button.usreview-add-measurement"
    enabled = f"!document.querySelector('{add}').disabled"
    disabled = f"document.querySelector('{add}').disabled"
    assert page.locator(add).is_disabled()  # nothing measured
    truth = _truth(studies["bmode"])
    circle = next(i for i in truth["inclusions"] if i["shape"] == "circle")
    cx, cy = circle["centre_pixel"]
    r_px = circle["radius_mm"] / truth["pixel_spacing_mm"]
    canvas = page.locator("canvas.usr-canvas").first.element_handle()

    def measure() -> None:
        browser_support.click_pixel(page, canvas, cx - r_px, cy)
        browser_support.click_pixel(page, canvas, cx + r_px, cy)
        page.locator(".usr-measure-text[data-name=distance]").wait_for(timeout=60_000)
        page.wait_for_function(enabled, timeout=60_000)

    measure()
    page.locator(".usr-clear").click()
    page.locator(".usr-caliper[data-measured='0']").wait_for(timeout=10_000)
    page.wait_for_function(disabled, timeout=10_000)  # the kernel forgot the cleared value
    assert page.locator(".usreview-own").count() == 0

    measure()
    page.locator(".usreview-measurement-label input").fill("Cyst diameter")
    started = time.perf_counter()
    page.locator(add).click()
    page.locator(".usreview-own[data-label='Cyst diameter']").wait_for(timeout=10_000)
    page.wait_for_function(disabled, timeout=10_000)  # added once: no second click to make
    print(f"\nreport bar: added and disabled in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert page.locator(".usreview-own").count() == 1
    assert page.locator(".usreview-measurement-label input").input_value() == ""

    page.locator(".usreview-own-remove").click()
    page.wait_for_function(
        "document.querySelectorAll('.usreview-own').length === 0", timeout=10_000
    )
    page.wait_for_function(enabled, timeout=10_000)  # removed: it can be added again


# --- spectral Doppler --------------------------------------------------------------------


def test_spectral_viewer_picks_give_psv_edv_ri(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    truth = _truth(studies["pw"])
    browser_support.write_notebook(
        voila.root / "spectral.ipynb",
        [
            "import json\n"
            "import numpy as np\n"
            "from pathlib import Path\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import SpectralViewer\n"
            f"path = Path({_rel(voila, studies['pw'])!r})\n"
            "truth = json.loads(path.with_name('pw.truth.json').read_text())\n"
            "trace = np.c_[truth['column_times_s'], truth['envelope_cm_s']]\n"
            "SpectralViewer.from_instance(read(path), trace=trace)",
        ],
    )
    browser_support.open_dashboard(page, voila.url("spectral.ipynb"), ".usr-plot[data-ready=true]")
    root = page.locator(".usr-plot")
    assert root.get_attribute("data-kind") == "SpectralViewer"
    assert int(root.get_attribute("data-ticks-x") or 0) >= 3
    assert int(root.get_attribute("data-ticks-y") or 0) >= 3
    canvas = root.locator("canvas.usr-canvas").element_handle()
    x0, y0 = truth["region"]["location_min"]

    cycle = truth["cycles"][1]
    times = truth["column_times_s"]
    envelope = truth["envelope_cm_s"]
    inside = [k for k, t in enumerate(times) if cycle["start_s"] <= t < cycle["start_s"] + 0.5]
    k = max(inside, key=lambda i: abs(envelope[i]))
    dv, dt, baseline = truth["cm_s_per_pixel"], truth["s_per_pixel"], truth["baseline_row"]
    peak = (x0 + times[k] / dt, baseline - envelope[k] / dv)
    end = cycle["start_s"] + cycle["period_s"]
    end_diastole = (x0 + end / dt, baseline - cycle["edv_cm_s"] / dv)

    # the automatic trace is drawn where the caller put it (yellow), before any pick
    around = canvas.evaluate(
        "(c, p) => Array.from(c.getContext('2d').getImageData(p[0] - 1, p[1] - 1, 3, 3).data)",
        [
            math.floor(PLOT_MARGIN_LEFT + peak[0] - x0 + 0.5),
            math.floor(PLOT_MARGIN_TOP + peak[1] - y0 + 0.5),
        ],
    )
    pixels = [around[i : i + 3] for i in range(0, len(around), 4)]
    assert any(r > 200 and g > 170 and b < 90 for r, g, b in pixels), pixels

    offset, origin = (PLOT_MARGIN_LEFT, PLOT_MARGIN_TOP), (x0, y0)
    browser_support.click_pixel(page, canvas, *peak, offset=offset, origin=origin)
    page.wait_for_function(
        "document.querySelector('.usr-plot').dataset.role === 'end_diastole'", timeout=60_000
    )
    browser_support.click_pixel(page, canvas, *end_diastole, offset=offset, origin=origin)
    ri = root.locator(".usr-result[data-name=resistive_index]")
    ri.wait_for(timeout=60_000)
    psv = _value(root.locator(".usr-result[data-name=peak_systolic_velocity]"))
    edv = _value(root.locator(".usr-result[data-name=end_diastolic_velocity]"))
    ri_value = _value(ri)
    print(
        f"\nspectral picks: PSV {psv:.2f} (truth {cycle['psv_cm_s']:.2f}) cm/s, "
        f"EDV {edv:.2f} (truth {cycle['edv_cm_s']:.2f}) cm/s, RI {ri_value:.3f} "
        f"(truth {cycle['ri']:.3f})"
    )
    # one row of velocity for the click, 1% for sampling the true peak at a column
    assert psv == pytest.approx(cycle["psv_cm_s"], abs=dv + 0.01 * cycle["psv_cm_s"])
    assert edv == pytest.approx(cycle["edv_cm_s"], abs=dv)
    assert ri_value == pytest.approx(cycle["ri"], abs=0.015)
    assert root.locator(".usr-measure-error").inner_text() == ""


def test_spectral_viewer_shows_the_whole_frame_and_the_strip_again_with_the_angle(
    voila: browser_support.VoilaServer, studies: dict[str, Path], page: Any
) -> None:
    truth = _truth(studies["pw"])
    (x0, y0), (x1, y1) = truth["region"]["location_min"], truth["region"]["location_max"]
    (bx0, by0), (bx1, by1) = (
        truth["bmode_region"]["location_min"],
        truth["bmode_region"]["location_max"],
    )
    frame = read(studies["pw"]).display_frame(0)
    rows, columns = frame.shape[:2]
    browser_support.write_notebook(
        voila.root / "whole.ipynb",
        [
            "import dataclasses, ipywidgets\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import SpectralViewer\n"
            f"instance = read({_rel(voila, studies['pw'])!r})\n"
            "viewer = SpectralViewer.from_instance(instance)\n"
            "viewer.add_class('pw-60')\n"
            "steep = dataclasses.replace(viewer.region, doppler_correction_angle_deg=70.0)\n"
            "other = SpectralViewer(instance.display_frame(0), instance.regions, region=steep)\n"
            "other.add_class('pw-70')",
            "ipywidgets.VBox([viewer, other])",
        ],
    )
    browser_support.open_dashboard(
        page, voila.url("whole.ipynb"), ".pw-70 .usr-plot[data-ready=true]"
    )
    page.wait_for_selector(".pw-60 .usr-plot[data-ready=true]", timeout=30_000)
    started = time.monotonic()
    root = ".pw-60 .usr-plot"
    strip = (str(x1 - x0 + 1), str(y1 - y0 + 1))
    canvas = page.locator(f"{root} canvas.usr-canvas")

    def shown() -> tuple[str, str, str]:
        return (
            _attr(page, root, "data-view"),
            _attr(page, root, "data-shown-width"),
            _attr(page, root, "data-shown-height"),
        )

    def canvas_size() -> tuple[int, int]:
        size = canvas.evaluate("c => [c.width, c.height]")
        return int(size[0]), int(size[1])

    # the angle: 60° is the limit (no warning); 70° is above it (a visible warning)
    readout = page.inner_text(f"{root} .usr-readout")
    assert readout.startswith("Angle correction 60°") and "5 MHz" in readout, readout
    assert not page.is_visible(f"{root} .usr-readout-warning")
    assert page.inner_text(".pw-70 .usr-readout").startswith("Angle correction 70°")
    assert page.is_visible(".pw-70 .usr-readout-warning")
    assert "velocities are unreliable above 60°" in page.inner_text(".pw-70 .usr-readout-warning")

    # the strip by default, then the whole frame: the B-mode image above the strip is drawn
    assert shown() == ("strip", *strip)
    strip_canvas = canvas_size()
    page.click(f"{root} button.usr-whole")
    page.wait_for_selector(f"{root}[data-view=whole]", timeout=30_000)
    assert shown() == ("whole", str(columns), str(rows))
    assert _attr(page, f"{root} button.usr-whole", "aria-pressed") == "true"
    grow = (columns - int(strip[0]), rows - int(strip[1]))
    assert canvas_size() == (strip_canvas[0] + grow[0], strip_canvas[1] + grow[1])
    bmode = canvas.evaluate(
        "(c, r) => Array.from(c.getContext('2d').getImageData(...r).data)",
        [PLOT_MARGIN_LEFT + bx0, PLOT_MARGIN_TOP + by0, bx1 - bx0 + 1, by1 - by0 + 1],
    )
    # the B-mode image with the gate, pixel for pixel, where the strip was drawn before
    expected = frame[by0 : by1 + 1, bx0 : bx1 + 1].astype(int)
    drawn = np.asarray(bmode[0::4]).reshape(expected.shape)
    assert np.abs(drawn - expected).mean() < 1.0
    assert page.is_disabled(f"{root} .usr-role[data-role=peak]")

    # and back: the strip with its calibrated axes, as it was
    page.click(f"{root} button.usr-whole")
    page.wait_for_selector(f"{root}[data-view=strip]", timeout=30_000)
    assert shown() == ("strip", *strip) and canvas_size() == strip_canvas
    assert _attr(page, f"{root} button.usr-whole", "aria-pressed") == "false"
    assert page.is_enabled(f"{root} .usr-role[data-role=peak]")
    assert int(_attr(page, root, "data-ticks-y")) >= 3
    print(f"\nwhole image and back in {time.monotonic() - started:.2f} s")


# --- worklist ----------------------------------------------------------------------------

WORKLIST_ROWS = """
import datetime, random
def make_rows(n=5000, sites=60, seed=7):
    rng = random.Random(seed)
    statuses = ["received", "processed", "in review", "published", "delivered", "failed"]
    kinds = ["bmode", "cine", "pw_doppler", "cw_doppler", "mmode", "color_flow", "volume"]
    start = datetime.datetime(2024, 1, 1, 8, 0, 0)
    rows = []
    for i in range(n):
        rows.append({
            "study_instance_uid": f"1.2.826.0.1.3680043.99.{i}",
            "site": f"Site {rng.randrange(sites):02d}",
            "patient_name": f"PATIENT^{rng.choice('ABCDEFGHJKLMNPRSTUVWZ')}{i:05d}",
            "patient_id": f"P{rng.randrange(10**6):06d}",
            "study_description": rng.choice(
                ["Abdomen", "Carotid Doppler", "Echo", "Renal", "Obstetric"]
            ),
            "kinds": rng.sample(kinds, rng.randint(1, 3)),
            "received_at": start + datetime.timedelta(minutes=rng.randrange(60 * 24 * 90)),
            "status": rng.choice(statuses),
            "urgency": rng.choices(["routine", "urgent", "critical"], [90, 8, 2])[0],
            "findings": rng.randint(0, 4),
            "claim": "",
        })
    return rows
"""


def test_worklist_of_5000_rows_renders_sorts_filters_and_acts(
    voila: browser_support.VoilaServer, page: Any
) -> None:
    namespace: dict[str, Any] = {}
    exec(WORKLIST_ROWS, namespace)
    rows: list[dict[str, Any]] = namespace["make_rows"]()
    assert len({r["site"] for r in rows}) == 60
    browser_support.write_notebook(
        voila.root / "worklist.ipynb",
        [
            WORKLIST_ROWS,
            "import ipywidgets\n"
            "from usreview.review.widgets import WorklistTable\n"
            "rows = make_rows()\n"
            "table = WorklistTable(rows)\n"
            "said = ipywidgets.Label('no action')\n"
            "said.add_class('said')\n"
            "table.on_action(lambda kind, uid: setattr(said, 'value', f'{kind} {uid}'))\n"
            "more = ipywidgets.Button(description='Add a study')\n"
            "more.add_class('add-study')\n"
            "def add(_):\n"
            "    extra = dict(rows[0], study_instance_uid='9.9.9', patient_name='ZZ^NEW',"
            " received_at='2099-01-01 00:00:00', site='Site 07')\n"
            "    table.rows = [*table.rows, extra]\n"
            "more.on_click(add)\n"
            "ipywidgets.VBox([table, said, more])",
        ],
    )
    started = time.monotonic()
    browser_support.open_dashboard(page, voila.url("worklist.ipynb"), ".usr-wl-row")
    shown = time.monotonic()
    root = ".usr-worklist"
    render_ms = float(_attr(page, root, "data-render-ms"))
    print(
        f"\nworklist 5000 rows / 60 sites: page shown {shown - started:.1f} s after navigation "
        f"(kernel start included), client render {render_ms:.1f} ms"
    )
    assert _attr(page, root, "data-total") == "5000"
    assert _attr(page, root, "data-shown") == "5000"
    drawn = page.locator(".usr-wl-row").count()
    assert 10 <= drawn <= 80, drawn  # virtualised: only the rows in view exist
    assert render_ms < 2000

    def timed(action: Any, condition: str) -> float:
        t0 = time.perf_counter()
        action()
        page.wait_for_function(condition, timeout=2000)
        return (time.perf_counter() - t0) * 1000

    by_time = sorted(rows, key=lambda r: (r["received_at"], 0))
    sort_ms = timed(
        lambda: page.click(".usr-wl-th[data-key=received_at]"),
        "document.querySelector('.usr-worklist').dataset.sortDir === 'asc'",
    )
    assert _attr(page, root, "data-first-uid") == by_time[0]["study_instance_uid"]
    first_row = page.locator(".usr-wl-row").first
    assert first_row.get_attribute("data-uid") == by_time[0]["study_instance_uid"]
    timed(
        lambda: page.click(".usr-wl-th[data-key=received_at]"),
        "document.querySelector('.usr-worklist').dataset.sortDir === 'desc'",
    )
    latest = max(rows, key=lambda r: r["received_at"])
    assert _attr(page, root, "data-first-uid") == latest["study_instance_uid"]

    site_rows = [r for r in rows if r["site"] == "Site 07"]
    filter_ms = timed(
        lambda: page.select_option(".usr-wl-site", "Site 07"),
        f"document.querySelector('.usr-worklist').dataset.shown === '{len(site_rows)}'",
    )
    term = "carotid"
    matching = [r for r in site_rows if term in r["study_description"].lower()]
    query_ms = timed(
        lambda: page.fill(".usr-wl-query", term),
        f"document.querySelector('.usr-worklist').dataset.shown === '{len(matching)}'",
    )
    print(
        f"worklist: sort {sort_ms:.0f} ms, site filter {filter_ms:.0f} ms, "
        f"text filter {query_ms:.0f} ms (120 ms debounce included)"
    )
    for line in page.locator(".usr-wl-row").all():
        assert line.locator(".usr-wl-td[data-key=site]").inner_text() == "Site 07"

    # urgency stands out, and sorts most urgent first
    page.fill(".usr-wl-query", "")
    page.select_option(".usr-wl-site", "")
    page.select_option(".usr-wl-status", "failed")
    background = "e => getComputedStyle(e).backgroundColor"
    routine = page.locator(".usr-wl-row.usr-urgency-routine").first
    plain = routine.evaluate(background)
    page.click(".usr-wl-th[data-key=urgency]")
    page.wait_for_function(
        "document.querySelector('.usr-worklist').dataset.sortKey === 'urgency'", timeout=2000
    )
    critical = page.locator(".usr-wl-row").first
    assert critical.get_attribute("data-urgency") == "critical"
    assert "usr-urgency-critical" in (critical.get_attribute("class") or "")
    assert critical.evaluate(background) != plain

    # new rows from the kernel keep the sort and the filters
    shown_before = int(_attr(page, root, "data-shown"))
    page.click(".add-study")
    page.wait_for_function(
        "document.querySelector('.usr-worklist').dataset.total === '5001'", timeout=60_000
    )
    assert _attr(page, root, "data-sort-key") == "urgency"
    assert page.input_value(".usr-wl-site") == ""
    assert page.input_value(".usr-wl-status") == "failed"
    expected = shown_before + (1 if rows[0]["status"] == "failed" else 0)
    assert int(_attr(page, root, "data-shown")) == expected

    # Claim and Open reach the kernel
    uid = _attr(page, root, "data-first-uid")
    page.locator(f".usr-wl-row[data-uid='{uid}'] .usr-claim").click()
    page.wait_for_selector(f".said:has-text('claim {uid}')", timeout=60_000)
    page.locator(f".usr-wl-row[data-uid='{uid}'] .usr-open").click()
    page.wait_for_selector(f".said:has-text('open {uid}')", timeout=60_000)


WAITING_ROWS = """
import datetime
now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # the service's times: UTC
ago = lambda **kw: (now - datetime.timedelta(**kw)).isoformat(sep=" ")
row = lambda u, at: {"study_instance_uid": f"1.{u or 'none'}", "urgency": u, "received_at": at}
rows = [  # in the order the audit found them sorted: urgent, routine, critical, none
    row("urgent", ago(hours=3, minutes=10)),
    row("routine", ago(minutes=12, seconds=20)),
    row("critical", ago(days=2, hours=1)),
    row(None, ""),
]
"""


def test_worklist_sorts_critical_first_from_the_keyboard_and_shows_the_wait(
    voila: browser_support.VoilaServer, page: Any
) -> None:
    """The report urgencies sort critical first, headers sort with Enter and Space and say
    how in aria-sort, and each study shows how long it has waited."""
    browser_support.write_notebook(
        voila.root / "worklist_urgency.ipynb",
        [WAITING_ROWS, "from usreview.review.widgets import WorklistTable\nWorklistTable(rows)"],
    )
    browser_support.open_dashboard(page, voila.url("worklist_urgency.ipynb"), ".usr-wl-row")
    started = time.perf_counter()
    root = ".usr-worklist"

    def column(name: str) -> list[str]:  # an attribute of each row, top to bottom
        return [str(line.get_attribute(name)) for line in page.locator(".usr-wl-row").all()]

    def waiting() -> dict[str, str]:
        return {
            str(line.get_attribute("data-uid")): line.locator(
                ".usr-wl-td[data-key=waiting]"
            ).inner_text()
            for line in page.locator(".usr-wl-row").all()
        }

    def sorted_by(key: str, direction: str) -> None:
        page.wait_for_function(
            f"document.querySelector('{root}').dataset.sortKey === '{key}' && "
            f"document.querySelector('{root}').dataset.sortDir === '{direction}'",
            timeout=5000,
        )

    def aria_sort() -> dict[str, str]:
        found = page.eval_on_selector_all(
            ".usr-wl-th[aria-sort]",
            "ths => ths.map(t => [t.dataset.key, t.getAttribute('aria-sort')])",
        )
        return dict(found)

    assert waiting() == {
        "1.urgent": "3 h",
        "1.routine": "12 min",
        "1.critical": "2 d",
        "1.none": "",
    }
    assert aria_sort() == {}

    # from the filters, Tab reaches the first column header; Enter sorts, Space reverses
    page.focus(".usr-wl-status")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('.usr-wl-th')?.dataset.key ?? ''")
    assert focused == "urgency"
    page.keyboard.press("Enter")
    sorted_by("urgency", "asc")
    assert column("data-urgency") == ["critical", "urgent", "routine", ""]
    assert aria_sort() == {"urgency": "ascending"}
    page.keyboard.press(" ")
    sorted_by("urgency", "desc")
    assert column("data-urgency") == ["routine", "urgent", "critical", ""]  # none last either way
    assert aria_sort() == {"urgency": "descending"}

    # critical stands out at least as much as urgent, and says so in words
    looks = page.eval_on_selector_all(
        ".usr-wl-row",
        """lines => Object.fromEntries(lines.map(l => {
             const cell = l.querySelector('.usr-wl-td[data-key=urgency]');
             const s = getComputedStyle(l);
             return [l.dataset.urgency, {background: s.backgroundColor, stripe: s.boxShadow,
                     weight: getComputedStyle(cell).fontWeight, text: cell.innerText}];
           }))""",
    )
    for urgency in ("critical", "urgent"):
        assert looks[urgency]["background"] != looks["routine"]["background"], looks
        assert looks[urgency]["stripe"] != "none", looks
        assert int(looks[urgency]["weight"]) >= 700, looks
        assert urgency in looks[urgency]["text"].lower(), looks
    assert int(looks["critical"]["weight"]) >= int(looks["urgent"]["weight"])

    # two more Tabs: Received, then Waiting; sorted shortest wait first, then longest
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    sorted_by("waiting", "asc")
    assert column("data-uid") == ["1.routine", "1.urgent", "1.critical", "1.none"]
    assert aria_sort() == {"waiting": "ascending"}
    page.keyboard.press("Enter")
    sorted_by("waiting", "desc")
    assert column("data-uid") == ["1.critical", "1.urgent", "1.routine", "1.none"]
    assert aria_sort() == {"waiting": "descending"}
    print(f"\nworklist keyboard sorting checked in {time.perf_counter() - started:.1f} s")


CLAIMED_ROWS = """
import ipywidgets
from usreview.review.widgets import WorklistTable
rows = [
    {"study_instance_uid": "1.mine", "claim": "rev", "patient_name": "A"},
    {"study_instance_uid": "1.theirs", "claim": "ada", "patient_name": "B"},
    {"study_instance_uid": "1.free", "claim": "", "patient_name": "C"},
]
table = WorklistTable(rows, user="rev")
said = ipywidgets.Label("no action")
said.add_class("said")
table.on_action(lambda kind, uid: setattr(said, "value", f"{kind} {uid}"))
"""


def test_worklist_offers_release_on_ones_own_claims_only_and_from_the_keyboard(
    voila: browser_support.VoilaServer, page: Any
) -> None:
    browser_support.write_notebook(
        voila.root / "worklist_release.ipynb", [CLAIMED_ROWS, "ipywidgets.VBox([table, said])"]
    )
    browser_support.open_dashboard(page, voila.url("worklist_release.ipynb"), ".usr-wl-row")
    started = time.perf_counter()
    offered = page.eval_on_selector_all(
        ".usr-release", "bs => bs.map(b => b.closest('.usr-wl-row').dataset.uid)"
    )
    assert offered == ["1.mine"]  # not on another reviewer's claim, nor on a free study
    mine = ".usr-wl-row[data-uid='1.mine']"
    assert page.locator(f"{mine} .usr-release").inner_text() == "Release"
    overflow = page.eval_on_selector(  # each button's right edge past the cell's, in px
        f"{mine} .usr-wl-actions",
        "cell => [...cell.querySelectorAll('button')].map(b => "
        "b.getBoundingClientRect().right - cell.getBoundingClientRect().right)",
    )
    assert len(overflow) == 3 and max(overflow) <= 0.5, overflow  # Open, Claimed, Release

    # as the other row buttons: Tab reaches it from Claim, Enter sends the action
    page.focus(f"{mine} .usr-claim")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.classList.contains('usr-release')")
    assert focused
    page.keyboard.press("Enter")
    page.wait_for_selector(".said:has-text('release 1.mine')", timeout=60_000)
    assert page.get_attribute(".usr-worklist", "data-last-action") == "release:1.mine:1"
    page.click(f"{mine} .usr-open")  # the others still send theirs
    page.wait_for_selector(".said:has-text('open 1.mine')", timeout=60_000)
    page.locator(f"{mine} .usr-release").click()
    page.wait_for_selector(".said:has-text('release 1.mine')", timeout=60_000)
    print(f"\nworklist Release checked in {time.perf_counter() - started:.1f} s")


# --- volume ------------------------------------------------------------------------------


def test_volume_viewer_renders_niivue_and_slices(
    voila: browser_support.VoilaServer, page: Any
) -> None:
    path = simulate("volume", voila.root / "data" / "volume")[0]
    browser_support.write_notebook(
        voila.root / "volume.ipynb",
        [
            "import ipywidgets\n"
            "from usreview.dicom import read\n"
            "from usreview.review.widgets import VolumeViewer\n"
            f"instance = read({_rel(voila, path)!r})\n"
            "ipywidgets.VBox([VolumeViewer.from_instance(instance, height=360),\n"
            "                 VolumeViewer.from_instance(instance, backend='slices')])",
        ],
    )
    browser_support.open_dashboard(page, voila.url("volume.ipynb"), ".usr-volume-slices img")
    niivue = page.locator(".usr-volume-niivue canvas").first
    niivue.wait_for(timeout=30_000)
    box = niivue.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100
    # the planes and the rendering show the volume's grey speckle, not a black canvas
    deadline = time.monotonic() + 20
    grey = 0.0
    while time.monotonic() < deadline and grey < 0.3:
        rgb = imagecodecs.png_decode(niivue.screenshot())[..., :3].astype(int)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        grey = float(np.mean((r > 60) & (r < 230) & (abs(r - g) < 12) & (abs(r - b) < 12)))
        time.sleep(0.5)
    print(f"\nniivue canvas {box['width']:.0f}x{box['height']:.0f}, grey fraction {grey:.2f}")
    assert grey >= 0.3
    assert page.locator(".usr-volume-slices img").count() == 3
    for image in page.locator(".usr-volume-slices img").all():
        assert image.evaluate("i => i.complete && i.naturalWidth > 0")

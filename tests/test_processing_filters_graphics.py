"""Speckle filters leave burned-in graphics, point reflectors, the black around the sector and
ECG traces exactly as they were, and do not spread them into the tissue.

Calipers, their dotted lines and measurement text are burned into the pixels of most clinical
stills; a filtered image that blurs them (a caliper dot of 255 on a real echo fell to 75-123
before version 1.2 of ``speckle_obnlm``) hides what the sonographer measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from scipy import ndimage

from tests.conftest import real_file, region_item
from usreview.dicom import ImageKind, read
from usreview.processing import ResultStatus, default_registry, run_pipeline
from usreview.processing.filters import guided_despeckle, obnlm
from usreview.processing.filters._apply import grey_frame, tissue_boxes
from usreview.simulate import simulate

FILTERS = ("speckle_obnlm", "speckle_fast")

# A 5 x 7 bitmap font, enough for a measurement such as "Ao 3.3 cm".
_GLYPHS = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "o": ("00000", "00000", "01110", "10001", "10001", "10001", "01110"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    "c": ("00000", "00000", "01111", "10000", "10000", "10000", "01111"),
    "m": ("00000", "00000", "11010", "10101", "10101", "10101", "10101"),
    " ": ("00000",) * 7,
}


def draw_text(image: npt.NDArray[np.uint8], text: str, col: int, row: int, grey: int) -> None:
    """Burn ``text`` in at ``(col, row)`` (its top left), strokes 2 pixels wide."""
    for k, char in enumerate(text):
        glyph = np.array([[c == "1" for c in line] for line in _GLYPHS[char]])
        big = np.kron(glyph, np.ones((2, 2), bool))
        x = col + 12 * k
        image[row : row + 14, x : x + 10][big] = grey


def draw_caliper(
    image: npt.NDArray[np.uint8], start: tuple[int, int], end: tuple[int, int], grey: int = 255
) -> None:
    """A measurement as scanners burn it in: '+' at both ends, 2 x 2 dots every 10 pixels."""
    (c0, r0), (c1, r1) = start, end
    steps = int(np.hypot(c1 - c0, r1 - r0) // 10)
    for k in range(1, steps):
        c, r = round(c0 + (c1 - c0) * k / steps), round(r0 + (r1 - r0) * k / steps)
        image[r : r + 2, c : c + 2] = grey
    for c, r in (start, end):
        image[r, c - 4 : c + 5] = grey
        image[r - 4 : r + 5, c] = grey


def _with_graphics(source: Path, folder: Path) -> tuple[Path, npt.NDArray[np.bool_]]:
    """The simulated still ``source`` with a caliper and text burned in; and where they are."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    before = pixels.copy()
    draw_caliper(pixels, (150, 120), (330, 250))
    draw_text(pixels, "Ao 3.3 cm", 200, 300, 255)
    ds.PixelData = pixels.tobytes()
    path = folder / "graphics.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pixels != before


@pytest.fixture(scope="module")
def still(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """A simulated still with and without graphics, and both filters' results for each."""
    folder = tmp_path_factory.mktemp("graphics")
    plain = simulate("bmode", folder, seed=3, rows=400, columns=500)[0]
    marked, drawn = _with_graphics(plain, folder)
    out: dict[Any, Any] = {"drawn": drawn}
    for name, path in (("plain", plain), ("marked", marked)):
        instance = read(path)
        out[name] = instance.display_frame(0)
        for processor in FILTERS:
            result = default_registry().get(processor).run(instance)
            assert result.status == ResultStatus.DONE, result.reason
            out[name, processor] = result.output.images[0].pixels
    return out


@pytest.mark.parametrize("processor", FILTERS)
def test_a_burned_in_caliper_and_text_keep_their_grey_levels(
    still: dict[Any, Any], processor: str
) -> None:
    drawn, source, filtered = still["drawn"], still["marked"], still["marked", processor]
    assert drawn.sum() > 300  # dots, two '+' and nine characters
    assert np.array_equal(filtered[drawn], source[drawn])  # every pixel of them, exactly
    assert (filtered[drawn] == 255).all()
    # ... while the tissue around them is filtered
    assert np.abs(filtered.astype(int) - source)[100:380, 60:440].mean() > 5


@pytest.mark.parametrize("processor", FILTERS)
def test_graphics_do_not_bleed_into_the_tissue_around_them(
    still: dict[Any, Any], processor: str
) -> None:
    """The tissue 2 to 5 pixels from a caliper or a letter is as bright as without them.

    Before, a dot of 255 lent its brightness to its neighbours: a halo around every mark
    (2.1 grey levels on average with OBNLM, 3.9 with the guided filter; now below 0.4).
    """
    drawn = still["drawn"]
    near = ndimage.binary_dilation(drawn, iterations=5) & ~ndimage.binary_dilation(drawn)
    with_marks = still["marked", processor][near].astype(float)
    without = still["plain", processor][near].astype(float)
    assert abs(with_marks.mean() - without.mean()) < 1.0
    assert np.abs(with_marks - without).mean() < 3.0


def _fan(frame: npt.NDArray[np.uint8], box: tuple[slice, slice]) -> npt.NDArray[np.bool_]:
    """A sector (fan) of ``box``: apex at the top centre, 70 degrees wide."""
    rows, cols = frame.shape
    yy, xx = np.mgrid[:rows, :cols]
    top, centre = box[0].start, (box[1].start + box[1].stop) / 2
    angle = np.degrees(np.arctan2(np.abs(xx - centre), yy - top + 20))
    fan = (angle < 35) & (yy >= top)
    inside = np.zeros_like(fan)
    inside[box] = True
    out: npt.NDArray[np.bool_] = fan & inside
    return out


@pytest.mark.parametrize("processor", FILTERS)
def test_only_the_sector_is_filtered_and_its_rim_is_not_darkened(
    tmp_path: Path, processor: str
) -> None:
    """A phased-array still: the black around the fan stays black, the fan's rim is not
    averaged with it (the region's rectangle used to be filtered whole)."""
    path = simulate("bmode", tmp_path, seed=6, rows=400, columns=500)[0]
    ds = pydicom.dcmread(path)
    instance = read(path)
    (box,) = tissue_boxes(instance)
    pixels = ds.pixel_array.copy()
    fan = _fan(pixels, box)
    pixels[~fan] = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "fan.dcm", enforce_file_format=True)
    result = default_registry().get(processor).run(read(tmp_path / "fan.dcm"))
    filtered = result.output.images[0].pixels
    assert (filtered[~fan] == 0).all()
    rim = fan & ~ndimage.binary_erosion(fan, iterations=4)
    rim[box[0].stop - 6 :] = False  # the bottom edge is the region's, not the fan's
    assert rim.sum() > 1000
    before, after = pixels[rim].astype(float).mean(), filtered[rim].astype(float).mean()
    assert after == pytest.approx(before, abs=4.0)  # log speckle's mean is kept, not darkened
    assert np.abs(filtered.astype(int) - pixels)[fan].mean() > 5  # and the fan is filtered


def _with_ecg(source: Path, folder: Path) -> tuple[Path, tuple[slice, slice]]:
    """``source`` with an ECG region over the bottom of its tissue region, and a trace in it."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    x0, x1, y0, y1 = 60, 439, 330, 389
    t = np.arange(x1 - x0 + 1)
    beat = np.exp(-0.5 * ((t % 120 - 60) / 2.5) ** 2)  # a QRS spike every 120 pixels
    trace = np.rint(370 - 30 * beat + 3 * np.sin(t / 9.0)).astype(int)
    for k, row in enumerate(trace):
        pixels[row - 1 : row + 1, x0 + k] = 180
    ds.PixelData = pixels.tobytes()
    ds.SequenceOfUltrasoundRegions.append(
        region_item(
            RegionSpatialFormat=4,  # waveform
            RegionDataType=10,  # ECG trace
            RegionLocationMinX0=x0,
            RegionLocationMinY0=y0,
            RegionLocationMaxX1=x1,
            RegionLocationMaxY1=y1,
            PhysicalUnitsXDirection=4,  # seconds
            PhysicalUnitsYDirection=0,
            PhysicalDeltaX=0.004,
            PhysicalDeltaY=0.0,
        )
    )
    path = folder / "echo_ecg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, (slice(y0, y1 + 1), slice(x0, x1 + 1))


def test_an_echo_still_with_an_ecg_region_is_filtered_and_its_trace_kept(tmp_path: Path) -> None:
    """Most echo stills carry an ECG region: they used to be skipped as 'not grey-scale'."""
    plain = simulate("bmode", tmp_path, seed=7, rows=400, columns=500)[0]
    path, ecg = _with_ecg(plain, tmp_path)
    instance = read(path)
    assert ImageKind.ECG in instance.kinds and ImageKind.BMODE in instance.kinds
    frame = instance.display_frame(0)
    results = {r.provenance.processor: r for r in run_pipeline(instance)}
    done = results["speckle_obnlm"]
    assert done.status == ResultStatus.DONE, done.reason
    filtered = done.output.images[0].pixels
    assert np.array_equal(filtered[ecg], frame[ecg])  # the trace and the tissue under it
    (box,) = tissue_boxes(instance)
    above = (slice(box[0].start, ecg[0].start), box[1])
    assert np.abs(filtered[above].astype(int) - frame[above]).mean() > 5


def test_a_real_echo_with_an_ecg_region_is_filtered_and_its_region_kept() -> None:
    instance = read(real_file("pydicom-data__OBXXXX1A.dcm"))
    assert ImageKind.ECG in instance.kinds
    result = default_registry().get("speckle_obnlm").run(instance)
    assert result.status == ResultStatus.DONE, result.reason
    filtered = result.output.images[0].pixels
    source = instance.display_frame(0)
    ecg = next(r for r in instance.regions if r.data_type == 10)
    x0, y0, x1, y1 = ecg.bounds
    assert np.array_equal(filtered[y0 : y1 + 1, x0 : x1 + 1], source[y0 : y1 + 1, x0 : x1 + 1])
    assert not np.array_equal(filtered, source)


def test_a_real_echo_keeps_its_calipers_text_and_ecg_trace() -> None:
    """Philips EPIQ 7C parasternal long axis: the tissue region's rectangle holds the sector,
    a dotted caliper line and its '+' ends (255), measurement text and the ECG trace."""
    instance = read(real_file("pydicom-data__JPGLosslessP14SV1_1s_1f_8b.dcm"))
    source = instance.display_frame(0)
    result = default_registry().get("speckle_obnlm").run(instance)
    filtered = result.output.images[0].pixels
    # the dots of the caliper line, inside the sector: 255 before and after
    for col, row in ((640, 342), (653, 366), (666, 390), (678, 414)):
        dot = (slice(row - 3, row + 4), slice(col - 3, col + 4))
        assert source[dot].max() == 255 and filtered[dot].max() == 255
    saturated = source >= 250
    assert saturated.sum() > 5000
    assert np.array_equal(filtered[saturated], source[saturated])
    text = (slice(38, 250), slice(14, 340))  # "S5-1 49Hz 16cm ... Asc Ao Diam 3.3 cm"
    trace = (slice(690, 759), slice(14, 400))  # the ECG trace (no region of its own)
    for part in (text, trace):
        assert np.array_equal(filtered[part], source[part])
    sector = (slice(300, 560), slice(300, 700))
    assert np.abs(filtered[sector].astype(int) - source[sector]).mean() > 2


@pytest.mark.parametrize("work", [obnlm, guided_despeckle])
def test_kept_pixels_lend_nothing_to_their_neighbours(work: Any) -> None:
    """Whatever kept pixels hold, the others come out the same: they have no weight."""
    rng = np.random.default_rng(8)
    frame = np.clip(rng.gamma(3.0, 40.0, (90, 120)), 0, 255).astype(np.uint8)
    keep = np.zeros(frame.shape, bool)
    keep[:, :15] = True  # black beside a sector
    keep[40:43, 50:80] = True  # a caliper line
    keep[60:64, 90:94] = True  # a point reflector
    other = frame.copy()
    other[keep] = rng.integers(0, 256, int(keep.sum()), dtype=np.uint8)
    first, second = work(frame, keep=keep), work(other, keep=keep)
    assert np.array_equal(first[keep], frame[keep]) and np.array_equal(second[keep], other[keep])
    assert np.array_equal(first[~keep], second[~keep])
    assert np.abs(first.astype(int) - frame)[~keep].mean() > 5  # it does filter
    with pytest.raises(ValueError, match="'keep'"):
        work(frame, keep=keep[:, :100])


def test_kept_pixels_of_a_grey_frame_stored_in_colour(tmp_path: Path) -> None:
    """The masks are found on the grey of an RGB frame; kept pixels keep all three channels."""
    from usreview.processing.filters._apply import kept_pixels

    path = simulate("bmode", tmp_path, seed=9, rows=256, columns=320)[0]
    full = pydicom.dcmread(path)
    grey = full.pixel_array.copy()
    draw_caliper(grey, (100, 80), (220, 160))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    full.SamplesPerPixel, full.PhotometricInterpretation, full.PlanarConfiguration = 3, "RGB", 0
    full.PixelData = rgb.tobytes()
    full.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    instance = read(tmp_path / "rgb.dcm")
    filtered = default_registry().get("speckle_obnlm").run(instance).output.images[0].pixels
    (box,) = tissue_boxes(instance)
    frame, _ = grey_frame(instance, 0)
    keep = np.ones(frame.shape, bool)
    keep[box] = kept_pixels(frame[box])
    assert np.array_equal(filtered[keep], rgb[keep])
    assert (filtered[grey == 255] == 255).all()
    changed = ~keep
    assert np.array_equal(filtered[changed][:, 0], filtered[changed][:, 2])  # still grey

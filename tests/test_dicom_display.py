"""Display values of frames wider than 8 bits: one mapping per instance, from the header.

Expected greys are computed from PS3.3 C.11.2.1.2 (Window Center/Width, LINEAR), C.11.2.1.3
(LINEAR_EXACT, SIGMOID) and the range of Bits Stored, not from the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset

from tests.conftest import region_item, write_us
from usreview.dicom import read
from usreview.dicom.display import to_display


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in {"BitsAllocated": 16, "PixelRepresentation": 0, **values}.items():
        setattr(ds, keyword, value)
    return ds


def _grey(values: list[float]) -> npt.NDArray[np.uint8]:
    """0-255 greys, rounded as the display rounds (half to even)."""
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, to 0-255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0


def test_a_twelve_bit_cine_shows_the_same_tissue_with_the_same_grey_in_every_frame(
    tmp_path: Path,
) -> None:
    """Before, each frame was scaled by its own min-max: a bright marker in frame 0 only
    showed its tissue at about half the grey of the other frames (audit: 80 against 163)."""
    rng = np.random.default_rng(0)
    tissue = rng.integers(600, 2041, size=(48, 64)).astype(np.uint16)
    frames = np.stack([tissue] * 4)
    frames[0, 0, 0] = 4095  # a bright marker, in frame 0 only
    path = write_us(
        tmp_path / "cine12.dcm",
        frames,
        regions=[region_item()],
        BitsStored=12,
        HighBit=11,
    )
    instance = read(path)
    expected = _grey((tissue.astype(np.float64) * 255.0 / 4095.0).tolist())
    shown = [instance.display_frame(k) for k in range(4)]
    for k, frame in enumerate(shown):
        assert frame.dtype == np.uint8
        np.testing.assert_array_equal(frame[1:], expected[1:], err_msg=f"frame {k}")
    assert shown[0][0, 0] == 255 and shown[1][0, 0] == expected[0, 0]


# values around a window of centre 2048 and width 1024: both ends, the edges, the middle
_STORED = [0, 1535, 1536, 1792, 2047, 2048, 2300, 2559, 2560, 4095]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_the_header_window_is_applied_with_the_linear_function(
    tmp_path: Path, photometric: str
) -> None:
    """The first of several windows is used; MONOCHROME1 is inverted after the window."""
    stored = np.array([_STORED] * 4, dtype=np.uint16)
    path = write_us(
        tmp_path / "w.dcm",
        stored[None],
        photometric=photometric,
        BitsStored=12,
        HighBit=11,
        WindowCenter=[2048, 600],
        WindowWidth=[1024, 100],
    )
    expected = _grey([_linear(x, 2048, 1024) for x in _STORED])
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    np.testing.assert_array_equal(read(path).display_frame()[0], expected)


def test_rescale_slope_and_intercept_come_before_the_window() -> None:
    """Signed stored values, rescaled to ``2 * v - 100``, windowed at 0 +- 500."""
    stored = np.array([[-300, -200, 0, 50, 100, 250, 300]], dtype=np.int16)
    header = _header(
        BitsStored=16,
        PixelRepresentation=1,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=0,
        WindowWidth=1001,
    )
    expected = _grey([_linear(2.0 * v - 100.0, 0, 1001) for v in stored[0].tolist()])
    np.testing.assert_array_equal(to_display(stored, header, "MONOCHROME2")[0], expected)


@pytest.mark.parametrize(
    ("function", "curve"),
    [
        ("LINEAR_EXACT", lambda x: ((x - 2048) / 1024 + 0.5) * 255.0),
        ("SIGMOID", lambda x: 255.0 / (1.0 + math.exp(-4.0 * (x - 2048) / 1024))),
    ],
)
def test_the_voi_lut_function_is_honoured(function: str, curve: object) -> None:
    stored = np.array([_STORED], dtype=np.uint16)
    header = _header(BitsStored=12, WindowCenter=2048, WindowWidth=1024, VOILUTFunction=function)
    expected = _grey([curve(float(x)) for x in _STORED])  # type: ignore[operator]
    np.testing.assert_array_equal(to_display(stored, header, "MONOCHROME2")[0], expected)


def test_without_a_window_the_range_of_bits_stored_is_shown() -> None:
    """Unsigned and signed (Pixel Representation 1) 12-bit values; a window of width 0 is
    unusable and ignored. Before, the frame's own min-max was stretched to 0-255."""
    unsigned = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    expected = _grey([v * 255.0 / 4095.0 for v in (1000, 2000, 3000)])
    for header in (
        _header(BitsStored=12),
        _header(BitsStored=12, WindowCenter=2000, WindowWidth=0),
    ):
        np.testing.assert_array_equal(to_display(unsigned, header, "MONOCHROME2")[0], expected)
    signed = np.array([[-1000, 0, 500]], dtype=np.int16)
    expected = _grey([(v + 2048) * 255.0 / 4095.0 for v in (-1000, 0, 500)])
    header = _header(BitsStored=12, PixelRepresentation=1)
    np.testing.assert_array_equal(to_display(signed, header, "MONOCHROME2")[0], expected)


def test_a_modality_lut_sets_the_values_and_their_range() -> None:
    """A table halving 12-bit values: its outputs 0-2047 span the display."""
    table = Dataset()
    table.LUTDescriptor = [4096, 0, 16]
    table.LUTData = [int(v) for v in np.arange(4096) // 2]
    table.ModalityLUTType = "US"
    header = _header(BitsStored=12, ModalityLUTSequence=[table])
    stored = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    expected = _grey([v / 2 * 255.0 / 2047.0 for v in (1000, 2000, 3000)])
    np.testing.assert_array_equal(to_display(stored, header, "MONOCHROME2")[0], expected)


def test_wide_colour_is_scaled_by_bits_stored_without_a_window() -> None:
    """Modality and VOI transforms are for grey images only (PS3.3 C.11)."""
    rgb = np.zeros((1, 3, 3), dtype=np.uint16)
    rgb[0, :, 0] = [1000, 2000, 3000]
    header = _header(
        BitsStored=12, SamplesPerPixel=3, WindowCenter=2000, WindowWidth=10, RescaleSlope=3
    )
    shown = to_display(rgb, header, "RGB")
    np.testing.assert_array_equal(
        shown[0, :, 0], _grey([v * 255.0 / 4095.0 for v in (1000, 2000, 3000)])
    )
    assert shown.shape == (1, 3, 3) and not shown[..., 1:].any()

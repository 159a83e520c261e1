"""The display mapping as the filters see it: a 12-bit cine filters without flicker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from usreview.dicom import read
from usreview.processing import default_registry
from usreview.simulate import simulate


def test_a_filtered_twelve_bit_cine_keeps_one_grey_for_its_tissue(tmp_path: Path) -> None:
    """The audit's cine: 8-bit tissue stored x 8 in 12 bits, a bright marker in frame 0 only,
    Window 2048/4096. Before, frame 0's tissue showed (and was filtered) at grey 80 and the
    other frames' at 163; now every frame shows it at about 1280 / 4095 x 255 = 80."""
    (path,) = simulate("cine", tmp_path, seed=0, frames=4)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.uint16) * 8
    stored[0, 0, 0] = 4095
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path)
    instance = read(path)
    result = default_registry().get("speckle_fast").run(instance)
    assert result.output is not None
    filtered = result.output.images[0].pixels
    box = (slice(40, 300), slice(40, 360))
    shown = [float(instance.display_frame(k)[box].mean()) for k in range(4)]
    out = [float(filtered[k][box].mean()) for k in range(4)]
    expected = ((stored[:, 40:300, 40:360].mean() - 2047.5) / 4095 + 0.5) * 255
    assert max(shown) - min(shown) < 0.5 and max(out) - min(out) < 0.5
    assert abs(shown[0] - expected) < 0.5 and abs(out[0] - expected) < 1.0

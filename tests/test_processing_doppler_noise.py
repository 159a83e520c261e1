"""The spectral noise floor: the mean noise power, whatever the speckle's distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from usreview.processing.quantification.spectral import noise_floor


@pytest.mark.parametrize("columns", [1, 3, 5])
def test_the_noise_floor_is_the_mean_of_column_averaged_speckle(columns: int) -> None:
    """The pixel median over ln 2 read a 3-column average 29% high; the tile median does not."""
    rng = np.random.default_rng(1)
    speckle = 2.0 * rng.exponential(size=(80, 600))
    averaged = ndimage.uniform_filter1d(speckle, columns, axis=1, mode="nearest")
    assert noise_floor(averaged) == pytest.approx(2.0, rel=0.02)
    if columns == 3:
        assert float(np.median(averaged)) / math.log(2.0) == pytest.approx(2.57, rel=0.03)


def test_the_noise_floor_ignores_patches_of_signal_and_takes_several_blocks() -> None:
    rng = np.random.default_rng(2)
    noise = rng.exponential(size=(40, 400))
    noise[:16, :120] += 50.0  # a mirror image in 30% of the columns
    outer = rng.exponential(size=(4, 400))
    assert noise_floor(noise, outer) == pytest.approx(1.0, rel=0.03)
    with pytest.raises(ValueError, match="pixels"):
        noise_floor(np.zeros((0, 5)))

"""The pieces of the ``volume`` processor's method, each against an exact answer: the tissue
shell in mm, the wall's integrated mean curvature, the point-spread function's blur.

They replace the check of volume 1.1's shell (dilations of 2 and 6 voxels) and do not exist in
it: volume 1.1 measured the shell in voxels, so at 0.3 mm voxels it lay inside the 1 mm smoothing
and read 6.2 mL as 5.0 mL, and it had no curvature correction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from usreview.processing.quantification.volume import (
    _blur_variance,
    _mean_curvature_integral,
    _shell,
    _strides,
)
from usreview.simulate import speckle


def _blob(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A lumpy region: a smoothed random field thresholded, its largest component."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 4.0)
    labels, _ = ndimage.label(field > np.percentile(field, 85))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out: np.ndarray = labels == sizes.argmax()
    return out


@pytest.mark.parametrize(
    "size", [(0.6, 0.6, 0.6), (1.2, 0.6, 0.8), (1.8, 1.0, 0.6)], ids=["iso", "aniso", "coarse"]
)
def test_the_shell_is_in_mm_and_its_box_holds_all_of_it(size: tuple[float, float, float]) -> None:
    """Voxels of 0.6 mm and more are all sampled: the box's shell is the whole volume's."""
    assert _strides(size) == (1, 1, 1)
    for seed in range(3):
        region = _blob((40, 48, 56), seed)
        distance = ndimage.distance_transform_edt(~region, sampling=size)
        whole = (distance > 2.0) & (distance <= 4.4)
        near, shell = _shell(region, size, 2.0, 4.4)
        assert np.array_equal(shell, whole[near])
        assert shell.sum() == whole.sum() > 0  # none of it outside the box


def test_a_fine_grid_is_sampled_about_every_0_6_mm() -> None:
    """0.3 mm voxels are sampled every other one; each sample of the shell lies, on the full
    grid, between the shell's distances (less one sampling step inside)."""
    size = (0.3, 0.3, 0.45)
    assert _strides(size) == (2, 2, 1)
    region = _blob((60, 64, 56), 7)
    distance = ndimage.distance_transform_edt(~region, sampling=size)
    near, shell = _shell(region, size, 2.0, 4.4)
    sampled = distance[near][::2, ::2, ::1][shell]
    step = math.hypot(0.6, 0.6, 0.45)
    assert sampled.size > 1000
    assert sampled.max() <= 4.4
    assert sampled.min() > 2.0 - step


def _spheroid(size: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
    """Voxels whose centre lies inside the ellipsoid of ``semi`` (mm, array axes) at the centre."""
    axes = [
        (np.arange(math.ceil(2.4 * a / s)) - (math.ceil(2.4 * a / s) - 1) / 2) * s / a
        for a, s in zip(semi, size, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    out: np.ndarray = z**2 + y**2 + x**2 <= 1.0
    return out


def test_the_mean_curvature_integral_of_a_sphere_is_4_pi_r() -> None:
    solid = _spheroid((0.5, 0.5, 0.5), (6.0, 6.0, 6.0))
    assert _mean_curvature_integral(solid, (0.5, 0.5, 0.5)) == pytest.approx(
        4 * math.pi * 6.0, rel=0.01
    )


@pytest.mark.parametrize("size", [(0.5, 0.5, 0.5), (0.6, 0.4, 0.5)], ids=["iso", "aniso"])
def test_the_mean_curvature_integral_of_a_prolate_spheroid(
    size: tuple[float, float, float],
) -> None:
    """Semi-axes 10, 5, 5 mm: 2 pi times the mean width a + b^2 / c ln((a + c) / b), with
    c^2 = a^2 - b^2 (87 mm; a sphere of the same volume has 79 mm)."""
    a, b = 10.0, 5.0
    c = math.sqrt(a * a - b * b)
    exact = 2 * math.pi * (a + b * b / c * math.log((a + c) / b))
    solid = _spheroid(size, (b, b, a))
    assert _mean_curvature_integral(solid, size) == pytest.approx(exact, rel=0.015)


@pytest.mark.parametrize(
    ("size", "psf_voxels"),
    [((0.4, 0.5, 0.6), (1.5, 1.2, 1.0)), ((0.3, 0.3, 0.6), (2.0, 1.5, 1.0))],
    ids=["every-voxel", "sampled"],
)
def test_the_blur_of_the_mean_power_is_read_from_the_speckle(
    size: tuple[float, float, float], psf_voxels: tuple[float, float, float]
) -> None:
    """Speckle of a Gaussian PSF of sigma s blurs the mean power by s^2 / 2 (mm^2, the mean
    over the axes), read from the correlation of neighbouring voxels."""
    rng = np.random.default_rng(11)
    shape = (48, 48, 48)
    power = np.abs(speckle.echo(speckle.scatterers(rng, shape), speckle.Psf(psf_voxels))) ** 2
    shell = np.ones(power[tuple(slice(None, None, k) for k in _strides(size))].shape, bool)
    expected = np.mean([(s * v) ** 2 / 2 for s, v in zip(size, psf_voxels, strict=True)])
    assert _blur_variance(power, shell, size) == pytest.approx(expected, rel=0.15)


def test_uncorrelated_speckle_is_no_blur() -> None:
    power = np.random.default_rng(3).exponential(size=(40, 40, 40))
    shell = np.ones(power.shape, bool)
    assert _blur_variance(power, shell, (1.2, 1.2, 1.2)) == 0.0

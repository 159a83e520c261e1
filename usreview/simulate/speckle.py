"""B-mode image formation: scatterers, point-spread function, envelope, log compression.

Tissue is a sub-resolution grid of scatterers with complex Gaussian amplitudes (fully
developed speckle: many random scatterers per resolution cell), scaled by an
echogenicity map. The echo is that field convolved with a separable Gaussian
point-spread function (axial width from the pulse length, lateral from the beam width
at the focus), plus white electronic noise; the displayed image is the envelope,
log-compressed into 8 bits. Amplitudes are relative to the tissue RMS echo (0 dB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "SOUND_SPEED_CM_S",
    "Psf",
    "coverage",
    "echo",
    "log_compress",
    "mean_echo",
    "noise",
    "scatterers",
]

SOUND_SPEED_CM_S = 154_000.0

Complex = npt.NDArray[np.complex128]
Float = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Psf:
    """Gaussian point-spread function, standard deviations in pixels along each axis.

    ``sigma`` is ordered like the array axes (e.g. ``(axial, lateral)`` for an image
    whose rows are depth).
    """

    sigma: tuple[float, ...]

    @classmethod
    def for_probe(
        cls,
        frequency_mhz: float,
        spacing_cm: Sequence[float],
        *,
        f_number: float = 2.5,
        cycles: float = 2.0,
    ) -> Psf:
        """PSF of a probe: axial FWHM ``cycles`` x wavelength / 2, lateral ``f_number`` x it.

        ``spacing_cm`` is the pixel spacing per axis, axial first; every further axis
        is lateral (elevation included, for volumes).
        """
        wavelength = SOUND_SPEED_CM_S / (frequency_mhz * 1e6)
        fwhm = [cycles * wavelength / 2.0] + [f_number * wavelength] * (len(spacing_cm) - 1)
        return cls(tuple(w / 2.3548 / s for w, s in zip(fwhm, spacing_cm, strict=True)))

    def _kernel(self) -> Float:
        half = [int(4 * s) + 2 for s in self.sigma]
        delta = np.zeros([2 * h + 1 for h in half])
        delta[tuple(half)] = 1.0
        kernel: Float = ndimage.gaussian_filter(delta, self.sigma)
        return kernel

    def gain(self) -> float:
        """RMS of the PSF-filtered unit white field (to normalise tissue to 0 dB)."""
        return float(np.sqrt(np.sum(self._kernel() ** 2)))

    def point_amplitude(self, level_db: float) -> float:
        """Scatterer amplitude whose echo peak is ``level_db`` above the tissue RMS."""
        kernel = self._kernel()
        return float(10.0 ** (level_db / 20.0) * np.sqrt(np.sum(kernel**2)) / kernel.max())


def scatterers(rng: np.random.Generator, shape: Sequence[int]) -> Complex:
    """Unit-power circular complex Gaussian scatterer amplitudes."""
    re = rng.standard_normal(shape)
    im = rng.standard_normal(shape)
    out: Complex = (re + 1j * im) * np.sqrt(0.5)
    return out


def echo(field: Complex, psf: Psf) -> Complex:
    """Convolve a scatterer field with the PSF; tissue of unit echogenicity gets RMS 1."""
    scale = 1.0 / psf.gain()
    re = ndimage.gaussian_filter(field.real, psf.sigma, mode="reflect")
    im = ndimage.gaussian_filter(field.imag, psf.sigma, mode="reflect")
    out: Complex = (re + 1j * im) * scale
    return out


def mean_echo(power: Float, psf: Psf, snr_db: float) -> Float:
    """Speckle-free echo amplitude: the RMS of :func:`echo` plus :func:`noise` at each pixel.

    ``power`` is the scatterer power per pixel (echogenicity squared); independent
    scatterers add their powers, weighted by the squared point-spread function.
    """
    kernel = psf._kernel() ** 2
    mean_power = ndimage.convolve(power, kernel / kernel.sum(), mode="reflect")
    out: Float = np.sqrt(mean_power + 10.0 ** (-snr_db / 10.0))
    return out


def noise(rng: np.random.Generator, shape: Sequence[int], snr_db: float) -> Complex:
    """White complex noise whose RMS is ``snr_db`` below the tissue echo."""
    out: Complex = scatterers(rng, shape) * 10.0 ** (-snr_db / 20.0)
    return out


def log_compress(
    amplitude: Float, dynamic_range_db: float, headroom_db: float = 20.0
) -> npt.NDArray[np.uint8]:
    """Map amplitudes to 8 bits: tissue + ``headroom_db`` is 255, ``dynamic_range_db`` less 0."""
    db = 20.0 * np.log10(np.maximum(amplitude, 1e-12)) - headroom_db
    grey = np.rint(255.0 * (db + dynamic_range_db) / dynamic_range_db)
    return np.clip(grey, 0, 255).astype(np.uint8)


def coverage(
    shape: tuple[int, int],
    centre: tuple[float, float],
    semi_axes: tuple[float, float],
    supersample: int = 4,
) -> Float:
    """Fraction of each pixel inside an axis-aligned ellipse.

    ``centre`` is ``(col, row)`` and ``semi_axes`` ``(lateral, axial)``, in pixels,
    pixel ``(c, r)`` covering ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``.
    """
    out = np.zeros(shape)
    cx, cy = centre
    a, b = semi_axes
    c0, c1 = max(int(np.floor(cx - a)) - 1, 0), min(int(np.ceil(cx + a)) + 2, shape[1])
    r0, r1 = max(int(np.floor(cy - b)) - 1, 0), min(int(np.ceil(cy + b)) + 2, shape[0])
    if c0 >= c1 or r0 >= r1:
        return out
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    cols = (np.arange(c0, c1)[:, None] + offsets[None, :]).ravel()
    rows = (np.arange(r0, r1)[:, None] + offsets[None, :]).ravel()
    inside = ((cols[None, :] - cx) / a) ** 2 + ((rows[:, None] - cy) / b) ** 2 <= 1.0
    blocks = inside.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    out[r0:r1, c0:c1] = blocks
    return out

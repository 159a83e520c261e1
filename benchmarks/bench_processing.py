"""Spectral Doppler analysis time per second of spectrum.

A simulated PW display (default 480 x 640, 3.5 s sweep, SNR 20 dB) is analysed by the
``doppler_indices`` processor (grey to power, MGM envelope, cycles, indices, overlay) on an
instance already read. Baseline, measured in the same run: the plainest tracer over the same
spectral region, one numpy ``argmax`` per column of the grey levels. The ratio says what the
method costs over that; a queue worker's budget is the absolute time per second of spectrum.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from usreview.dicom import read
from usreview.processing import default_registry, run_pipeline
from usreview.processing.quantification.spectral import spectral_region
from usreview.simulate import simulate

REPEATS = 15


def _median_seconds(work: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print the analysis time per second of spectrum and its ratio to the baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        path = simulate("pw", Path(tmp), seed=0, snr_db=20.0)[0]
        instance = read(path)
        region = spectral_region(instance)
        x0, y0, x1, y1 = region.bounds
        seconds = region.width * abs(region.delta_x)
        proc = default_registry().get("doppler_indices")

        def baseline() -> object:
            grey = instance.display_frame(0)[y0 : y1 + 1, x0 : x1 + 1]
            return np.argmax(grey, axis=0)

        base = _median_seconds(baseline)
        ours = _median_seconds(lambda: proc.run(instance))
        whole = _median_seconds(lambda: run_pipeline(read(path)))
    print(
        f"PW spectrum {region.height} x {region.width} px, {seconds:.2f} s shown, "
        f"median of {REPEATS}"
    )
    print(f"  numpy argmax per column (baseline) {base / seconds * 1e3:8.2f} ms per s of spectrum")
    print(
        f"  doppler_indices                    {ours / seconds * 1e3:8.2f} ms per s of spectrum  "
        f"ratio {ours / base:.0f}x the baseline"
    )
    print(
        f"  read + whole pipeline              {whole / seconds * 1e3:8.2f} ms per s of spectrum  "
        f"ratio {whole / base:.0f}x the baseline"
    )

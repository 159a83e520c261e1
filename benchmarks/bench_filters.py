"""Speckle filters: frames/s on a 600 x 800 frame, and quality on the simulated phantom.

Both filters of ``usreview.processing.filters`` run on one 600 x 800 uint8 B-mode frame on one
core. Baselines, measured in the same run: scipy's ``median_filter`` 3 x 3 and, when
``opencv-python-headless`` is installed, OpenCV's ``medianBlur`` 3 x 3 (one thread). Quality:
SSIM against the phantom without speckle, ENL in homogeneous tissue, CNR per inclusion, and the
largest change of an inclusion diameter against the unfiltered image (half contrast).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import read
from usreview.processing.filters import guided_despeckle, obnlm
from usreview.processing.filters.quality import PhantomScore, score_phantom
from usreview.simulate import simulate

Frame = npt.NDArray[np.uint8]
Filter = Callable[[Frame], Frame]


def _rate(work: Filter, frame: Frame, seconds: float = 1.5, most: int = 200) -> float:
    """Frames/s: the median time of repeated runs, for about ``seconds`` (at least 3 runs)."""
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < seconds and len(times) < most):
        start = time.perf_counter()
        work(frame)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return 1.0 / statistics.median(times)


def _filters() -> dict[str, Filter]:
    out: dict[str, Filter] = {
        "speckle_fast (guided)": guided_despeckle,
        "speckle_obnlm (OBNLM)": obnlm,
        "scipy median_filter 3x3": lambda f: ndimage.median_filter(f, size=3),
    }
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        print("  (opencv-python-headless is not installed: no OpenCV baseline)")
    else:
        cv2.setNumThreads(1)
        out["OpenCV medianBlur 3x3"] = lambda f: cv2.medianBlur(f, 3)
    return out


def _row(name: str, score: PhantomScore, base: PhantomScore) -> str:
    cnrs = " ".join(f"{s.cnr:5.1f}" for s in score.inclusions)
    moved = max(
        abs(d - d0)
        for s, s0 in zip(score.inclusions, base.inclusions, strict=True)
        for d, d0 in zip(s.diameters_mm, s0.diameters_mm, strict=True)
    )
    return f"  {name:26s} {score.ssim:5.2f} {score.enl:7.0f}   {cnrs}   {moved:5.2f}"


def main() -> None:
    """Print frames/s with ratios to the baselines, then the quality table."""
    with tempfile.TemporaryDirectory() as tmp:
        path = simulate("bmode", Path(tmp), seed=0, rows=600, columns=800)[0]
        truth: dict[str, Any] = json.loads(path.with_suffix(".truth.json").read_text())
        frame = read(path).display_frame(0)
    filters = _filters()
    rates = {name: _rate(work, frame) for name, work in filters.items()}
    scipy_rate = rates["scipy median_filter 3x3"]
    cv_rate = rates.get("OpenCV medianBlur 3x3")
    print("600 x 800 uint8 frame, one core, median time per frame")
    for name, rate in rates.items():
        ratios = f"{rate / scipy_rate:7.2f}x scipy median"
        if cv_rate is not None:
            ratios += f"  {rate / cv_rate:7.3f}x OpenCV median"
        print(f"  {name:26s} {rate:9.1f} frames/s {1e3 / rate:8.1f} ms  {ratios}")
    print("  goals: speckle_fast >= 30 frames/s; speckle_obnlm <= 2 s per frame")

    base = score_phantom(frame, truth)
    kinds = " ".join(f"{inc['kind'][:5]:>5s}" for inc in truth["inclusions"])
    print("\nphantom seed 0, scored against the image without speckle")
    print(f"  {'image':26s} {'SSIM':>5s} {'ENL':>7s}   CNR {kinds}   max |d diameter| mm")
    print(_row("speckled input", base, base))
    for name, work in filters.items():
        print(_row(name, score_phantom(work(frame), truth), base))
    print(
        "  goals: fast SSIM >= 0.55; OBNLM SSIM >= 0.70, ENL >= 100, CNR >= 2x input, "
        "diameters within 0.3 mm"
    )

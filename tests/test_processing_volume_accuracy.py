"""The ``volume`` processor against the simulator's truth: 0.25 to 30 mL at 0.3, 0.6 and 1.2 mm
voxels, slices coarser than the pixels, and regions that leak.

Accuracy bands, by the structure's half-thickness (centre to wall) in voxels of the largest side,
as documented in :mod:`usreview.processing.quantification.volume` and measured on 330 simulated
volumes (170 of these sizes and voxels and four anisotropic ones, seeds 0-5, SNR 10-40 dB; 160
of 0.25-6.2 mL in the larger 56 x 72 x 80 volume at 0.6 mm, seeds 0-39):

* at least 6.5 voxels: within 5% (176 volumes: -3.5% to +4.0%, and one 1 mL at +7.2%: the
  speckle along the wall, SD 2.1% at 1 mL, 0.5% at 6 mL);
* 3.5 to 6.5 voxels: within 12%, with a ``coarse_voxels`` finding that says so (126 volumes,
  -4.9% to +10.2%): 0.25 and 0.5 mL at 0.6 mm and 1 mL at 1.2 mm cannot be promised 5%;
* under 3.5 voxels: refused (all 28 of 0.25 and 0.5 mL at 1.2 mm: 27 as too thin, 1 because
  its wall did not settle).

Volume 1.1 (shell 2-6 voxels, no curvature correction) read these volumes (seeds 0 and 1) 6 mL at
0.3 mm 14-15% low and 30 mL 21% low, 0.25 mL at 0.6 mm 27-37% high, and 0.25 mL at 1.2 mm 110-130
times its volume, without a word.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from usreview.dicom import read
from usreview.processing import ProcessorResult, ResultStatus, default_registry
from usreview.simulate import simulate

#: Semi-axes (x, y, z) in mm of each true volume (mL): 5:4:3, the lateral axis the longest.
SEMI_AXES_MM = {
    0.25: (5.0, 4.0, 3.0),
    0.5: (6.3, 5.04, 3.78),
    1.0: (7.94, 6.35, 4.76),
    6.0: (14.42, 11.54, 8.65),
    30.0: (24.66, 19.73, 14.8),
}
#: Tissue beyond the ellipsoid's extent along every axis (mm), split at random on either side.
MARGIN_MM = 8.0

ACCURATE, COARSE, REFUSED = "within 5%", "within 12% with a coarse_voxels finding", "refused"
#: The band of every (volume, voxel) of the grid, from the half-thickness in voxels.
BANDS = {
    (0.25, 0.3): ACCURATE,  # 10 voxels
    (0.25, 0.6): COARSE,  # 5
    (0.25, 1.2): REFUSED,  # 2.5
    (0.5, 0.3): ACCURATE,  # 12.6
    (0.5, 0.6): COARSE,  # 6.3 (measured 5.5-6.1)
    (0.5, 1.2): REFUSED,  # 3.2 (measured 3.0-3.2)
    (1.0, 0.3): ACCURATE,  # 16
    (1.0, 0.6): ACCURATE,  # 7.9
    (1.0, 1.2): COARSE,  # 4
    (6.0, 0.3): ACCURATE,
    (6.0, 0.6): ACCURATE,
    (6.0, 1.2): ACCURATE,  # 7.2
    (30.0, 0.3): ACCURATE,
    (30.0, 0.6): ACCURATE,
    (30.0, 1.2): ACCURATE,
}


def measure(
    folder: Path,
    ml: float,
    voxel_mm: float,
    slice_mm: float = 0.0,
    params: dict[str, Any] | None = None,
    **simulated: Any,
) -> tuple[float, ProcessorResult]:
    """The true volume (mL) of a simulated ellipsoid of about ``ml`` and the processor's result."""
    x, y, z = SEMI_AXES_MM[ml]
    step = slice_mm or voxel_mm
    shape = {
        "frames": max(16, math.ceil((2 * z + 2 * MARGIN_MM) / step)),
        "rows": max(32, math.ceil((2 * y + 2 * MARGIN_MM) / voxel_mm)),
        "columns": max(32, math.ceil((2 * x + 2 * MARGIN_MM) / voxel_mm)),
    }
    settings = {"seed": 0, "snr_db": 25.0, **shape, **simulated}
    path = simulate(
        "volume",
        folder,
        voxel_mm=voxel_mm,
        slice_mm=slice_mm,
        semi_axis_x_mm=x,
        semi_axis_y_mm=y,
        semi_axis_z_mm=z,
        **settings,
    )[0]
    truth = json.loads(path.with_suffix(".truth.json").read_text())["ellipsoid"]["volume_ml"]
    return float(truth), default_registry().get("volume").run(read(path), params=params)


def problem(band: str, truth: float, result: ProcessorResult) -> str | None:
    """What is wrong with ``result`` for a structure of ``truth`` mL in ``band`` (or ``None``)."""
    if band == REFUSED:
        if result.status == ResultStatus.SKIPPED and "too thin" in (result.reason or ""):
            return None
        return f"expected refused as too thin, got {result.status} {_value(result)}"
    if result.status != ResultStatus.DONE or not result.output.quantities:
        return f"expected {band}, got {result.status}: {result.reason}"
    error = _value(result) / truth - 1.0
    findings = [f.code for f in result.output.findings]
    limit = 0.05 if band == ACCURATE else 0.12
    expected_findings = [] if band == ACCURATE else ["coarse_voxels"]
    if abs(error) > limit or findings != expected_findings:
        return f"expected {band}, got {error:+.1%} with findings {findings}"
    return None


def _value(result: ProcessorResult) -> float:
    return float(result.output.quantities[0].value) if result.output.quantities else math.nan


@pytest.mark.parametrize("voxel_mm", [0.3, 0.6, 1.2])
def test_every_size_is_measured_or_refused_as_documented(tmp_path: Path, voxel_mm: float) -> None:
    """Before (seed 0): at 0.3 mm -10% to -22% from 0.5 mL up; at 0.6 mm +27% and +8% for 0.25
    and 0.5 mL, with no finding; at 1.2 mm 0.25 and 0.5 mL published (+13000%, +56%) and 1 mL
    +15% with no finding."""
    problems = []
    for ml in SEMI_AXES_MM:
        truth, result = measure(tmp_path / str(ml), ml, voxel_mm)
        wrong = problem(BANDS[(ml, voxel_mm)], truth, result)
        if wrong is not None:
            problems.append(f"{ml} mL ({truth:.3f}) at {voxel_mm} mm: {wrong}")
    assert not problems, "\n".join(problems)


def test_slices_coarser_than_the_pixels(tmp_path: Path) -> None:
    """Anisotropic voxels: the shell, the smoothing and the half-thickness are in mm, the
    half-thickness counted in voxels of the largest side.

    Before: these read within 1.5% (slices coarser than 0.6 mm put the voxel shell far enough),
    but 1 mL, 5 slices of 0.9 mm from centre to wall, came without its coarse_voxels finding.
    """
    problems = []
    for ml, voxel_mm, slice_mm, band in [
        (6.0, 0.6, 1.2, ACCURATE),  # 7.2 slices of 1.2 mm from centre to wall
        (30.0, 0.6, 1.8, ACCURATE),  # 8.2 slices of 1.8 mm
        (1.0, 0.3, 0.9, COARSE),  # 5.3 slices of 0.9 mm
    ]:
        truth, result = measure(tmp_path / f"{ml}-{slice_mm}", ml, voxel_mm, slice_mm)
        wrong = problem(band, truth, result)
        if wrong is not None:
            problems.append(f"{ml} mL at {voxel_mm} x {slice_mm} mm: {wrong}")
    assert not problems, "\n".join(problems)


def test_the_smoothing_the_audit_set_no_longer_leaks(tmp_path: Path) -> None:
    """``smoothing_mm=0.5`` on 0.25 mL at 0.6 mm: before, a region that leaked through the
    speckle, +349% here (+27000% on the audit's volume); now within its band."""
    truth, result = measure(tmp_path, 0.25, 0.6, params={"smoothing_mm": 0.5})
    assert problem(COARSE, truth, result) is None, problem(COARSE, truth, result)


@pytest.mark.parametrize(
    ("ml", "voxel_mm", "smoothing_mm"), [(6.0, 1.2, 0.5), (6.0, 0.6, 0.3), (6.0, 0.3, 0.3)]
)
def test_a_region_leaking_through_the_speckle_is_refused(
    tmp_path: Path, ml: float, voxel_mm: float, smoothing_mm: float
) -> None:
    """Too little smoothing for the voxels: the region percolates through the speckle to the
    volume's border. Before: published +16%, +12% and +33%."""
    _, result = measure(tmp_path, ml, voxel_mm, params={"smoothing_mm": smoothing_mm})
    assert result.status == ResultStatus.SKIPPED, _value(result)
    assert "reaches the border of the volume" in (result.reason or "")
    assert f"smoothing {smoothing_mm:g} mm" in (result.reason or "")


@pytest.mark.parametrize("ml", [1.0, 6.0])
def test_too_little_smoothing_for_the_speckle_is_refused(tmp_path: Path, ml: float) -> None:
    """``smoothing_mm=0.4`` at 0.6 mm voxels leaves the smoothed tissue varying by some 42%: the
    region seeps into the speckle's dips without reaching the border. Before: +8.9% (1 mL) and
    +4.6% (6 mL), published."""
    _, result = measure(tmp_path, ml, 0.6, params={"smoothing_mm": 0.4})
    assert result.status == ResultStatus.SKIPPED, _value(result)
    assert (result.reason or "").startswith("the smoothed tissue still varies by")
    assert (result.reason or "").endswith(
        "too little smoothing (0.4 mm) for the speckle; raise smoothing_mm"
    )


def test_a_large_smoothing_is_capped_by_the_structure(tmp_path: Path) -> None:
    """``smoothing_mm=3`` on 0.25 mL (3 mm half-thickness): the smoothing drops to a third of
    the half-thickness. Before: +226%."""
    truth, result = measure(tmp_path, 0.25, 0.6, params={"smoothing_mm": 3.0})
    assert problem(COARSE, truth, result) is None, problem(COARSE, truth, result)
    (quantity,) = result.output.quantities
    assert quantity.details["smoothing_mm_used"] <= 1.02 * quantity.details["half_thickness_mm"] / 3


@pytest.mark.parametrize("snr_db", [10.0, 40.0])
def test_the_bands_hold_from_10_to_40_db(tmp_path: Path, snr_db: float) -> None:
    """Before: 1 mL at 1.2 mm read +19% (10 dB) and +16% (40 dB), 6 mL at 0.3 mm -15% and -16%,
    0.5 mL at 0.3 mm -10%."""
    problems = []
    for ml, voxel_mm in [(1.0, 1.2), (6.0, 0.3), (0.5, 0.3)]:
        truth, result = measure(tmp_path / f"{ml}-{voxel_mm}", ml, voxel_mm, snr_db=snr_db)
        wrong = problem(BANDS[(ml, voxel_mm)], truth, result)
        if wrong is not None:
            problems.append(f"{ml} mL at {voxel_mm} mm: {wrong}")
    assert not problems, "\n".join(problems)

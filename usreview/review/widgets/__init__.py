"""Review widgets for Voila dashboards: anywidget modules bundled in the package, no CDN.

=================  ==========================================================================
widget             what it does
=================  ==========================================================================
CineViewer         a loop sent once (JPEG/PNG/raw frames in one buffer), played in the browser
                   at the acquisition frame rate: play/pause, step, speed, frame slider
ImageViewer        a still with distance and ellipse calipers in calibrated units; original
                   and filtered side by side or toggled
SpectralViewer     PW/CW spectral Doppler with calibrated axes, an automatic trace and the
                   reviewer's PSV, EDV, RI and heart rate picks
MModeViewer        an M-mode strip with calibrated axes, wall traces, heart rate and excursion
VolumeViewer       ipyniivue multiplanar + 3D render of a volume, or orthogonal slices
WorklistTable      thousands of studies, virtualised, sorted and filtered in the browser
=================  ==========================================================================

Measurements are computed in the kernel by :mod:`usreview.review.measure`. Each widget
documents the DOM hooks (classes and ``data-`` attributes) that browser tests rely on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes

if TYPE_CHECKING:
    from usreview.review.widgets.caliper import ImageViewer
    from usreview.review.widgets.cine import CineViewer
    from usreview.review.widgets.plot import MModeViewer, SpectralViewer
    from usreview.review.widgets.volume import VolumeViewer, niivue_available
    from usreview.review.widgets.worklist import WorklistTable

__all__ = [
    "CineViewer",
    "ImageViewer",
    "MModeViewer",
    "SpectralViewer",
    "VolumeViewer",
    "WorklistTable",
    "niivue_available",
]

# Loaded on first use, so that the worklist does not pay for DICOM and processing imports.
_MODULES = {
    "CineViewer": "cine",
    "ImageViewer": "caliper",
    "MModeViewer": "plot",
    "SpectralViewer": "plot",
    "VolumeViewer": "volume",
    "WorklistTable": "worklist",
    "niivue_available": "volume",
}


__getattr__ = lazy_attributes(__name__, _MODULES)

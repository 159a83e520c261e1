"""Speckle reduction: two registered filters and their results as derived DICOM images.

=================  ==================================  ==========================================
processor          method                              for
=================  ==================================  ==========================================
``speckle_fast``   subsampled guided filter            cines (and stills): ~100 frames/s, 600x800
``speckle_obnlm``  optimized Bayesian NLM (Coupé 2009)  stills: ~0.2 s per 600 x 800 frame
=================  ==================================  ==========================================

Both filter the sector (the acquisition area) of the 2D tissue regions of grey-scale B-mode
frames, echo stills with an ECG trace included. Every other pixel keeps its value exactly and
lends none to its neighbours: the black around the sector, burned-in graphics (calipers,
their dotted lines, text, markers: near-white pixels and small or thin bright structures),
point reflectors (a calcification keeps its peak), coloured pixels and other regions (the ECG
trace, a grey bar). Doppler, colour and M-mode images are skipped with the reason.
:func:`derived_dataset` turns the output into a derived Ultrasound Image instance with the
derivation recorded; :mod:`~usreview.processing.filters.quality` measures SSIM, ENL, CNR,
inclusion diameters and edge widths, and point-target contrast.

>>> from usreview.processing.filters import guided_despeckle, obnlm
>>> smooth = obnlm(frame)                                           # doctest: +SKIP
"""

from __future__ import annotations

from usreview.processing.filters.derived import derived_dataset, derived_from_result
from usreview.processing.filters.guided import guided_despeckle, speckle_fast
from usreview.processing.filters.obnlm import obnlm, speckle_obnlm

__all__ = [
    "derived_dataset",
    "derived_from_result",
    "guided_despeckle",
    "obnlm",
    "speckle_fast",
    "speckle_obnlm",
]

"""usreview: remote assistance in diagnostic ultrasound.

The package follows the journey of a study: ``dicom`` (the ultrasound model),
``simulate`` (studies with known answers), ``envelope`` (sealed transport),
and the command line in ``cli``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

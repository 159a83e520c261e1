"""SpectralViewer and MModeViewer: time-based displays with calibrated axes and point picking.

Both show the calibrated strip by default; *Whole image* (``view = "whole"``) shows the whole
frame, so the reviewer sees the B-mode image above the strip with the Doppler sample gate and
angle cursor, or the M-line. A spectral viewer reads out its region's Doppler correction
angle (:func:`angle_readout`) and warns above :data:`ANGLE_LIMIT_DEG`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Self

import anywidget
import numpy as np
import numpy.typing as npt
import traitlets

from usreview.dicom import (
    PhysicalUnits,
    RegionDataType,
    RegionSpatialFormat,
    UltrasoundInstance,
    UltrasoundRegion,
)
from usreview.errors import CalibrationError
from usreview.review import measure
from usreview.review.widgets._assets import css, esm
from usreview.review.widgets._axes import ticks, trace_pixels
from usreview.review.widgets._encode import as_display, encode_png

__all__ = [
    "ANGLE_LIMIT_DEG",
    "VIEWS",
    "AngleReadout",
    "MModeViewer",
    "SpectralViewer",
    "angle_readout",
]

Trace = npt.ArrayLike
_SPECTRAL = (RegionDataType.PW_SPECTRAL_DOPPLER, RegionDataType.CW_SPECTRAL_DOPPLER)
VIEWS: Final = ("strip", "whole")
"""What a time display shows: its calibrated region (the default) or the whole frame."""
ANGLE_LIMIT_DEG: Final = 60.0
"""Above this insonation angle, angle-corrected velocities are unreliable."""


class AngleReadout(NamedTuple):
    """What a spectral viewer says of its region's acquisition."""

    text: str
    """``Angle correction 52°`` (with the transducer frequency and PRF when recorded)."""
    warning: str
    """Why the velocities are unreliable, or ``""``."""


def _number(value: float) -> str:
    return f"{round(value, 1):g}"


def angle_readout(region: UltrasoundRegion) -> AngleReadout:
    """The Doppler correction angle of a spectral ``region``, as the viewer reads it out.

    The angle is its Doppler Correction Angle (0018,6034); beside it, the Transducer
    Frequency (0018,6030) and Pulse Repetition Frequency (0018,6032) when recorded. The
    warning is given when the angle, as shown (to 0.1°), is above :data:`ANGLE_LIMIT_DEG`
    either side of the beam.
    """
    angle = region.doppler_correction_angle_deg
    parts = [
        "No angle correction recorded" if angle is None else f"Angle correction {_number(angle)}°"
    ]
    if region.transducer_frequency_khz is not None:
        parts.append(f"{_number(region.transducer_frequency_khz / 1000.0)} MHz")
    if region.pulse_repetition_frequency_hz is not None:
        parts.append(f"PRF {_number(region.pulse_repetition_frequency_hz)} Hz")
    warning = ""
    if angle is not None and abs(round(angle, 1)) > ANGLE_LIMIT_DEG:
        limit = _number(ANGLE_LIMIT_DEG)
        warning = (
            f"The angle correction {_number(angle)}° is above {limit}°: "
            f"velocities are unreliable above {limit}°."
        )
    return AngleReadout(" · ".join(parts), warning)


def _largest(regions: Sequence[UltrasoundRegion], what: str, test: Any) -> UltrasoundRegion:
    usable = [r for r in regions if test(r) and r.delta_x != 0 and r.delta_y != 0]
    if not usable:
        raise CalibrationError(f"the image has no {what}")
    return max(usable, key=lambda r: r.width * r.height)


def _traces(trace: Any) -> list[Any]:
    """One trace ``(n, 2)`` or several, as a list of traces."""
    if trace is None:
        return []
    if isinstance(trace, np.ndarray):
        return list(trace) if trace.ndim == 3 else [trace]
    if isinstance(trace, list | tuple) and trace and np.ndim(trace[0]) == 2:
        return [t for t in trace]
    return [trace]


class _TimeDisplay(anywidget.AnyWidget):  # type: ignore[misc]
    """The shared widget of spectral and M-mode displays (see the subclasses)."""

    _esm = esm("plot")
    _css = css()

    kind = traitlets.Unicode("").tag(sync=True)
    image = traitlets.Bytes(b"").tag(sync=True)
    origin = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)
    x_ticks: traitlets.List[list[Any]] = traitlets.List().tag(sync=True)
    y_ticks: traitlets.List[list[Any]] = traitlets.List().tag(sync=True)
    x_label = traitlets.Unicode("").tag(sync=True)
    y_label = traitlets.Unicode("").tag(sync=True)
    baseline = traitlets.Float(None, allow_none=True).tag(sync=True)
    traces: traitlets.List[list[Any]] = traitlets.List().tag(sync=True)
    roles = traitlets.List(traitlets.Dict()).tag(sync=True)
    active_role = traitlets.Unicode("").tag(sync=True)
    picks = traitlets.Dict().tag(sync=True)
    results = traitlets.List(traitlets.Dict()).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    view = traitlets.Enum(VIEWS, "strip").tag(sync=True)
    frame_size = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)
    whole_image = traitlets.Bytes(b"").tag(sync=True)
    readout = traitlets.Unicode("").tag(sync=True)
    warning = traitlets.Unicode("").tag(sync=True)

    _y_scale = 1.0

    def __init__(
        self,
        frame: npt.ArrayLike,
        regions: Sequence[UltrasoundRegion],
        region: UltrasoundRegion,
        *,
        trace: Trace | Sequence[Trace] | None,
        roles: list[dict[str, str]],
        labels: tuple[str, str],
        baseline: float | None,
        **kwargs: Any,
    ) -> None:
        pixels = as_display(frame, "frame")
        x0, y0, x1, y1 = region.bounds
        if x1 >= pixels.shape[1] or y1 >= pixels.shape[0]:
            raise ValueError(
                f"argument 'region': bounds {list(region.bounds)} exceed the frame "
                f"{pixels.shape[1]}x{pixels.shape[0]}"
            )
        self.regions: tuple[UltrasoundRegion, ...] = tuple(regions)
        self.region = region
        self._pixels = pixels
        #: The reviewer's current measurements (recomputed on every pick).
        self.measurements: list[measure.Measurement] = []
        super().__init__(
            kind=type(self).__name__,
            image=encode_png(pixels[y0 : y1 + 1, x0 : x1 + 1]),
            origin=[x0, y0],
            frame_size=[pixels.shape[1], pixels.shape[0]],
            width=x1 - x0 + 1,
            height=y1 - y0 + 1,
            x_ticks=[list(t) for t in ticks(region, "x")],
            y_ticks=[list(t) for t in ticks(region, "y", scale=self._y_scale)],
            x_label=labels[0],
            y_label=labels[1],
            baseline=baseline,
            traces=[trace_pixels(region, t, scale=self._y_scale) for t in _traces(trace)],
            roles=roles,
            active_role=roles[0]["key"],
            **kwargs,
        )

    @classmethod
    def from_instance(cls, instance: UltrasoundInstance, frame: int = 0, **kwargs: Any) -> Self:
        """A viewer of frame ``frame`` of ``instance``, on its calibrated region."""
        return cls(instance.display_frame(frame), instance.regions, **kwargs)

    def set_trace(self, trace: Trace | Sequence[Trace] | None) -> None:
        """Replace the overlaid trace(s): rows of (time s, value in the axis unit)."""
        self.traces = [trace_pixels(self.region, t, scale=self._y_scale) for t in _traces(trace)]

    def pick(self, role: str, point: Sequence[float]) -> None:
        """Place the point of ``role`` at image pixel ``point`` (as a click does)."""
        if role not in {r["key"] for r in self.roles}:
            raise ValueError(f"argument 'role': {role!r} is not one of this viewer's roles")
        self.picks = {**self.picks, role: [float(point[0]), float(point[1])]}

    def _compute(self, picks: dict[str, tuple[float, float]]) -> list[measure.Measurement]:
        raise NotImplementedError

    @traitlets.observe("view")
    def _on_view(self, change: dict[str, Any]) -> None:
        # The whole frame is sent the first time it is asked for, not with every viewer.
        if change["new"] == "whole" and not self.whole_image:
            self.whole_image = encode_png(self._pixels)

    @traitlets.observe("picks")
    def _on_picks(self, change: dict[str, Any]) -> None:
        picks: dict[str, tuple[float, float]] = {}
        try:
            for key, value in (change["new"] or {}).items():
                picks[str(key)] = (float(value[0]), float(value[1]))
            results = self._compute(picks)
        except (CalibrationError, ValueError, TypeError, IndexError) as exc:
            self.measurements = []
            self.results = []
            self.error = str(exc)
            return
        self.measurements = results
        self.error = ""
        self.results = [m.as_dict() for m in results]


class SpectralViewer(_TimeDisplay):
    """A PW or CW spectral Doppler display with calibrated axes, a trace and PSV/EDV/RI picks.

    The spectral region is shown, with time (s) and velocity (cm/s) ticks from its
    calibration and the zero-velocity baseline dashed. The reviewer picks the systolic peak,
    the end of diastole and optionally the next systolic peak; the kernel computes PSV, EDV,
    RI and heart rate with :mod:`usreview.review.measure`. *Whole image* shows the whole
    frame instead (the B-mode image with the sample gate and angle cursor), without axes or
    picking; pressed again, the strip comes back as it was. Above the image, the region's
    Doppler correction angle (:func:`angle_readout`), with a warning above 60°.

    Parameters
    ----------
    frame
        The displayed frame (uint8 grey or RGB) holding the spectral region.
    regions
        All ultrasound regions of the image.
    region
        The spectral region to show; default the largest PW/CW region in s and cm/s.
    trace
        An automatic envelope: rows of (time s, signed velocity cm/s as displayed), or a
        list of such arrays; NaN breaks the line.

    Traitlets (synced)
    ------------------
    picks : dict
        ``{"peak": [x, y], "end_diastole": [x, y], "next_peak": [x, y]}`` image pixels.
    active_role : str
        The role the next click sets (it advances after each click).
    results : list of dict
        :meth:`Measurement.as_dict` of each value; ``error`` says why there are none.
    view : {"strip", "whole"}
        What the canvas shows: the calibrated region (default) or the whole frame, whose
        PNG (``whole_image``) is encoded the first time it is asked for.
    readout, warning : str
        The angle readout and its warning (``""`` when none), from :func:`angle_readout`.

    DOM hooks: ``.usr-plot[data-kind=SpectralViewer, data-role, data-ready, data-ticks-x,
    data-ticks-y, data-error, data-view, data-shown-width, data-shown-height]``
    (``data-view`` and the shown size are those of the image drawn now),
    ``canvas.usr-canvas`` (the region, or the whole frame, is drawn at an offset of 64 px
    left and 12 px top, at one canvas pixel per image pixel), ``.usr-role[data-role]``,
    ``button.usr-whole[aria-pressed]``, ``.usr-result[data-name, data-value, data-unit]``,
    ``.usr-measure-error``, ``.usr-readout``, ``.usr-readout-warning``.
    """

    ROLES: tuple[tuple[str, str], ...] = (
        ("peak", "PSV: systolic peak"),
        ("end_diastole", "EDV: end diastole"),
        ("next_peak", "HR: next systolic peak"),
    )

    def __init__(
        self,
        frame: npt.ArrayLike,
        regions: Sequence[UltrasoundRegion],
        *,
        region: UltrasoundRegion | None = None,
        trace: Trace | Sequence[Trace] | None = None,
        **kwargs: Any,
    ) -> None:
        chosen = region or _largest(
            regions,
            "spectral Doppler region calibrated in s and cm/s",
            lambda r: (
                r.data_type in _SPECTRAL
                and r.units_x == PhysicalUnits.SECONDS
                and r.units_y == PhysicalUnits.CM_PER_SECOND
            ),
        )
        baseline = chosen.origin_y - chosen.reference_value_y / chosen.delta_y
        readout = angle_readout(chosen)
        super().__init__(
            frame,
            regions,
            chosen,
            trace=trace,
            roles=[{"key": k, "label": label} for k, label in self.ROLES],
            labels=("Time (s)", "Velocity (cm/s)"),
            baseline=baseline,
            readout=readout.text,
            warning=readout.warning,
            **kwargs,
        )

    def _compute(self, picks: dict[str, tuple[float, float]]) -> list[measure.Measurement]:
        out: list[measure.Measurement] = []
        peak = picks.get("peak")
        if peak is not None and "end_diastole" in picks:
            out.extend(measure.doppler(self.regions, peak, picks["end_diastole"]).measurements)
        elif peak is not None:
            out.append(measure.velocity(self.regions, peak))
        if peak is not None and "next_peak" in picks:
            out.append(measure.heart_rate(self.regions, peak, picks["next_peak"]))
        return out


class MModeViewer(_TimeDisplay):
    """An M-mode strip with time (s) and depth (mm) axes, wall traces and HR/excursion picks.

    Parameters
    ----------
    frame
        The displayed frame (uint8 grey or RGB) holding the M-mode region.
    regions
        All ultrasound regions of the image.
    region
        The M-mode region to show; default the largest one calibrated in s and cm.
    trace
        Automatic traces: rows of (time s, depth mm), or a list of such arrays (septum,
        posterior wall); NaN breaks a line.

    Traitlets and DOM hooks are those of :class:`SpectralViewer` (``data-kind=MModeViewer``);
    the roles are ``beat`` and ``next_beat`` (heart rate) and ``depth0`` and ``depth1``
    (excursion). *Whole image* shows the B-mode image with the M-line above the strip; there
    is no angle readout.
    """

    ROLES: tuple[tuple[str, str], ...] = (
        ("beat", "HR: beat"),
        ("next_beat", "HR: next beat"),
        ("depth0", "Excursion: from"),
        ("depth1", "Excursion: to"),
    )
    _y_scale = 10.0  # depth in mm

    def __init__(
        self,
        frame: npt.ArrayLike,
        regions: Sequence[UltrasoundRegion],
        *,
        region: UltrasoundRegion | None = None,
        trace: Trace | Sequence[Trace] | None = None,
        **kwargs: Any,
    ) -> None:
        chosen = region or _largest(
            regions,
            "M-mode region calibrated in s and cm",
            lambda r: (
                r.spatial_format == RegionSpatialFormat.M_MODE
                and r.units_x == PhysicalUnits.SECONDS
                and r.units_y == PhysicalUnits.CM
            ),
        )
        super().__init__(
            frame,
            regions,
            chosen,
            trace=trace,
            roles=[{"key": k, "label": label} for k, label in self.ROLES],
            labels=("Time (s)", "Depth (mm)"),
            baseline=None,
            **kwargs,
        )

    def _compute(self, picks: dict[str, tuple[float, float]]) -> list[measure.Measurement]:
        out: list[measure.Measurement] = []
        if "beat" in picks and "next_beat" in picks:
            out.append(measure.heart_rate(self.regions, picks["beat"], picks["next_beat"]))
        if "depth0" in picks and "depth1" in picks:
            out.append(measure.excursion(self.regions, picks["depth0"], picks["depth1"]))
        return out

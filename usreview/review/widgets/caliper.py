"""ImageViewer: a still with distance and ellipse calipers, measured in calibrated units."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import anywidget
import numpy.typing as npt
import traitlets

from usreview.dicom import UltrasoundInstance, UltrasoundRegion
from usreview.errors import CalibrationError
from usreview.review.measure import LengthUnit, Measurement, distance, ellipse
from usreview.review.widgets._assets import css, esm
from usreview.review.widgets._encode import as_display, encode_png

__all__ = ["TOOLS", "ImageViewer"]

#: Caliper tools and the points each needs.
TOOLS: dict[str, int] = {"distance": 2, "ellipse": 3}
Tool = Literal["distance", "ellipse"]
Layout = Literal["toggle", "side-by-side"]


class ImageViewer(anywidget.AnyWidget):  # type: ignore[misc]
    """A still image (or one frame) with calipers; values come from the ultrasound regions.

    The browser turns clicks into image pixel coordinates (``x`` = column, ``y`` = row,
    pixel centres at integers) and sends them as :attr:`request`; the kernel measures them
    with :mod:`usreview.review.measure` and answers with :attr:`result` or :attr:`error`
    (for instance the refusal of points in regions of different calibration). An optional
    filtered version of the same image is shown beside the original or toggled with it;
    both share the pixel grid, so calipers work on either. *Clear* (or :meth:`clear`)
    empties :attr:`result` and :attr:`current`. On a frame of a cine, each measurement's
    ``details`` carry its ``frame_number`` (1-based, as DICOM and the cine's label count).

    Parameters
    ----------
    image
        The original, uint8 grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``.
    regions
        The ultrasound regions calibrating it (from :attr:`UltrasoundInstance.regions`).
    filtered
        A processed version of the same size, or ``None``.
    tool
        ``"distance"`` (two clicks) or ``"ellipse"`` (centre, end of one axis, edge across).
    layout
        ``"toggle"`` (one view, a button switches) or ``"side-by-side"``.
    unit
        Length unit of the results, ``"mm"`` or ``"cm"``.
    labels
        Captions of the original and the filtered view.

    Traitlets (synced)
    ------------------
    tool, layout : str
        As above; ``showing`` is ``"original"`` or ``"filtered"`` in toggle layout.
    request : dict
        ``{"tool", "points": [[x, y], ...], "n"}`` set by the browser when a caliper is done.
    result : dict
        ``{"n", "tool", "points", "measurements": [Measurement.as_dict(), ...]}``.
    error : str
        Why the last request could not be measured ("" when it was).

    Traitlets (kernel only)
    -----------------------
    current : list of Measurement
        The measurements shown now: the last caliper's, none after a refusal or *Clear*.

    DOM hooks: ``.usr-caliper[data-tool, data-showing, data-pending, data-request,
    data-ready, data-error, data-measured]`` (``data-measured``: the values shown),
    ``canvas.usr-canvas[data-role]``, ``.usr-tool[data-tool]``, ``.usr-toggle``,
    ``.usr-clear``, one ``.usr-measure-text[data-name, data-value, data-unit,
    data-request]`` per value and ``.usr-measure-error``.
    """

    _esm = esm("caliper")
    _css = css()

    original = traitlets.Bytes(b"").tag(sync=True)
    filtered = traitlets.Bytes(b"").tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)
    labels = traitlets.List(traitlets.Unicode(), ["Original", "Filtered"]).tag(sync=True)
    tool = traitlets.Enum(tuple(TOOLS), "distance").tag(sync=True)
    layout = traitlets.Enum(("toggle", "side-by-side"), "toggle").tag(sync=True)
    showing = traitlets.Enum(("original", "filtered"), "original").tag(sync=True)
    request = traitlets.Dict().tag(sync=True)
    result = traitlets.Dict().tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    current = traitlets.List(traitlets.Instance(Measurement))

    def __init__(
        self,
        image: npt.ArrayLike,
        regions: Sequence[UltrasoundRegion],
        *,
        filtered: npt.ArrayLike | None = None,
        tool: Tool = "distance",
        layout: Layout = "toggle",
        unit: LengthUnit = "mm",
        labels: tuple[str, str] = ("Original", "Filtered"),
        frame_number: int | None = None,
        **kwargs: Any,
    ) -> None:
        original = as_display(image, "image")
        state: dict[str, Any] = {
            "original": encode_png(original),
            "width": int(original.shape[1]),
            "height": int(original.shape[0]),
        }
        if filtered is not None:
            other = as_display(filtered, "filtered")
            if other.shape[:2] != original.shape[:2]:
                raise ValueError(
                    f"argument 'filtered': {other.shape[:2]} differs from the image's "
                    f"{original.shape[:2]}"
                )
            state["filtered"] = encode_png(other)
        if unit not in ("mm", "cm"):
            raise ValueError(f"argument 'unit': {unit!r} is not 'mm' or 'cm'")
        self.regions: tuple[UltrasoundRegion, ...] = tuple(regions)
        self.unit: LengthUnit = unit
        #: The frame shown (1-based) when it is one of a cine's, else ``None``.
        self.frame_number: int | None = _frame_number(frame_number)
        #: Every measurement made, oldest first.
        self.measurements: list[Measurement] = []
        self._callbacks: list[Callable[[list[Measurement]], None]] = []
        super().__init__(tool=tool, layout=layout, labels=list(labels), **state, **kwargs)

    @classmethod
    def from_instance(
        cls,
        instance: UltrasoundInstance,
        frame: int = 0,
        *,
        filtered: npt.ArrayLike | None = None,
        **kwargs: Any,
    ) -> ImageViewer:
        """A viewer of frame ``frame`` (0-based) of ``instance``, calibrated by its regions.

        On a multi-frame instance, measurements record ``frame_number`` ``frame + 1``.
        """
        if instance.number_of_frames > 1:
            kwargs.setdefault("frame_number", frame + 1)
        return cls(instance.display_frame(frame), instance.regions, filtered=filtered, **kwargs)

    def set_image(
        self,
        image: npt.ArrayLike,
        filtered: npt.ArrayLike | None = None,
        *,
        frame_number: int | None = None,
    ) -> None:
        """Show another image of the same size and calibration (another frame of a cine).

        For instance ``cine.observe(lambda c: caliper.set_image(inst.display_frame(c.new),
        frame_number=c.new + 1), "frame")`` measures on the frame the cine viewer was paused
        on, and records which. Measurements already shown keep the frame they were made on.
        """
        pixels = as_display(image, "image")
        if pixels.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"argument 'image': {pixels.shape[:2]} differs from the viewer's "
                f"{(self.height, self.width)}"
            )
        with self.hold_sync():
            self.original = encode_png(pixels)
            if filtered is not None:
                other = as_display(filtered, "filtered")
                if other.shape[:2] != pixels.shape[:2]:
                    raise ValueError(
                        f"argument 'filtered': {other.shape[:2]} differs from the image"
                    )
                self.filtered = encode_png(other)
        self.frame_number = _frame_number(frame_number)

    def clear(self) -> None:
        """Forget the measurements shown, as the *Clear* button does."""
        with self.hold_sync():
            self.result = {}
            self.error = ""
        self.current = []

    def on_measure(self, callback: Callable[[list[Measurement]], None]) -> None:
        """Call ``callback(measurements)`` after each successful caliper measurement."""
        self._callbacks.append(callback)

    def measure(
        self, points: Sequence[Sequence[float]], tool: Tool | None = None
    ) -> list[Measurement]:
        """Measure ``points`` with ``tool`` (default: the current tool) and show the result.

        Raises
        ------
        CalibrationError, ValueError
            As the functions of :mod:`usreview.review.measure`; the message is also shown.
        """
        chosen = tool or self.tool
        n = int(self.request.get("n", 0)) if self.request else 0
        return self._measure(chosen, [list(map(float, p)) for p in points], n)

    def _measure(self, tool: str, points: list[list[float]], n: int) -> list[Measurement]:
        try:
            if tool not in TOOLS or len(points) != TOOLS[tool]:
                raise ValueError(f"the {tool} tool needs {TOOLS.get(tool, '?')} points")
            if tool == "distance":
                results = [distance(self.regions, *points, unit=self.unit)]
            else:
                shape = ellipse(self.regions, *points, unit=self.unit)
                results = list(shape.measurements)
        except (CalibrationError, ValueError) as exc:
            self.current = []
            self.result = {"n": n, "tool": tool, "points": points, "measurements": []}
            self.error = str(exc)
            raise
        if self.frame_number is not None:
            frame = {"frame_number": self.frame_number}
            results = [dataclasses.replace(m, details={**m.details, **frame}) for m in results]
        self.current = results
        self.error = ""
        self.result = {
            "n": n,
            "tool": tool,
            "points": points,
            "measurements": [m.as_dict() for m in results],
        }
        self.measurements.extend(results)
        for callback in self._callbacks:
            callback(results)
        return results

    @traitlets.observe("result")
    def _on_result(self, change: dict[str, Any]) -> None:
        # the browser's Clear empties the result: nothing is shown, nothing is current
        if not (change["new"] or {}).get("measurements"):
            self.current = []

    @traitlets.observe("request")
    def _on_request(self, change: dict[str, Any]) -> None:
        request = change["new"] or {}
        tool, n = str(request.get("tool", self.tool)), int(request.get("n", 0))
        try:
            points = [[float(v) for v in p] for p in request.get("points") or []]
        except (TypeError, ValueError):
            self.error = f"the browser sent unreadable points: {request.get('points')!r}"
            return
        # a refusal is shown to the reviewer through ``error``
        with contextlib.suppress(CalibrationError, ValueError):
            self._measure(tool, points, n)


def _frame_number(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"argument 'frame_number': {value!r} is not a frame number (from 1)")
    return value

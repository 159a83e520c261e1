"""Which viewer shows which instance, and how a viewer's measurements reach the report.

:func:`viewer_for` picks by image kind (the order of :data:`VIEWERS` decides for an
instance of several kinds: a duplex PW image is shown as a spectrum):

==================  =========================================================================
kind                viewer
==================  =========================================================================
volume              :class:`~usreview.review.widgets.VolumeViewer` (multiplanar and 3D)
pw / cw doppler     :class:`~usreview.review.widgets.SpectralViewer` with the automatic trace
m-mode              :class:`~usreview.review.widgets.MModeViewer`
cine (any kind)     :class:`~usreview.review.widgets.CineViewer`, and a caliper on the frame
                    the reviewer pauses on
still (b-mode...)   :class:`~usreview.review.widgets.ImageViewer`, original and filtered
==================  =========================================================================

Under each viewer, *Add to report* copies its current measurements into the
:class:`~usreview.review.results.ResultsPanel` as the reviewer's own.

:func:`progressive_viewer` shows an instance before it has arrived: its first frame
(rendered by the service) at once, the viewer once the instance is there; a cine streams
its frames into the same :class:`~usreview.review.widgets.CineViewer`, which plays those
arrived while the rest come.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import ipywidgets as w
import numpy as np
import numpy.typing as npt

from usreview.dicom import ImageKind, UltrasoundInstance
from usreview.errors import UsreviewError
from usreview.processing import run_pipeline
from usreview.processing.quantification.doppler import envelope_trace
from usreview.review.measure import Measurement
from usreview.review.results import ResultsPanel
from usreview.review.widgets import (
    CineViewer,
    ImageViewer,
    MModeViewer,
    SpectralViewer,
    VolumeViewer,
)

__all__ = ["VIEWERS", "Progressive", "filtered_still", "progressive_viewer", "viewer_for"]

K = ImageKind
VIEWERS: Final = (
    (K.VOLUME, "volume"),
    (K.PW_DOPPLER, "spectral"),
    (K.CW_DOPPLER, "spectral"),
    (K.MMODE, "mmode"),
)
"""(kind, viewer) in order of precedence; anything else is a cine or a still."""


def viewer_for(
    instance: UltrasoundInstance, record: Mapping[str, Any], results: ResultsPanel
) -> w.Widget:
    """The viewer of ``instance`` with an *Add to report* bar feeding ``results``."""
    uid = instance.sop_instance_uid
    choice = next((name for kind, name in VIEWERS if instance.has_kind(kind)), None)
    if choice == "volume":
        return VolumeViewer.from_instance(instance)
    if choice == "spectral":
        spectral = SpectralViewer.from_instance(instance)
        try:
            spectral.set_trace(envelope_trace(instance))
        except UsreviewError as exc:
            spectral.error = f"No automatic trace: {exc}"
        return _with_report_bar(spectral, lambda: _from_results(spectral.results), uid, results)
    if choice == "mmode":
        mmode = MModeViewer.from_instance(instance)
        return _with_report_bar(mmode, lambda: _from_results(mmode.results), uid, results)
    if instance.number_of_frames > 1:
        return _cine_with_caliper(instance, results)
    caliper = ImageViewer.from_instance(instance, filtered=filtered_still(instance))
    last: list[Measurement] = []
    caliper.on_measure(lambda found: last.__setitem__(slice(None), found))
    return _with_report_bar(caliper, lambda: [m.as_dict() for m in last], uid, results)


class Progressive(NamedTuple):
    """A viewer shown before its instance arrived, and what completes it once it has."""

    widget: w.Widget
    complete: Callable[[UltrasoundInstance], None]


def progressive_viewer(
    record: Mapping[str, Any], first_frame_png: bytes, results: ResultsPanel
) -> Progressive:
    """The viewer of ``record`` (an instance of ``GET /studies/{uid}``) from its first frame.

    A cine (by the record's kinds) is a streamed :class:`CineViewer`: ``complete`` sends
    it the instance's frames in chunks, then adds the caliper. Anything else shows the
    first frame until ``complete`` puts :func:`viewer_for` in its place. ``complete`` runs
    in a background thread; it raises what reading the instance raises.
    """
    kinds = set(record.get("kinds", []))
    if K.CINE.value in kinds and not any(kind.value in kinds for kind, _ in VIEWERS):
        cine = CineViewer.streaming(first_frame_png)
        bar = w.VBox([])
        note = w.HTML("<small>Pause the loop to measure on the frame shown.</small>")
        box = w.VBox([cine, note, bar])

        def stream(instance: UltrasoundInstance) -> None:
            if instance.number_of_frames < 2:
                box.children = [viewer_for(instance, record, results)]
                return
            cine.stream_instance(instance)
            bar.children = [_caliper_bar(instance, cine, results)]

        return Progressive(box, stream)
    still = w.Image(value=first_frame_png, format="png")
    still.add_class("usreview-first-frame")
    box = w.VBox([still, w.HTML("<i>Loading the image…</i>")])

    def replace(instance: UltrasoundInstance) -> None:
        box.children = [viewer_for(instance, record, results)]

    return Progressive(box, replace)


def filtered_still(instance: UltrasoundInstance) -> npt.NDArray[np.uint8] | None:
    """The speckle-filtered still the hub's pipeline sent to the site (same processor)."""
    if not instance.has_kind(K.BMODE):
        return None
    steps = (("speckle_obnlm", frozenset({K.BMODE})),)
    for result in run_pipeline(instance, steps=steps):
        for image in result.output.images:
            return image.frame(0)
    return None


def _cine_with_caliper(instance: UltrasoundInstance, results: ResultsPanel) -> w.Widget:
    cine = CineViewer.from_instance(instance)
    note = w.HTML("<small>Pause the loop to measure on the frame shown.</small>")
    return w.VBox([cine, note, _caliper_bar(instance, cine, results)])


def _caliper_bar(instance: UltrasoundInstance, cine: CineViewer, results: ResultsPanel) -> w.Widget:
    """A caliper on the frame the cine is paused on, with its *Add to report* bar."""
    caliper = ImageViewer.from_instance(instance, 0)
    last: list[Measurement] = []
    caliper.on_measure(lambda found: last.__setitem__(slice(None), found))

    def follow(change: dict[str, Any]) -> None:
        if not cine.playing:
            caliper.set_image(instance.display_frame(int(change["new"])))

    cine.observe(follow, "frame")
    return _with_report_bar(
        caliper, lambda: [m.as_dict() for m in last], instance.sop_instance_uid, results
    )


def _from_results(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(item) for item in items]


def _with_report_bar(
    viewer: w.Widget,
    current: Callable[[], list[dict[str, Any]]],
    uid: str,
    results: ResultsPanel,
) -> w.Widget:
    button = w.Button(description="Add to report", icon="plus")
    button.add_class("usreview-add-measurement")
    said = w.HTML()

    def add(_: object) -> None:
        found = current()
        if not found:
            said.value = "<i>Nothing measured yet.</i>"
            return
        for item in found:
            results.add_measurement({**item, "source_instance": uid})
        names = ", ".join(html.escape(str(item["name"])) for item in found)
        said.value = f"<i>Added {names}.</i>"

    button.on_click(add)
    return w.VBox([viewer, w.HBox([button, said])])

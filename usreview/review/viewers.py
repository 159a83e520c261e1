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

The spectral and M-mode viewers show the calibrated strip; their *Whole image* button shows
the whole frame instead, for the B-mode image above the strip with the Doppler sample gate and
angle cursor, or the M-line. A spectral viewer reads out its region's Doppler correction angle
(with the transducer frequency and PRF when recorded) and warns when it is above 60°.

Under each viewer, *Add to report* copies the measurements it shows now into the
:class:`~usreview.review.results.ResultsPanel` as the reviewer's own, with the label typed
beside it (free text, or one of a few suggestions for that viewer). Each measurement is
added once: the button is disabled while there is nothing new to add (nothing measured,
*Clear* pressed, a refused pick, or all of it added already). A caliper on a cine records
the frame it measured on (``details["frame_number"]``, 1-based). Feeding a practice panel
(``ResultsPanel(..., practice=True)``: the trainees' teaching page) the button says *Keep
for practice* instead, since nothing of it goes anywhere.

:func:`progressive_viewer` shows an instance before it has arrived: its first frame
(rendered by the service) at once, the viewer once the instance is there; a cine streams
its frames into the same :class:`~usreview.review.widgets.CineViewer`, which plays those
arrived while the rest come.

A page that replaces a viewer (the reviewer chose another instance) closes the one it
replaces with :func:`close_viewer`: its bar then stops following the results panel (each
live viewer has one callback there, however often the reviewer switches), and the kernel
lets its images go.
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
from usreview.review.report import MAX_LABEL
from usreview.review.results import ResultsPanel
from usreview.review.widgets import (
    CineViewer,
    ImageViewer,
    MModeViewer,
    SpectralViewer,
    VolumeViewer,
)

__all__ = [
    "VIEWERS",
    "Progressive",
    "close_viewer",
    "filtered_still",
    "progressive_viewer",
    "viewer_for",
]

K = ImageKind
VIEWERS: Final = (
    (K.VOLUME, "volume"),
    (K.PW_DOPPLER, "spectral"),
    (K.CW_DOPPLER, "spectral"),
    (K.MMODE, "mmode"),
)
"""(kind, viewer) in order of precedence; anything else is a cine or a still."""

_SUGGESTIONS: Final = {
    "caliper": (
        "Lesion",
        "Cyst",
        "Kidney length",
        "Vessel diameter",
        "Plaque thickness",
        "Intima-media thickness",
    ),
    "spectral": ("Right ICA", "Left ICA", "Right CCA", "Left CCA"),
    "mmode": ("TAPSE", "MAPSE", "Interventricular septum", "LV posterior wall"),
}
"""Labels offered beside *Add to report*, by viewer; the reviewer may type any other."""


def viewer_for(
    instance: UltrasoundInstance, record: Mapping[str, Any], results: ResultsPanel
) -> w.Widget:
    """The viewer of ``instance`` with an *Add to report* bar feeding ``results`` (*Keep
    for practice* if ``results`` is a practice panel)."""
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
        return _with_report_bar(
            spectral, lambda: _from_results(spectral.results), "results", uid, results, "spectral"
        )
    if choice == "mmode":
        mmode = MModeViewer.from_instance(instance)
        return _with_report_bar(
            mmode, lambda: _from_results(mmode.results), "results", uid, results, "mmode"
        )
    if instance.number_of_frames > 1:
        return _cine_with_caliper(instance, results)
    caliper = ImageViewer.from_instance(instance, filtered=filtered_still(instance))
    return _with_caliper_bar(caliper, uid, results)


def close_viewer(viewer: w.Widget) -> None:
    """Close a viewer that is no longer shown, and every widget inside it.

    Its *Add to report* bar is then forgotten by the results panel it fed
    (:meth:`~usreview.review.results.ResultsPanel.on_change`), and the kernel no longer
    keeps its images. A viewer still loading (:func:`progressive_viewer`) is not completed
    once closed.
    """
    stack = [viewer]
    while stack:
        widget = stack.pop()
        if isinstance(widget, ResultsPanel):  # the page's panel is not the viewer's to close
            continue
        stack.extend(getattr(widget, "children", ()))
        widget.close()


def _closed(widget: w.Widget) -> bool:
    return widget.comm is None


def _fill(box: w.Box, build: Callable[[], w.Widget]) -> None:
    """Put what ``build()`` makes in ``box``, unless ``box`` was closed (the viewer was
    replaced while its instance was downloading): what was built is then closed too."""
    if _closed(box):
        return
    made = build()
    if _closed(box):
        close_viewer(made)
    else:
        box.children = [made]


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
                _fill(box, lambda: viewer_for(instance, record, results))
                return
            if not _closed(box):  # else replaced while it was downloading
                cine.stream_instance(instance)
                _fill(bar, lambda: _caliper_bar(instance, cine, results))

        return Progressive(box, stream)
    still = w.Image(value=first_frame_png, format="png")
    still.add_class("usreview-first-frame")
    box = w.VBox([still, w.HTML("<i>Loading the image…</i>")])

    def replace(instance: UltrasoundInstance) -> None:
        _fill(box, lambda: viewer_for(instance, record, results))

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
    """A caliper on the frame the cine is paused on, with its *Add to report* bar.

    Its measurements record that frame (``details["frame_number"]``, 1-based).
    """
    start = cine.frame if 0 <= cine.frame < instance.number_of_frames else 0
    caliper = ImageViewer.from_instance(instance, start)

    def follow(change: dict[str, Any]) -> None:
        if not cine.playing:
            k = int(change["new"])
            caliper.set_image(instance.display_frame(k), frame_number=k + 1)

    cine.observe(follow, "frame")
    return _with_caliper_bar(caliper, instance.sop_instance_uid, results)


def _from_results(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(item) for item in items]


def _with_caliper_bar(caliper: ImageViewer, uid: str, results: ResultsPanel) -> w.Widget:
    def shown() -> list[dict[str, Any]]:
        return [m.as_dict() for m in caliper.current]

    return _with_report_bar(caliper, shown, "current", uid, results, "caliper")


def _with_report_bar(
    viewer: w.Widget,
    current: Callable[[], list[dict[str, Any]]],
    trait: str,
    uid: str,
    results: ResultsPanel,
    kind: str,
) -> w.Widget:
    """``viewer`` above a label box and *Add to report* (*Keep for practice* when
    ``results`` is a practice panel).

    ``current()`` gives the measurements the viewer shows now (as
    :meth:`~usreview.review.measure.Measurement.as_dict`); its trait ``trait`` changes
    with them. The button adds those not yet among the reviewer's in ``results``, with
    the label, and is disabled while there are none.
    """
    label = w.Combobox(
        placeholder="Label (optional)",
        options=list(_SUGGESTIONS[kind]),
        ensure_option=False,
        layout=w.Layout(width="220px"),
    )
    label.add_class("usreview-measurement-label")
    practice = results.practice
    button = w.Button(
        description="Keep for practice" if practice else "Add to report",
        icon="plus",
        tooltip="Into your practice list, which is sent nowhere" if practice else "",
        disabled=True,
    )
    button.add_class("usreview-add-measurement")
    said = w.HTML()
    said.add_class("usreview-add-said")

    def shown() -> list[dict[str, Any]]:
        return [{**item, "source_instance": uid} for item in current()]

    def fresh() -> list[dict[str, Any]]:
        return [item for item in shown() if not results.has_measurement(item)]

    def refresh() -> None:
        button.disabled = not fresh()

    def changed(_: object) -> None:
        said.value = ""
        refresh()

    def add(_: object) -> None:
        found = fresh()
        text = label.value.strip()
        if not found:  # a click that arrived before the button was disabled
            again = "<i>Already kept.</i>" if practice else "<i>Already added.</i>"
            said.value = again if shown() else "<i>Nothing measured.</i>"
        elif len(text) > MAX_LABEL:
            said.value = f"<i>The label is too long: {MAX_LABEL} characters at most.</i>"
        else:
            added = [item for item in found if results.add_measurement(item, label=text)]
            names = ", ".join(html.escape(str(item["name"])) for item in added)
            named = f" as {html.escape(text)}" if text else ""
            said.value = f"<i>{'Kept' if practice else 'Added'} {names}{named}.</i>"
            label.value = ""
        refresh()

    viewer.observe(changed, trait)
    button.on_click(add)
    box = w.VBox([viewer, w.HBox([label, button, said])])
    results.on_change(refresh, owner=box)  # until the viewer is closed (close_viewer)
    return box

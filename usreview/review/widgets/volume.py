"""VolumeViewer: multiplanar and 3D rendering of an ultrasound volume (ipyniivue), or slices."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Literal

import ipywidgets
import numpy as np
import numpy.typing as npt

from usreview.dicom import UltrasoundInstance
from usreview.review.widgets._encode import encode_png
from usreview.review.widgets._nifti import nifti_bytes

__all__ = ["VolumeViewer", "niivue_available"]

Backend = Literal["auto", "niivue", "slices"]


def niivue_available() -> bool:
    """Whether ipyniivue (multiplanar and volume rendering in WebGL2) is installed."""
    return importlib.util.find_spec("ipyniivue") is not None


class VolumeViewer(ipywidgets.VBox):  # type: ignore[misc]
    """A 3D volume with its voxel spacing: ipyniivue multiplanar plus render view.

    With ipyniivue (installed from PyPI, offline: its JavaScript ships in the wheel) the
    volume is passed as NIfTI-1 bytes and shown as axial, coronal and sagittal planes plus a
    volume rendering. Without it, or with ``backend="slices"``, three orthogonal slices
    (``ipywidgets.Image``, one slider each) are shown with a note that says so.

    Parameters
    ----------
    volume
        uint8 voxels ``(slices, rows, columns)``.
    spacing_mm
        (slice, row, column) spacing in mm.
    backend
        ``"auto"`` (ipyniivue when installed), ``"niivue"`` (required) or ``"slices"``.
    height
        Height of the view in CSS pixels.

    Attributes
    ----------
    backend : str
        ``"niivue"`` or ``"slices"``: what is shown.
    viewer
        The ``ipyniivue.NiiVue`` widget, or the box of slices.
    sliders
        The slice sliders (empty with ipyniivue).
    """

    def __init__(
        self,
        volume: npt.ArrayLike,
        spacing_mm: tuple[float, float, float],
        *,
        backend: Backend = "auto",
        height: int = 480,
        **kwargs: Any,
    ) -> None:
        data = np.ascontiguousarray(volume)
        if data.dtype != np.uint8 or data.ndim != 3:
            raise ValueError(
                f"argument 'volume': expected uint8 (slices, rows, columns), "
                f"got {data.dtype} {data.shape}"
            )
        if backend not in ("auto", "niivue", "slices"):
            raise ValueError(f"argument 'backend': {backend!r} is not auto, niivue or slices")
        if backend == "niivue" and not niivue_available():
            raise ImportError(
                "VolumeViewer(backend='niivue') needs ipyniivue: pip install 'ipyniivue>=2.4'"
            )
        self.volume = data
        self.spacing_mm = tuple(float(v) for v in spacing_mm)
        self.sliders: list[ipywidgets.IntSlider] = []
        use_niivue = backend == "niivue" or (backend == "auto" and niivue_available())
        children: list[Any]
        if use_niivue:
            self.backend = "niivue"
            self.viewer = _niivue(data, spacing_mm, height)
            children = [self.viewer]
        else:
            self.backend = "slices"
            self.viewer = self._slices(height)
            why = (
                "ipyniivue is not installed: orthogonal slices shown "
                "(install ipyniivue for multiplanar views and volume rendering)"
                if backend == "auto"
                else "orthogonal slices"
            )
            children = [ipywidgets.HTML(f"<em class='usr-volume-note'>{why}</em>"), self.viewer]
        super().__init__(children, **kwargs)
        self.add_class("usr-volume")
        self.add_class(f"usr-volume-{self.backend}")

    @classmethod
    def from_instance(cls, instance: UltrasoundInstance, **kwargs: Any) -> VolumeViewer:
        """A viewer of an Enhanced US Volume, with its Pixel Measures spacing.

        Raises
        ------
        ValueError
            The instance has no voxel spacing, or its voxels are not grey.
        """
        spacing = instance.voxel_spacing_mm
        if spacing is None:
            raise ValueError("the instance has no voxel spacing (Pixel Measures Sequence)")
        frames = np.stack([instance.display_frame(k) for k in range(instance.number_of_frames)])
        return cls(frames, spacing, **kwargs)

    def _slices(self, height: int) -> ipywidgets.Box:
        ds, dr, dc = self.spacing_mm
        slices, rows, cols = self.volume.shape
        planes: dict[str, tuple[int, Callable[[int], npt.NDArray[np.uint8]], tuple[float, float]]]
        planes = {
            "slice": (slices, lambda k: self.volume[k], (cols * dc, rows * dr)),
            "row": (rows, lambda k: self.volume[:, k, :], (cols * dc, slices * ds)),
            "column": (cols, lambda k: self.volume[:, :, k], (slices * ds, rows * dr)),
        }
        boxes = []
        for name, (count, cut, (w_mm, h_mm)) in planes.items():
            scale = height / 2 / max(w_mm, h_mm)
            image = ipywidgets.Image(
                value=encode_png(cut(count // 2)),
                format="png",
                width=max(int(w_mm * scale), 1),
                height=max(int(h_mm * scale), 1),
            )
            slider = ipywidgets.IntSlider(
                value=count // 2, min=0, max=count - 1, description=name, continuous_update=True
            )

            def update(change: dict[str, Any], image: Any = image, cut: Any = cut) -> None:
                image.value = encode_png(cut(int(change["new"])))

            slider.observe(update, names="value")
            self.sliders.append(slider)
            boxes.append(ipywidgets.VBox([image, slider]))
        return ipywidgets.HBox(boxes)


def _niivue(
    data: npt.NDArray[np.uint8], spacing_mm: tuple[float, float, float], height: int
) -> Any:
    from ipyniivue import NiiVue, ShowRender, SliceType, Volume

    viewer = NiiVue(
        height=height,
        slice_type=SliceType.MULTIPLANAR,
        multiplanar_show_render=ShowRender.ALWAYS,
        show_3d_crosshair=True,
    )
    volume = Volume(data=nifti_bytes(data, spacing_mm), name="volume.nii", colormap="gray")
    viewer.volumes = [volume]
    return viewer

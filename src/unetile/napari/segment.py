"""The Segment dock widget: a model, an image layer, and what to make of it.

The model is chosen from a list (model_choice.py): the shipped models by name, the runs the
Train widget finished in this session, or a file.

The prediction is `Predictor.predict`, plane by plane (a 3D model: volume by volume, the
layer's last three axes, with its scale as the voxel size), exactly what `unetile predict`
writes (the calibrated probability, a mask at the calibrated threshold, or cells), run by
napari's ``thread_worker`` so the viewer stays responsive; Cancel stops it after the current
plane or volume.
The result is added as an Image or Labels layer on the input's scale and translation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, ProgressBar, PushButton

from ..errors import UserInputError
from ..inference.predictor import PredictOptions, Predictor
from .layers_io import LayerSlices, layer_choices
from .model_choice import ModelChoice, events
from .notify import show_one_line

# What the widget offers -> the `--instances` method it means (None: a map or a mask).
OUTPUTS = {"probability": None, "mask": None, "cells (watershed)": "watershed", "cells (components)": "components"}


@dataclass(frozen=True)
class SegmentRequest:
    """What the widget asks for (the same choices as `unetile predict`)."""

    model: str | Path  # a shipped model's name (as --model NAME) or a file
    output: str = "probability"  # one of OUTPUTS
    tta: bool = False
    device: str = "auto"  # auto (CUDA where present), cpu, cuda
    diameter: float | None = None  # px across of the cells (models trained with a cell diameter); None: estimated
    # torch's compute threads, the UI thread's: a new thread takes the count another thread set
    # last (a Dask worker in this process sets 1), and the maps' last bits depend on it
    threads: int | None = None

    def options(self) -> PredictOptions:
        return PredictOptions(tta=self.tta, threshold=0.5 if self.output == "mask" else None,
                              instances=OUTPUTS[self.output], diameter=self.diameter)


def predict_planes(request: SegmentRequest, layer):
    """A generator for ``thread_worker``: yields (planes done, planes) as it goes, returns the
    result (..., H, W) in the layer's leading shape (class probabilities: (..., C, H, W)) and
    the number of those leading axes.

    A 3D model takes the layer's last three axes as one volume (Z, Y, X), its voxel size from
    the layer's scale where set (else the model's), and counts volumes instead of planes."""
    if request.threads:
        torch.set_num_threads(request.threads)
    predictor = Predictor.load(request.model, request.options(), None if request.device == "auto" else request.device)
    planes = LayerSlices(layer, predictor.spatial_dims)
    yield 0, planes.count
    results = []
    for index in range(planes.count):
        results.append(predictor.predict(planes[index].astype(np.float32, copy=False), ".tif",
                                         voxel_size=planes.voxel_size))
        yield index + 1, planes.count
    return planes.stacked(results), len(planes.lead)


class SegmentWidget(Container):
    """Segment an image layer with a model: a shipped one by name, a run's best.pt, or a
    file (a .pt checkpoint, an exported .onnx or a BioImage.IO .zip)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.model = ModelChoice("model")
        self.image_layer = ComboBox(label="image", choices=layer_choices(napari_viewer, "Image"))
        self.output = ComboBox(label="output", choices=list(OUTPUTS), value="probability")
        self.tta = CheckBox(text="average over flips (TTA)")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        # Models trained with a cell diameter rescale each plane to it: the cells' size here, or 0 to estimate it.
        self.diameter = FloatSpinBox(label="cell diameter (px, 0: estimate)", value=0.0, min=0.0, max=10000.0)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="planes", value=0, max=1)
        super().__init__(widgets=[*self.model.widgets, self.image_layer, self.output, self.tta, self.device,
                                  self.diameter, self.run_button, self.cancel_button, self.progress])
        self.worker = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        events.trained.connect(self.offer_model)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)

    def offer_model(self, path: Path) -> None:
        """A model the Train widget just made joins the list and becomes this widget's model."""
        self.model.select_run(path)

    def run(self):
        """Start segmenting; returns the worker (None when nothing can start)."""
        layer = self.image_layer.value
        if layer is None:
            show_one_line("choose an image layer to segment")
            return None
        try:
            model = self.model.value
        except UserInputError as e:
            show_one_line(e)
            return None
        request = SegmentRequest(model, self.output.value, self.tta.value, self.device.value,
                                 self.diameter.value or None, torch.get_num_threads())
        self.progress.value = 0
        from napari.qt.threading import create_worker

        self.worker = create_worker(predict_planes, request, layer, _ignore_errors=True)  # shown, not raised
        self.worker.yielded.connect(self._advance)
        self.worker.returned.connect(self._add_result)
        self.worker.errored.connect(show_one_line)
        self.worker.finished.connect(self._finished)
        self._source, self._request = layer, request
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()  # after the current plane; nothing is added

    def _advance(self, done_of: tuple[int, int]) -> None:
        self.progress.max, self.progress.value = done_of[1], done_of[0]

    def _finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _add_result(self, result_and_lead: tuple[np.ndarray, int]) -> None:
        result, lead = result_and_lead
        source, output = self._source, self._request.output
        where = {"scale": source.scale, "translate": source.translate}  # an RGB layer's are already 2D
        name = f"{source.name} {output}"
        if output == "probability" and result.ndim > len(where["scale"]):  # classes: after the leading axes
            self.viewer.add_image(result, name=name, channel_axis=lead, **where)
        elif output == "probability":
            self.viewer.add_image(result, name=name, colormap="magma", contrast_limits=(0, 1), **where)
        elif output == "mask":
            self.viewer.add_labels((result > 0).astype(np.uint8) if result.max() == 255 else result, name=name, **where)
        else:
            self.viewer.add_labels(result.astype(np.uint32), name=name, **where)

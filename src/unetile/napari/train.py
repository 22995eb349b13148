"""The Train dock widget: an image layer and its Labels layer become a run of `unetile train`.

The layers are written beside the run folder (``RUN.data/images.tif`` and ``labels.tif``,
one page per plane; a single 2D image is cut into four quarters, so that the last can
validate; "volumes (3D)": ``RUN.data/images/`` and ``labels/``, OME-TIFF volumes with the
layer's scale as voxel size, z planes nobody painted left out of the loss) and
`training.train` runs them in napari's ``thread_worker``. The widget plots the run's
metrics.csv (training and validation loss) every second while it trains. Stop asks the loop
to stop as Ctrl-C does: the current step finishes and last.pt is written, so "resume"
continues the run exactly. "start from" is ``--init`` (fine-tuning), chosen as the Segment
widget's model is (model_choice.py): none, a shipped model by name, a recent run, or a file.
A finished run's best.pt joins every model list and becomes the Segment widgets' model.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from ..errors import UserInputError
from ..io import label_dtype, write_image, write_volume
from ..training.config import TrainConfig
from ..training.presets import PRESETS
from .layers_io import LayerSlices, layer_choices
from .model_choice import ModelChoice, events
from .notify import show_one_line


# What the widget offers -> the spatial axes `unetile train` learns (--dims).
TRAIN_ON = {"planes (2D)": 2, "volumes (3D)": 3}


@dataclass(frozen=True)
class TrainingFiles:
    """What `write_training_data` wrote, and how `unetile train` must read it."""

    images: Path
    labels: Path
    dims: int = 2  # 2: one image per page; 3: one volume per file
    voxel_size: tuple[float, float, float] | None = None  # volumes: the layer's scale (z, y, x)
    ignore_label: int | None = None  # the value of planes nobody painted (sparse labels)


def write_training_data(image_layer, labels_layer, folder: Path, volume: bool = False,
                        painted_planes_only: bool = True) -> TrainingFiles:
    """The layers as the files `unetile train --images --labels` reads.

    2D: two multi-page TIFFs, one page per plane (a single image is cut into four quarters, so
    that the last can validate). ``volume``: the layers' last three axes are one volume, cut into
    four quarter volumes in y and x (the last validates) and written as OME-TIFF volumes with
    the layer's scale as the voxel size; with ``painted_planes_only`` the z planes of the labels
    that hold no painted pixel are not annotated (sparse labels: paint a few planes fully)."""
    planes = LayerSlices(image_layer, 3 if volume else 2)
    images = np.stack([planes[i] for i in range(planes.count)])  # (N, C, H, W) or (N, C, Z, Y, X)
    spatial = images.shape[2:]
    labels = np.asarray(labels_layer.data)
    if labels.shape[-len(spatial):] != spatial or labels.size // np.prod(spatial) != images.shape[0]:
        what = "volume(s)" if volume else "plane(s)"
        raise ValueError(f"the labels layer '{labels_layer.name}' is {labels.shape}, the image "
                         f"'{image_layer.name}' {images.shape[0]} {what} of {spatial}: they must match")
    labels = labels.reshape(-1, *spatial)
    ignore = int(labels.max()) + 1 if volume and painted_planes_only else None
    if ignore is not None:  # before any quartering: a plane painted anywhere is annotated everywhere
        unpainted = ~labels.any(axis=(-2, -1))  # (N, Z): planes without a painted pixel
        labels = np.where(unpainted[..., None, None], ignore, labels)
    if images.shape[0] == 1:  # one image or volume: four quarters in y and x, the last validates
        images, labels = _quarters(images[0]), _quarters(labels[0])
    folder.mkdir(parents=True, exist_ok=True)
    if not volume:
        write_image(folder / "images.tif", images, "QCYX")
        write_image(folder / "labels.tif", labels.astype(label_dtype(labels)), "QYX")
        return TrainingFiles(folder / "images.tif", folder / "labels.tif")
    return _write_volumes(images, labels, folder, planes.voxel_size, ignore)


def _quarters(array: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (4, ..., H/2, W/2): the four quarters in y and x, in reading order."""
    h, w = array.shape[-2] // 2, array.shape[-1] // 2
    halves_y, halves_x = (slice(0, h), slice(h, 2 * h)), (slice(0, w), slice(w, 2 * w))
    return np.stack([array[..., ys, xs] for ys in halves_y for xs in halves_x])


def _write_volumes(images: np.ndarray, labels: np.ndarray, folder: Path, voxel: tuple | None,
                   ignore: int | None) -> TrainingFiles:
    """(N, C, Z, Y, X) images and (N, Z, Y, X) labels -> folder/images/NNN.tif, folder/labels/NNN.tif."""
    for kind in ("images", "labels"):
        (folder / kind).mkdir(exist_ok=True)
        for stale in (folder / kind).glob("*.tif"):  # an earlier start's volumes
            stale.unlink()
    for index, (image, label) in enumerate(zip(images, labels)):
        write_volume(folder / "images" / f"{index:03d}.tif", image[0] if image.shape[0] == 1 else image, voxel)
        write_volume(folder / "labels" / f"{index:03d}.tif", label.astype(label_dtype(label)), voxel)
    return TrainingFiles(folder / "images", folder / "labels", 3, voxel, ignore)


def read_curves(run: Path) -> dict[str, list[float]]:
    """epoch, train_loss and val_loss columns of the run's metrics.csv (empty before epoch 1)."""
    curves: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": []}
    try:
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return curves
    for row in rows:
        try:  # the last row may be half-written: training appends while this reads
            values = [float(row[key]) for key in curves]
        except (KeyError, TypeError, ValueError):
            continue
        for key, value in zip(curves, values):
            curves[key].append(value)
    return curves


def train_with_threads(threads: int, cfg: TrainConfig, **options):
    """`training.loop.train` in a worker thread with ``threads`` torch compute threads (the UI
    thread's: a new thread takes the count another thread set last, e.g. a Dask worker's 1)."""
    import torch

    from ..training.loop import train

    torch.set_num_threads(threads)
    return train(cfg, **options)


class TrainWidget(Container):
    """Train a U-Net on an image layer and its Labels layer, with live curves and Stop."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image_layer = ComboBox(label="image", choices=layer_choices(napari_viewer, "Image"))
        self.labels_layer = ComboBox(label="labels", choices=layer_choices(napari_viewer, "Labels"))
        self.dims = ComboBox(label="train on", choices=list(TRAIN_ON), value="planes (2D)")
        self.sparse = CheckBox(text="only painted z planes are labels", value=True, visible=False)
        self.preset = ComboBox(label="recipe", choices=list(PRESETS), value="fast")
        self.init = ModelChoice("start from", optional=True, files="*.pt")  # --init reads checkpoints only
        self.minutes = FloatSpinBox(label="minutes", value=15.0, min=0.1, max=10000.0, step=1.0)
        self.run_folder = FileEdit(label="run folder", mode="d", value=Path("runs/napari"))
        self.resume = CheckBox(text="resume this run")
        self.start_button, self.stop_button = PushButton(text="Train"), PushButton(text="Stop", enabled=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.image_layer, self.labels_layer, self.dims, self.sparse, self.preset,
                                  *self.init.widgets, self.minutes, self.run_folder, self.resume,
                                  self.start_button, self.stop_button, self.status])
        self.overrides: dict = {}  # further TrainConfig fields (tests use a tiny net)
        self.worker, self.stop_event = None, threading.Event()
        self.plot = _LossPlot()
        self.native.layout().addWidget(self.plot.canvas)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.dims.changed.connect(self._show_sparse)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)

    def start(self):
        """Write the layers and start training; returns the worker (None when it cannot start)."""
        import torch
        from napari.qt.threading import create_worker

        run = Path(self.run_folder.value)
        if self.image_layer.value is None or self.labels_layer.value is None:
            show_one_line("choose an image layer and its labels layer")
            return None
        data = run.with_name(run.name + ".data")
        try:
            init = self.init.value  # a shipped name, a run's best.pt, a file, or None
            files = None if self.resume.value else write_training_data(
                self.image_layer.value, self.labels_layer.value, data, TRAIN_ON[self.dims.value] == 3,
                self.sparse.value)
        except (UserInputError, ValueError) as e:
            show_one_line(str(e))
            return None
        # resuming trains on the files the run began with, whatever the layers hold now (the run keeps its settings)
        inputs = {} if files is None else {
            "images": str(files.images), "labels": str(files.labels), "dims": files.dims,
            "voxel_size": list(files.voxel_size) if files.voxel_size else None, "ignore_label": files.ignore_label}
        cfg = TrainConfig(out=str(run), preset=self.preset.value, init=None if init is None else str(init),
                          time_limit=60.0 * self.minutes.value, **inputs, **self.overrides)
        self.stop_event = threading.Event()
        self.worker = create_worker(train_with_threads, torch.get_num_threads(), cfg,
                                    resume=run if self.resume.value else None,
                                    stop=self.stop_event, _ignore_errors=True)  # shown, not raised
        self.worker.returned.connect(self._trained)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.plot.follow(run)
        self.start_button.enabled, self.stop_button.enabled = False, True
        self.status.value = f"training into {run}"
        self.worker.start()
        return self.worker

    def _show_sparse(self, choice: str) -> None:
        self.sparse.visible = TRAIN_ON[choice] == 3

    def stop(self) -> None:
        """Stop after the current step; last.pt is written (resume continues exactly)."""
        self.stop_event.set()
        self.status.value = "stopping after this step"

    def _trained(self, run: Path) -> None:
        self._offer(Path(run), f"done: {Path(run) / 'best.pt'}")

    def _failed(self, error: Exception) -> None:
        """Stop ends `train` with `Interrupted` (as Ctrl-C does): the run so far is kept."""
        from ..errors import Interrupted

        if isinstance(error, Interrupted):
            self._offer(Path(self.run_folder.value), f"stopped; tick 'resume this run' to continue ({error})")
        else:
            self.status.value = "failed"
            show_one_line(error)

    def _offer(self, run: Path, status: str) -> None:
        best = run / "best.pt"
        self.status.value = status if best.exists() else f"stopped before the first epoch ended: {run}"
        if best.exists():
            events.trained.emit(best)

    def _finished(self) -> None:
        self.plot.update()
        self.plot.stop()
        self.start_button.enabled, self.stop_button.enabled = True, False


class _LossPlot:
    """Training and validation loss per epoch, redrawn from metrics.csv once a second."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtCore import QTimer

        self.figure = Figure(figsize=(4, 2.5), tight_layout=True)
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.timer = QTimer()
        self.timer.timeout.connect(self.update)
        self.run: Path | None = None

    def follow(self, run: Path) -> None:
        self.run = run
        self.timer.start(1000)

    def stop(self) -> None:
        self.timer.stop()

    def update(self) -> None:
        if self.run is None:
            return
        curves = read_curves(self.run)
        self.axes.clear()
        self.axes.plot(curves["epoch"], curves["train_loss"], label="training")
        self.axes.plot(curves["epoch"], curves["val_loss"], label="validation")
        self.axes.set_xlabel("epoch")
        self.axes.set_ylabel("loss")
        self.axes.legend(loc="upper right")
        self.canvas.draw_idle()

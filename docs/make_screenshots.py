"""Re-make the napari pictures of the README: the Train widget with its loss curves after a
short run on a synthetic EM image, and the viewer with the Segment widget docked and its
cells overlaid on a new image.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py [--minutes 2]

napari's canvas needs OpenGL, so this wants a display (a desktop, or Xvfb as above:
``apt-get install xvfb``). Without one (``QT_QPA_PLATFORM=offscreen``) the widgets are still
drawn by Qt, and the canvas beside the Segment widget is drawn with matplotlib from the same
layers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def wait_until(done) -> None:
    """Run the Qt event loop until ``done()`` is true (checked every 0.1 s): the widgets'
    workers report on the loop, and a worker may finish before anything could connect to it."""
    from qtpy.QtCore import QCoreApplication

    while not done():
        QCoreApplication.processEvents()
        time.sleep(0.1)


def train_picture(viewer, out: Path, minutes: float) -> Path:
    from unetile.napari.train import TrainWidget
    from unetile.synthetic import synthetic_em

    image, labels = synthetic_em(np.random.default_rng(1), size=512)
    widget = TrainWidget(viewer)
    widget.image_layer.value = viewer.add_image(image, name="em")
    widget.labels_layer.value = viewer.add_labels((labels > 0).astype(np.uint8), name="em labels")
    run = Path(tempfile.mkdtemp()) / "run"  # the pictures are kept, the run is not
    widget.run_folder.value, widget.minutes.value = run, minutes
    widget.overrides = {"width": 8, "samples_per_epoch": 64}
    widget.start()
    wait_until(lambda: widget.start_button.enabled)
    widget.plot.update()
    widget.native.resize(420, 640)
    widget.native.grab().save(str(out / "napari-train.png"))
    return run / "best.pt"


def viewer_picture(out: Path, model: Path) -> None:
    """The real viewer: Segment docked, the cells over the image (needs OpenGL)."""
    import napari

    from unetile.napari.segment import SegmentWidget
    from unetile.synthetic import synthetic_em

    image, _ = synthetic_em(np.random.default_rng(7), size=384)
    viewer = napari.Viewer(show=False)
    viewer.window.resize(1300, 760)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (U-Net)", area="right")
    widget.image_layer.value = viewer.add_image(image, name="new image")
    widget.model.value, widget.output.value = model, "cells (watershed)"
    widget.run()
    wait_until(lambda: widget.run_button.enabled)
    viewer.layers[-1].opacity = 0.45
    viewer.reset_view()
    viewer.screenshot(str(out / "napari-segment.png"), canvas_only=False)
    viewer.close()


def segment_picture(viewer, out: Path, model: Path) -> None:
    import matplotlib.pyplot as plt

    from unetile.napari.segment import SegmentWidget
    from unetile.synthetic import synthetic_em

    image, _ = synthetic_em(np.random.default_rng(7), size=384)
    widget = SegmentWidget(viewer)
    widget.model.value, widget.output.value = model, "cells (watershed)"
    widget.image_layer.value = viewer.add_image(image, name="new image")
    widget.run()
    wait_until(lambda: widget.run_button.enabled)
    widget.native.resize(380, 420)
    widget.native.grab().save(str(out / "_segment_widget.png"))
    cells = np.asarray(viewer.layers[-1].data)
    panel = plt.imread(out / "_segment_widget.png")
    ratios = [panel.shape[1] / panel.shape[0], 1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": ratios})
    left.imshow(panel)
    right.imshow(image, cmap="gray")
    rng = np.random.default_rng(0)
    colours = np.concatenate([[[0, 0, 0, 0]], np.c_[rng.random((cells.max(), 3)), np.full(cells.max(), 0.45)]])
    right.imshow(colours[cells])
    right.set_title(f"'{viewer.layers[-1].name}': {cells.max()} cells over 'new image'", fontsize=10)
    for axes in (left, right):
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(out / "napari-segment.png", dpi=110)
    (out / "_segment_widget.png").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="training time of the Train widget's run")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # noqa: F841 - the widgets need one
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = ViewerModel()
    model = train_picture(viewer, out, args.minutes)
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        segment_picture(viewer, out, model)
    else:
        viewer_picture(out, model)
    print(f"wrote {out / 'napari-train.png'} and {out / 'napari-segment.png'}")


if __name__ == "__main__":
    main()

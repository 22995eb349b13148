"""Re-make the napari pictures of the README, on ISBI 2012 data: the Train widget with its loss
curves after a short run on a training slice and its labels, and the viewer with the Segment
widget docked, its model list open (the shipped models by name, the run just trained, "a
file…") and the cells the shipped `em-membranes` model finds in a test slice overlaid.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py [--minutes 2]

napari's canvas needs OpenGL, so this wants a display (a desktop, or Xvfb as above:
``apt-get install xvfb libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0
libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-cursor0 libgl1``, the
libraries Qt's xcb plugin loads). Without one (``QT_QPA_PLATFORM=offscreen``) the widgets are still
drawn by Qt, and the canvas beside the Segment widget is drawn with matplotlib from the same
layers.

The data: ../shared/data/isbi2012 (its README: cite Cardona et al., PLoS Biol. 2010, and
Arganda-Carreras et al., Front. Neuroanat. 2015). The test slice was never trained on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
SHIPPED = "em-membranes"


def wait_until(done) -> None:
    """Run the Qt event loop until ``done()`` is true (checked every 0.1 s): the widgets'
    workers report on the loop, and a worker may finish before anything could connect to it."""
    from qtpy.QtCore import QCoreApplication

    while not done():
        QCoreApplication.processEvents()
        time.sleep(0.1)


def settle(seconds: float = 0.5) -> None:
    """Let Qt draw what was just shown (a dock, a popup) before it is grabbed."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > end)


def read_slice(part: str, index: int = 0) -> np.ndarray:
    """ISBI 2012 slice ``index`` of ``part`` ("train/images", "train/labels", "test/images"), (H, W)."""
    from unetile.io import read_image

    return read_image(ISBI / part / f"{index:02d}.png")[0, 0]


def train_picture(viewer, out: Path, minutes: float) -> None:
    """The Train widget after a short run on training slice 0 and its labels (255 = cell)."""
    from unetile.napari.train import TrainWidget

    widget = TrainWidget(viewer)
    widget.image_layer.value = viewer.add_image(read_slice("train/images"), name="isbi 00")
    widget.labels_layer.value = viewer.add_labels((read_slice("train/labels") > 0).astype(np.uint8),
                                                  name="isbi 00 labels")
    widget.minutes.value = minutes  # into runs/napari, the widget's default, under a temporary folder
    widget.overrides = {"width": 8, "tile_size": 128, "samples_per_epoch": 16}  # short epochs: a curve in minutes
    widget.start()
    wait_until(lambda: widget.start_button.enabled)
    widget.plot.update()
    widget.native.resize(420, 680)
    widget.native.grab().save(str(out / "napari-train.png"))


def viewer_picture(out: Path) -> None:
    """The real viewer: Segment docked with its model list open, the cells over the test slice
    (needs OpenGL; the list is a popup window, so the screen is grabbed, not the window)."""
    import napari
    import napari._qt.qt_main_window
    from qtpy.QtWidgets import QApplication

    from unetile.napari.segment import SegmentWidget

    napari._qt.qt_main_window.SHOW_QT_WARNING = False  # a toast about this machine's Qt binding, not the tool
    viewer = napari.Viewer()
    window = viewer.window._qt_window
    window.setGeometry(0, 0, 1300, 760)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (U-Net)", area="right")
    widget.image_layer.value = viewer.add_image(read_slice("test/images"), name="isbi test 00")
    widget.model.value, widget.output.value = SHIPPED, "cells (watershed)"
    widget.run()
    wait_until(lambda: widget.run_button.enabled)
    viewer.layers[-1].opacity = 0.45
    viewer.reset_view()
    widget.model.choice.native.showPopup()
    settle()
    frame = window.frameGeometry()
    shot = QApplication.primaryScreen().grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height())
    shot.save(str(out / "napari-segment.png"))
    widget.model.choice.native.hidePopup()
    viewer.close()


def segment_picture(viewer, out: Path) -> None:
    """Without a display: the Segment widget (drawn by Qt) beside the cells drawn by matplotlib."""
    import matplotlib.pyplot as plt

    from unetile.napari.segment import SegmentWidget

    image = read_slice("test/images")
    widget = SegmentWidget(viewer)
    widget.model.value, widget.output.value = SHIPPED, "cells (watershed)"
    widget.image_layer.value = viewer.add_image(image, name="isbi test 00")
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
    right.set_title(f"'{viewer.layers[-1].name}': {cells.max()} cells by {SHIPPED}", fontsize=10)
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

    if not (ISBI / "test" / "images").is_dir():
        raise SystemExit(f"the ISBI 2012 data is not at {ISBI}")
    app = QApplication.instance() or QApplication([])  # noqa: F841 - the widgets need one
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(tempfile.mkdtemp())  # the pictures are kept, the run (runs/napari here) is not
    viewer = ViewerModel()
    train_picture(viewer, out, args.minutes)
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        segment_picture(viewer, out)
    else:
        viewer_picture(out)
    print(f"wrote {out / 'napari-train.png'} and {out / 'napari-segment.png'}")


if __name__ == "__main__":
    main()

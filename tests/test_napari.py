"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): Segment equals `unetile predict`, Train
trains on layers and can be stopped, bad input is a one-line notification."""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from unetile import save_model  # noqa: E402
from unetile.cli import main  # noqa: E402
from unetile.io import read_image, write_image  # noqa: E402
from unetile.nn.checkpoint import load_model  # noqa: E402
from unetile.synthetic import synthetic_em  # noqa: E402

from .conftest import tiny_unet  # noqa: E402

WAIT_MS = 120_000


@pytest.fixture
def viewer_model(request):
    """With a display (e.g. ``xvfb-run -a pytest``): napari's own `make_napari_viewer`, canvas
    and all. Without one (CI: no X server, and napari's canvas needs OpenGL to add a layer):
    napari's `ViewerModel`, the same viewer without its canvas."""
    if os.environ.get("DISPLAY"):
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def model_path(tmp_path):
    save_model(tiny_unet(width=4, depth=2), tmp_path / "m.pt", threshold=0.4)
    return tmp_path / "m.pt"


def segment(viewer, qtbot, model, layer, output="probability"):
    from unetile.napari.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.reset_choices()
    widget.model.value, widget.image_layer.value, widget.output.value = model, layer, output
    if widget.run() is not None:  # done when the widget re-enables its button (the worker's finished)
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=WAIT_MS)
    return widget


@pytest.mark.parametrize("output, flag", [("probability", []), ("cells (watershed)", ["--instances"])])
def test_segment_widget_equals_unet_predict(viewer_model, qtbot, tmp_path, rng, model_path, output, flag):
    viewer = viewer_model
    image = (rng.random((140, 120)) * 255).astype(np.uint8)
    layer = viewer.add_image(image, scale=(0.5, 0.5), translate=(10, 20))
    segment(viewer, qtbot, model_path, layer, output)
    result = viewer.layers[-1]
    assert result.name == f"image {output}" and tuple(result.scale) == (0.5, 0.5)
    write_image(tmp_path / "image.tif", image)
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "image.tif"), "--out",
                 str(tmp_path / "pred"), "--format", "tif", *flag]) == 0
    expected = read_image(tmp_path / "pred" / "image.tif")[0, 0]
    assert np.array_equal(np.asarray(result.data), expected)


def test_segment_widget_runs_a_stack_plane_by_plane(viewer_model, qtbot, rng, model_path):
    viewer = viewer_model
    stack = (rng.random((3, 80, 90)) * 255).astype(np.uint8)
    widget = segment(viewer, qtbot, model_path, viewer.add_image(stack), "mask")
    assert viewer.layers[-1].data.shape == (3, 80, 90) and widget.progress.value == 3
    assert set(np.unique(viewer.layers[-1].data)) <= {0, 1}


def test_a_bad_model_file_is_a_notification_and_no_layer(viewer_model, qtbot, tmp_path, rng, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer = viewer_model
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    segment(viewer, qtbot, tmp_path / "broken.pt", viewer.add_image(rng.random((60, 60))))
    assert len(viewer.layers) == 1
    assert len(shown) == 1 and "broken.pt" in shown[0] and "\n" not in shown[0] and "Traceback" not in shown[0]


def test_train_widget_trains_on_layers_stops_and_offers_its_model(viewer_model, qtbot, tmp_path):
    from unetile.napari.segment import SegmentWidget
    from unetile.napari.train import TrainWidget, read_curves

    viewer = viewer_model
    image, labels = synthetic_em(np.random.default_rng(0), size=192)
    widget, segmenter = TrainWidget(viewer), SegmentWidget(viewer)
    widget.image_layer.value = viewer.add_image(image)
    widget.labels_layer.value = viewer.add_labels((labels > 0).astype(np.uint8))
    widget.run_folder.value = tmp_path / "run"
    widget.overrides = {"width": 4, "depth": 2, "tile_size": 76, "batch_size": 2, "samples_per_epoch": 4,
                        "epochs": 1000, "precision": "fp32", "workers": 0, "calibrate_tta": False, "device": "cpu"}
    worker = widget.start()
    qtbot.waitUntil(lambda: len(read_curves(tmp_path / "run")["epoch"]) >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        widget.stop()  # far before 1000 epochs: the Stop button
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert model.config.width == 4 and (tmp_path / "run" / "last.pt").exists()
    assert segmenter.model.value == tmp_path / "run" / "best.pt", widget.status.value  # offered to Segment
    assert (tmp_path / "run.data" / "images.tif").exists()  # one image: four quarters, the last validates
    assert read_image(tmp_path / "run.data" / "images.tif").shape == (4, 1, 96, 96)
    stopped_at = read_curves(tmp_path / "run")["epoch"][-1]
    widget.resume.value, widget.overrides["epochs"] = True, int(stopped_at) + 1  # resume: one epoch more
    worker = widget.start()
    qtbot.waitUntil(lambda: widget.start_button.enabled, timeout=WAIT_MS)
    assert read_curves(tmp_path / "run")["epoch"][-1] == stopped_at + 1


def test_labels_writer_saves_what_unet_train_reads(tmp_path):
    from unetile.napari.layers_io import write_labels

    labels = np.zeros((2, 30, 40), np.int32)
    labels[:, 5:10, 5:10] = 3
    assert write_labels(str(tmp_path / "l.tif"), labels, {}) == [str(tmp_path / "l.tif")]
    back = read_image(tmp_path / "l.tif")
    assert back.shape == (2, 1, 30, 40) and back.dtype == np.uint16 and np.array_equal(back[:, 0], labels)

"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): Segment equals `unetile predict` (a file
or a shipped model by name), Train trains on layers (from scratch, a shipped model or a file) and
can be stopped, its run joins the model lists, bad input is a one-line notification."""

import os
import threading
from pathlib import Path

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

from unetile.zoo import shipped_models  # noqa: E402

from .conftest import ISBI, tiny_unet  # noqa: E402

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


@pytest.fixture(autouse=True)
def new_session(monkeypatch):
    """No recent runs from other tests: the model lists start as a new napari session's."""
    monkeypatch.setattr("unetile.napari.model_choice._recent_runs", [])


@pytest.fixture
def model_path(tmp_path):
    save_model(tiny_unet(width=4, depth=2), tmp_path / "m.pt", threshold=0.4)
    return tmp_path / "m.pt"


def choose(chooser, model) -> None:
    """As a user would: a shipped model by its name in the list, anything else as "a file…"."""
    from unetile.napari.model_choice import A_FILE

    if isinstance(model, str) and model in shipped_models():
        chooser.choice.value = model
    else:
        chooser.choice.value, chooser.file.value = A_FILE, model


def segment(viewer, qtbot, model, layer, output="probability"):
    from unetile.napari.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.reset_choices()
    choose(widget.model, model)
    widget.image_layer.value, widget.output.value = layer, output
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


def threads_of_new_threads(count: int | None = None) -> int:
    """The torch compute threads a new thread starts with (the count last set by any thread),
    set to ``count`` from a thread of its own where given, as an in-process Dask worker does: it
    then holds in every thread that computes for the first time later, not in those that already
    did. Returns the count before."""
    import torch

    seen = []
    thread = threading.Thread(target=lambda: (seen.append(torch.get_num_threads()),
                                              count and torch.set_num_threads(count)))
    thread.start()
    thread.join()
    return seen[0]


@pytest.fixture
def ui_threads_two_new_threads_one():
    """This (the UI) thread sums with 2 torch threads, threads that compute later with 1, as after an
    in-process Dask worker (`unetile predict --cluster` from Python); both counts restored after."""
    import torch

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every thread computes alike")
    ui_before, new_before = torch.get_num_threads(), threads_of_new_threads()
    torch.set_num_threads(2)
    threads_of_new_threads(1)
    yield 2
    torch.set_num_threads(ui_before)
    threads_of_new_threads(new_before)


def test_segment_widget_computes_with_the_ui_threads_count_whatever_another_thread_set(
        viewer_model, qtbot, tmp_path, rng, model_path, ui_threads_two_new_threads_one):
    """The widget's worker thread sums as the UI thread does (the maps' last bits depend on the
    count), so its map equals `unetile predict`'s in this process."""
    image = (rng.random((140, 120)) * 255).astype(np.uint8)
    segment(viewer_model, qtbot, model_path, viewer_model.add_image(image))
    write_image(tmp_path / "image.tif", image)
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "image.tif"),
                 "--out", str(tmp_path / "pred"), "--format", "tif"]) == 0
    expected = read_image(tmp_path / "pred" / "image.tif")[0, 0]
    assert np.array_equal(np.asarray(viewer_model.layers[-1].data), expected)


def test_train_widget_trains_with_the_ui_threads_count_whatever_another_thread_set(
        viewer_model, qtbot, tmp_path, monkeypatch, ui_threads_two_new_threads_one):
    import torch

    from unetile.napari.train import TrainWidget

    seen = []  # the worker thread's count, in place of training
    monkeypatch.setattr("unetile.training.loop.train",
                        lambda cfg, **kw: seen.append(torch.get_num_threads()) or Path(cfg.out))
    widget = TrainWidget(viewer_model)
    train_layers(viewer_model, widget)
    widget.run_folder.value = tmp_path / "run"
    widget.start()
    qtbot.waitUntil(lambda: widget.start_button.enabled, timeout=WAIT_MS)
    assert seen == [ui_threads_two_new_threads_one]


def test_segment_widget_rescales_for_a_model_trained_with_a_cell_diameter(viewer_model, qtbot, tmp_path):
    """The widget's cell diameter is `unetile predict --diameter`: the same cells, at the layer's size."""
    from unetile.napari.segment import SegmentWidget
    from unetile.synthetic import disc_detector

    save_model(disc_detector(width=4, depth=2), tmp_path / "sized.pt", threshold=0.5, cell_diameter=20.0)
    y, x = np.mgrid[:90, :100]
    image = np.where(((y % 30) - 15) ** 2 + ((x % 25) - 12) ** 2 < 25, 50000, 5000).astype(np.uint16)
    viewer = viewer_model
    layer = viewer.add_image(image)
    widget = SegmentWidget(viewer)
    widget.reset_choices()
    choose(widget.model, tmp_path / "sized.pt")
    widget.image_layer.value, widget.output.value, widget.diameter.value = layer, "cells (watershed)", 10.0
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=WAIT_MS)
    write_image(tmp_path / "image.tif", image)
    assert main(["predict", "--model", str(tmp_path / "sized.pt"), "--input", str(tmp_path / "image.tif"), "--out",
                 str(tmp_path / "pred"), "--instances", "--diameter", "10"]) == 0
    expected = read_image(tmp_path / "pred" / "image.tif")[0, 0]
    assert viewer.layers[-1].data.shape == (90, 100) and expected.max() == 12  # 3 x 4 discs
    assert np.array_equal(np.asarray(viewer.layers[-1].data), expected)


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


def em_crop() -> np.ndarray:
    """A 128x128 crop of ISBI 2012 slice 0, or of a synthetic EM image where the data is absent."""
    if (ISBI / "train" / "images" / "00.png").is_file():
        return read_image(ISBI / "train" / "images" / "00.png")[0, 0, 192:320, 192:320]
    return synthetic_em(np.random.default_rng(3), size=128)[0]


def test_segment_widget_lists_the_shipped_models_and_a_file_field_only_for_a_file(viewer_model, qtbot):
    from unetile.napari.model_choice import A_FILE
    from unetile.napari.segment import SegmentWidget

    widget = SegmentWidget(viewer_model)
    qtbot.addWidget(widget.native)
    widget.native.show()
    names = list(shipped_models())
    assert "em-membranes" in names and list(widget.model.choice.choices) == [*names, A_FILE]
    assert widget.model.value == names[0] and not widget.model.file.visible
    widget.model.choice.value = A_FILE
    assert widget.model.file.visible
    widget.model.choice.value = "em-membranes"
    assert not widget.model.file.visible and widget.model.value == "em-membranes"


def test_a_shipped_model_by_name_equals_unet_predict_with_that_name(viewer_model, qtbot, tmp_path):
    image = em_crop()
    layer = viewer_model.add_image(image, name="em")
    segment(viewer_model, qtbot, "em-membranes", layer)
    result = np.asarray(viewer_model.layers[-1].data)
    write_image(tmp_path / "em.tif", image)
    assert main(["predict", "--model", "em-membranes", "--input", str(tmp_path / "em.tif"), "--out",
                 str(tmp_path / "pred"), "--format", "tif"]) == 0
    expected = read_image(tmp_path / "pred" / "em.tif")[0, 0]
    assert result.shape == (128, 128) and 0.1 < (result > 0.5).mean() < 0.95  # the model did see membranes
    assert np.array_equal(result, expected)


def test_a_file_entry_without_a_file_is_a_notification(viewer_model, qtbot, rng, monkeypatch):
    from unetile.napari.model_choice import A_FILE
    from unetile.napari.segment import SegmentWidget

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget = SegmentWidget(viewer_model)
    widget.image_layer.value = viewer_model.add_image(rng.random((60, 60)))
    widget.model.choice.value = A_FILE
    assert widget.run() is None and len(viewer_model.layers) == 1
    assert shown == ["model: choose the file (a *.pt, *.onnx, *.zip model)"]


def train_layers(viewer, widget) -> None:
    image, labels = synthetic_em(np.random.default_rng(0), size=192)
    widget.image_layer.value = viewer.add_image(image)
    widget.labels_layer.value = viewer.add_labels((labels > 0).astype(np.uint8))


@pytest.mark.parametrize("init", [None, "em-membranes", "file"])
def test_train_widget_starts_from_none_a_shipped_model_or_a_file(viewer_model, qtbot, tmp_path, model_path,
                                                                 monkeypatch, init):
    from unetile.napari.model_choice import NO_MODEL
    from unetile.napari.train import TrainWidget

    configs = []
    monkeypatch.setattr("unetile.training.loop.train", lambda cfg, **kw: configs.append(cfg) or Path(cfg.out))
    widget = TrainWidget(viewer_model)
    train_layers(viewer_model, widget)
    widget.run_folder.value = tmp_path / "run"
    assert list(widget.init.choice.choices)[: len(shipped_models()) + 1] == [None, *shipped_models()]
    assert widget.init.choice.current_choice == NO_MODEL  # from scratch unless asked
    assert widget.init.file.filter == "*.pt"  # --init reads checkpoints, not exported .onnx / .zip
    if init is not None:
        choose(widget.init, model_path if init == "file" else init)
    widget.start()
    qtbot.waitUntil(lambda: widget.start_button.enabled, timeout=WAIT_MS)
    (cfg,) = configs
    assert cfg.init == {None: None, "em-membranes": "em-membranes", "file": str(model_path)}[init]
    if init == "file":  # the file's architecture, not the recipe's
        assert (cfg.resolved().width, cfg.resolved().depth) == (4, 2)


def test_train_widget_trains_on_layers_stops_and_offers_its_model(viewer_model, qtbot, tmp_path):
    from unetile.napari.segment import SegmentWidget
    from unetile.napari.train import TrainWidget, read_curves

    viewer = viewer_model
    widget, segmenter = TrainWidget(viewer), SegmentWidget(viewer)
    train_layers(viewer, widget)
    widget.run_folder.value = tmp_path / "run"
    widget.overrides = {"width": 4, "depth": 2, "tile_size": 76, "batch_size": 2, "samples_per_epoch": 4,
                        "epochs": 1000, "precision": "fp32", "workers": 0, "calibrate_tta": False, "device": "cpu"}
    worker = widget.start()
    qtbot.waitUntil(lambda: len(read_curves(tmp_path / "run")["epoch"]) >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        widget.stop()  # far before 1000 epochs: the Stop button
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert model.config.width == 4 and (tmp_path / "run" / "last.pt").exists()
    best = tmp_path / "run" / "best.pt"
    assert segmenter.model.value == best, widget.status.value  # offered to Segment: listed and chosen
    assert segmenter.model.choice.current_choice == f"recent run: {tmp_path / 'run'}"
    assert best in widget.init.choice.choices and widget.init.value is None  # listed, not chosen, for --init
    assert best in SegmentWidget(viewer).model.choice.choices  # and in a Segment widget opened later
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


def test_segment_widget_runs_a_3d_model_on_a_volume_as_one(viewer_model, qtbot, tmp_path, rng):
    """A 3D model segments the layer's (Z, Y, X) as one volume (not plane by plane), with the
    layer's scale as the voxel size: the cells equal `unetile predict --instances` on the same
    volume written with that voxel size."""
    from unetile.io import write_volume

    from .test_predict_3d import VOXEL, _net_3d

    save_model(_net_3d(), tmp_path / "net3d.pt", threshold=0.5, voxel_size=[1.0, 1.0, 1.0])
    volume = (rng.random((2, 9, 30, 26)) * 255).astype(np.uint8)  # two time points of a volume
    layer = viewer_model.add_image(volume, scale=(1.0, *VOXEL))
    widget = segment(viewer_model, qtbot, tmp_path / "net3d.pt", layer, "cells (watershed)")
    result = viewer_model.layers[-1]
    assert widget.progress.max == 2 and result.data.shape == volume.shape and tuple(result.scale) == (1.0, *VOXEL)
    write_volume(tmp_path / "t1.tif", volume[1], VOXEL)
    assert main(["predict", "--model", str(tmp_path / "net3d.pt"), "--input", str(tmp_path / "t1.tif"), "--out",
                 str(tmp_path / "pred"), "--instances"]) == 0
    assert np.array_equal(np.asarray(result.data[1]), read_image(tmp_path / "pred" / "t1.tif")[:, 0])


def test_a_3d_model_on_a_2d_layer_is_one_line(viewer_model, qtbot, tmp_path, rng, monkeypatch):
    from .test_predict_3d import _net_3d

    shown = []
    monkeypatch.setattr("unetile.napari.segment.show_one_line", shown.append)
    save_model(_net_3d(), tmp_path / "net3d.pt")
    layer = viewer_model.add_image((rng.random((30, 30)) * 255).astype(np.uint8), name="flat")
    n_layers = len(viewer_model.layers)
    segment(viewer_model, qtbot, tmp_path / "net3d.pt", layer, "probability")
    assert len(viewer_model.layers) == n_layers and len(shown) == 1 and "'flat' is 2D" in str(shown[0])


def test_train_widget_trains_a_3d_model_from_a_sparsely_painted_volume(viewer_model, qtbot, tmp_path, rng):
    """Volumes (3D): the layer's scale is the voxel size, z planes nobody painted are not
    annotated (they hold the ignore value), and the run is a 3D net with the anisotropic plan."""
    from unetile.io import voxel_size
    from unetile.napari.train import TrainWidget

    volume = rng.normal(0, 1, (8, 48, 48)).astype(np.float32)
    labels = np.zeros(volume.shape, np.int32)
    for z in (1, 4):  # two painted planes, each with two cells
        labels[z, 5:15, 5:15], labels[z, 25:40, 20:35] = 1, 2
        volume[z, 5:15, 5:15] += 3
    viewer_model.add_image(volume, name="vol", scale=(0.6, 0.2, 0.2))
    viewer_model.add_labels(labels, name="painted")
    widget = TrainWidget(viewer_model)
    widget.reset_choices()
    assert widget.sparse.native.isHidden()  # (headless, nothing is "visible": ask whether it is hidden)
    widget.dims.value = "volumes (3D)"
    assert not widget.sparse.native.isHidden() and widget.sparse.value
    widget.run_folder.value = tmp_path / "run"
    widget.overrides = {"width": 4, "depth": 1, "tile_size": 20, "batch_size": 1, "samples_per_epoch": 2,
                        "epochs": 2, "precision": "fp32", "workers": 0, "calibrate_tta": False, "device": "cpu"}
    widget.start()
    qtbot.waitUntil(lambda: widget.start_button.enabled, timeout=WAIT_MS)
    written = sorted((tmp_path / "run.data" / "labels").glob("*.tif"))
    assert len(written) == 4 and voxel_size(written[0]) == pytest.approx((0.6, 0.2, 0.2))
    quarter = read_image(written[0])[:, 0]  # (Z, 24, 24); planes 1 and 4 painted, the rest ignored (3)
    assert set(np.unique(quarter[[0, 2, 3, 5, 6, 7]])) == {3} and 3 not in quarter[[1, 4]]
    model, meta = load_model(tmp_path / "run" / "best.pt")
    assert model.config.spatial_dims == 3 and meta["voxel_size"] == pytest.approx([0.6, 0.2, 0.2])
    assert model.config.kernels[0][0] == 1  # z 3x coarser: no z convolution at the first level

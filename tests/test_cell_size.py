"""Object size (cell_size.py, issue 35): cells measured in the labels, images rescaled so that
cells reach the net at one diameter in training and in prediction, results back at the image's
own size."""

import numpy as np
import pytest
import torch

from unetile import save_model
from unetile.cell_size import MAX_FACTOR, median_diameter, resize_image, resize_labels, scale_factor, scaled_shape
from unetile.cli import main
from unetile.errors import UserInputError
from unetile.evaluation.metrics.objects import cell_counts, pooled, summary
from unetile.inference.instances import InstanceSettings
from unetile.inference.predictor import PredictOptions, Predictor
from unetile.io import write_image
from unetile.synthetic import disc_detector, write_dataset
from unetile.training import validation
from unetile.training.data import Targets, prepare
from unetile.training.loop import Clock

from .conftest import tiny_unet


def discs(shape: tuple[int, int], radius: float, spacing: int) -> np.ndarray:
    """Instance ids (shape): discs of ``radius`` on a grid ``spacing`` px apart, ids 1..n."""
    y, x = np.mgrid[:shape[0], :shape[1]]
    ids = np.zeros(shape, np.int32)
    n = 0
    for cy in range(spacing // 2, shape[0] - spacing // 2 + 1, spacing):
        for cx in range(spacing // 2, shape[1] - spacing // 2 + 1, spacing):
            n += 1
            ids[(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = n
    return ids


def test_median_diameter_is_the_disc_of_the_median_area():
    ids = np.zeros((20, 30), np.int32)
    ids[0:4, 0:4] = 1  # 16 px
    ids[5:11, 0:6] = 2  # 36 px: the median
    ids[10:20, 10:20] = 3  # 100 px
    assert median_diameter(ids) == pytest.approx(2 * np.sqrt(36 / np.pi))
    assert median_diameter(np.zeros((5, 5), np.int32)) is None


def test_scale_factor_is_the_ratio_held_to_its_range():
    assert scale_factor(10.0, 25.0) == 2.5
    assert scale_factor(2.0, 25.0) == MAX_FACTOR
    assert scale_factor(None, 25.0) == 1.0 and scale_factor(10.0, None) == 1.0
    assert scale_factor(10.0, 10.9) == 1.0  # within 10%: not resampled
    assert scaled_shape((256, 100), 1.5) == (384, 150)


def test_resizing_keeps_label_values_and_gives_the_exact_shape():
    ids = discs((64, 48), 5, 16)
    small = resize_labels(ids, (32, 24))
    back = resize_labels(ids, (101, 77))
    assert small.dtype == ids.dtype and small.shape == (32, 24) and back.shape == (101, 77)
    assert set(np.unique(back)) == set(np.unique(ids))  # nearest: no new values
    image = resize_image(ids[None].astype(np.float32), (101, 77))
    assert image.shape == (1, 101, 77) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= ids.max()


def test_training_rescales_each_image_to_the_net_diameter():
    """An image of 8-px cells and one of 16-px cells both reach the net with 12-px cells; masks
    are left at their size."""
    small, large = discs((64, 64), 4, 16), discs((96, 96), 8, 32)
    pairs = [(name, ids[None].astype(np.float32), ids, None, name) for name, ids in (("a", small), ("b", large))]
    items = prepare(pairs, Targets(weight_map=False, net_diameter=12.0))
    for item in items:
        assert item.image.shape[1:] == item.classes.shape == item.instances.shape
        assert median_diameter(item.instances) == pytest.approx(12.0, rel=0.1)
    for item, ids in zip(items, (small, large)):
        assert item.classes.shape == scaled_shape(ids.shape, 12.0 / median_diameter(ids))
    mask = [("m", small[None].astype(np.float32), (small > 0).astype(np.uint8), None, "m")]
    assert prepare(mask, Targets(weight_map=False, net_diameter=12.0))[0].classes.shape == (64, 64)


@pytest.fixture
def sized_model(tmp_path):
    """The disc detector (its map is the thresholded image) as if trained to see cells 20 px across."""
    path = tmp_path / "sized.pt"
    save_model(disc_detector(width=4, depth=2), path, threshold=0.5, cell_diameter=20.0)
    return path


def test_prediction_estimates_the_cells_size_and_returns_the_images_own_size(sized_model):
    ids = discs((90, 110), 5, 22)  # cells 10-11 px across: enlarged about 2x
    image = np.where(ids > 0, 50000, 5000).astype(np.float32)
    predictor = Predictor.load(sized_model, PredictOptions(instances="watershed", precision="fp32"))
    prob, factor = predictor.at_cell_scale(image[None])
    assert factor == pytest.approx(20 / median_diameter(ids), rel=0.05)
    labels = predictor.predict(image)
    assert prob.shape == (1, 90, 110) and labels.shape == (90, 110)
    assert labels.max() == ids.max()  # one cell per disc
    given = Predictor.load(sized_model, PredictOptions(instances="watershed", precision="fp32", diameter=10.6))
    assert given.at_cell_scale(image[None])[1] == pytest.approx(20 / 10.6)
    assert np.array_equal(given.predict(image) > 0, labels > 0)


def test_cells_at_the_net_diameter_are_not_rescaled(sized_model, tmp_path):
    """Cells already 20 px across: the factor is 1 and the map is the unsized model's, bit for bit."""
    ids = discs((80, 80), 10, 40)
    image = np.where(ids > 0, 50000, 5000).astype(np.float32)
    plain_path = tmp_path / "plain.pt"
    save_model(disc_detector(width=4, depth=2), plain_path, threshold=0.5)
    sized = Predictor.load(sized_model, PredictOptions(precision="fp32"))
    plain = Predictor.load(plain_path, PredictOptions(precision="fp32"))
    assert sized.at_cell_scale(image[None])[1] == 1.0
    assert np.array_equal(sized.probabilities(image), plain.probabilities(image))


def test_instance_settings_follow_the_scale():
    settings = InstanceSettings(sigma=2.0, min_size=40).at_scale(0.5)
    assert settings.sigma == 1.0 and settings.min_size == 10


def test_diameter_for_a_model_without_one_is_one_line(tmp_path):
    path = tmp_path / "plain.pt"
    save_model(tiny_unet(), path)
    with pytest.raises(UserInputError, match="trained without a cell diameter"):
        Predictor.load(path, PredictOptions(diameter=12.0))


def test_zarr_outputs_refuse_a_diameter_they_cannot_honour(sized_model, tmp_path, capsys):
    pytest.importorskip("zarr")
    write_image(tmp_path / "in.tif", np.zeros((64, 64), np.uint16))
    code = main(["predict", "--model", str(sized_model), "--input", str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "out"), "--format", "zarr", "--diameter", "10"])
    assert code == 2 and "OME-Zarr outputs are predicted at the slide's own size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_stores_the_diameter_and_fine_tuning_keeps_it(tmp_path):
    data = write_dataset(tmp_path / "data", 3, 96, seed=0, kind="nuclei")
    common = ["--width", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--samples-per-epoch", "2",
              "--epochs", "1", "--precision", "fp32", "--workers", "0", "--device", "cpu", "--no-calibrate-tta"]
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "a"), "--cell-diameter", "30",
                 *common]) == 0
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=True)["metadata"]["cell_diameter"] == 30.0
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "b"), "--init",
                 str(tmp_path / "a" / "best.pt"), *common]) == 0
    assert torch.load(tmp_path / "b" / "best.pt", weights_only=True)["metadata"]["cell_diameter"] == 30.0
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "c"), "--cell-diameter", "off",
                 *common]) == 0
    assert torch.load(tmp_path / "c" / "best.pt", weights_only=True)["metadata"]["cell_diameter"] is None


def test_a_packages_card_says_at_which_cell_size_the_model_sees_images(tmp_path):
    from types import SimpleNamespace

    from unetile.packaging.model_card import model_card

    info = SimpleNamespace(name="nuclei", description=None, cite=None)
    card = model_card(tmp_path / "m.pt", tiny_unet(), {"cell_diameter": 24.0}, {}, info, None)
    assert "cells are 24 px across" in card and "--diameter" in card
    assert "px across" not in model_card(tmp_path / "m.pt", tiny_unet(), {}, {}, info, None)


def test_the_estimate_trusts_the_scale_whose_cells_come_out_nearest_the_nets_size(sized_model, monkeypatch):
    """A net splits cells much larger than it was trained on: at the image's own size it finds
    pieces 22 px across; at 1/2, 24; at 1/4, cells of 19 px, nearest its 20: the cells are 76 px."""
    import unetile.inference.predictor as predictor_module

    found = iter([22.0, 24.0, 19.0])  # at the scales 1, 1/2, 1/4
    monkeypatch.setattr(predictor_module, "median_diameter", lambda labels: next(found))
    predictor = Predictor.load(sized_model, PredictOptions(precision="fp32"))
    first, factor = predictor.estimate_factor(np.zeros((1, 200, 200), np.float32))
    assert factor == pytest.approx(0.25 * 20 / 19) and first.shape == (1, 200, 200)


def test_cell_settings_are_chosen_where_evaluate_scores_them_at_the_images_own_size():
    """A label of 24-px cells reaches a 12-px net halved. Its cells are chosen on the map brought
    back to the image's own size and scored against the label as it was (as `unetile predict` and
    `unetile evaluate` do), with min_size in the net's px: 16 net px are about 62 own px, which
    drops the map's 48-px specks that 16 own px would keep."""
    ids = discs((96, 96), 12, 48)
    image = np.where(ids > 0, 50000, 5000).astype(np.float32)
    item = prepare([("a", image[None], ids, None, "a")], Targets(weight_map=False,
                   net_diameter=12.0))[0]
    assert item.net_scale == pytest.approx(12.0 / median_diameter(ids))
    assert item.image.shape[1:] == item.instances.shape == scaled_shape(ids.shape, item.net_scale)
    assert np.array_equal(item.own_instances, ids)
    net_map = (item.instances > 0).astype(np.float32)
    for cy, cx in ((4, 4), (4, 43), (43, 4)):  # specks of 12 net px, 48 own px: no cells
        net_map[cy - 2:cy + 1, cx - 2:cx + 2] = 1.0
    maps = [validation.ValidationMap("a", net_map, item.classes > 0, 0.0, net_map[None])]
    model = disc_detector(width=4, depth=2)
    settings, score = validation.choose_cell_settings(model, {}, maps, [item], 0.5, None)
    assert settings.min_size == 16
    own_map = resize_image(net_map[None], ids.shape)
    own_cells = settings.at_scale(1 / item.net_scale).labels(own_map, 0.5)
    assert own_cells.shape == ids.shape and own_cells.max() == ids.max()
    assert score == pytest.approx(summary(pooled([cell_counts(ids, own_cells)]))["mean_ap"])
    assert score < 1.0  # at the net's scale this map is perfect; brought back, its edges are not
    sparse = ids.copy()
    sparse[:2, :2] = 255  # not annotated: a patch that halving may drop, so it is not scored at all
    sparse_item = prepare([("s", image[None], sparse, None, "s")], Targets(weight_map=False,
                          ignore_label=255, net_diameter=12.0))[0]
    assert sparse_item.own_instances is None and sparse_item.net_scale != 1.0
    assert validation.choose_cell_settings(model, {}, maps, [sparse_item], 0.5, None) is None


def test_a_timed_run_keeps_time_to_choose_cells_at_the_images_own_sizes():
    """Cells are chosen at the images' own sizes: the time kept for it follows their pixels there, and
    a timed run's calibration images are capped counting each at the larger of its two sizes."""
    ids = discs((96, 96), 12, 48)
    items = prepare([("a", ids[None].astype(np.float32), ids, None, "a")], Targets(weight_map=False,
                    net_diameter=12.0))
    assert validation.pixels(items) == 49 * 49 and validation.own_pixels(items) == 96 * 96
    small = discs((40, 40), 3, 20)  # 6-px cells, enlarged about 2x: larger at the net's scale
    enlarged = prepare([("b", small[None].astype(np.float32), small, None, "b")],
                       Targets(weight_map=False, net_diameter=12.0))[0]
    assert enlarged.classes.size > 40 * 40
    assert validation.calibration_pixels(items + [enlarged]) == 96 * 96 + enlarged.classes.size
    clock = Clock(900.0, 0.0, calibrate_tta=True)
    clock.val_seconds, clock.tune_cells = 10.0, True
    clock.val_scale, clock.cells_scale = 1.0, validation.own_pixels(items) / validation.pixels(items)
    assert clock.reserve() == pytest.approx(10.0 * (1 + 8 + 2 * 96 * 96 / 49 ** 2) + 5)

"""Training end to end on tiny synthetic data: run folder, exact resume, presets, CLI."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import unetile
import unetile.io
import unetile.training.validation
from unetile import load_model, metrics
from unetile.cli import main
from unetile.errors import UserInputError
from unetile.inference.instances import InstanceSettings, choose_settings
from unetile.inference.predictor import calibrate, calibrate_map
from unetile.synthetic import write_dataset
from unetile.training import TrainConfig, train
from unetile.training.config import parse_duration
from unetile.training.loop import learning_rate
from unetile.training.setup import automatic_weight_map, load_data, weight_average
from unetile.training.validation import INSTANCE_GRID, THRESHOLDS, best_threshold

from .conftest import tiny_train_config as tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn"), 5, 64, seed=0)


def test_run_folder_has_everything(tmp_path, data):
    run = train(tiny(data, tmp_path / "run", calibrate_tta=True))
    for name in ("config.json", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["width"] == 4 and len(cfg["data_sha256"]) == 64 and cfg["version"]
    assert cfg["train"]["w0"] == 5.0 and cfg["train"]["class_balance"] is False  # auto, decided on binary labels
    assert cfg["val_images"] == ["04"]
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,val_loss,val_pixel_error,val_dice") and len(rows) == 4
    model, meta = load_model(run / "best.pt")
    assert 0 < meta["threshold"] < 1 and meta["normalization"]["kind"] == "percentile" and "val_tta" in meta
    assert meta["flips"] == TrainConfig(preset="fast").resolved().flips
    val_losses = [float(r.split(",")[3]) for r in rows[1:]]
    assert meta["epoch"] == 1 + int(np.argmin(val_losses))  # best.pt: the least validation loss


def test_curves_are_drawn_at_the_end_whatever_the_redraw_interval(tmp_path, data, monkeypatch):
    """curves.png is redrawn at most every CURVES_EVERY seconds, and once more when training ends."""
    import unetile.training.logbook

    monkeypatch.setattr(unetile.training.logbook, "CURVES_EVERY", float("inf"))  # drawn after epoch 1, then not until the end
    run = train(tiny(data, tmp_path / "run"))
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 4  # 3 epochs
    assert (run / "curves.png").stat().st_mtime_ns >= (run / "metrics.csv").stat().st_mtime_ns


@pytest.mark.parametrize("ema, skeleton_recall", [(0.0, 0.0), (0.9, 1.0)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, data, ema, skeleton_recall):
    kw = dict(elastic=True, flips="dihedral", ema=ema, skeleton_recall=skeleton_recall)
    whole = train(tiny(data, tmp_path / "whole", **kw))
    part = tmp_path / "part"
    from unetile.errors import Interrupted

    with pytest.raises(Interrupted):
        train(tiny(data, part, **kw), stop_after_steps=3)  # stops mid-epoch 2
    train(TrainConfig(), resume=part)
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    weights = [(a["state_dict"], b["state_dict"])]
    if ema:  # the average and the trained weights both continue exactly
        weights.append((a["training"]["weights"], b["training"]["weights"]))
        assert not torch.equal(a["state_dict"]["head.weight"], a["training"]["weights"]["head.weight"])
    for wa, wb in weights:
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k


def test_weight_average_warms_up_its_decay():
    model = torch.nn.BatchNorm1d(1)
    avg = weight_average(model, decay=0.9)
    values = [4.0, 8.0, 0.0, 2.0]
    expected = values[0]  # the first update copies
    for n, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(v)
        model.num_batches_tracked.fill_(n + 1)
        avg.update_parameters(model)
        if n:
            d = min(0.9, (1 + n) / (10 + n))  # after n averaged updates
            expected = d * expected + (1 - d) * v
        assert avg.module.weight.item() == pytest.approx(expected)
        assert avg.module.num_batches_tracked.item() == n + 1
    assert expected == pytest.approx(((4 * 2 / 11 + 8 * 9 / 11) * 3 / 12 + 0 * 9 / 12) * 4 / 13 + 2 * 9 / 13)


def test_seed_preset_runs_end_to_end(tmp_path, data):
    run = train(TrainConfig(out=str(tmp_path / "seed"), data=str(data), preset="seed", width=4, depth=2, epochs=2,
                            tile_size=60, precision="fp32", workers=0, calibrate_tta=False))
    assert json.loads((run / "config.json").read_text())["tile_size"] == 60
    assert (run / "best.pt").exists()


def test_paper_preset_with_weight_map_and_sgd(tmp_path, data):
    run = train(tiny(data, tmp_path / "paper", preset="paper", lr=None, batch_size=None, samples_per_epoch=2, epochs=1))
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert cfg["optimizer"] == "sgd" and cfg["momentum"] == 0.99 and cfg["loss"] == "weighted-ce" and cfg["weight_map"]
    assert cfg["w0"] == 10.0 and cfg["sigma"] == 5.0 and cfg["class_balance"] is True


def test_existing_run_folder_is_not_overwritten(tmp_path, data, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--width", "4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep"


def test_cli_train_then_predict(tmp_path, data):
    args = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--width", "4", "--depth", "2",
            "--tile-size", "76", "--epochs", "1", "--samples-per-epoch", "2", "--precision", "fp32", "--workers", "0"]
    assert main(args) == 0
    assert main(["predict", "--model", str(tmp_path / "r" / "best.pt"), "--input", str(data / "images"),
                 "--out", str(tmp_path / "p"), "--tta"]) == 0
    assert len(list((tmp_path / "p").iterdir())) == 5


def _touching_cells(folder, n=3, seed=0):
    """Light-microscopy style data: uint16 images, one uint16 id per cell, touching cells."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        ids = np.zeros((64, 64), np.uint16)
        for k, (cy, cx) in enumerate(rng.uniform(12, 52, (6, 2)), start=1):
            ids[(yy - cy) ** 2 + (xx - cx) ** 2 < 81] = 100 + k  # later cells overlap earlier ones: they touch
        image = (ids > 0) * 30000 + rng.normal(2000, 300, ids.shape)
        tifffile.imwrite(folder / "images" / f"{i}.tif", image.clip(0, 65535).astype(np.uint16))
        tifffile.imwrite(folder / "labels" / f"{i}.tif", ids)
    return folder


def test_cli_trains_on_16_bit_instance_ids(tmp_path):
    """Instance ids without --classes: read as cells; flows at the images' own size by default; the
    foreground target with the paper's weight map; how cells are cut chosen and stored."""
    _touching_cells(tmp_path / "d")
    args = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--width", "4", "--depth", "2",
            "--tile-size", "76", "--epochs", "1", "--samples-per-epoch", "2", "--precision", "fp32", "--workers", "0"]
    assert main([*args[:4], str(tmp_path / "default"), *args[5:]]) == 0
    model, meta = load_model(tmp_path / "default" / "best.pt")
    assert meta["cell_target"] == "flows" and meta["cell_diameter"] is None and model.head.out_channels == 3
    assert main([*args, "--cell-target", "foreground"]) == 0  # --w0 auto by default
    model, meta = load_model(tmp_path / "r" / "best.pt")
    assert model.head.out_channels == 1  # binary: cell / background
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert cfg["w0"] == 10.0 and cfg["class_balance"] is True  # the paper's, for cells
    # How cells are cut was chosen on the validation image and stored ...
    grid = unetile.training.validation.INSTANCE_GRID
    assert meta["instances"]["sigma"] in grid["sigma"] and meta["instances"]["min_size"] in grid["min_size"]
    assert 0.0 <= meta["val_instances_mean_ap"] <= 1.0
    # ... and predict --instances uses it.
    predictor = unetile.Predictor.load(tmp_path / "r" / "best.pt", unetile.PredictOptions(instances="watershed"))
    assert predictor.instance_settings.to_dict() == meta["instances"]


def _train_cells(tmp_path, cell_target: str):
    """A tiny one-epoch run on touching cells with ``--cell-target`` -> best.pt's (model, metadata)."""
    _touching_cells(tmp_path / "d")
    args = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--width", "4", "--depth", "2",
            "--tile-size", "76", "--epochs", "1", "--samples-per-epoch", "2", "--precision", "fp32", "--workers", "0",
            "--cell-target", cell_target]
    assert main(args) == 0
    return load_model(tmp_path / "r" / "best.pt")


def test_distance_target_trains_a_one_channel_net_whose_cells_come_from_its_peaks(tmp_path):
    model, meta = _train_cells(tmp_path, "distance")
    assert model.head.out_channels == 1 and meta["cell_target"] == "distance" and "instances" in meta
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["cell_target"] == "distance"
    assert main(["predict", "--model", str(tmp_path / "r" / "best.pt"), "--input", str(tmp_path / "d" / "images"),
                 "--out", str(tmp_path / "p"), "--instances"]) == 0
    labels = unetile.io.read_image(tmp_path / "p" / "0.tif")
    assert labels.dtype.kind == "u" and labels.shape[-2:] == (64, 64)


@pytest.mark.parametrize("target", ["boundary", "touching"])
def test_three_class_targets_train_a_net_that_predicts_cells(tmp_path, target):
    model, meta = _train_cells(tmp_path, target)
    assert model.head.out_channels == 3 and meta["cell_target"] == target
    predictor = unetile.Predictor.load(tmp_path / "r" / "best.pt", unetile.PredictOptions(instances="watershed"))
    assert predictor.instance_settings.seeds == "interior"
    assert main(["predict", "--model", str(tmp_path / "r" / "best.pt"), "--input", str(tmp_path / "d" / "images"),
                 "--out", str(tmp_path / "p"), "--instances"]) == 0
    labels = unetile.io.read_image(tmp_path / "p" / "0.tif")
    assert labels.shape == (1, 1, 64, 64) and labels.dtype in (np.uint16, np.uint32)


def test_flows_target_trains_a_flows_net_whose_cells_follow_its_flows(tmp_path):
    model, meta = _train_cells(tmp_path, "flows")
    assert model.config.flows and model.head.out_channels == 3 and meta["cell_target"] == "flows"
    assert meta["threshold"] == 0.5 and "instances" in meta  # flows maps are not calibrated
    predictor = unetile.Predictor.load(tmp_path / "r" / "best.pt", unetile.PredictOptions(instances="watershed"))
    assert predictor.instance_settings.seeds == "flows"
    from unetile.training.validation import FLOW_ERROR_GRID  # the cut was chosen, stored and is used

    assert meta["instances"]["flow_error"] in FLOW_ERROR_GRID
    assert predictor.instance_settings.flow_error == meta["instances"]["flow_error"]
    assert main(["predict", "--model", str(tmp_path / "r" / "best.pt"), "--input", str(tmp_path / "d" / "images"),
                 "--out", str(tmp_path / "p"), "--instances", "--tta"]) == 0
    labels = unetile.io.read_image(tmp_path / "p" / "0.tif")
    assert labels.shape == (1, 1, 64, 64) and labels.dtype in (np.uint16, np.uint32)
    assert main(["predict", "--model", str(tmp_path / "r" / "best.pt"), "--input", str(tmp_path / "d" / "images"),
                 "--out", str(tmp_path / "m"), "--format", "png"]) == 0
    assert unetile.io.read_image(tmp_path / "m" / "0.png").shape == (1, 1, 64, 64)  # the cell probability


def test_instance_settings_are_chosen_by_mean_ap():
    """Two touching cells joined by a faint line: too much smoothing, or too low a seed level, merges them."""
    yy, xx = np.mgrid[:40, :60]
    truth = np.zeros((40, 60), np.int32)
    truth[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    truth[(yy - 20) ** 2 + (xx - 38) ** 2 < 100] = 2
    truth[2:4, 55:58] = 3  # a 6-px cell: min_size above 6 loses it
    fg = np.where(truth > 0, 0.95, 0.02)
    fg[(truth > 0) & (abs(xx - 29) <= 1)] = 0.62  # the contact line: foreground, but darker
    settings, score = choose_settings([calibrate_map(fg[None].astype(np.float32), 0.5)], [truth], INSTANCE_GRID,
                                      InstanceSettings())
    labels = settings.labels(calibrate(fg[None].astype(np.float32), 0.5)[0])
    in_first = set(np.unique(labels[truth == 1])) - {0}
    assert len(in_first) == 1 and labels[20, 20] not in (0, labels[20, 38])  # one cell each, kept apart
    assert settings.min_size <= 6 and score == pytest.approx(
        np.mean([c.ap for c in metrics.cell_counts(truth, labels)]))


def test_explicit_weight_map_options_win_over_auto(tmp_path, data):
    cfg = load_data(tiny(data, tmp_path / "r", class_balance=True).resolved())[0]
    assert cfg.w0 == 5.0 and cfg.class_balance is True
    cfg = load_data(tiny(data, tmp_path / "r", w0=3.0).resolved())[0]
    assert cfg.w0 == 3.0 and cfg.class_balance is False


def test_schedule_and_durations():
    assert learning_rate(1.0, 0.5) == pytest.approx(0.5)
    assert learning_rate(1.0, 1.0) == pytest.approx(0.0)
    assert learning_rate(1.0, 0.0) == 0.0 and learning_rate(1.0, 0.01) == pytest.approx(0.5, abs=0.01)
    assert parse_duration("15m") == 900 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    assert np.isfinite(parse_duration("2s"))


def test_weight_map_options_are_checked_only_where_they_apply():
    with pytest.raises(UserInputError, match="--sigma > 0"):
        TrainConfig(sigma=float("nan")).resolved()
    with pytest.raises(UserInputError, match="--skeleton-recall"):
        TrainConfig(skeleton_recall=float("nan")).resolved()
    assert TrainConfig(preset="seed", sigma=0.0).resolved().weight_map is False  # no weight map: not used


def test_skeleton_recall_enters_the_training_and_validation_loss(tmp_path, data):
    rows = {}
    for weight in (0.0, 1.0):
        run = train(tiny(data, tmp_path / f"r{weight}", epochs=1, skeleton_recall=weight))
        rows[weight] = (run / "metrics.csv").read_text().splitlines()[1].split(",")
    assert float(rows[1.0][2]) > float(rows[0.0][2]) + 1e-3  # train loss
    assert float(rows[1.0][3]) > float(rows[0.0][3]) + 1e-3  # val loss


def test_presets_choose_padding_and_explicit_options_win():
    assert TrainConfig(preset="fast").resolved().padding == "same"
    assert TrainConfig(preset="paper").resolved().padding == "valid"
    assert TrainConfig(preset="seed").resolved().padding == "valid"
    assert TrainConfig(preset="fast").resolved().w0 == "auto" and TrainConfig(preset="paper").resolved().w0 == 10.0
    assert TrainConfig(preset="fast", w0=10.0).resolved().w0 == 10.0
    assert TrainConfig(preset="fast").resolved().class_balance == "auto" and TrainConfig().select_by == "loss"
    assert TrainConfig(preset="fast", class_balance=True).resolved().class_balance is True
    assert TrainConfig(preset="paper").resolved().class_balance is True
    with pytest.raises(UserInputError, match="class balancing"):
        TrainConfig(class_balance="sometimes").resolved()
    assert TrainConfig(preset="fast", padding="valid", tile_size=572).resolved().tile_size == 572
    assert TrainConfig(preset="fast", padding="valid").resolved().padding == "valid"


def test_w0_is_a_number_or_auto():
    for bad in ("often", float("nan"), -1.0, float("inf")):
        with pytest.raises(UserInputError, match="--w0 >= 0"):
            TrainConfig(w0=bad).resolved()
    with pytest.raises(SystemExit):
        main(["train", "--w0", "often"])


def test_automatic_weight_map_is_the_papers_for_instance_ids_only():
    mask = ("m", None, np.array([[0, 255], [255, 0]], np.uint8), "m.png", "m.png")
    ids = ("i", None, np.array([[0, 1], [2, 3]], np.uint16), "i.tif", "i.tif")
    assert automatic_weight_map([mask, mask], None) == (5.0, False)
    assert automatic_weight_map([mask, ids], None) == (10.0, True)
    assert automatic_weight_map([ids], 4) == (5.0, False)  # class ids, not cells


def test_best_threshold_by_hand_and_against_a_brute_force_sweep(rng):
    # p = .1 .3 .6 .8 with truth F T F T: t in [.1, .3) misclassifies only .6 (one pixel);
    # below .1 both background pixels are wrong, from .3 up .3 is missed.
    p, g = np.array([[0.1, 0.3, 0.6, 0.8]]), np.array([[False, True, False, True]])
    assert best_threshold([p], [g]) == 0.1
    probs = [rng.random((20, 30)) ** 2 for _ in range(3)]
    truths = [q + rng.normal(0, 0.2, q.shape) > 0.4 for q in probs]
    sweep = [np.mean([metrics.pixel_error(q, t, th) for q, t in zip(probs, truths)]) for th in THRESHOLDS]
    chosen = best_threshold(probs, truths)
    assert np.mean([metrics.pixel_error(q, t, chosen) for q, t in zip(probs, truths)]) == pytest.approx(min(sweep))


def test_init_starts_from_a_model_and_refits_the_head(tmp_path, data):
    from unetile.distributed import Context
    from unetile.training.setup import build_run

    start = tmp_path / "start.pt"
    unetile.save_model(unetile.UNet(width=4, depth=2, padding="same", dropout=0.2), start)
    saved = load_model(start)[0].state_dict()
    # No --width or --depth: the architecture comes from the starting model.
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "r"), init=str(start), tile_size=76, workers=0,
                      precision="fp32", device="cpu").resolved()
    assert (cfg.width, cfg.depth, cfg.padding) == (4, 2, "same")
    run = build_run(cfg, tmp_path / "r", Context(), torch.device("cpu"))
    for k, v in run.raw.state_dict().items():
        torch.testing.assert_close(v, saved[k], msg=k)
    # Three classes instead of one: every weight but the output layer's comes from the model.
    cells = _touching_cells(tmp_path / "cells")
    three = TrainConfig(**{**cfg.__dict__, "data": str(cells), "cell_target": "boundary", "w0": 10.0})
    run = build_run(three, tmp_path / "r", Context(), torch.device("cpu"))
    assert run.raw.head.out_channels == 3
    for k, v in run.raw.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(v, saved[k], msg=k)


def test_init_with_another_architecture_is_one_line(tmp_path, data, capsys):
    start = tmp_path / "start.pt"
    unetile.save_model(unetile.UNet(width=4, depth=2, padding="same"), start)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--init", str(start), "--width", "8",
            "--epochs", "1", "--workers", "0", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0] and "width 4" in err[0] and "needs 8" in err[0]
    assert main(args[:5] + ["--init", str(tmp_path / "nothing.pt")] + args[7:]) == 2


def test_epoch_validation_keeps_a_small_set_whole_and_spreads_a_subset_over_a_large_one():
    from types import SimpleNamespace

    from unetile.training.validation import epoch_subset, pixels

    items = [SimpleNamespace(classes=np.zeros((100, 100))) for _ in range(10)]  # 10 x 10,000 px
    assert epoch_subset(items, max_pixels=100_000) == items  # fits: all, as on ISBI
    subset = epoch_subset(items, max_pixels=35_000)
    assert subset == items[::4] and pixels(subset) == 30_000  # every 3rd would be 4 images, 40,000 px
    assert epoch_subset(items[:1], max_pixels=1) == items[:1]  # at least one image


def test_the_timed_calibration_scores_a_capped_subset_and_an_untimed_one_scores_every_image(monkeypatch):
    from types import SimpleNamespace

    from unetile.training import validation

    items = [SimpleNamespace(classes=np.zeros((100, 100)), own_instances=None) for _ in range(10)]
    monkeypatch.setattr(validation, "TIMED_CALIBRATION_PIXELS", 50_000)
    assert validation.calibration_subset(items, time_limit=None) == items
    assert validation.calibration_subset(items, time_limit=900.0) == items[::2]  # 5 x 10,000 px


def test_a_timed_run_calibrates_best_pt_on_the_capped_subset(tmp_path, monkeypatch):
    from unetile.training import loop, validation

    _touching_cells(tmp_path / "d", n=8)  # 6 train, 2 validation images of 4,096 px
    monkeypatch.setattr(validation, "TIMED_CALIBRATION_PIXELS", 4096)
    seen = []

    def counting(checkpoint, items, *args, **kwargs):
        seen.append([it.name for it in items])
        return validation.calibrate_checkpoint(checkpoint, items, *args, **kwargs)

    monkeypatch.setattr(loop, "calibrate_checkpoint", counting)
    args = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--width", "4", "--depth", "2",
            "--tile-size", "76", "--epochs", "1", "--samples-per-epoch", "2", "--precision", "fp32", "--workers", "0"]
    assert main([*args, "--time-limit", "10m"]) == 0
    validated = json.loads((tmp_path / "r" / "config.json").read_text())["val_images"]
    assert len(validated) == 2 and seen == [validated[:1]]  # one of the two, under the limit
    assert main([*args[:4], str(tmp_path / "untimed"), *args[5:]]) == 0
    assert seen[1] == validated  # without a limit: every validation image


def test_the_automatic_cell_target_is_flows_for_images_foreground_for_volumes_and_the_init_models_own():
    from unetile.training.setup import cell_target_of

    ids = [np.array([[0, 1], [2, 2]])]
    auto = TrainConfig(cell_target="auto", dims=2)
    assert cell_target_of(auto, ids) == "flows" and cell_target_of(auto, []) == "foreground"  # masks: no cells
    assert cell_target_of(dataclasses.replace(auto, dims=3), ids) == "foreground"  # flows are 2D only
    assert cell_target_of(dataclasses.replace(auto, cell_target="boundary"), ids) == "boundary"
    assert cell_target_of(auto, ids, {"metadata": {"cell_target": "touching"}}) == "touching"  # fine-tuning keeps it
    assert cell_target_of(auto, ids, {"metadata": {}}) == "foreground"  # older models stored none
    assert TrainConfig(cell_target=None).resolved().cell_target == "auto"


def test_the_automatic_cell_diameter_is_off_for_flows_the_median_for_others_and_the_init_models_own():
    from unetile.training.setup import net_cell_diameter

    ids = [np.pad(np.ones((6, 6), np.int32), 2), np.pad(np.ones((10, 10), np.int32), 2)]  # cells 6.8 and 11.3 px
    median = float(np.median([2 * np.sqrt(36 / np.pi), 2 * np.sqrt(100 / np.pi)]))
    flows = TrainConfig(cell_target="flows", cell_diameter="auto", dims=2)
    assert net_cell_diameter(flows, ids) == "off"
    assert net_cell_diameter(dataclasses.replace(flows, cell_diameter="median"), ids) == pytest.approx(median)
    assert net_cell_diameter(dataclasses.replace(flows, cell_target="foreground"), ids) == pytest.approx(median)
    assert net_cell_diameter(flows, ids, {"metadata": {"cell_diameter": 17.0}}) == 17.0
    assert net_cell_diameter(dataclasses.replace(flows, cell_diameter=12.0), ids) == 12.0


def test_small_cells_weigh_4_by_default_and_runs_from_before_resume_at_1(tmp_path, data):
    """New runs get SMALL_CELL_WEIGHT; resuming a run whose config.json predates the setting keeps
    its loss (every cell 1), and a saved value is kept."""
    from unetile.training.config import SMALL_CELL_WEIGHT, resume_config

    assert tiny(data, tmp_path / "new").resolved().small_cell_weight == SMALL_CELL_WEIGHT == 4.0
    (tmp_path / "config.json").write_text(json.dumps({"train": {"data": str(data), "seed": 3}}))
    assert resume_config(TrainConfig(), tmp_path).small_cell_weight == 1.0
    (tmp_path / "config.json").write_text(json.dumps({"train": {"data": str(data), "small_cell_weight": 2.0}}))
    assert resume_config(TrainConfig(), tmp_path).small_cell_weight == 2.0
    with pytest.raises(UserInputError, match="--small-cell-weight must be >= 1"):
        tiny(data, tmp_path / "bad", small_cell_weight=0.5).resolved()

"""`unetile calibrate`: a trained model's threshold and cell settings chosen again on other labelled
images, the weights untouched, nothing the user had overwritten; a fine-tuned model keeps its
start's cell settings where its labels hold too few cells to choose."""

import json
import shutil

import pytest
import torch

from unetile import load_model
from unetile.cli import main
from unetile.errors import Interrupted
from unetile.nn.checkpoint import load_payload, save_payload
from unetile.packaging.model_card import _validation_lines
from unetile.training import TrainConfig, train, validation
from unetile.zoo import shipped_models

from .conftest import tiny_train_config as tiny
from .test_train import _touching_cells

TRAIN = ["--width", "4", "--depth", "2", "--tile-size", "76", "--epochs", "1", "--samples-per-epoch", "2",
         "--precision", "fp32", "--workers", "0"]


def _validation_folder(run, data, folder):
    """The run's validation images and labels, copied into a folder of their own."""
    for name in json.loads((run / "config.json").read_text())["val_images"]:
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / sub / f"{name}.tif", folder / sub / f"{name}.tif")
    return folder


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("target", ["foreground", "flows"])
def test_calibrating_on_the_validation_images_gives_what_training_chose(tmp_path, target, monkeypatch):
    """The same images -> the same threshold, cell settings and scores as training's own calibration:
    the model's normalisation, cell diameter (24 px: each image rescaled x1.3), target and labels'
    offset are used; the weights are copied unchanged, and best.pt is left as it was."""
    monkeypatch.setattr(validation, "MIN_CELLS_TO_CHOOSE", 1)  # both choose, on 6 cells
    data, run = _touching_cells(tmp_path / "d", n=5), tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN, "--cell-target", target,
                 "--cell-diameter", "24", "--label-offset", "0.5,-0.3"]) == 0
    best = run / "best.pt"
    before = best.read_bytes()
    val = _validation_folder(run, data, tmp_path / "v")
    assert main(["calibrate", "--model", str(best), "--data", str(val), "--precision", "fp32"]) == 0
    assert best.read_bytes() == before
    trained, again = load_payload(best)["metadata"], load_payload(run / "best-calibrated.pt")
    assert trained["input_shift"] == [0.5, -0.3]
    for key in ("threshold", "instances", "cell_diameter", "cell_target", "normalization", "input_shift", "val_tta"):
        assert again["metadata"][key] == trained[key], key
    assert again["metadata"]["calibrated_on"] == {
        "data": str(val), "images": 1, "tta": True, "val_tta": trained["val_tta"], "cells_chosen": True,
        "instances_mean_ap": trained["val_instances_mean_ap"]}
    assert _same_weights(load_payload(best)["state_dict"], again["state_dict"])


def test_other_images_choose_cells_only_where_they_hold_enough_and_files_are_kept(tmp_path, capsys, monkeypatch):
    """Other labelled images: 4 images of 6 cells keep the model's cell settings (fewer than
    MIN_CELLS_TO_CHOOSE) and choose the threshold; with enough cells the cells are chosen too. An
    existing --out is refused in one line (and kept) unless --overwrite; packages, missing models
    and missing folders are one line each."""
    data, run = _touching_cells(tmp_path / "d", n=3), tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN, "--no-calibrate-tta"]) == 0
    trained = load_model(run / "best.pt")[1]
    other = _touching_cells(tmp_path / "o", n=4, seed=7)
    out = tmp_path / "mine.pt"
    out.write_bytes(b"the user's file")
    args = ["calibrate", "--model", str(run / "best.pt"), "--data", str(other), "--out", str(out), "--no-tta"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "exists" in err[0]
    assert out.read_bytes() == b"the user's file"
    assert main([*args, "--overwrite"]) == 0
    kept = load_model(out)[1]
    assert kept["instances"] == trained["instances"] and kept["calibrated_on"]["cells_chosen"] is False
    assert kept["calibrated_on"]["images"] == 4 and "instances_mean_ap" not in kept["calibrated_on"]
    assert "threshold was chosen again afterwards by `unetile calibrate` on 4" in "\n".join(_validation_lines(kept))
    monkeypatch.setattr(validation, "MIN_CELLS_TO_CHOOSE", 1)
    assert main([*args, "--overwrite"]) == 0
    chosen = load_model(out)[1]["calibrated_on"]
    assert chosen["cells_chosen"] is True and 0.0 <= chosen["instances_mean_ap"] <= 1.0
    (tmp_path / "m.onnx").write_bytes(b"an onnx file")
    for model, message in (("m.onnx", "an exported package cannot be calibrated"), ("gone.pt", "no such checkpoint")):
        assert main(["calibrate", "--model", str(tmp_path / model), "--data", str(other)]) == 2
        assert message in capsys.readouterr().err
    assert main([*args[:5], "--out", str(tmp_path / "no" / "such" / "m.pt")]) == 2
    assert "no such folder for --out" in capsys.readouterr().err


@pytest.mark.skipif("nuclei-fluorescence" not in shipped_models(), reason="the shipped nuclei model is not installed")
def test_a_shipped_model_is_calibrated_into_the_working_folder(tmp_path, monkeypatch):
    """``--model NAME``: the result lands in the working folder as NAME-calibrated.pt, never inside
    the installation; the shipped file is untouched and the weights are its own."""
    shipped = shipped_models()["nuclei-fluorescence"]
    before = shipped.read_bytes()
    data = _touching_cells(tmp_path / "d", n=2)
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--model", "nuclei-fluorescence", "--data", str(data), "--no-tta"]) == 0
    written = load_payload(tmp_path / "nuclei-fluorescence-calibrated.pt")
    assert written["metadata"]["calibrated_on"]["images"] == 2 and shipped.read_bytes() == before
    assert _same_weights(load_payload(shipped)["state_dict"], written["state_dict"])


def test_a_fine_tuned_model_keeps_its_starts_cell_settings_where_its_labels_hold_few_cells(tmp_path, monkeypatch):
    """``--init`` at the start's cell diameter: best.pt inherits the start's cell settings and keeps
    them where the validation images hold fewer than MIN_CELLS_TO_CHOOSE cells (6 here), and
    chooses its own from the grid where they hold enough."""
    data = _touching_cells(tmp_path / "d", n=3)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *TRAIN]) == 0
    start = tmp_path / "a" / "best.pt"
    payload = load_payload(start)
    marked = {"sigma": 3.0, "seed_threshold": 0.9, "min_size": 5}  # min_size 5: not in the grid
    payload["metadata"]["instances"] = marked
    save_payload(payload, start)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *TRAIN, "--init", str(start)]) == 0
    assert load_model(tmp_path / "b" / "best.pt")[1]["instances"] == marked
    with pytest.raises(Interrupted):  # stopped and resumed: the resumed run keeps them too
        train(tiny(data, tmp_path / "part", init=str(start)), stop_after_steps=1)
    assert load_model(train(TrainConfig(), resume=tmp_path / "part") / "best.pt")[1]["instances"] == marked
    monkeypatch.setattr(validation, "MIN_CELLS_TO_CHOOSE", 1)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"), *TRAIN, "--init", str(start)]) == 0
    chosen = load_model(tmp_path / "c" / "best.pt")[1]["instances"]
    assert chosen["min_size"] in validation.INSTANCE_GRID["min_size"]

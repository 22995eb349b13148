"""Shipped models: `--model NAME`, `unetile models`, a path winning over a name, unknown names."""

import numpy as np
import torch

from unetile import save_model
from unetile.cli import main
from unetile.io import read_image, write_image
from unetile.nn.checkpoint import load_model, load_payload
from unetile.zoo import resolve_model, shipped_models

from .conftest import tiny_unet

NAME = "nuclei-fluorescence"


def test_the_package_ships_its_models():
    assert {"em-membranes", "nuclei-fluorescence"} <= set(shipped_models())  # package data (pyproject)


def test_unet_models_lists_the_shipped_models_with_their_summary(capsys):
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "nuclei" in line.lower() and "fluorescence" in line.lower()


def test_a_shipped_model_loads_as_float32_and_predicts_by_name(tmp_path, rng):
    model, metadata = load_model(NAME)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and "instances" in metadata
    assert load_payload(NAME)["state_dict"]["head.weight"].dtype == torch.float16  # shipped small
    image = (rng.random((96, 120)) * 200).astype(np.uint8)
    write_image(tmp_path / "img.png", image)
    for model_arg, out in ((NAME, "by-name"), (str(resolve_model(NAME)), "by-path")):
        assert main(["predict", "--model", model_arg, "--input", str(tmp_path / "img.png"), "--out",
                     str(tmp_path / out), "--instances"]) == 0
    assert np.array_equal(read_image(tmp_path / "by-name" / "img.tif"), read_image(tmp_path / "by-path" / "img.tif"))


def test_a_file_of_that_name_wins_over_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(tiny_unet(width=4, depth=2), tmp_path / NAME)
    model, _ = load_model(NAME)
    assert model.config.width == 4


def test_a_folder_of_that_name_does_not_hide_the_shipped_model(tmp_path, monkeypatch):
    """A run folder called like a shipped model (runs are folders) must not shadow the name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    model, _ = load_model(NAME)
    assert model.config.width > 4 and model.config == load_model(shipped_models()[NAME])[0].config


def test_an_unknown_name_is_one_line_listing_the_known_ones(tmp_path, capsys):
    write_image(tmp_path / "img.png", np.zeros((40, 40), np.uint8))
    assert main(["predict", "--model", "no-such-model", "--input", str(tmp_path / "img.png"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-model" in err[0] and NAME in err[0]
    assert not (tmp_path / "o").exists()

"""Prediction straight to a TIFF on disk: bounded memory, interrupted and resumed bit for bit."""

import numpy as np
import pytest
import tifffile

import unetile.inference.streaming as streaming
from unetile import save_model
from unetile.inference.predict import PredictOptions, predict_files
from unetile.inference.streaming import open_input
from unetile.io import read_image

from .conftest import tiny_unet


@pytest.fixture
def setup(tmp_path, rng):
    model = tmp_path / "m.pt"
    save_model(tiny_unet(width=4, depth=3), model, threshold=0.4)
    stack = (rng.random((3, 150, 140)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack", metadata={"axes": "QYX"})
    return model, tmp_path / "vol.tif", stack


def test_plain_tiff_input_is_memory_mapped(setup):
    _, vol, stack = setup
    pages = open_input(vol)
    assert isinstance(pages.base, np.memmap) or isinstance(pages, np.memmap)
    assert pages.shape == (3, 1, 150, 140) and np.array_equal(pages[1, 0], stack[1])


def test_interrupted_run_resumes_bit_identically(setup, tmp_path, monkeypatch):
    model, vol, _ = setup
    options = PredictOptions(format="tif", batch_size=1, tile_size=124, precision="fp32")
    predict_files(model, vol, tmp_path / "whole", options)
    whole = read_image(tmp_path / "whole" / "vol.tif")

    real, calls = streaming._write_state, {"n": 0}

    def dies_after_five(path, state):
        real(path, state)
        calls["n"] += 1
        if calls["n"] == 6:  # a few batches into the first slice
            raise KeyboardInterrupt

    monkeypatch.setattr(streaming, "_write_state", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        predict_files(model, vol, tmp_path / "part", options)
    monkeypatch.setattr(streaming, "_write_state", real)
    out = tmp_path / "part"
    assert not (out / "vol.tif").exists() and (out / ".vol.tif.part.tif").exists()
    from unetile import UserInputError

    with pytest.raises(UserInputError, match="--resume"):
        predict_files(model, vol, out, options)
    predict_files(model, vol, out, PredictOptions(**{**options.__dict__, "resume": True}))
    resumed = read_image(out / "vol.tif")
    assert resumed.dtype == np.float32 and resumed.shape == (3, 1, 150, 140)
    assert np.array_equal(resumed, whole)
    assert sorted(p.name for p in out.iterdir()) == ["vol.tif"]


def test_resume_refuses_other_settings(setup, tmp_path, monkeypatch):
    model, vol, _ = setup
    options = PredictOptions(format="tif", batch_size=1, tile_size=124, precision="fp32")

    real = streaming._write_state

    def die(path, state):
        real(path, state)
        if state["batches"] > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(streaming, "_write_state", die)
    with pytest.raises(KeyboardInterrupt):
        predict_files(model, vol, tmp_path / "o", options)
    monkeypatch.undo()
    from unetile import UserInputError

    with pytest.raises(UserInputError, match="other settings"):
        predict_files(model, vol, tmp_path / "o", PredictOptions(format="tif", batch_size=2, tile_size=124,
                                                                 precision="fp32", resume=True))


def test_masks_stream_too(setup, tmp_path):
    model, vol, _ = setup
    predict_files(model, vol, tmp_path / "m", PredictOptions(format="tif", threshold=0.5, precision="fp32"))
    out = read_image(tmp_path / "m" / "vol.tif")
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 255}

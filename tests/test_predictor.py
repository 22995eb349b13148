"""The Predictor: a loaded model applies its stored settings, and equals `unetile predict`'s files."""

import numpy as np
import pytest

from unetile import Normalization, PredictOptions, Predictor, predict_tiled, save_model
from unetile.cli import main
from unetile.inference.predictor import calibrate
from unetile.io import read_image, write_image

from .conftest import tiny_unet

STORED = dict(threshold=0.3, flips="horizontal", input_shift=[0.4, -0.25],
              normalization=Normalization(low=2.0, high=98.0).to_dict())


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.pt"
    save_model(tiny_unet(width=4, depth=3), path, **STORED)
    return path


def test_stored_settings_are_read_and_applied(model_path, rng):
    predictor = Predictor.load(model_path, PredictOptions(tta=True, precision="fp32"), "cpu")
    assert predictor.threshold == 0.3 and predictor.flips == "horizontal"
    assert predictor.input_shift == (0.4, -0.25) and predictor.precision == "fp32"
    image = (rng.random((61, 47)) * 255).astype(np.uint8)
    by_hand = predict_tiled(tiny_unet(width=4, depth=3), image, tta=True, flips="horizontal",
                            # the stored percentiles and prediction's floors
                            normalization=Normalization(low=2.0, high=98.0, floor=0.5, noise_floor=10.0),
                            input_shift=(0.4, -0.25))
    np.testing.assert_allclose(predictor.probabilities(image), by_hand, atol=1e-5)
    # predict() writes the calibrated map: 0.5 is the stored threshold
    np.testing.assert_allclose(predictor.predict(image), calibrate(by_hand, 0.3)[0], atol=1e-5)


@pytest.mark.parametrize("suffix, extra", [("png", []), ("tif", ["--threshold", "0.5"]), ("tif", ["--instances"])])
def test_predict_equals_the_written_file(tmp_path, model_path, rng, suffix, extra):
    image = (rng.random((70, 90)) * 255).astype(np.uint8)
    write_image(tmp_path / f"a.{suffix}", image)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / f"a.{suffix}"), "--out", str(out),
                 "--precision", "fp32", *extra]) == 0
    options = PredictOptions(precision="fp32", threshold=0.5 if "--threshold" in extra else None,
                             instances="watershed" if "--instances" in extra else None)
    expected = Predictor.load(model_path, options, "cpu").predict(image, f".{suffix}")
    written = read_image(out / f"a.{'tif' if extra else suffix}")[0, 0]
    assert written.dtype == expected.dtype
    np.testing.assert_array_equal(written, expected)

"""Sub-pixel registration of images to labels: estimate, resampling, tiling, training."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unetile import UserInputError, load_model, predict_tiled
from unetile.cli import main
from unetile.registration import estimate_label_offset, parse_label_offset, shift_image
from unetile.synthetic import synthetic_em
from unetile.training import train

from .conftest import tiny_train_config as tiny
from .conftest import tiny_unet

PAIRS = [synthetic_em(np.random.default_rng(s), 128) for s in range(4)]


@settings(max_examples=12, deadline=None)
@given(dy=st.floats(-1.0, 1.0), dx=st.floats(-1.0, 1.0))
def test_estimate_recovers_a_known_subpixel_offset(dy, dx):
    # The images are drawn (dy, dx) px off their labels: the estimate is the shift that undoes it.
    images = [shift_image(im[None].astype(np.float32), (dy, dx)) for im, _ in PAIRS]
    fy, fx = estimate_label_offset(images, [lab > 0 for _, lab in PAIRS])
    assert abs(fy + dy) <= 0.15 and abs(fx + dx) <= 0.15


def test_estimate_of_aligned_data_is_zero_and_empty_labels_are_skipped():
    images = [im[None].astype(np.float32) for im, _ in PAIRS]
    fy, fx = estimate_label_offset(images, [lab > 0 for _, lab in PAIRS])
    assert abs(fy) <= 0.1 and abs(fx) <= 0.1
    assert estimate_label_offset(images[:1], [np.zeros((128, 128), bool)]) == (0.0, 0.0)
    # Dark foreground (inverted image) gives the same offset: the peak of |correlation|.
    shifted = [shift_image(255 - im[None].astype(np.float32), (0.5, 0)) for im, _ in PAIRS]
    fy, fx = estimate_label_offset(shifted, [lab > 0 for _, lab in PAIRS])
    assert abs(fy + 0.5) <= 0.15 and abs(fx) <= 0.15


def test_shift_image_is_exact_for_zero_and_whole_pixels(rng):
    image = rng.random((2, 40, 50)).astype(np.float32)
    assert np.array_equal(shift_image(image, (0.0, 0.0)), image)
    moved = shift_image(image, (1.0, -2.0))
    np.testing.assert_allclose(moved[:, 1:, :-2], image[:, :-1, 2:], atol=1e-5)
    ramp = np.broadcast_to(np.arange(50, dtype=np.float32), (1, 40, 50))
    np.testing.assert_allclose(shift_image(ramp, (0.0, 0.3))[0, :, 12:-12], ramp[0, :, 12:-12] - 0.3, atol=1e-4)


@pytest.mark.parametrize("shift", [(-0.55, -0.2), (0.7, 1.3)])
def test_tiled_shift_is_seamless_and_equals_the_whole_image_resampled(rng, shift):
    net = tiny_unet(width=4, depth=3, seed=1)  # valid tiles 8k + 92
    image = rng.random((230, 250)).astype(np.float32)
    a = predict_tiled(net, image, tile_size=108, batch_size=3, input_shift=shift)
    b = predict_tiled(net, image, tile_size=252, batch_size=1, input_shift=shift)
    assert np.abs(a - b).max() <= 1e-5  # tile size does not matter: the shift is seamless
    # Away from the borders (where mirroring and shifting do not commute) it is the
    # prediction of the whole image resampled at once, and not that of the image itself.
    whole = predict_tiled(net, shift_image(image[None], shift), tile_size=252)
    plain = predict_tiled(net, image, tile_size=252)
    m = net.halo + 16  # + the cubic spline's reach (its edge effect decays 0.27x per px)
    assert np.abs(a - whole)[:, m:-m, m:-m].max() <= 1e-5
    assert np.abs(a - plain)[:, m:-m, m:-m].max() > 1e-3


def test_parse_label_offset():
    assert parse_label_offset("auto") == "auto" and parse_label_offset("None") == "none"
    assert parse_label_offset("-0.5, 0.25") == (-0.5, 0.25)
    for bad in ("up", "0.5", "3,0", "1,2,3"):
        with pytest.raises(UserInputError, match="--label-offset"):
            parse_label_offset(bad)


@pytest.fixture(scope="module")
def offset_data(tmp_path_factory):
    """Synthetic images drawn 0.6 px below their labels (as if the labels sat 0.6 px up)."""
    root = tmp_path_factory.mktemp("offset")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for n in range(5):
        image, label = synthetic_em(np.random.default_rng(10 + n), 96)
        moved = shift_image(image[None].astype(np.float32), (0.6, 0.0))[0]
        Image.fromarray(np.clip(np.rint(moved), 0, 255).astype(np.uint8)).save(root / "images" / f"{n:02d}.png")
        Image.fromarray(label).save(root / "labels" / f"{n:02d}.png")
    return root


def test_training_estimates_stores_and_predict_applies_the_offset(tmp_path, offset_data):
    run = train(tiny(offset_data, tmp_path / "auto", label_offset="auto", epochs=1))
    _, meta = load_model(run / "best.pt")
    dy, dx = meta["input_shift"]
    assert abs(dy + 0.6) <= 0.15 and abs(dx) <= 0.15
    assert json.loads((run / "config.json").read_text())["input_shift"] == [dy, dx]
    off = train(tiny(offset_data, tmp_path / "none", label_offset="none", epochs=1))
    assert load_model(off / "best.pt")[1]["input_shift"] == [0.0, 0.0]
    given = train(tiny(offset_data, tmp_path / "given", label_offset="-0.5,0", epochs=1))
    assert load_model(given / "best.pt")[1]["input_shift"] == [-0.5, 0.0]

    # predict resamples its input with the stored shift: the same maps as the model without
    # it fed the resampled image.
    assert main(["predict", "--model", str(run / "best.pt"), "--input", str(offset_data / "images" / "00.png"),
                 "--out", str(tmp_path / "p"), "--format", "tif", "--precision", "fp32"]) == 0
    import tifffile

    written = tifffile.imread(tmp_path / "p" / "00.tif")
    model, _ = load_model(run / "best.pt")
    from unetile.inference.predictor import calibrate
    from unetile.normalization import Normalization, normalize

    image = normalize(np.array(Image.open(offset_data / "images" / "00.png"))[None], Normalization())
    expected = calibrate(predict_tiled(model, image, input_shift=(dy, dx)), meta["threshold"])
    np.testing.assert_allclose(np.squeeze(written), expected[0], atol=1e-4)
    unshifted = calibrate(predict_tiled(model, image), meta["threshold"])
    assert np.abs(np.squeeze(written) - unshifted[0]).max() > 1e-3

"""Per-image normalisation: percentiles, and the floors that keep a nearly empty image's noise low
in prediction (half-way to the 99.9th percentile; 10 sd of the pixel noise)."""

from types import SimpleNamespace

import numpy as np
import pytest

from unetile import Normalization, PredictOptions, UserInputError, load_model, save_model
from unetile.inference.predictor import Predictor
from unetile.normalization import central_region, noise_sd, normalize
from unetile.packaging.model_card import model_card

from .conftest import tiny_unet

FLOORED = Normalization(floor=0.5)


def _noise_and_one_nucleus(rng) -> np.ndarray:
    """(1, 100, 100): noise in [0, 10) and one 5 x 5 nucleus of 200 (0.25% of the pixels)."""
    image = rng.uniform(0, 10, (1, 100, 100))
    image[0, 40:45, 60:65] = 200.0
    return image


def test_a_nearly_empty_image_is_not_stretched_into_its_noise(rng):
    image = _noise_and_one_nucleus(rng)
    lo, hi = FLOORED.statistics(image)
    low, p99 = np.percentile(image, [1, 99])
    # the 99.9th percentile (the brightest 10 px) lies in the nucleus: 200
    assert hi[0] == pytest.approx(low + 0.5 * (200.0 - low)) and hi[0] > 10 * p99
    out = normalize(image, FLOORED)
    assert out[0, 42, 62] == pytest.approx(2.0, abs=0.01)  # the nucleus twice the value mapped to 1
    assert out[0, :30].max() < 0.11  # the noise stays near 0 (without the floor it spans 0-1)
    assert normalize(image, Normalization())[0, :30].max() > 0.95  # training's normalisation: no floor


def test_an_image_with_many_bright_cells_normalises_to_the_same_bits_as_without_the_floor(rng):
    image = rng.uniform(0, 10, (1, 100, 100))
    image[0, :, :20] = rng.uniform(150, 200, (100, 20))  # 20% bright
    assert np.array_equal(normalize(image, FLOORED), normalize(image, Normalization()))


def test_the_floor_is_per_channel(rng):
    image = np.concatenate([_noise_and_one_nucleus(rng), rng.uniform(0, 100, (1, 100, 100))])
    lo, hi = FLOORED.statistics(image)
    plain_lo, plain_hi = Normalization().statistics(image)
    assert np.array_equal(lo, plain_lo)
    assert hi[0] > 5 * plain_hi[0] and hi[1] == plain_hi[1]


def test_checkpoints_hold_no_floor_and_prediction_adds_it(tmp_path, rng):
    old = Normalization.from_dict({"kind": "percentile", "low": 1.0, "high": 99.0})
    assert old == Normalization() and old.floor == 0.0
    image = _noise_and_one_nucleus(rng)
    assert np.array_equal(old.statistics(image)[1], np.percentile(image, [99], axis=(1, 2))[0].astype(np.float32))
    assert Normalization.from_dict(Normalization(2, 98, 0.3, 99.5).to_dict()) == Normalization(2, 98, 0.3, 99.5)
    save_model(tiny_unet(), tmp_path / "m.pt", normalization=Normalization(2, 98))
    assert load_model(tmp_path / "m.pt")[1]["normalization"]["floor"] == 0.0
    net, metadata = load_model(tmp_path / "m.pt")
    assert Predictor(net, metadata).normalization == Normalization(2, 98, floor=0.5, noise_floor=10.0)
    as_in_training = PredictOptions(normalization_floor=0.0, normalization_noise_floor=0.0)
    assert Predictor(net, metadata, as_in_training).normalization == Normalization(2, 98)


def test_predict_on_a_nearly_empty_image_uses_the_floor(tmp_path, rng):
    """`unetile predict` (the default floor) against --normalization-floor 0 (as in training): the
    image's normalised noise is what the net sees, so the two outputs differ, and the floored one
    equals predict_tiled with the floored normalisation."""
    from PIL import Image

    from unetile import predict_tiled
    from unetile.cli import main

    net = tiny_unet()
    save_model(net, tmp_path / "m.pt")
    image = _noise_and_one_nucleus(rng)[0].astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    for floor in ("0.5", "0"):
        assert main(["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "a.png"), "--out",
                     str(tmp_path / floor), "--format", "tif", "--precision", "fp32",
                     "--normalization-floor", floor]) == 0
    import tifffile

    floored, plain = (tifffile.imread(tmp_path / f / "a.tif") for f in ("0.5", "0"))
    assert not np.allclose(floored, plain)
    expected = predict_tiled(net, image.astype(np.float32), normalization=FLOORED, precision="fp32")
    np.testing.assert_allclose(floored, expected.squeeze(), atol=1e-5)


@pytest.mark.parametrize("floor, peak", [(-0.1, 99.9), (1.5, 99.9), (0.5, 98.0), (0.5, 100.5)])
def test_a_floor_or_peak_out_of_range_is_refused(floor, peak):
    with pytest.raises(ValueError, match="floor"):
        Normalization(floor=floor, peak=peak)


def test_a_floor_out_of_range_in_prediction_is_one_clear_error(tmp_path, rng, capsys):
    from PIL import Image

    from unetile.cli import main

    save_model(tiny_unet(), tmp_path / "m.pt")
    Image.fromarray(_noise_and_one_nucleus(rng)[0].astype(np.uint8)).save(tmp_path / "a.png")
    net, metadata = load_model(tmp_path / "m.pt")
    with pytest.raises(UserInputError, match="--normalization-floor must be between 0 and 1"):
        Predictor(net, metadata, PredictOptions(normalization_floor=1.5))
    assert main(["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out"), "--normalization-floor", "-1"]) == 2
    assert "--normalization-floor must be between 0 and 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_whose_floor_is_not_a_number_is_refused(tmp_path):
    save_model(tiny_unet(), tmp_path / "m.pt", normalization={"kind": "percentile", "low": 1.0, "high": 99.0,
                                                              "floor": "half", "peak": 99.9})
    with pytest.raises(UserInputError, match="floor or peak"):
        load_model(tmp_path / "m.pt")


def test_the_model_card_says_where_the_package_differs(tmp_path):
    info = SimpleNamespace(name="nuclei", description=None, cite=None)
    card = model_card(tmp_path / "m.pt", tiny_unet(), {"normalization": Normalization().to_dict()}, {}, info, None)
    assert "half-way to the 99.9 percentile" in card and "scale_range` cannot" in card
    assert "10 sd of the pixel noise" in card


NOISE_FLOORED = Normalization(floor=0.5, noise_floor=10.0)


def test_noise_sd_by_hand():
    """Immerkaer's estimate: planes and ramps give 0; a +-1 checkerboard's second differences are
    +-4 along each axis, so every response is +-16 and the sd is 16 x sqrt(pi / 2) / 6."""
    yy, xx = np.mgrid[:20, :30]
    assert noise_sd([np.stack([np.full((20, 30), 7.0), 3.0 * yy - 2.0 * xx + 5])]) == pytest.approx([0, 0], abs=1e-9)
    checker = np.where((yy + xx) % 2, 1.0, -1.0)[None]
    assert noise_sd([checker]) == pytest.approx([16 * np.sqrt(np.pi / 2) / 6])
    # several regions: one mean over all their responses (a 3 x 3 region has one response)
    assert noise_sd([checker, checker[:, :3, :3]]) == pytest.approx(noise_sd([checker]))


def test_noise_sd_of_gaussian_noise_and_of_a_volume(rng):
    noise = rng.normal(100.0, 4.0, (2, 300, 300)) * np.array([1.0, 3.0])[:, None, None]
    assert noise_sd([noise]) == pytest.approx([4.0, 12.0], rel=0.03)
    volume = rng.normal(0.0, 2.0, (1, 6, 100, 100))  # in each plane, never across planes
    volume += np.arange(6)[None, :, None, None] * 50.0
    assert noise_sd([volume]) == pytest.approx([2.0], rel=0.03)


def test_a_field_of_pure_noise_stays_dark(rng):
    """No object at all: both percentiles lie in the noise, the 0.5 floor does nothing, the noise
    floor holds the upper value 10 sd above the low one."""
    image = rng.normal(20.0, 2.0, (1, 256, 256))
    assert np.array_equal(normalize(image, FLOORED), normalize(image, Normalization()))
    assert normalize(image, Normalization())[0].max() > 1.2  # stretched: 1-99 percentile to 0-1
    lo, hi = NOISE_FLOORED.statistics(image)
    assert hi[0] == pytest.approx(lo[0] + 10 * 2.0, rel=0.01)
    assert np.percentile(normalize(image, NOISE_FLOORED), 99) < 0.5


def test_images_with_cells_normalise_to_the_same_bits_as_without_the_noise_floor(rng):
    image = rng.normal(20.0, 2.0, (1, 256, 256))
    image[0, 100:120, 100:120] += 40.0  # one nucleus 20 sd bright, 0.6% of the pixels
    assert np.array_equal(normalize(image, NOISE_FLOORED), normalize(image, FLOORED))
    assert normalize(image, NOISE_FLOORED)[0, 110, 110] > 1.5


def test_the_noise_is_measured_at_full_resolution_in_the_centre():
    image = np.arange(3 * 50 * 4000, dtype=np.float32).reshape(3, 50, 4000)
    assert central_region(image, 10_000).shape == (3, 50, 100)
    assert np.array_equal(central_region(image, 10_000)[0, 0], image[0, 0, 1950:2050])
    assert central_region(image[:, :, :80], 10_000).shape == (3, 50, 80)  # smaller than the budget: whole


def test_prediction_refuses_a_negative_noise_floor(tmp_path, rng, capsys):
    from PIL import Image

    from unetile.cli import main

    save_model(tiny_unet(), tmp_path / "m.pt")
    Image.fromarray(_noise_and_one_nucleus(rng)[0].astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out"), "--normalization-noise-floor", "-2"]) == 2
    assert "--normalization-noise-floor must be 0 or more, got -2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="noise_floor"):
        Normalization(noise_floor=float("inf"))


@pytest.mark.parametrize("folder", ["isbi2012/train/images", "isbi2012/test/images", "dsb2018/fluorescence/images",
                                    "dsb2018/histology/images", "dsb2018/brightfield/images"])
def test_the_noise_floor_changes_no_image_of_the_shared_data(folder):
    """Every image of ISBI 2012 and DSB 2018 spans 16 or more noise sd from its 1st to its 99th
    percentile: the default noise floor (10) leaves each to the same bits."""
    from unetile.io import read_image

    from .conftest import SHARED_DATA

    root = SHARED_DATA / folder
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    for path in sorted(root.iterdir()):
        image = read_image(path)[0]
        assert np.array_equal(NOISE_FLOORED.statistics(image)[1], FLOORED.statistics(image)[1]), path.name

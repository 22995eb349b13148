"""Per-image normalisation: percentiles, and the floor that keeps a nearly empty image's noise low."""

from types import SimpleNamespace

import numpy as np
import pytest

from unetile import Normalization, UserInputError, load_model, save_model
from unetile.normalization import normalize
from unetile.packaging.model_card import model_card

from .conftest import tiny_unet


def _noise_and_one_nucleus(rng) -> np.ndarray:
    """(1, 100, 100): noise in [0, 10) and one 5 x 5 nucleus of 200 (0.25% of the pixels)."""
    image = rng.uniform(0, 10, (1, 100, 100))
    image[0, 40:45, 60:65] = 200.0
    return image


def test_a_nearly_empty_image_is_not_stretched_into_its_noise(rng):
    image = _noise_and_one_nucleus(rng)
    lo, hi = Normalization().statistics(image)
    low, p99 = np.percentile(image, [1, 99])
    # the 99.9th percentile (the brightest 10 px) lies in the nucleus: 200
    assert hi[0] == pytest.approx(low + 0.5 * (200.0 - low)) and hi[0] > 10 * p99
    out = normalize(image, Normalization())
    assert out[0, 42, 62] == pytest.approx(2.0, abs=0.01)  # the nucleus twice the value mapped to 1
    assert out[0, :30].max() < 0.11  # the noise stays near 0 (without the floor it spans 0-1)
    assert normalize(image, Normalization(floor=0.0))[0, :30].max() > 0.95


def test_an_image_with_many_bright_cells_normalises_to_the_same_bits_as_without_the_floor(rng):
    image = rng.uniform(0, 10, (1, 100, 100))
    image[0, :, :20] = rng.uniform(150, 200, (100, 20))  # 20% bright
    plain = Normalization(floor=0.0)
    assert np.array_equal(normalize(image, Normalization()), normalize(image, plain))


def test_the_floor_is_per_channel(rng):
    image = np.concatenate([_noise_and_one_nucleus(rng), rng.uniform(0, 100, (1, 100, 100))])
    lo, hi = Normalization().statistics(image)
    plain_lo, plain_hi = Normalization(floor=0.0).statistics(image)
    assert np.array_equal(lo, plain_lo)
    assert hi[0] > 5 * plain_hi[0] and hi[1] == plain_hi[1]


def test_checkpoints_from_before_the_floor_keep_none_and_new_ones_record_it(tmp_path, rng):
    old = Normalization.from_dict({"kind": "percentile", "low": 1.0, "high": 99.0})
    assert old == Normalization(floor=0.0)
    image = _noise_and_one_nucleus(rng)
    assert np.array_equal(old.statistics(image)[1], np.percentile(image, [99], axis=(1, 2))[0].astype(np.float32))
    assert Normalization.from_dict(Normalization(2, 98, 0.3, 99.5).to_dict()) == Normalization(2, 98, 0.3, 99.5)
    save_model(tiny_unet(), tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt")[1]["normalization"]["floor"] == 0.5


@pytest.mark.parametrize("floor, peak", [(-0.1, 99.9), (1.5, 99.9), (0.5, 98.0), (0.5, 100.5)])
def test_a_floor_or_peak_out_of_range_is_refused(floor, peak):
    with pytest.raises(ValueError, match="floor"):
        Normalization(floor=floor, peak=peak)


def test_a_checkpoint_whose_floor_is_not_a_number_is_refused(tmp_path):
    save_model(tiny_unet(), tmp_path / "m.pt", normalization={"kind": "percentile", "low": 1.0, "high": 99.0,
                                                              "floor": "half", "peak": 99.9})
    with pytest.raises(UserInputError, match="floor or peak"):
        load_model(tmp_path / "m.pt")


def test_the_model_card_says_where_the_package_differs(tmp_path):
    info = SimpleNamespace(name="nuclei", description=None, cite=None)
    new = model_card(tmp_path / "m.pt", tiny_unet(), {"normalization": Normalization().to_dict()}, {}, info, None)
    assert "0.5 of the way to the 99.9 percentile" in new and "scale_range" in new
    old = model_card(tmp_path / "m.pt", tiny_unet(), {}, {}, info, None)
    assert "nearly empty or saturated normalises badly" in old and "scale_range" not in old

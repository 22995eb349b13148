"""Overlap-tile prediction: shapes, exact seamlessness, mirror extension, TTA."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unetile import Normalization, UserInputError, predict_tiled, valid_input_size
from unetile.inference.tile_io import reflect_indices
from unetile.inference.layout import tile_layout

from .conftest import tiny_unet

NET = tiny_unet(width=8)  # depth 4, valid: tiles 16k + 188
NET3 = tiny_unet(width=4, depth=3, seed=1)  # depth 3, valid: tiles 8k + 92


def whole_pass(net, image: np.ndarray) -> np.ndarray:
    """One forward pass over the mirror-extended image, cropped to the image."""
    h, w = image.shape[-2:]
    size = max(net.valid_input_size(h + 2 * net.halo, "up"), net.valid_input_size(w + 2 * net.halo, "up"))
    r = reflect_indices(-net.halo, size, h)
    c = reflect_indices(-net.halo, size, w)
    with torch.no_grad():
        logits = net(torch.from_numpy(image[r][:, c][None, None].astype(np.float32)))
    return torch.sigmoid(logits).numpy()[0, :, :h, :w]


def test_700x900_two_tile_sizes_agree_and_keep_the_size(rng):
    image = rng.random((700, 900)).astype(np.float32)
    a = predict_tiled(NET, image, tile_size=252, batch_size=3)
    b = predict_tiled(NET, image, tile_size=508, batch_size=1)
    assert a.shape == b.shape == (1, 700, 900) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-5
    assert a.std() > 0.02  # He init: the output really varies, so agreement means something


def test_tile_larger_than_image_equals_whole_pass(rng):
    image = rng.random((150, 170)).astype(np.float32)
    tiled = predict_tiled(NET, image, tile_size=508)
    assert np.abs(tiled - whole_pass(NET, image)).max() <= 1e-5


def test_a_misaligned_tile_would_be_caught(rng):
    """Shifting the input by 4 px (off the 16-px grid) changes outputs a lot; 16 px changes nothing."""
    image = rng.random((120, 120)).astype(np.float32)
    ref = whole_pass(NET, image)
    for shift, changes in ((4, True), (16, False)):
        size = 188 + 16 * 10
        r = reflect_indices(-NET.halo + shift, size, 120)
        c = reflect_indices(-NET.halo, size, 120)
        with torch.no_grad():
            out = torch.sigmoid(NET(torch.from_numpy(image[r][:, c][None, None]))).numpy()[0, 0]
        diff = np.abs(out[: 120 - shift, :120] - ref[0, shift:, :])
        assert (diff.max() > 0.05) == changes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 130),
    w=st.integers(1, 130),
    k1=st.integers(0, 4),
    k2=st.integers(0, 4),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_result_does_not_depend_on_tile_or_batch_size(h, w, k1, k2, batch, seed):
    image = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    a = predict_tiled(NET3, image, tile_size=100 + 8 * k1, batch_size=batch)
    b = predict_tiled(NET3, image, tile_size=100 + 8 * k2, batch_size=1)
    assert a.shape == (1, h, w)
    assert np.abs(a - b).max() <= 1e-5
    assert np.abs(a - whole_pass(NET3, image)).max() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, tiles",
    [(dict(padding="same"), (256, 320)), (dict(up_mode="bilinear"), (236, 300)), (dict(out_channels=3), (204, 380)),
     # shallow same-padding nets: their margin has no rounding slack (0.007 seams before the +1)
     (dict(padding="same", depth=2), (76, 96)), (dict(padding="same", depth=3), (112, 160))],
)
def test_seamless_for_every_option(rng, kwargs, tiles):
    net = tiny_unet(**kwargs)
    image = rng.random((230, 190)).astype(np.float32)
    a, b = (predict_tiled(net, image, tile_size=t) for t in tiles)
    assert a.shape == (net.config.out_channels, 230, 190)
    assert np.abs(a - b).max() <= 1e-5
    if net.config.out_channels > 1:
        assert np.allclose(a.sum(0), 1.0, atol=1e-5)


def test_tta_is_seamless_and_differs_from_one_pass(rng):
    image = rng.random((90, 110)).astype(np.float32)
    a = predict_tiled(NET, image, tile_size=204, tta=True)
    b = predict_tiled(NET, image, tile_size=300, tta=True)
    assert np.abs(a - b).max() <= 1e-5
    assert np.abs(predict_tiled(NET, image, tile_size=300) - b).max() > 1e-3


def test_tta_averages_over_the_given_group(rng):
    # Width and height multiples of the 20-px output of a 204-px tile: the tiles of the mirrored
    # image are then the mirrored tiles of the image, so the two averages agree exactly.
    image = rng.random((80, 100)).astype(np.float32)
    plain = predict_tiled(NET, image, tile_size=204)
    assert np.abs(predict_tiled(NET, image, tile_size=204, tta=True, flips="none") - plain).max() <= 1e-5
    mirrored = predict_tiled(NET, image[:, ::-1].copy(), tile_size=204)[..., ::-1]
    horizontal = predict_tiled(NET, image, tile_size=204, tta=True, flips="horizontal")
    assert np.abs(horizontal - (plain + mirrored) / 2).max() <= 1e-5
    assert np.abs(horizontal - predict_tiled(NET, image, tile_size=204, tta=True)).max() > 1e-3


def test_multichannel_input_and_normalisation(rng):
    net = tiny_unet(in_channels=2)
    image = (rng.random((2, 60, 70)) * 4000).astype(np.uint16)
    norm = Normalization(1, 99)
    p = predict_tiled(net, image, normalization=norm)
    lo, hi = norm.statistics(image)
    ref = predict_tiled(net, (image - lo[:, None, None]) / (hi - lo)[:, None, None])
    assert p.shape == (1, 60, 70) and np.abs(p - ref).max() <= 1e-5


def test_writes_into_a_given_array(rng):
    image = rng.random((40, 50)).astype(np.float32)
    out = np.zeros((1, 40, 50), np.float32)
    assert predict_tiled(NET, image, out=out) is out
    assert np.abs(out - predict_tiled(NET, image)).max() == 0


def test_restores_training_mode(rng):
    net = tiny_unet().train()
    predict_tiled(net, rng.random((20, 20)).astype(np.float32))
    assert net.training


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(tile_size=500), "not a valid input"), (dict(tile_size=188), "too small")],
)
def test_bad_tile_sizes_are_user_errors(rng, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        predict_tiled(NET, rng.random((300, 300)).astype(np.float32), **kwargs)


def test_wrong_channel_count_is_a_user_error(rng):
    with pytest.raises(UserInputError, match="channel"):
        predict_tiled(NET, rng.random((3, 30, 30)).astype(np.float32))


@given(start=st.integers(-300, 300), size=st.integers(1, 200), length=st.integers(1, 60))
def test_reflect_indices_match_numpy_pad(start, size, length):
    base = np.arange(length)
    pad = 700
    padded = np.pad(base, pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    assert np.array_equal(reflect_indices(start, size, length), padded[start + pad : start + pad + size])


@given(length=st.integers(1, 3000), k=st.integers(0, 8))
def test_tiles_cover_the_axis_on_the_grid(length, k):
    layout = tile_layout(NET, length, 204 + 16 * k)
    assert layout.origins[0] == 0 and all(o % 16 == 0 for o in layout.origins)
    assert layout.origins[-1] + layout.output_size >= length
    assert all(b - a <= layout.output_size for a, b in zip(layout.origins, layout.origins[1:]))
    assert valid_input_size(layout.input_size) == layout.input_size


@pytest.mark.parametrize("batch", [1, 5, 16])  # 16: a batch spans several bands of rows
def test_tiles_cut_on_the_device_equal_tiles_gathered_on_the_host(rng, batch):
    """The device-resident path (the default on CUDA), run here on CPU tensors: same numbers,
    uint16 input normalised per channel, TTA, the last ragged row and column of tiles."""
    net = tiny_unet(width=4, depth=3, in_channels=2, seed=3)
    image = (rng.random((2, 301, 257)) * 4000 + 100).astype(np.uint16)
    kwargs = dict(tile_size=124, batch_size=batch, normalization=Normalization(), tta=True)
    host = predict_tiled(net, image, resident=False, **kwargs)
    device = predict_tiled(net, image, resident=True, **kwargs)
    assert host.std() > 0.01 and np.abs(device - host).max() <= 1e-6


@pytest.mark.parametrize("batch", [1, 7])  # 7: a batch spans two slabs of planes
def test_volume_tiles_cut_on_the_device_equal_tiles_gathered_on_the_host(rng, batch):
    """Volumes (issue 34) on the device-resident path, run here on CPU tensors: slabs of planes,
    mirrored on every face, uint16 normalised: the host's numbers."""
    from unetile.nn.model import UNet, UNetConfig, init_he

    torch.manual_seed(2)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, spatial_dims=3))).eval()
    volume = (rng.random((30, 50, 41)) * 4000 + 100).astype(np.uint16)
    kwargs = dict(tile_size=(60, 60, 60), batch_size=batch, normalization=Normalization())  # 2 x 3 x 3 tiles
    host = predict_tiled(net, volume, resident=False, **kwargs)
    device = predict_tiled(net, volume, resident=True, **kwargs)
    assert host.shape == (1, 30, 50, 41) and host.std() > 0.01 and np.abs(device - host).max() <= 1e-6


def test_device_tiles_are_written_in_order_and_resume_where_they_stopped(rng):
    image = rng.random((200, 200)).astype(np.float32)
    done: list[int] = []
    full = predict_tiled(NET3, image, tile_size=124, batch_size=2, resident=True, on_batch=done.append)
    assert done == list(range(1, len(done) + 1)) and len(done) > 2  # each batch reported once written
    partial, resumed = np.full_like(full, np.nan), []
    predict_tiled(NET3, image, tile_size=124, batch_size=2, resident=True, out=partial, skip_batches=3,
                  on_batch=resumed.append)
    written = ~np.isnan(partial)
    assert written.any() and not written.all()  # the first 3 batches were skipped, the rest written
    np.testing.assert_array_equal(partial[written], full[written])
    assert resumed == done[3:]

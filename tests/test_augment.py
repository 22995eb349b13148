import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unetile.training.augment import (
    Augmentation,
    AugmentDraw,
    augment_region,
    displacement_field,
    draw_augmentation,
    flip_rotate,
    region_margins,
    warp,
)


def _blobs(seed: int, size: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal((size, size)), 6) > 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_elastic_deformation_keeps_image_and_label_aligned(seed):
    size, out, margin = 96, 40, 40
    label = _blobs(seed, size + 2 * margin)
    image = label.astype(np.float32)[None]
    weight = np.ones(label.shape, np.float32)
    aug = Augmentation(elastic=True, flips="dihedral", grey=False)
    tile, lab, w = augment_region(image, label.astype(np.int64), weight, size, out, margin, aug, np.random.default_rng(seed))
    assert tile.shape == (1, size, size) and lab.shape == (out, out) and w.shape == (out, out)
    lo = (size - out) // 2
    centre = tile[0, lo : lo + out, lo : lo + out]
    sure = (centre > 0.9) | (centre < 0.1)  # away from edges, where bicubic and nearest agree
    assert sure.mean() > 0.5
    assert np.array_equal(centre[sure] > 0.5, lab[sure] == 1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_soft_labels_follow_the_warped_boundary_closer_than_nearest_neighbour(seed):
    """The same warp drawn twice: the soft label is the bilinear warp of the 0/1 label, within
    [0, 1], equal to the hard label away from edges and closer to the (bicubic) image at them."""
    size, out, margin = 96, 40, 40
    label = _blobs(seed, size + 2 * margin)
    image = label.astype(np.float32)[None]
    weight = np.ones(label.shape, np.float32)
    tiles = {}
    for soft in (False, True):
        aug = Augmentation(elastic=True, flips="dihedral", grey=False, soft_labels=soft)
        tiles[soft] = augment_region(image, label.astype(np.int64), weight, size, out, margin, aug,
                                     np.random.default_rng(seed))
    assert np.array_equal(tiles[False][0], tiles[True][0])  # same warp
    hard, soft = tiles[False][1], tiles[True][1]
    assert hard.dtype == np.int64 and soft.dtype == np.float32
    assert soft.min() >= 0 and soft.max() <= 1 and 0 < ((soft > 0) & (soft < 1)).mean() < 0.5
    whole = (soft == 0) | (soft == 1)
    assert np.array_equal(soft[whole], hard[whole])
    lo = (size - out) // 2
    centre = np.clip(tiles[True][0][0, lo : lo + out, lo : lo + out], 0, 1)
    assert np.abs(soft - centre).mean() < 0.7 * np.abs(hard - centre).mean()


@settings(max_examples=25, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), seed=st.integers(0, 1000))
def test_warp_samples_where_scipy_does(h, w, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = rng.random((2, h, w)).astype(np.float32)
    coords = np.stack([rng.uniform(0, h - 1, (7, 9)), rng.uniform(0, w - 1, (7, 9))])
    for c in range(2):
        assert np.allclose(warp(a, coords, "bilinear")[c], ndimage.map_coordinates(a[c], coords, order=1), atol=1e-5)
    ids = rng.integers(0, 5, (1, h, w))
    whole = np.round(coords)  # nearest neighbour of pixel centres is exact; rounded ties aside
    assert np.array_equal(warp(ids, whole, "nearest")[0], ids[0][whole[0].astype(int), whole[1].astype(int)])
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).astype(np.float64)
    assert np.allclose(warp(a, grid, "bicubic"), a, atol=1e-5)  # interpolating: the identity is exact
    # Beyond the edge: mirrored about the edge pixel, as the tiler mirrors.
    outside = np.array([[[-1.0]], [[float(w)]]])
    assert np.allclose(warp(a, outside, "bilinear")[:, 0, 0], a[:, 1, w - 2], atol=1e-5)


def test_bicubic_warp_is_close_to_the_spline_warp_on_smooth_images():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((64, 64)), 3).astype(np.float32)
    coords = np.stack([rng.uniform(5, 58, (20, 20)), rng.uniform(5, 58, (20, 20))])
    spline = ndimage.map_coordinates(a, coords, order=3)
    assert np.abs(warp(a[None], coords, "bicubic")[0] - spline).max() < 0.02 * np.ptp(a)


@settings(max_examples=20, deadline=None)
@given(size=st.integers(8, 400), grid=st.integers(2, 5), seed=st.integers(0, 100))
def test_displacement_field_is_the_bicubic_zoom_of_the_coarse_vectors(size, grid, seed):
    from scipy import ndimage

    d = displacement_field(np.random.default_rng(seed), size, grid, 10.0)
    coarse = np.random.default_rng(seed).normal(0.0, 10.0, size=(2, grid, grid))
    zoomed = np.stack([ndimage.zoom(c, size / grid, order=3, mode="nearest", grid_mode=True) for c in coarse])
    assert d.shape == (2, size, size)
    assert np.abs(d - zoomed[:, :size, :size]).max() < 1e-4


def test_deformation_really_deforms():
    rng = np.random.default_rng(0)
    d = displacement_field(rng, 100, 3, 10.0)
    assert d.shape == (2, 100, 100)
    assert 3 < d.std() < 20  # of the order of sigma = 10 px
    assert np.abs(np.diff(d, axis=1)).max() < 2  # smooth: bicubic between 3 x 3 vectors


@given(seed=st.integers(0, 1000), flips=st.sampled_from(["dihedral", "horizontal", "none"]))
def test_flips_apply_the_same_transform(seed, flips):
    a = np.arange(20).reshape(4, 5)
    b, c = flip_rotate([a, a * 2], np.random.default_rng(seed), flips)
    assert np.array_equal(c, b * 2)
    assert sorted(b.ravel()) == sorted(a.ravel())
    if flips != "dihedral":  # up stays up: the first row stays the first row, in some order
        assert np.array_equal(np.sort(b[0]), a[0])
    if flips == "none":
        assert np.array_equal(b, a)


def test_each_group_draws_all_its_symmetries():
    a = np.arange(20).reshape(4, 5)
    for flips, count in (("dihedral", 8), ("horizontal", 2), ("none", 1)):
        rng = np.random.default_rng(0)
        seen = {flip_rotate([a], rng, flips)[0].tobytes() for _ in range(200)}
        assert len(seen) == count, flips


def test_no_augmentation_is_a_centre_crop():
    image = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    label = np.arange(100).reshape(10, 10)
    tile, lab, _ = augment_region(image, label, np.ones((10, 10), np.float32), 10, 4, 0, Augmentation.none(),
                                  np.random.default_rng(0))
    assert np.array_equal(tile, image) and np.array_equal(lab, label[3:7, 3:7])


def test_a_zoomed_tile_shows_its_content_scaled_about_its_centre():
    """Zoom 2 without other warps: a column ramp's tile (image cubic, label nearest, weight linear)
    is the ramp sampled every 2 px about the region's centre, which the margins hold."""
    aug = Augmentation(elastic=False, flips="none", grey=False, zoom=2.0)
    size, out = 40, 20
    margin = region_margins(aug, (size, size))
    assert margin == (20, 20)  # ceil(40 * (2 - 1) / 2): a tile zoomed out by 2 samples 80 px
    region = size + 2 * margin[0]
    ramp = np.tile(np.arange(region, dtype=np.float32), (region, 1))
    image, label, weight = augment_region(ramp[None], ramp.astype(np.int64), ramp, size, out, margin, aug,
                                          AugmentDraw(zoom=2.0))
    centre = margin[0] + (size - 1) / 2  # the tile's centre, in region px
    expected = centre + (np.arange(size) - (size - 1) / 2) * 2.0
    # (cubic samples half a px from the region's edge reach beyond it, into the mirror: not a ramp)
    np.testing.assert_allclose(image[0, 7, 1:-1], expected[1:-1], atol=1e-3)
    lo = (size - out) // 2
    np.testing.assert_allclose(weight[3], expected[lo:lo + out], atol=1e-4)
    assert np.abs(label[3] - expected[lo:lo + out]).max() <= 0.5 and label.dtype == np.int64
    image, _, weight = augment_region(ramp[None], ramp.astype(np.int64), ramp, size, out, margin, aug,
                                      AugmentDraw(zoom=0.5))
    enlarged = centre + (np.arange(size) - (size - 1) / 2) * 0.5
    np.testing.assert_allclose(weight[3], enlarged[lo:lo + out], atol=1e-4)  # linear: exact on a ramp
    np.testing.assert_allclose(image[0, 7], enlarged, atol=0.05)  # torch's cubic (a = -0.75): near, at 1/4 px


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_zoomed_and_deformed_tiles_keep_image_and_label_aligned(seed):
    size, out = 96, 40
    aug = Augmentation(elastic=True, flips="dihedral", grey=False, zoom=2.0)
    margins = region_margins(aug, (size, size))
    label = _blobs(seed, size + 2 * margins[0])
    image, weight = label.astype(np.float32)[None], np.ones(label.shape, np.float32)
    draw = draw_augmentation(np.random.default_rng(seed), aug)
    tile, lab, _ = augment_region(image, label.astype(np.int64), weight, size, out, margins, aug, draw)
    lo = (size - out) // 2
    centre = tile[0, lo : lo + out, lo : lo + out]
    sure = (centre > 0.9) | (centre < 0.1)
    assert tile.shape == (1, size, size) and sure.mean() > 0.4 and 0.5 <= draw.zoom <= 2.0
    assert np.array_equal(centre[sure] > 0.5, lab[sure] == 1)


def test_the_zoom_is_drawn_last_within_its_range():
    """Runs without --zoom draw what they drew before (the zoom comes after every other choice);
    with it, factors fill [1/Z, Z] on a log scale."""
    plain, zoomed = Augmentation(), Augmentation(zoom=2.0)
    factors = []
    for seed in range(200):
        a = draw_augmentation(np.random.default_rng(seed), plain)
        b = draw_augmentation(np.random.default_rng(seed), zoomed)
        assert a.symmetry == b.symmetry and np.array_equal(a.coarse, b.coarse) and a.grey == b.grey and a.zoom == 1.0
        factors.append(b.zoom)
    logs = np.log2(factors)
    assert logs.min() >= -1 and logs.max() <= 1 and logs.min() < -0.8 and logs.max() > 0.8 and abs(logs.mean()) < 0.15
    with pytest.raises(ValueError, match="zoom must be >= 1"):
        Augmentation(zoom=0.5)
    with pytest.raises(ValueError, match="zoom is for 2D images"):
        Augmentation(zoom=2.0, spacing=(2.0, 1.0, 1.0))

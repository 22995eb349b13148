import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.augment import Augmentation, augment_region, displacement_field, flip_rotate


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

import numpy as np
import pytest
import torch

from unetile import UserInputError
from unetile.io import write_image
from unetile.synthetic import synthetic_em, write_dataset
from unetile.training.augment import Augmentation
from unetile.training.data import (
    EpochSampler,
    Targets,
    TileDataset,
    interpret_labels,
    label_kind,
    prepare,
    read_pairs,
    split,
    touching_borders,
)


def test_binary_labels_foreground_is_nonzero():
    classes, cells = interpret_labels(np.array([[0, 255], [255, 0]], np.uint8), None)
    assert np.array_equal(classes, [[0, 1], [1, 0]]) and cells.max() == 2  # 4-connected


def test_instance_ids_touching_cells_get_a_border():
    ids = np.zeros((6, 9), np.uint16)
    ids[1:5, 1:4] = 7
    ids[1:5, 4:7] = 3  # touches cell 7
    ids[0, 8] = 9
    classes, cells = interpret_labels(ids, None)
    assert classes[:, 3].sum() == 0 and classes[1:5, 4].all()  # one border column, on the larger id's side
    assert set(np.unique(cells)) == {0, 3, 7, 9}
    assert touching_borders(ids).sum() == 4


def test_prepare_reads_instance_ids_without_classes():
    ids = np.zeros((20, 30), np.uint16)
    ids[4:16, 3:15] = 500
    ids[4:16, 15:27] = 2  # touches cell 500 along column 15
    pairs = [("a", np.ones((1, 20, 30), np.float32), ids, "a.tif", "a_label.tif")]
    (item,) = prepare(pairs, Targets(weight_map=True, w0=10, sigma=5))
    assert item.classes[4:16, 14].sum() == 0 and item.classes[4:16, 15].all()  # the border, on cell 500's side
    # the gap between the two cells carries the border term: w0 * exp(-(1 + 1)^2 / 50) on top of w_c
    assert item.weight[10, 14] > item.weight[10, 9] + 9
    with pytest.raises(UserInputError, match="a_label.tif: 3 label values for --classes 2"):
        prepare(pairs, Targets(n_classes=2, weight_map=True))


def test_synthetic_nuclei_touch_and_read_as_instance_ids(tmp_path):
    folder = write_dataset(tmp_path / "n", 2, 128, kind="nuclei")
    pairs = read_pairs(folder)
    _, image, ids, image_path, label_path = pairs[0]
    assert image.dtype == np.uint16 and ids.dtype == np.uint16 and label_path.suffix == ".tif"
    assert np.array_equal(np.unique(ids), np.arange(ids.max() + 1)) and ids.max() > 10  # ids 1..n, 0 = background
    assert touching_borders(ids).sum() > 50  # many nuclei touch
    (item, _) = prepare(pairs, Targets(weight_map=True))
    assert item.classes.sum() == (ids > 0).sum() - touching_borders(ids).sum()


def test_a_mask_with_stray_values_is_not_read_as_instance_ids():
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:40, 8:40] = 255
    jpeg_like = np.clip(mask.astype(int) + rng.integers(-3, 4, mask.shape), 0, 255).astype(np.uint8)
    with pytest.raises(UserInputError, match="lab.jpg: .* separate pieces, not one id per cell"):
        interpret_labels(jpeg_like, None, source="lab.jpg")
    assert label_kind(mask, None) == "mask" and label_kind(jpeg_like, 5) == "classes"


def test_class_ids_are_checked():
    classes, _ = interpret_labels(np.array([[0, 1], [2, 2]]), 3)
    assert classes.max() == 2
    with pytest.raises(UserInputError, match="--classes 3"):
        interpret_labels(np.array([[0, 5]]), 3, source="lab.png")
    with pytest.raises(UserInputError, match="integers"):
        interpret_labels(np.array([[0.5, 1.0]]), None)


def test_folder_pairs_and_mismatches(tmp_path):
    write_dataset(tmp_path / "d", 3, 48, seed=0)
    pairs = read_pairs(tmp_path / "d")
    assert [p[0] for p in pairs] == ["00", "01", "02"] and pairs[0][1].shape == (1, 48, 48)
    (tmp_path / "d" / "labels" / "02.png").unlink()
    with pytest.raises(UserInputError, match="no label for image"):
        read_pairs(tmp_path / "d")
    write_image(tmp_path / "d" / "labels" / "02.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(UserInputError, match="differs from the image"):
        read_pairs(tmp_path / "d")


def test_stacks_pair_page_by_page(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [synthetic_em(rng, 40) for _ in range(4)]
    write_image(tmp_path / "im.tif", np.stack([p[0] for p in pairs]), axes="QYX")
    write_image(tmp_path / "lab.tif", np.stack([p[1] for p in pairs]), axes="QYX")
    got = read_pairs(images=tmp_path / "im.tif", labels=tmp_path / "lab.tif")
    assert len(got) == 4 and np.array_equal(got[2][2], pairs[2][1])


def test_split_takes_the_last_slices():
    train, val = split(list(range(24)), 0.2)
    assert val == [19, 20, 21, 22, 23] and len(train) == 19
    with pytest.raises(UserInputError):
        split([1], 0.2)


def _items(n=3, size=64):
    rng = np.random.default_rng(1)
    pairs = [(f"{i}", synthetic_em(rng, size)[0][None], synthetic_em(rng, size)[1], f"{i}.png", f"{i}.png")
             for i in range(n)]
    return prepare(pairs, Targets(n_classes=2, weight_map=True))


def test_tiles_are_deterministic_and_shaped():
    ds = TileDataset(_items(), 60, 20, Augmentation(), seed=3)
    a, b = ds[17], ds[17]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (1, 60, 60) and a[1].shape == (20, 20) and a[2].shape == (20, 20)
    assert not torch.equal(ds[18][0], a[0])


def test_tiles_with_the_background_skeleton():
    ds = TileDataset(_items(), 60, 20, Augmentation(), seed=3, skeleton=True)
    image, label, weight, skeleton = ds[17]
    assert skeleton.shape == (20, 20) and skeleton.dtype == torch.float32
    assert skeleton.sum() > 0 and not (skeleton.bool() & (label > 0)).any()  # on the background only
    assert torch.equal(TileDataset(_items(), 60, 20, Augmentation(), seed=3)[17][1], label)  # same tile


def test_soft_label_tiles_are_float_fractions():
    ds = TileDataset(_items(), 60, 20, Augmentation(soft_labels=True), seed=3)
    label = ds[17][1]
    assert label.dtype == torch.float32 and 0 <= float(label.min()) and float(label.max()) <= 1
    assert ((label > 0) & (label < 1)).any()  # the warp is not whole-pixel


def test_centre_crop_mode_cycles_images():
    items = _items()
    ds = TileDataset(items, 40, 20, Augmentation.none(), seed=0, centre_crop=True)
    label = ds[1][1].numpy()
    assert np.array_equal(label, items[1].classes[22:42, 22:42])


def test_epoch_sampler_splits_ranks_without_overlap():
    one = list(EpochSampler(10).__iter__())
    s0, s1 = EpochSampler(10, 0, 2), EpochSampler(10, 1, 2)
    for s in (s0, s1):
        s.set_epoch(0)
    assert sorted(list(s0) + list(s1)) == one
    s0.set_epoch(2)
    assert list(s0)[0] == 20


def test_boundary_classes_mark_every_edge_and_the_line_between_touching_cells():
    from unetile.training.data import boundary_classes, interpret_labels

    ids = np.zeros((12, 20), np.uint16)
    ids[2:10, 2:10] = 5
    ids[2:10, 10:18] = 9  # touches cell 5 along x = 9 | 10
    classes = boundary_classes(ids, width=2)
    assert classes[0, 0] == 0 and classes[6, 5] == 1 and classes[6, 14] == 1  # background, interiors
    assert (classes[2:10, 2:4] == 2).all() and (classes[2:10, 8:12] == 2).all()  # outer edge and the contact
    assert set(np.unique(classes[ids == 0])) == {0}  # the band stays inside the cells
    cls, cells = interpret_labels(ids, None, cell_target="boundary")
    np.testing.assert_array_equal(cls, classes)
    assert (cells[2:10, 9] == 0).all() or (cells[2:10, 10] == 0).all()  # the weight map still sees them apart


def test_touching_classes_mark_only_where_two_cells_meet():
    from unetile.training.data import interpret_labels, touching_classes

    ids = np.zeros((14, 30), np.uint16)
    ids[2:10, 2:10] = 5
    ids[2:10, 10:18] = 9  # touches cell 5 along x = 9 | 10
    ids[2:10, 22:28] = 7  # alone: no band
    classes = touching_classes(ids, width=2)
    assert (classes[2:10, 8:12] == 2).all()  # 2 px on each side of the contact
    assert (classes[2:10, 2:8] == 1).all() and (classes[2:10, 12:18] == 1).all()  # the outer edges stay cell
    assert (classes[ids == 7] == 1).all() and set(np.unique(classes[ids == 0])) == {0}
    assert (touching_classes(ids, width=1)[2:10, 8:12] == [1, 2, 2, 1]).all()
    cls, _ = interpret_labels(ids, None, cell_target="touching")
    np.testing.assert_array_equal(cls, touching_classes(ids))  # cells ~9 px across: a 1-px band
    assert (cls[2:10, 9:11] == 2).all() and (cls[2:10, 8] == 1).all()


def test_distance_target_peaks_at_one_in_every_cell_and_is_zero_between_touching_cells():
    from unetile.training.data import distance_target, interpret_labels

    ids = np.zeros((9, 17), np.int32)
    ids[1:8, 1:8] = 3  # a 7 x 7 cell: its centre is 4 px from the background, its edge 1 px
    ids[1:8, 8:16] = 4  # touches cell 3 along x = 7 | 8
    target, cells = interpret_labels(ids, None, cell_target="distance")
    assert target.dtype == np.float32 and target[ids == 0].max() == 0.0
    np.testing.assert_allclose(target[4, 4], 1.0)
    np.testing.assert_allclose(target[1, 4], 0.25)  # edge: 1 px of 4
    line = (cells[1:8, 7] == 0).all() or (cells[1:8, 8] == 0).all()
    assert line and (target[1:8, 7] * target[1:8, 8] == 0).all()  # the valley between the two peaks
    for cell in (3, 4):
        assert np.isclose(target[cells == cell].max(), 1.0)
    np.testing.assert_array_equal(distance_target(np.zeros((4, 4), np.int32)), np.zeros((4, 4), np.float32))

"""Cellpose-style flows (flows.py, issue 35): the field, its symmetries, and cells from flows."""

import numpy as np
import pytest

from unetile import symmetries
from unetile.flows import flow_field, flows_to_instances, sinks
from unetile.inference.instances import InstanceSettings, choose_settings
from unetile.symmetries import turn_vectors


def touching_discs() -> np.ndarray:
    """Ids (40, 56): two discs of radius 8 that touch along a line (no gap), and a lone one."""
    y, x = np.mgrid[:40, :56]
    ids = np.zeros((40, 56), np.int32)
    ids[(y - 20) ** 2 + (x - 12) ** 2 <= 64] = 1
    ids[((y - 20) ** 2 + (x - 27) ** 2 <= 64) & (ids == 0)] = 2
    ids[(y - 10) ** 2 + (x - 46) ** 2 <= 36] = 3
    return ids


def same_up_to_numbering(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_the_field_is_unit_inside_zero_outside_and_points_to_the_centre():
    ids = touching_discs()
    field = flow_field(ids)
    norm = np.sqrt((field**2).sum(0))
    assert np.allclose(norm[ids > 0][norm[ids > 0] > 0], 1.0, atol=1e-5) and (norm[ids == 0] == 0).all()
    assert (norm[ids > 0] > 0).mean() > 0.95  # only the centres (and ties) may be flat
    y, x = np.nonzero(ids == 3)
    towards = (10 - y) * field[0, y, x] + (46 - x) * field[1, y, x]
    assert (towards[(y - 10) ** 2 + (x - 46) ** 2 > 2] > 0).all()  # every pixel off-centre flows inwards


@pytest.mark.parametrize("symmetry", symmetries.GROUPS["dihedral"])
def test_the_field_of_a_flipped_image_is_the_flipped_field_with_its_vectors_turned(symmetry):
    """What augmentation and TTA rely on: vector_transform turns the components as apply moves the pixels."""
    ids = touching_discs()
    field = flow_field(ids)
    moved = turn_vectors(symmetries.apply(field, symmetry), symmetry)
    np.testing.assert_allclose(flow_field(symmetries.apply(ids, symmetry)), moved, atol=1e-5)
    np.testing.assert_allclose(turn_vectors(moved, symmetry, inverse=True), symmetries.apply(field, symmetry),
                               atol=0)


def test_sinks_join_end_points_within_the_gap():
    ends = np.array([[5.0, 5.2, 6.0, 20.0], [5.0, 6.9, 8.0, 20.0]])
    ids = sinks(ends, (30, 30), gap=2)
    assert ids[0] == ids[1] == ids[2] != ids[3] and ids.min() >= 1


def test_true_flows_give_the_cells_back_touching_ones_apart():
    ids = touching_discs()
    probability = (ids > 0).astype(np.float32)
    cells = flows_to_instances(probability, flow_field(ids))
    assert cells.max() == 3 and same_up_to_numbering(cells, ids)
    assert flows_to_instances(probability, flow_field(ids), min_size=120).max() == 2  # the small disc dropped


def test_flows_that_disagree_with_the_cells_shape_are_dropped():
    ids = touching_discs()
    wrong = np.stack([np.ones(ids.shape), np.zeros(ids.shape)]).astype(np.float32) * (ids > 0)
    cells = flows_to_instances((ids > 0).astype(np.float32), wrong)  # everything flows down: no centre
    assert cells.max() == 0
    assert flows_to_instances((ids > 0).astype(np.float32), wrong, flow_error=None).max() >= 1


def test_the_flow_error_cut_is_chosen_on_validation_maps_stored_and_used():
    """Flows a third as long as the truth's disagree with it by 0.44 (> Cellpose's 0.4) yet still
    lead every pixel to its cell's sink: the first cut of the grid that keeps the cells wins."""
    ids = touching_discs()
    probability = (ids > 0).astype(np.float32)[None]
    short = np.concatenate([probability, flow_field(ids) / 3])  # (3, H, W): cell, flows y, x
    grid = {"sigma": (0.0,), "seed_threshold": (0.5,), "min_size": (0,), "flow_error": (0.4, 0.6, None)}
    settings, score = choose_settings([short], [ids], grid, InstanceSettings(seeds="flows"))
    assert settings.flow_error == 0.6 and score == 1.0
    assert InstanceSettings(seeds="flows").labels(short).max() == 0  # the default cut (0.4) drops them all
    stored = InstanceSettings.from_metadata("watershed", {"cell_target": "flows", "instances": settings.to_dict()})
    assert stored == settings and same_up_to_numbering(stored.labels(short), ids)
    # A false cell (the small disc is not in this truth) whose flows point every way: the cut that
    # keeps the true cells and drops it wins over keeping all.
    angle = np.random.default_rng(0).uniform(0, 2 * np.pi, ids.shape)
    wrong = np.where(ids == 3, np.stack([np.sin(angle), np.cos(angle)]), short[1:])
    no_small_disc = np.where(ids == 3, 0, ids)
    with_false_cell = np.concatenate([probability, wrong])
    assert flows_to_instances(probability[0], wrong, flow_error=None).max() == 3
    settings, score = choose_settings([with_false_cell], [no_small_disc], grid, InstanceSettings(seeds="flows"))
    assert settings.flow_error == 0.6 and score == 1.0
    assert "flow_error" not in InstanceSettings().to_dict()  # other maps store what they always did


def test_a_training_tiles_flows_are_the_flows_of_its_flipped_cells():
    """A tile of the whole image, flipped / rotated by augmentation: its flows target is exactly
    the field of its (flipped) cells, whichever symmetry was drawn."""
    from unetile.training.augment import Augmentation
    from unetile.training.data import Targets, TileDataset, prepare

    ids = touching_discs()[:, :40]  # 40 x 40: the tile is the image
    pairs = [("a", ids[None].astype(np.float32), ids, None, "a")]
    item = prepare(pairs, Targets(weight_map=False, cell_target="flows"))[0]
    dataset = TileDataset([item], 40, 40, Augmentation(elastic=False, grey=False), seed=0, centre_crop=True)
    drawn = set()
    for index in range(12):
        image, target, weight = dataset[index]
        symmetry = dataset.draw(index).augmentation.symmetry
        drawn.add(symmetry)
        moved = symmetries.apply(ids, symmetry)
        assert target.shape == (3, 40, 40) and np.array_equal(target[0].numpy(), (moved > 0).astype(np.float32))
        np.testing.assert_allclose(target[1:].numpy(), flow_field(moved), atol=1e-5)
    assert len(drawn) > 3


def test_tta_turns_a_flows_nets_vectors_back():
    """Averaged over all 8 symmetries, a flows net's prediction of a flipped image is its
    prediction flipped, with the vectors turned: only true if TTA turns each copy's vectors back."""
    from unetile import UNet, UNetConfig, init_he, predict_tiled

    import torch

    torch.manual_seed(0)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, out_channels=3, flows=True))).eval()
    image = np.random.default_rng(1).normal(size=(60, 60)).astype(np.float32)
    maps = predict_tiled(net, image, tta=True, precision="fp32")
    for symmetry in ((1, False), (0, True), (3, True)):
        moved = predict_tiled(net, symmetries.apply(image, symmetry), tta=True, precision="fp32")
        np.testing.assert_allclose(moved[0], symmetries.apply(maps[0], symmetry), atol=1e-5)
        np.testing.assert_allclose(moved[1:], turn_vectors(symmetries.apply(maps[1:], symmetry), symmetry), atol=1e-5)
    plain = predict_tiled(net, image, precision="fp32")
    assert plain.shape == (3, 60, 60) and 0 <= plain[0].min() and plain[0].max() <= 1
    assert not np.allclose(maps[1:], plain[1:], atol=1e-3)  # TTA changed something (the test can fail)


def test_a_label_with_one_cell_gets_flows_too():
    """DSB 2018 has images with one nucleus: their label (two values) reads as a mask, and in a
    flows run its cell still needs flows, or the batch mixes (3, H, W) and (H, W) targets."""
    import torch

    from unetile.training.augment import Augmentation
    from unetile.training.data import Targets, TileDataset, prepare

    many = touching_discs()
    one = (many == 3).astype(np.int32) * 7
    pairs = [(n, ids[None].astype(np.float32), ids, None, n) for n, ids in (("many", many), ("one", one))]
    items = prepare(pairs, Targets(weight_map=True, cell_target="flows"))
    assert all(it.flows is not None and it.flows.shape == (2, 40, 56) for it in items)
    np.testing.assert_allclose(items[1].flows, flow_field(one), atol=1e-6)
    dataset = TileDataset(items, 32, 32, Augmentation.none(), seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(6)])
    assert batch[1].shape == (6, 3, 32, 32)

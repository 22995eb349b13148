import math

import numpy as np
import pytest

from unetile.training.weights import (
    background_skeleton,
    border_weight_map,
    cells_from_mask,
    class_balance_weights,
    nearest_two_distances,
    small_cell_weights,
)


def test_hand_computed_weight_map():
    # One row: cell A in columns 0-1, a 2-px gap (columns 2-3), cell B in columns 4-6.
    cells = np.array([[1, 1, 0, 0, 2, 2, 2]])
    w = border_weight_map(cells, w0=10, sigma=5)
    # Class balance: 2 background px of 7 -> 7 / (2 * 2) = 1.75; 5 cells px -> 7 / (2 * 5) = 0.7.
    assert np.allclose(w[0, [0, 1, 4, 5, 6]], 0.7)
    # Column 2: d1 = 1 (to A), d2 = 2 (to B); column 3: d1 = 1 (to B), d2 = 2 (to A).
    expected = 1.75 + 10 * math.exp(-(1 + 2) ** 2 / (2 * 5**2))
    assert w[0, 2] == pytest.approx(expected, rel=1e-6)
    assert w[0, 3] == pytest.approx(expected, rel=1e-6)


def test_weight_map_without_class_balance_is_one_plus_the_border_term():
    cells = np.array([[1, 1, 0, 0, 2, 2, 2]])
    w = border_weight_map(cells, w0=10, sigma=5, class_balance=False)
    assert np.allclose(w[0, [0, 1, 4, 5, 6]], 1.0)
    assert w[0, 2] == pytest.approx(1 + 10 * math.exp(-(1 + 2) ** 2 / (2 * 5**2)), rel=1e-6)


def test_distances_to_the_two_nearest_cells():
    cells = np.zeros((5, 9), int)
    cells[:, 0] = 1
    cells[:, 8] = 2
    d1, d2 = nearest_two_distances(cells, max_distance=20)
    assert np.allclose(d1[2], [0, 1, 2, 3, 4, 3, 2, 1, 0])
    assert np.allclose(d2[2], [8, 7, 6, 5, 4, 5, 6, 7, 8])
    d1, d2 = nearest_two_distances(cells, max_distance=3)
    assert np.isinf(d2[2, 4]) and d1[2, 1] == 1


def test_single_cell_gets_only_class_balance():
    cells = np.zeros((6, 6), int)
    cells[1:4, 1:4] = 1
    w = border_weight_map(cells)
    assert np.allclose(w, class_balance_weights((cells > 0).astype(int), 2))
    assert w.mean() == pytest.approx(1.0)


def test_corner_touching_cells_are_two_cells():
    mask = np.array([[1, 0], [0, 1]], bool)
    assert cells_from_mask(mask).max() == 2


def test_background_skeleton_is_the_centre_line_of_each_gap():
    # Two cells side by side, a 3-px gap (columns 4-6) between them: the skeleton is column 5.
    classes = np.ones((20, 11), np.int64)
    classes[:, 4:7] = 0
    skeleton = background_skeleton(classes)
    assert not (skeleton & (classes > 0)).any()
    assert np.array_equal(np.nonzero(skeleton[2:-2])[1], np.full(16, 5))
    # Soft labels (foreground fractions): background is a fraction below one half.
    assert np.array_equal(background_skeleton(np.where(classes > 0, 0.9, 0.2).astype(np.float32)), skeleton)


def test_small_cell_weights_lift_cells_below_the_median_to_its_weight():
    """Cells of 100, 40 and 4 px: the median is 40, so the 100-px cell weighs 1 (never less), the
    40-px one 1 and the 4-px one 40 / 4 = 10, held to ``most``; background 1; 1 turns it off."""
    ids = np.zeros((20, 20), np.int64)
    ids[0:10, 0:10], ids[12:14, 12:14], ids[15:19, 0:10] = 1, 3, 2
    w = small_cell_weights(ids, most=4.0)
    assert w.dtype == np.float32 and w[ids == 0].tolist() == [1.0] * int((ids == 0).sum())
    assert (w[ids == 1] == 1.0).all() and (w[ids == 2] == 1.0).all() and (w[ids == 3] == 4.0).all()
    assert (small_cell_weights(ids, most=20.0)[ids == 3] == 10.0).all()
    assert (small_cell_weights(ids, most=1.0) == 1.0).all() and (small_cell_weights(ids * 0, 4.0) == 1.0).all()


def test_a_flows_items_weights_are_its_small_cell_weights_times_the_annotation():
    """prepare: a flows run's weight is 1 without --small-cell-weight (the loss as before), the
    small-cell weights with it, and 0 where a sparse label marks pixels not annotated."""
    from unetile.training.data import Targets, prepare

    ids = np.zeros((32, 32), np.int64)
    ids[2:12, 2:12], ids[20:22, 20:22], ids[14:18, 2:12] = 1, 3, 2
    ids[30:, 30:] = 9  # not annotated
    pair = [("a", ids[None].astype(np.float32), ids, None, "a")]
    plain = prepare(pair, Targets(weight_map=True, cell_target="flows", ignore_label=9))[0].weight
    heavy = prepare(pair, Targets(weight_map=True, cell_target="flows", ignore_label=9, small_cell_weight=4.0))[0].weight
    assert set(np.unique(plain).tolist()) == {0.0, 1.0} and (plain[30:, 30:] == 0).all()
    assert (heavy[ids == 3] == 4.0).all() and (heavy[30:, 30:] == 0).all() and (heavy[ids == 1] == 1.0).all()

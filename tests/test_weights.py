import math

import numpy as np
import pytest

from unetile.training.weights import (
    background_skeleton,
    border_weight_map,
    cells_from_mask,
    class_balance_weights,
    nearest_two_distances,
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

"""Tests of unetile.inference.instances.probabilities_to_instances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from unetile import metrics as M
from unetile.errors import UserInputError
from unetile.inference.instances import DEFAULT_METHOD, METHODS, probabilities_to_instances


def two_cells_with_gap(gap: bool = True) -> np.ndarray:
    """40x40 map: two square cells divided by a 3-pixel membrane, optionally with a faint gap."""
    prob = np.full((40, 40), 0.95)
    prob[:, 18:21] = 0.05
    prob[0, :] = prob[-1, :] = prob[:, 0] = prob[:, -1] = 0.05
    if gap:
        prob[18:21, 18:21] = 0.6  # a short break the thresholded map reads as interior
    return prob


def test_components_merge_through_a_gap_but_watershed_splits():
    prob = two_cells_with_gap()
    comps = probabilities_to_instances(prob, "components")
    ws = probabilities_to_instances(prob, "watershed")
    assert comps.max() == 1
    assert ws.max() == 2
    left, right = ws[10, 8], ws[10, 30]
    assert left != right and left > 0 and right > 0
    truth = (two_cells_with_gap(gap=False) > 0.5).astype(np.uint8)
    assert M.v_rand(ws, truth, [0.5]).value > M.v_rand(comps, truth, [0.5]).value


def test_output_contract():
    prob = two_cells_with_gap(gap=False)
    for method in METHODS:
        labels = probabilities_to_instances(prob, method)
        assert labels.dtype == np.uint32 and labels.shape == prob.shape
        assert np.all(labels[prob <= 0.5] == 0)  # boundary stays 0
        ids = np.unique(labels[labels > 0])
        assert ids.tolist() == list(range(1, ids.size + 1))  # consecutive ids
    assert DEFAULT_METHOD == "watershed"


def test_uint8_input_and_small_cells_are_kept():
    prob = np.zeros((30, 30), dtype=np.uint8)
    prob[5:25, 5:25] = 250
    prob[1:3, 27:29] = 250  # a 2x2 cell that smoothing would erase as a seed
    labels = probabilities_to_instances(prob, "watershed", sigma=2.0)
    assert labels.max() == 2
    assert labels[1, 27] > 0 and labels[10, 10] > 0
    assert probabilities_to_instances(prob, "watershed", min_size=5).max() == 1


def test_empty_and_full_maps():
    assert probabilities_to_instances(np.zeros((8, 8)), "watershed").max() == 0
    full = probabilities_to_instances(np.ones((8, 8)), "watershed")
    assert np.all(full == 1)


def test_bad_arguments():
    with pytest.raises(UserInputError):
        probabilities_to_instances(np.zeros((4, 4)), "magic")
    with pytest.raises(UserInputError):
        probabilities_to_instances(np.zeros((2, 4, 4, 2)))
    with pytest.raises(UserInputError):
        probabilities_to_instances(np.zeros((4, 4)), threshold=2.0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(4, 16), st.integers(4, 16)), elements=st.floats(0, 1)),
       st.sampled_from(METHODS))
def test_instances_lie_inside_the_thresholded_map(prob, method):
    labels = probabilities_to_instances(prob, method)
    assert np.all((labels > 0) <= (prob > 0.5))
    # Every predicted cell is 4-connected.
    from scipy import ndimage as ndi

    for i in range(1, int(labels.max()) + 1):
        assert ndi.label(labels == i, ndi.generate_binary_structure(2, 1))[1] == 1
    if method == "components":
        assert labels.max() == ndi.label(prob > 0.5, ndi.generate_binary_structure(2, 1))[1]

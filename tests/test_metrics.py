"""Tests of unetile.metrics: hand-computed cases, scikit-image cross-checks and invariants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from unetile import metrics as M
from unetile.errors import UserInputError
from unetile.evaluation.metrics import warping

ISBI = Path("/work/shared/data/isbi2012/train")


def membrane_5x5() -> np.ndarray:
    """5x5 truth: interior ones, one vertical membrane at column 2."""
    t = np.ones((5, 5), dtype=np.uint8)
    t[:, 2] = 0
    return t


def cells_grid(h: int = 24, w: int = 24, step: int = 8) -> np.ndarray:
    """Binary truth: square cells separated by 1-pixel membranes every ``step`` pixels."""
    t = np.ones((h, w), dtype=np.uint8)
    t[::step, :] = 0
    t[:, ::step] = 0
    return t


# ---------------------------------------------------------------------------------------
# Warping error: the hand cases of the issue
# ---------------------------------------------------------------------------------------


def test_warping_membrane_moved_by_one_column_is_free_but_costs_pixels():
    truth = membrane_5x5()
    pred = np.ones((5, 5))
    pred[:, 1] = 0
    result = M.warp_truth(pred, truth, 0.5)
    assert result.error == 0.0
    assert (result.splits, result.mergers) == (0, 0)
    np.testing.assert_array_equal(result.warped, pred > 0.5)
    assert M.pixel_error(pred, truth) == pytest.approx(0.4, abs=0)


def test_warping_gap_in_membrane_is_one_merge():
    truth = membrane_5x5()
    pred = truth.astype(float)
    pred[2, 2] = 1.0
    result = M.warp_truth(pred, truth, 0.5)
    assert result.error == 0.04
    assert (result.splits, result.mergers) == (0, 1)
    np.testing.assert_array_equal(result.mismatches, [[2, 2]])


def test_warping_extra_membrane_is_one_split():
    truth = membrane_5x5()
    pred = truth.astype(float)
    pred[2, 0:2] = 0.0
    result = M.warp_truth(pred, truth, 0.5)
    assert result.error == 0.04
    assert (result.splits, result.mergers) == (1, 0)
    # (2, 0) can be removed without changing topology; (2, 1) would cut the cell in two.
    np.testing.assert_array_equal(result.mismatches, [[2, 1]])


def test_warping_cannot_delete_or_create_objects():
    truth = np.zeros((7, 7), dtype=np.uint8)
    truth[3, 3] = 1  # a one-pixel cell the prediction misses
    pred = np.zeros((7, 7))
    pred[0, 0] = 1.0  # and a cell it invents
    result = M.warp_truth(pred, truth, 0.5)
    assert result.error == pytest.approx(2 / 49)


def test_warping_error_sweep_takes_minimum_over_thresholds():
    truth = membrane_5x5()
    pred = truth.astype(float) * 0.65 + 0.3  # interior 0.95, membrane 0.3
    pred[2, 2] = 0.6  # a faint gap: only thresholds >= 0.6 cut it
    result = M.warping_error(pred, truth)
    curve = dict(result.curve)
    assert curve[0.5] == 0.04
    assert curve[0.6] == 0.0
    assert result.value == 0.0 and result.best_threshold == 0.6
    assert [t for t, _ in result.curve] == list(M.WARPING_THRESHOLDS)


def test_simple_point_table():
    # Bit order follows warping._NEIGHBOURS: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1)
    table = warping._SIMPLE
    assert table[0] == 0  # isolated pixel: deleting it deletes an object
    assert table[255] == 0  # pixel inside a full neighbourhood: adding it fills a hole
    assert table[1 << 1] == 1  # end of a line (one 4-neighbour)
    assert table[(1 << 1) | (1 << 6)] == 0  # on a vertical line: removing it splits
    assert table[1 << 0] == 0  # only a diagonal neighbour: not 4-connected to it
    assert table[(1 << 3) | (1 << 0) | (1 << 1)] == 1  # corner of a blob


# ---------------------------------------------------------------------------------------
# Pixel metrics
# ---------------------------------------------------------------------------------------


def test_pixel_error_and_scores_hand_case():
    truth = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    pred = np.array([[0.9, 0.2], [0.8, 0.7]])
    # pred > 0.5 -> [[1, 0], [1, 1]]: one FP, one FN, two TP
    assert M.pixel_error(pred, truth) == 0.5
    scores = M.foreground_scores(pred, truth)
    assert scores == pytest.approx({"dice": 4 / 6, "iou": 2 / 4, "precision": 2 / 3, "recall": 2 / 3})
    assert M.dice(pred, truth) == pytest.approx(4 / 6)
    assert M.iou(pred, truth) == pytest.approx(0.5)


def test_isbi_pixel_error_pools_counts_over_the_stack():
    t1 = np.array([[1, 1], [1, 1]], dtype=np.uint8)
    t2 = np.array([[0, 0], [0, 1]], dtype=np.uint8)
    p1 = np.array([[1.0, 1.0], [1.0, 0.0]])  # tp 3, fn 1
    p2 = np.array([[1.0, 0.0], [0.0, 1.0]])  # tp 1, fp 1
    result = M.isbi_pixel_error([p1, p2], [t1, t2], thresholds=[0.5])
    # pooled tp 4, fp 1, fn 1 -> P = R = 0.8
    assert result.value == pytest.approx(1 - 0.8)
    assert result.per_image == pytest.approx([1 - 6 / 7, 1 - 2 / 3])


def test_class_scores_per_class():
    truth = np.array([[0, 1, 2], [0, 1, 2]])
    pred = np.array([[0, 1, 1], [0, 1, 2]])
    scores = M.class_scores(pred, truth)
    assert scores[0]["dice"] == 1.0
    assert scores[1] == pytest.approx({"dice": 0.8, "iou": 2 / 3, "precision": 2 / 3, "recall": 1.0})
    assert scores[2] == pytest.approx({"dice": 2 / 3, "iou": 0.5, "precision": 1.0, "recall": 0.5})
    onehot = np.stack([pred == c for c in range(3)]).astype(float)
    assert M.class_scores(onehot, truth) == scores


def test_uint8_maps_are_scaled_by_255():
    rng = np.random.default_rng(3)
    prob = rng.random((16, 16))
    truth = (rng.random((16, 16)) > 0.4).astype(np.uint8)
    u8 = np.round(prob * 255).astype(np.uint8)
    # Independent scikit-image-free reference on the 8-bit values.
    expected = np.mean((u8.astype(float) / 255 > 0.5) != (truth > 0))
    assert abs(M.pixel_error(u8, truth, 0.5) - expected) < 1e-6
    assert M.pixel_error(u8, truth, 0.5) == M.pixel_error(u8 / 255.0, truth, 0.5)


# ---------------------------------------------------------------------------------------
# Rand scores
# ---------------------------------------------------------------------------------------


def test_skimage_adapted_rand_error_reference_value():
    from skimage.metrics import adapted_rand_error

    are, prec, rec = adapted_rand_error(np.array([[2, 1], [1, 2]]), np.array([[1, 2], [3, 1]]))
    assert are == pytest.approx(0.3333333, abs=1e-7)
    assert (prec, rec) == pytest.approx((0.5, 1.0))


def test_foreground_restricted_rand_differs_from_skimage_on_a_thick_boundary():
    """One 2x2 truth cell whose bottom row the prediction calls boundary.

    Fiji-style (N^2, boundary pixels as singletons): tp = 2^2 + 2 = 6, sum b^2 = 4 + 2 = 6,
    sum a^2 = 16 -> merge 1, split 6/16, F = 6/11, error 5/11 = 0.4545...
    scikit-image (distinct pairs, boundary = one segment): sum p^2 = 8 - 4 = 4,
    sum a^2 = 16 - 4 = 12, sum b^2 = 8 - 4 = 4 -> F = 1/2, error 0.5.
    """
    from skimage.metrics import adapted_rand_error

    truth = np.ones((2, 2), dtype=np.int64)
    pred = np.array([[1, 1], [0, 0]])
    ours = M.foreground_restricted_rand(truth, pred)
    assert (ours.tp, ours.fp, ours.fn) == (6.0, 0.0, 10.0)
    assert (ours.merge, ours.split) == pytest.approx((1.0, 0.375))
    assert 1 - ours.fscore == pytest.approx(5 / 11)
    assert adapted_rand_error(truth, pred, ignore_labels=(0,))[0] == pytest.approx(0.5)
    assert M.adapted_rand_error(pred.astype(float), truth.astype(np.uint8)) == pytest.approx(0.5)
    assert M.rand_error(pred.astype(float), truth.astype(np.uint8), [0.5]).value == pytest.approx(5 / 11)


def test_adapted_rand_error_matches_independent_skimage_on_8bit_maps():
    from skimage.metrics import adapted_rand_error

    rng = np.random.default_rng(7)
    truth = cells_grid(32, 32, 8)
    prob = np.clip(ndi.gaussian_filter(truth.astype(float), 1.0) + rng.normal(0, 0.25, truth.shape), 0, 1)
    u8 = np.round(prob * 255).astype(np.uint8)
    four = ndi.generate_binary_structure(2, 1)
    t_ids = ndi.label(truth > 0, structure=four)[0]
    p_ids = ndi.label(u8.astype(float) / 255 > 0.5, structure=four)[0]
    expected = adapted_rand_error(t_ids, p_ids, ignore_labels=(0,))[0]
    assert abs(M.adapted_rand_error(u8, truth, 0.5) - expected) < 1e-6
    assert abs(M.pixel_error(u8, truth, 0.5) - np.mean((p_ids > 0) != (truth > 0))) < 1e-6


def test_v_rand_split_and_merge_hand_case():
    truth = membrane_5x5()  # two 5x2 cells
    merged = np.ones((5, 5))  # no membrane at all: one cell
    scores = M.foreground_restricted_rand(M.truth_labels(truth), M.thin_boundaries(merged > 0.5))
    # joint: two blocks of 10 -> tp 200; truth 10^2 + 10^2 = 200; prediction 20^2 = 400.
    assert (scores.split, scores.merge) == pytest.approx((1.0, 0.5))
    info = M.foreground_restricted_info(M.truth_labels(truth), M.thin_boundaries(merged > 0.5))
    # H(S) = 0 -> Fiji sets precision (our merge) 1 and recall (our split) 0: V_info 0.
    assert (info.merge, info.split, info.fscore) == (1.0, 0.0, 0.0)


def test_thinning_leaves_one_pixel_lines_between_cells():
    fg = np.ones((9, 9), dtype=bool)
    fg[:, 3:6] = False  # a 3-pixel-wide membrane
    thin = M.thin_boundaries(fg)
    assert set(np.unique(thin)) == {0, 1, 2}
    assert np.count_nonzero(thin == 0) == 9  # one column left
    assert np.all(thin[:, :3] == thin[0, 0]) and np.all(thin[:, 6:] == thin[0, 8])
    assert np.all(M.thin_boundaries(np.zeros((4, 4), dtype=bool)) == 1)


def test_thick_predicted_membrane_is_forgiven_by_v_rand_but_not_rand_error():
    truth = cells_grid(24, 24, 8)
    pred = ndi.binary_erosion(truth > 0, structure=np.ones((3, 3))).astype(float)  # thick walls
    assert M.v_rand(pred, truth).value == pytest.approx(1.0)
    assert M.rand_error(pred, truth).value > 0.1


def test_identical_maps_score_perfectly_on_isbi_like_truth():
    truth = cells_grid(32, 32, 8)
    prob = truth.astype(np.float64)
    assert M.v_rand(prob, truth).value == pytest.approx(1.0, abs=1e-12)
    assert M.v_info(prob, truth).value == pytest.approx(1.0, abs=1e-12)
    assert M.rand_error(prob, truth).value == pytest.approx(0.0, abs=1e-12)
    assert M.warping_error(prob, truth).value == 0.0
    assert M.isbi_pixel_error(prob, truth).value == 0.0


def test_label_image_prediction_is_used_as_cells():
    truth = membrane_5x5()
    labels = np.zeros((5, 5), dtype=np.uint16)
    labels[:, :2] = 7
    labels[:, 2:] = 9  # touching cells with different ids, the right one swallows the membrane
    result = M.v_rand(labels, truth)
    assert result.value == pytest.approx(1.0)
    assert [v for _, v in result.curve] == pytest.approx([1.0] * 11)  # thresholds do not matter


def test_truth_label_ids_are_kept():
    truth = np.array([[1, 1, 2, 2]], dtype=np.int32)  # two touching cells
    assert M.truth_labels(truth).tolist() == [[1, 1, 2, 2]]
    assert M.truth_labels(truth.astype(bool)).tolist() == [[1, 1, 1, 1]]


# ---------------------------------------------------------------------------------------
# evaluate_stack and errors
# ---------------------------------------------------------------------------------------


def test_evaluate_stack_shape_and_values():
    truth = cells_grid(24, 24, 8)
    perfect = truth.astype(float)
    gap = perfect.copy()
    gap[8, 4] = 1.0  # one gap in a horizontal membrane -> a merge
    out = M.evaluate_stack([perfect, gap], [truth, truth], names=["a.png", "b.png"])
    json.dumps(out)  # JSON-ready
    assert set(out) >= {"mean", "best_threshold", "curves", "images"}
    assert set(out["mean"]) == set(M.METRIC_NAMES)
    assert set(out["best_threshold"]) == set(out["curves"]) == {
        "isbi_pixel_error", "rand_error", "v_rand", "v_info", "warping_error"}
    assert [im["name"] for im in out["images"]] == ["a.png", "b.png"]
    a, b = out["images"]
    assert a["v_rand"] == 1.0 and a["warping_error"] == 0.0 and a["pixel_error"] == 0.0
    assert b["v_rand"] < 1.0 and b["warping_error"] == pytest.approx(1 / 576)
    assert out["mean"]["pixel_error"] == pytest.approx(0.5 / 576)
    assert out["mean"]["v_rand"] == pytest.approx((a["v_rand"] + b["v_rand"]) / 2)
    assert out["warping_topology"]["mergers"] == [0, 1]
    assert len(out["curves"]["v_rand"]) == 11 and len(out["curves"]["warping_error"]) == 10


@pytest.mark.parametrize(
    "pred, truth",
    [
        (np.zeros((4, 4)), np.zeros((4, 5))),
        (np.zeros((2, 4, 4)), np.zeros((4, 4))),
        (np.full((4, 4), 1.5), np.zeros((4, 4))),
        (np.full((4, 4), np.nan), np.zeros((4, 4))),
    ],
)
def test_bad_inputs_raise_user_input_error(pred, truth):
    with pytest.raises(UserInputError):
        M.pixel_error(pred, truth)


def test_stack_length_mismatch_and_bad_threshold():
    with pytest.raises(UserInputError):
        M.v_rand([np.zeros((4, 4))], [np.zeros((4, 4)), np.zeros((4, 4))])
    with pytest.raises(UserInputError):
        M.rand_error(np.zeros((4, 4)), np.zeros((4, 4)), thresholds=[1.5])
    with pytest.raises(UserInputError):
        M.evaluate_stack([np.zeros((4, 4))], [np.zeros((4, 4))], names=["a", "b"])


# ---------------------------------------------------------------------------------------
# Invariants (hypothesis)
# ---------------------------------------------------------------------------------------

small_masks = arrays(np.bool_, st.tuples(st.integers(3, 10), st.integers(3, 10)))


@settings(max_examples=60, deadline=None)
@given(small_masks, st.data())
def test_pixel_error_in_unit_interval_and_symmetric(truth, data):
    pred = data.draw(arrays(np.float64, truth.shape, elements=st.floats(0, 1)))
    e = M.pixel_error(pred, truth.astype(np.uint8))
    assert 0.0 <= e <= 1.0
    assert e == M.pixel_error(truth.astype(float), (pred > 0.5).astype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(small_masks)
def test_identical_masks_give_perfect_scores(truth):
    prob = truth.astype(float)
    t = truth.astype(np.uint8)
    assert M.pixel_error(prob, t) == 0.0
    assert M.warp_truth(prob, t).error == 0.0
    assert M.rand_error(prob, t, [0.5]).value == pytest.approx(0.0, abs=1e-12)
    assert M.v_rand(prob, t, [0.5]).value == pytest.approx(1.0, abs=1e-12)
    assert M.adapted_rand_error(prob, t) == pytest.approx(0.0, abs=1e-12)
    ids = M.truth_labels(t)
    if ids.max() >= 2:  # V_info is 0 by Fiji's convention when the truth has one cell
        assert M.v_info(prob, t, [0.5]).value == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(small_masks, st.data())
def test_warping_error_bounded_by_pixel_error(truth, data):
    pred = data.draw(arrays(np.float64, truth.shape, elements=st.floats(0, 1)))
    t = truth.astype(np.uint8)
    w = M.warp_truth(pred, t)
    assert 0.0 <= w.error <= M.pixel_error(pred, t)
    # Warping never changes the number of 4-connected cells nor the 8-connected background.
    four = ndi.generate_binary_structure(2, 1)
    assert ndi.label(w.warped, four)[1] == ndi.label(truth, four)[1]
    pad = lambda a: np.pad(~a, 1, constant_values=True)  # noqa: E731
    assert ndi.label(pad(w.warped), np.ones((3, 3)))[1] == ndi.label(pad(truth), np.ones((3, 3)))[1]


@settings(max_examples=60, deadline=None)
@given(small_masks, st.data())
def test_rand_scores_in_unit_interval(truth, data):
    pred = data.draw(arrays(np.float64, truth.shape, elements=st.floats(0, 1)))
    t = truth.astype(np.uint8)
    for value in (M.v_rand(pred, t, [0.5]).value, M.v_info(pred, t, [0.5]).value,
                  M.rand_error(pred, t, [0.5]).value, M.adapted_rand_error(pred, t)):
        assert 0.0 <= value <= 1.0 + 1e-12 and not math.isnan(value)


# ---------------------------------------------------------------------------------------
# Real data (skipped without the ISBI folder)
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not (ISBI / "labels" / "00.png").exists(), reason="ISBI 2012 data not present")
def test_isbi_slice_perturbation():
    """A noisy map of a real slice: some warping error, less than the pixel error (speed is
    benchmarks' business: under a loaded CPU a time limit here failed a correct run)."""
    from skimage.io import imread

    label = imread(ISBI / "labels" / "00.png")
    rng = np.random.default_rng(0)
    prob = np.clip(ndi.gaussian_filter((label > 0).astype(float), 1.5)
                   + rng.normal(0, 0.3, label.shape), 0, 1)
    result = M.warping_error(prob, label)
    assert 0.0 < result.value < M.pixel_error(prob, label, result.best_threshold)
    assert M.v_rand(label, label).value == pytest.approx(1.0)

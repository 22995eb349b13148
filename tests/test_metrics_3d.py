"""Metrics of volumes on hand-made cases: objects are 3D (face-connected), matched by 3D IoU;
VOI split / merge, adapted Rand, Dice per volume and pooled."""

import numpy as np
import pytest

from unetile.errors import UserInputError
from unetile.evaluation.metrics import evaluate_stack, evaluate_volumes, truth_labels


def two_stacked_cubes() -> np.ndarray:
    """(4, 6, 6) ids: box 1 (2 x 4 x 4 voxels) in sections 0-1, box 2 right below it in 2-3."""
    ids = np.zeros((4, 6, 6), np.uint16)
    ids[0:2, 1:5, 1:5] = 1
    ids[2:4, 1:5, 1:5] = 2
    return ids


def test_a_perfect_prediction_scores_one_everywhere():
    truth = two_stacked_cubes()
    scores = evaluate_volumes([truth.copy()], [truth])
    pooled = scores["objects"]["pooled"]
    assert pooled["n_true"] == pooled["n_pred"] == 2 and pooled["ap_50"] == pooled["mean_ap"] == 1.0
    assert scores["mean"]["dice"] == 1.0 and scores["mean"]["adapted_rand_error"] == 0.0
    assert scores["mean"]["voi_split"] == pytest.approx(1.0) and scores["mean"]["voi_merge"] == pytest.approx(1.0)


def test_two_objects_merged_across_sections_are_one_merge_in_3d():
    """The prediction joins the two boxes (they touch between sections 1 and 2): by hand, the
    object (64 voxels) has IoU 32 / 64 = 0.5 with each box: matched (to one) at 0.5 only."""
    truth = two_stacked_cubes()
    merged = (truth > 0).astype(np.uint16) * 7  # one id: a label volume with one object
    merged[0, 0, 0] = 3  # a second, stray object of one voxel (makes it a label image, not a mask)
    objects = evaluate_volumes([merged], [truth])["objects"]["pooled"]
    assert (objects["n_true"], objects["n_pred"], objects["merged"]) == (2, 2, 2)  # both true boxes merged
    at = {a["iou_threshold"]: a for a in objects["at"]}
    assert at[0.5]["tp"] == 1 and at[0.55]["tp"] == 0  # IoU exactly 0.5
    assert objects["ap_50"] == pytest.approx(1 / 3)  # tp / (tp + fp + fn) = 1 / (1 + 1 + 1)
    assert objects["ap_75"] == 0.0
    scores = evaluate_volumes([merged], [truth])["mean"]
    # inside the truth's foreground the prediction is one object: H(S) = 0, so (Fiji's convention,
    # rand.InfoScores) merge 1, split 0, and an F-score of 0; the perfect prediction scores 1
    assert (scores["voi_merge"], scores["voi_split"], scores["voi_fscore"]) == (1.0, 0.0, 0.0)


def test_objects_are_3d_not_one_cell_per_section():
    truth = two_stacked_cubes()
    as_volume = evaluate_volumes([truth], [truth])["objects"]["pooled"]["n_true"]
    as_planes = evaluate_stack(list(truth), list(truth))["cells"]["pooled"]["n_true"]
    assert (as_volume, as_planes) == (2, 4)  # two cubes, or a cube's face in each of 4 sections


def test_a_binary_truth_is_cut_into_face_connected_objects():
    mask = np.zeros((3, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours: two objects
    mask[2, 2:4, 2] = True  # two face neighbours: one object
    assert truth_labels(mask).max() == 3
    probability = mask.astype(np.float32) * 0.9
    pooled = evaluate_volumes([probability], [mask])["objects"]["pooled"]
    assert pooled["n_pred"] == pooled["n_true"] == 3 and pooled["ap_50"] == 1.0


def test_counts_are_pooled_over_volumes_before_the_ratios():
    truth = two_stacked_cubes()
    empty = np.zeros_like(truth)
    scores = evaluate_volumes([truth, empty], [truth, truth], names=["good", "empty"])
    assert [v["name"] for v in scores["volumes"]] == ["good", "empty"]
    pooled = scores["objects"]["pooled"]
    assert (pooled["n_true"], pooled["n_pred"]) == (4, 2) and pooled["ap_50"] == pytest.approx(2 / 4)
    assert scores["mean"]["dice"] == pytest.approx(0.5)  # 1 and 0, averaged


@pytest.mark.parametrize("bad", ["plane", "shapes", "count"])
def test_bad_volumes_are_one_clear_error(bad):
    truth = two_stacked_cubes()
    preds = {"plane": [truth[0]], "shapes": [truth[:3]], "count": [truth, truth]}[bad]
    with pytest.raises(UserInputError):
        evaluate_volumes(preds, [truth])

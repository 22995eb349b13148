"""Object metrics: hand-made cases and a brute-force matching on random label images."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unetile import metrics
from unetile.evaluation.metrics.objects import cell_counts, cell_fates, match, merged_and_split, overlaps
from unetile.evaluation.metrics.sizes import equivalent_diameter, size_table


def _at(counts, t):
    return next(c for c in counts if c.threshold == t)


def _two_cells():
    truth = np.zeros((10, 20), np.uint16)
    truth[2:8, 2:8] = 1  # 36 px
    truth[2:8, 11:17] = 2  # 36 px, 3 px apart
    return truth


def test_one_to_one_is_perfect():
    truth = _two_cells()
    pred = truth.astype(np.int32) * 7  # other ids, same cells
    c = _at(cell_counts(truth, pred), 0.95)
    assert (c.tp, c.fp, c.fn, c.merged, c.split) == (2, 0, 0, 0, 0)
    assert c.ap == c.f1 == c.precision == c.recall == c.pq == c.mean_matched_iou == 1.0


def test_a_merge_matches_nothing_and_counts_two_merged_cells():
    truth = _two_cells()
    pred = np.zeros_like(truth, dtype=np.int32)
    pred[2:8, 2:17] = 1  # one cell over both and the gap: IoU 36 / 90 = 0.4 with each
    c = _at(cell_counts(truth, pred), 0.5)
    assert (c.n_true, c.n_pred, c.tp, c.fp, c.fn) == (2, 1, 0, 1, 2)
    assert (c.merged, c.split) == (2, 0)
    assert c.ap == 0.0 and c.pq == 0.0


def test_a_split_matches_the_larger_piece_and_counts_one_split_cell():
    truth = np.zeros((10, 10), np.uint16)
    truth[0:10, 0:10] = 3  # 100 px
    pred = np.zeros((10, 10), np.int32)
    pred[:, :7] = 1  # 70 px: IoU 0.7
    pred[:, 7:] = 2  # 30 px: IoU 0.3
    counts = cell_counts(truth, pred)
    c = _at(counts, 0.5)
    assert (c.tp, c.fp, c.fn, c.merged, c.split) == (1, 1, 0, 0, 1)
    assert c.precision == 0.5 and c.recall == 1.0 and c.f1 == pytest.approx(2 / 3) and c.ap == 0.5
    assert c.mean_matched_iou == pytest.approx(0.7) and c.pq == pytest.approx(0.7 * 2 / 3)
    assert _at(counts, 0.7).tp == 1 and _at(counts, 0.75).tp == 0


def test_merged_and_split_flag_each_true_cell():
    """Cells 1 and 2 merged into one predicted cell, cell 3 split in two, cell 4 found, cell 5 missed."""
    truth = np.zeros((12, 40), np.uint16)
    truth[2:8, 2:8], truth[2:8, 9:15], truth[2:8, 18:28], truth[2:8, 30:34], truth[9:11, 36:38] = 1, 2, 3, 4, 5
    pred = np.zeros_like(truth, dtype=np.int32)
    pred[2:8, 2:15] = 1
    pred[2:8, 18:23], pred[2:8, 23:28], pred[2:8, 30:34] = 2, 3, 4
    merged, split = merged_and_split(overlaps(truth, pred))
    assert merged.tolist() == [True, True, False, False, False]
    assert split.tolist() == [False, False, True, False, False]
    nothing = merged_and_split(overlaps(truth, np.zeros_like(pred)))  # no predicted cell: no holder
    assert not nothing[0].any() and not nothing[1].any() and len(nothing[0]) == 5


def test_empty_prediction_and_empty_images():
    truth = _two_cells()
    c = _at(cell_counts(truth, np.zeros_like(truth, dtype=np.int32)), 0.5)
    assert (c.tp, c.fp, c.fn) == (0, 0, 2)
    assert c.precision == c.recall == c.f1 == c.ap == c.pq == 0.0
    nothing = np.zeros((5, 5), np.int32)
    c = _at(cell_counts(nothing, nothing), 0.5)
    assert (c.n_true, c.n_pred) == (0, 0) and c.ap == c.f1 == c.pq == 1.0


def test_iou_exactly_at_the_threshold_is_a_match():
    truth = np.zeros((4, 4), np.uint16)
    truth[0:2, 0:2] = 1  # 4 px
    pred = np.zeros((4, 4), np.int32)
    pred[0:1, 0:2] = 1  # 2 px inside: IoU exactly 2 / 4
    counts = cell_counts(truth, pred, (0.5, 0.55))
    assert _at(counts, 0.5).tp == 1 and _at(counts, 0.55).tp == 0


def test_ties_at_one_half_are_matched_one_to_one():
    truth = np.zeros((1, 4), np.uint16)
    truth[0, 0:2] = 1  # 2 px
    pred = np.array([[1, 2, 0, 0]], np.int32)  # two 1-px cells, each IoU exactly 0.5 with it
    c = _at(cell_counts(truth, pred, (0.5,)), 0.5)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)


def test_pooled_counts_are_summed_before_the_ratio():
    truth = _two_cells()
    perfect = truth.astype(np.int32)
    empty = np.zeros_like(perfect)
    result = metrics.cell_scores([perfect, empty, empty], [truth, truth, truth])
    pooled = result["pooled"]
    assert pooled["n_true"] == 6 and pooled["n_pred"] == 2
    assert pooled["ap_50"] == pytest.approx(2 / 6)  # not the mean of 1, 0, 0 over images...
    assert [im["ap_50"] for im in result["images"]] == [1.0, 0.0, 0.0]  # ... which happens to be equal here
    unequal = metrics.cell_scores([perfect, empty], [truth, np.where(truth == 1, 1, 0).astype(np.uint16)])
    assert unequal["pooled"]["ap_50"] == pytest.approx(2 / 3)  # 2 TP of 3 true cells; image mean: 0.5
    assert result["iou_thresholds"] == list(metrics.IOU_THRESHOLDS)
    assert pooled["mean_ap"] == pytest.approx(np.mean([a["ap"] for a in pooled["at"]]))


def _brute_force(truth, pred, t):
    """(most matched pairs with IoU >= t, their largest summed IoU) over every one-to-one pairing."""
    tids = [i for i in np.unique(truth) if i]
    pids = [i for i in np.unique(pred) if i]
    iou = {}
    for a in tids:
        for b in pids:
            inter = np.count_nonzero((truth == a) & (pred == b))
            union = np.count_nonzero((truth == a) | (pred == b))
            iou[a, b] = inter / union
    best = (0, 0.0)
    for k in range(min(len(tids), len(pids)), 0, -1):
        for ts in itertools.combinations(tids, k):
            for ps in itertools.permutations(pids, k):
                scores = [iou[a, b] for a, b in zip(ts, ps)]
                if all(s >= t for s in scores):
                    best = max(best, (k, sum(scores)))
        if best[0] == k:
            break
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.3, 0.5, 0.7]))
def test_matching_equals_brute_force_on_random_label_images(seed, t):
    rng = np.random.default_rng(seed)
    # Few cells on a tiny grid, so that brute force is cheap and overlaps are many.
    truth = rng.integers(0, 4, size=(6, 6)).astype(np.uint16)
    pred = rng.integers(0, 5, size=(6, 6)).astype(np.int32)
    pairs, scores = match(overlaps(truth, pred), t)
    assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))  # one to one
    k, total = _brute_force(truth, pred, t)
    assert len(pairs) == k
    assert scores.sum() == pytest.approx(total)


def test_evaluate_reports_cells(tmp_path):
    truth = _two_cells()
    result = metrics.evaluate_stack([truth.astype(np.int32)], [truth])
    assert result["cells"]["pooled"]["ap_50"] == 1.0


def test_cells_overlay_and_report(tmp_path):
    from unetile.evaluation.report import cell_classes, write_report

    truth = np.zeros((40, 60), np.uint16)
    truth[5:15, 5:15], truth[5:15, 18:28], truth[25:35, 5:15] = 1, 2, 3
    pred = np.zeros((40, 60), np.int32)
    pred[5:15, 5:28] = 1  # merges true cells 1 and 2
    pred[25:35, 5:15] = 2  # matches true cell 3
    pred[25:35, 40:50] = 3  # an extra cell
    classes = cell_classes(pred, truth)
    assert classes[10, 10] == 2 and classes[10, 22] == 2  # the merged true cells: unmatched, filled
    assert classes[5, 10] == 3 and classes[30, 40] == 3  # unmatched predicted cells: outlined
    assert classes[25, 10] == 1 and classes[30, 10] == 0  # the matched cell: outlined, inside untouched
    result = metrics.evaluate_stack([pred], [truth], names=["x"])
    assert result["cells"]["images"][0]["merged"] == 2
    page = write_report(result, [pred], [truth], None, tmp_path / "r").read_text()
    assert "<h2>Cells</h2>" in page and "1 matched, 2 true cells unmatched, 2 predicted cells unmatched" in page


def test_sparse_and_dense_overlap_tables_agree(monkeypatch):
    import unetile.evaluation.metrics.objects as objects

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, (30, 30)) * 1000  # large ids
    pred = rng.integers(0, 9, (30, 30))
    dense = objects.overlaps(truth % 997, pred)
    monkeypatch.setattr(objects, "_DENSE_TABLE", 0)
    sparse = objects.overlaps(truth % 997, pred)
    for field in ("true_ids", "true_sizes", "pred_ids", "pred_sizes", "pairs", "counts"):
        np.testing.assert_array_equal(getattr(dense, field), getattr(sparse, field))


def test_cell_fates_and_size_table_count_each_true_cell_once_by_its_median_relative_size():
    """The cells of the merge/split case: 1 and 2 (36 px, 6.8 px across) merged, 3 (60 px) split
    into halves but still matched at IoU exactly 0.5, 4 (24 px) found, 5 (4 px) missed."""
    truth = np.zeros((12, 40), np.uint16)
    truth[2:8, 2:8], truth[2:8, 9:15], truth[2:8, 18:28], truth[2:8, 30:34], truth[9:11, 36:38] = 1, 2, 3, 4, 5
    pred = np.zeros_like(truth, dtype=np.int32)
    pred[2:8, 2:15] = 1
    pred[2:8, 18:23], pred[2:8, 23:28], pred[2:8, 30:34] = 2, 3, 4
    fates = cell_fates(overlaps(truth, pred))
    assert fates.found.tolist() == [False, False, True, True, False]
    assert fates.merged_not_found.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(fates.diameter, 2 * np.sqrt(np.array([36, 36, 60, 24, 4]) / np.pi))
    table = size_table([fates, fates])  # two copies pooled: each count doubles, the median stays
    assert table["median_diameter"] == pytest.approx(2 * np.sqrt(36 / np.pi))
    rows = {(r["low"], r["high"]): (r["cells"], r["found"], r["merged"], r["missed"]) for r in table["rows"]}
    assert rows[(0.0, 0.5)] == (2, 0, 0, 2)  # cell 5: 0.33 of the median
    assert rows[(0.75, 1.0)] == (2, 2, 0, 0)  # cell 4: 0.82
    assert rows[(1.0, 1.5)] == (6, 2, 4, 0)  # cells 1, 2 (the median itself) and 3 (1.29)
    assert sum(r["cells"] for r in table["rows"]) == 10
    assert all(r["found"] + r["merged"] + r["missed"] == r["cells"] for r in table["rows"])
    absolute = size_table([fates], edges=(0, 5, 7, np.inf), relative=False)["rows"]
    assert [r["cells"] for r in absolute] == [1, 3, 1] and absolute[-1]["high_px"] is None


def test_a_merged_cell_that_still_matches_is_found_not_merged():
    """A 100-px cell matched at IoU 0.96 by a prediction that also takes most of a 4-px cell:
    the large cell is found, the small one merged (both count in the summary's merges)."""
    truth = np.zeros((12, 16), np.uint16)
    truth[1:11, 1:11], truth[4:6, 11:13] = 1, 2
    pred = np.zeros_like(truth, dtype=np.int32)
    pred[1:11, 1:11], pred[4:6, 11:13] = 1, 1
    table = overlaps(truth, pred)
    fates = cell_fates(table)
    assert fates.found.tolist() == [True, False] and fates.merged_not_found.tolist() == [False, True]
    assert merged_and_split(table)[0].tolist() == [True, True]
    rows = size_table([fates])["rows"]
    assert sum(r["merged"] for r in rows) == 1 and sum(r["found"] for r in rows) == 1


def test_equivalent_diameter_of_discs_and_balls():
    np.testing.assert_allclose(equivalent_diameter(np.array([np.pi * 9]), 2), [6.0])
    np.testing.assert_allclose(equivalent_diameter(np.array([4 / 3 * np.pi * 27]), 3), [6.0])
    volume = np.zeros((8, 8, 8), np.uint16)
    volume[1:4, 1:4, 1:4] = 1  # 27 voxels
    fates = cell_fates(overlaps(volume, volume.astype(np.int32)), ndim=3)
    table = size_table([fates])
    assert table["ndim"] == 3 and table["median_diameter"] == pytest.approx(np.cbrt(6 * 27 / np.pi))
    empty = size_table([cell_fates(overlaps(volume * 0, volume.astype(np.int32)))])  # no true cell
    assert empty["median_diameter"] is None and all(r["cells"] == 0 and r["low_px"] is None for r in empty["rows"])

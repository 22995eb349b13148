"""Cell-level agreement: the foreground-restricted Rand error, V_rand and V_info of the ISBI
2012 leaderboard (after border thinning, Fiji ``RandError`` / ``VariationOfInformation``), and
scikit-image's adapted Rand error.

All of them start from the contingency table of truth cells against predicted cells,
counted on truth-foreground pixels only (`table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .common import (
    DEFAULT_THRESHOLDS,
    FOUR,
    Prediction,
    SweepResult,
    best_on_curve,
    check_pair,
    check_thresholds,
    paired_stack,
    prediction_components,
    read_prediction,
    truth_labels,
)
from .pixel import fiji_prf


@dataclass(frozen=True)
class _Table:
    """Contingency counts restricted to truth foreground.

    joint: counts n_ij for truth cell i and predicted cell j > 0 (flattened, zeros dropped);
    rows: truth cell sizes a_i (including pixels predicted as boundary);
    cols: predicted cell sizes b_j inside truth foreground (j > 0);
    singletons: pixels inside truth foreground that the prediction marks as boundary (j = 0);
    n: number of truth-foreground pixels.
    """

    joint: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    singletons: int
    n: int


def _table(truth_ids: np.ndarray, pred_ids: np.ndarray) -> _Table:
    inside = truth_ids > 0
    t = truth_ids[inside]
    p = pred_ids[inside]
    n = int(t.size)
    on = p > 0
    singletons = int(n - np.count_nonzero(on))
    _, rows = np.unique(t, return_counts=True)
    tp, pp = t[on], p[on]
    if pp.size:
        _, cols = np.unique(pp, return_counts=True)
        # Pair (i, j) -> one int64 key; ids are < 2**31 so the product cannot overflow.
        key = tp.astype(np.int64) * (int(pp.max()) + 1) + pp.astype(np.int64)
        _, joint = np.unique(key, return_counts=True)
    else:
        cols = joint = np.zeros(0, dtype=np.int64)
    return _Table(joint.astype(np.int64), rows.astype(np.int64), cols.astype(np.int64),
                  singletons, n)


@dataclass(frozen=True)
class RandScores:
    """Foreground-restricted Rand scores (N^2 normalisation, boundary pixels as singletons).

    With counts n_ij (truth i, prediction j > 0), truth sizes a_i, prediction sizes b_j and
    s0 truth-foreground pixels predicted as boundary (each its own singleton segment):
    tp = sum n_ij^2 + s0, fp = sum b_j^2 + s0 - tp, fn = sum a_i^2 - tp (pixel pairs,
    self-pairs included);
    merge = tp / (tp + fp) (Fiji precision, V_rand_merge = sum p_ij^2 / sum s_j^2),
    split = tp / (tp + fn) (Fiji recall, V_rand_split = sum p_ij^2 / sum t_i^2),
    fscore = harmonic mean.  Source: Fiji ``RandError.getForegroundRestrictedRandIndexStatsN2``.
    """

    tp: float
    fp: float
    fn: float
    merge: float
    split: float
    fscore: float


@dataclass(frozen=True)
class InfoScores:
    """Foreground-restricted information-theoretic scores (natural logs).

    H(T): entropy of the truth cells, H(S): entropy of the predicted cells (boundary pixels
    inside truth foreground are singletons), I = H(T) + H(S) - H(T, S).
    split = I / H(S), merge = I / H(T), fscore = harmonic mean (= V_info).
    Source: Fiji ``VariationOfInformation.foregroundRestrictedFscore``, including its edge
    cases: H(T) = 0 -> (merge 0, split 1); H(S) = 0 -> (merge 1, split 0); both give
    fscore 0, so a single-cell truth image can never score above 0.
    """

    h_truth: float
    h_pred: float
    mutual_information: float
    merge: float
    split: float
    fscore: float


def rand_from_table(tab: _Table) -> RandScores:
    if tab.n == 0:
        # No truth foreground: nothing can be wrong.
        return RandScores(0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    s0 = float(tab.singletons)
    sum_a2 = float(np.dot(tab.rows, tab.rows))
    sum_b2 = float(np.dot(tab.cols, tab.cols)) + s0
    sum_ab2 = float(np.dot(tab.joint, tab.joint)) + s0
    tp, fp, fn = sum_ab2, sum_b2 - sum_ab2, sum_a2 - sum_ab2
    merge, split, f = fiji_prf(tp, fp, fn)
    return RandScores(tp, fp, fn, merge, split, f)


def _xlogx(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0].astype(np.float64) / n
    return float(np.sum(p * np.log(p)))


def info_from_table(tab: _Table) -> InfoScores:
    if tab.n == 0:
        return InfoScores(0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    n = tab.n
    aux = tab.singletons / n
    sum_a = _xlogx(tab.rows, n)
    sum_b = _xlogx(tab.cols, n) - aux * math.log(n)
    sum_ab = _xlogx(tab.joint, n) - aux * math.log(n)
    h_t, h_s = -sum_a, -sum_b
    h_t_given_s = sum_b - sum_ab
    h_s_given_t = sum_a - sum_ab
    merge = (h_t - h_t_given_s) / h_t if h_t != 0 else 0.0
    split = (h_s - h_s_given_t) / h_s if h_s != 0 else 0.0
    if h_t == 0:
        merge, split = 0.0, 1.0
    if h_s == 0:
        merge, split = 1.0, 0.0
    f = 2.0 * merge * split / (merge + split) if (merge + split) > 0 else 0.0
    return InfoScores(h_t, h_s, h_t - h_t_given_s, merge, split, f)


def foreground_restricted_rand(truth_ids: np.ndarray, pred_ids: np.ndarray) -> RandScores:
    """Foreground-restricted Rand scores of two label images ``(H, W)`` (see `RandScores`).

    ``truth_ids``: 0 = ignored; ``pred_ids``: 0 = boundary (singletons).
    """
    check_pair(pred_ids, truth_ids)
    return rand_from_table(_table(np.asarray(truth_ids), np.asarray(pred_ids)))


def foreground_restricted_info(truth_ids: np.ndarray, pred_ids: np.ndarray) -> InfoScores:
    """Foreground-restricted information scores of two label images (see `InfoScores`)."""
    check_pair(pred_ids, truth_ids)
    return info_from_table(_table(np.asarray(truth_ids), np.asarray(pred_ids)))


def thin_boundaries(fg_or_labels: np.ndarray) -> np.ndarray:
    """Grow predicted cells over the boundary so that only 1-pixel lines remain.

    ``fg_or_labels``: ``(H, W)`` bool interior mask (its 4-connected components are the
    seeds) or a label image (its ids are the seeds).  The seeds flood the boundary by a
    4-connected watershed of the inverted binary map, leaving watershed lines (label 0)
    where two cells meet.  An image without any interior becomes one cell, as in Fiji.

    Fiji (``VariationOfInformation.foregroundRestrictedScoreAfterThinningN2``) runs the
    Vincent-Soille ``WatershedTransform2D`` on the binary proposal; here scikit-image's
    priority-flood watershed is used, whose line may sit one pixel differently where two
    fronts meet at equal distance.  Returns int64 ``(H, W)``.
    """
    from skimage.segmentation import watershed

    arr = np.asarray(fg_or_labels)
    if arr.dtype == bool:
        markers = ndi.label(arr, structure=FOUR)[0]
        fg = arr
    else:
        markers = arr.astype(np.int64)
        fg = markers > 0
    if not fg.any():
        return np.ones(arr.shape, dtype=np.int64)
    if fg.all():
        return markers.astype(np.int64)
    # Interior is the basin floor (0), boundary the plateau (1) that the seeds flood.
    height = (~fg).astype(np.uint8)
    out = watershed(height, markers=markers, connectivity=1, watershed_line=True)
    return out.astype(np.int64)


def _thinned(pred: Prediction, threshold: float) -> np.ndarray:
    if pred.labels is not None:
        return thin_boundaries(pred.labels)
    return thin_boundaries(pred.prob > threshold)


def rand_error(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
) -> SweepResult:
    """ISBI 2012 Rand error (the number in the U-Net paper): 1 - maximal F-score of the
    foreground-restricted Rand index, without border thinning.

    Per threshold: cells = 4-connected components of ``truth`` and of ``pred > t``; the
    foreground-restricted tp/fp/fn (`RandScores`) are summed over the stack and the F-score
    taken from the sums; error = ``1 - max_t F``.  Source: Fiji
    ``RandError.getForegroundRestrictedRandIndexMaximalFScore`` (stats pooled over slices in
    ``getForegroundRestrictedRandIndexStats``).  ``per_image``: 1 - F of each image at the
    best t.
    """
    p_list, t_list = paired_stack(preds, truths)
    ts = check_thresholds(thresholds)
    preds_n = [read_prediction(p) for p in p_list]
    tids = [truth_labels(t) for t in t_list]
    curve = []
    per_t: dict[float, list[RandScores]] = {}
    for t in ts:
        scores = [foreground_restricted_rand(ti, prediction_components(pr, t))
                  for pr, ti in zip(preds_n, tids)]
        per_t[t] = scores
        tp = sum(s.tp for s in scores)
        fp = sum(s.fp for s in scores)
        fn = sum(s.fn for s in scores)
        curve.append((t, 1.0 - fiji_prf(tp, fp, fn)[2]))
    best_t, best_v = best_on_curve(curve, maximise=False)
    return SweepResult(best_v, best_t, curve, [1.0 - s.fscore for s in per_t[best_t]])


def thinned_tables(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float],
) -> tuple[tuple[float, ...], list[list[_Table]]]:
    p_list, t_list = paired_stack(preds, truths)
    ts = check_thresholds(thresholds)
    preds_n = [read_prediction(p) for p in p_list]
    tids = [truth_labels(t) for t in t_list]
    tables = [[_table(ti, _thinned(pr, t)) for pr, ti in zip(preds_n, tids)] for t in ts]
    return ts, tables


def sweep_from_tables(
    ts: tuple[float, ...], tables: list[list[_Table]], score
) -> SweepResult:
    per = [[score(tab) for tab in row] for row in tables]
    curve = [(t, float(np.mean(vals))) for t, vals in zip(ts, per)]
    best_t, best_v = best_on_curve(curve, maximise=True)
    return SweepResult(best_v, best_t, curve, per[ts.index(best_t)])


def v_rand(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
) -> SweepResult:
    """ISBI 2012 leaderboard V_rand: foreground-restricted Rand F-score after border thinning.

    Per slice and threshold: truth cells (see `truth_labels`) vs `thin_boundaries` of
    ``pred > t``; only truth-foreground pixels count; prediction-boundary pixels there are
    singletons; score = F of merge/split (`RandScores`).  Averaged over slices, maximised
    over thresholds.  Source: Fiji ``RandError.getMaximalVRandAfterThinning``.  Higher is
    better (1 = perfect).
    """
    ts, tables = thinned_tables(preds, truths, thresholds)
    return sweep_from_tables(ts, tables, lambda tab: rand_from_table(tab).fscore)


def v_info(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
) -> SweepResult:
    """ISBI 2012 leaderboard V_info: foreground-restricted information-theoretic F-score
    after border thinning (natural logs; see `InfoScores`), averaged over slices and
    maximised over thresholds.  Source: Fiji
    ``VariationOfInformation.getMaximalVInfoAfterThinning``.  Higher is better.
    """
    ts, tables = thinned_tables(preds, truths, thresholds)
    return sweep_from_tables(ts, tables, lambda tab: info_from_table(tab).fscore)


def adapted_rand_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """scikit-image ``skimage.metrics.adapted_rand_error`` on the cells of `rand_error`.

    Truth cells as in `truth_labels` with label 0 ignored (``ignore_labels=(0,)``);
    predicted cells = 4-connected components of ``pred > threshold``.  It differs from
    `rand_error` / `v_rand` in two ways: (1) it counts pairs of *distinct* pixels
    (sum n_ij^2 - n instead of sum n_ij^2), and (2) predicted boundary pixels (label 0) inside
    truth foreground form one ordinary segment instead of singletons, so a thick predicted
    boundary is scored as one merged cell rather than as many split pixels.  No threshold
    sweep, no thinning.  Returns 1 - F (0 = perfect); 0 where scikit-image divides 0 by 0
    (every cell of both images a single pixel).
    """
    from skimage.metrics import adapted_rand_error as _skimage_are

    check_pair(pred, truth)
    tids = truth_labels(truth)
    pids = prediction_components(read_prediction(pred), threshold)
    if not np.any(tids > 0):
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        are, _, _ = _skimage_are(tids, pids, ignore_labels=(0,))
    if math.isnan(are):
        # 0/0: neither image has two pixels in one cell, so both partitions of the truth
        # foreground are all singletons, i.e. identical.
        return 0.0
    return float(are)



"""Segmentation metrics for membrane / cell-interior maps (ISBI 2012 style).

Conventions
-----------
* Images are ``(H, W)`` arrays, y before x; stacks are ``(N, H, W)`` arrays or sequences of
  ``(H, W)`` arrays.
* A *prediction* is one of

  - a probability map of cell interior: float in ``[0, 1]``;
  - an 8-bit map (``uint8``): read as ``value / 255`` (so ``round(p * 255)`` maps round-trip);
  - a mask (``bool``, or an integer array holding only 0 and 1);
  - a label image (any integer type except ``uint8`` with values above 1): 0 = boundary,
    each other value one cell.  Thresholds do not change a label image.

* A *truth* image has 0 = boundary / background and > 0 = interior.  If it holds a single
  non-zero value it is binary and its cells are the 4-connected components of ``truth > 0``;
  if it holds several non-zero integer values they are taken as cell ids.
* A pixel is predicted interior when ``p > threshold`` (strictly greater, as in Fiji).

Sources
-------
Formulas follow the Fiji Trainable_Segmentation metrics package
(``trainableSegmentation/metrics/{PixelError,RandError,VariationOfInformation,WarpingError,
ClassificationStatistics}.java``, I. Arganda-Carreras) and Arganda-Carreras et al. (2015),
"Crowdsourcing the creation of image segmentation algorithms for connectomics",
Front. Neuroanat. 9:142 (the ISBI 2012 leaderboard metrics V_rand and V_info).
The warping error is Jain et al. (2010), "Boundary learning by optimization with topological
constraints", CVPR, with simple points after Bertrand & Malandain (1994).

Threshold sweeps use the exact decimals 0.0, 0.1, ..., 1.0.  Fiji accumulates ``th += 0.1``
in floating point, so its last thresholds are 0.7999999999999999, 0.8999999999999999 and
0.9999999999999999; this only matters for pixels whose value is exactly 0.8 or 1.0.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import UserInputError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "WARPING_THRESHOLDS",
    "SweepResult",
    "RandScores",
    "InfoScores",
    "WarpResult",
    "as_probability",
    "truth_labels",
    "prediction_labels",
    "thin_boundaries",
    "pixel_error",
    "dice",
    "iou",
    "precision",
    "recall",
    "foreground_scores",
    "class_scores",
    "isbi_pixel_error",
    "foreground_restricted_rand",
    "foreground_restricted_info",
    "rand_error",
    "v_rand",
    "v_info",
    "adapted_rand_error",
    "warp_truth",
    "warping_error",
    "evaluate_stack",
]

#: Thresholds of the ISBI 2012 scripts (Fiji: ``min 0.0, max 1.0, step 0.1``).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: Thresholds over which the warping error is minimised (0.0 ... 0.9).
WARPING_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prediction:
    """A prediction normalised to a probability map, plus its labels if it was a label image."""

    prob: np.ndarray  # (H, W) float64 in [0, 1]
    labels: np.ndarray | None  # (H, W) int64 cell ids (0 = boundary), or None


def _check_2d(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise UserInputError(
            f"{what} must be a 2-D (H, W) image, got an array of shape {array.shape}"
        )
    if array.size == 0:
        raise UserInputError(f"{what} is empty (shape {array.shape})")
    return array


def _prediction(pred: np.ndarray, what: str = "prediction") -> _Prediction:
    pred = _check_2d(pred, what)
    if pred.dtype == bool:
        return _Prediction(pred.astype(np.float64), None)
    if pred.dtype == np.uint8:
        return _Prediction(pred.astype(np.float64) / 255.0, None)
    if np.issubdtype(pred.dtype, np.integer):
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0:
            raise UserInputError(f"{what} is a label image with negative values (min {lo})")
        if hi <= 1:
            return _Prediction(pred.astype(np.float64), None)
        labels = pred.astype(np.int64)
        return _Prediction((labels > 0).astype(np.float64), labels)
    if np.issubdtype(pred.dtype, np.floating):
        prob = pred.astype(np.float64)
        if not np.all(np.isfinite(prob)):
            raise UserInputError(f"{what} contains NaN or infinite values")
        lo, hi = float(prob.min()), float(prob.max())
        if lo < 0.0 or hi > 1.0:
            raise UserInputError(
                f"{what} must be a probability map in [0, 1], got values in [{lo:g}, {hi:g}]; "
                "save 8-bit maps as uint8 (they are divided by 255)"
            )
        return _Prediction(prob, None)
    raise UserInputError(f"{what} has unsupported dtype {pred.dtype}")


def as_probability(pred: np.ndarray) -> np.ndarray:
    """Return a prediction as a float64 ``(H, W)`` map in [0, 1] (uint8 is divided by 255)."""
    return _prediction(pred).prob


def truth_labels(truth: np.ndarray) -> np.ndarray:
    """Cell ids of a truth image, ``(H, W)`` int64, 0 = boundary.

    Binary truth (one non-zero value) -> 4-connected components of ``truth > 0`` (Fiji
    ``Utils.connectedComponents(..., 4)`` as used by ``RandError``); several non-zero integer
    values -> taken as cell ids unchanged.
    """
    truth = _check_2d(truth, "truth")
    if truth.dtype == bool:
        return ndi.label(truth, structure=_FOUR)[0].astype(np.int64)
    values = np.unique(truth)
    nonzero = values[values != 0]
    if np.issubdtype(truth.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise UserInputError("truth contains NaN or infinite values")
    if nonzero.size <= 1:
        return ndi.label(truth > 0, structure=_FOUR)[0].astype(np.int64)
    if not np.issubdtype(truth.dtype, np.integer):
        if not np.all(nonzero == np.round(nonzero)):
            raise UserInputError(
                "truth must be binary (0 = boundary, one value for interior) or an integer "
                f"label image; got {nonzero.size} distinct non-integer values"
            )
    if np.any(nonzero < 0):
        raise UserInputError("truth label image has negative values")
    return truth.astype(np.int64)


def _truth_fg(truth: np.ndarray) -> np.ndarray:
    return _check_2d(truth, "truth") > 0


def _pred_components(pred: _Prediction, threshold: float) -> np.ndarray:
    if pred.labels is not None:
        return pred.labels
    return ndi.label(pred.prob > threshold, structure=_FOUR)[0].astype(np.int64)


def prediction_labels(pred: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """4-connected components of ``pred > threshold`` (a label image is returned as is)."""
    return _pred_components(_prediction(pred), threshold)


def _stack(
    preds: np.ndarray | Sequence[np.ndarray], truths: np.ndarray | Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Turn (H, W), (N, H, W) or sequences into matching lists of 2-D images."""

    def as_list(x: np.ndarray | Sequence[np.ndarray], what: str) -> list[np.ndarray]:
        if isinstance(x, np.ndarray):
            if x.ndim == 2:
                return [x]
            if x.ndim == 3:
                return list(x)
            raise UserInputError(f"{what} must be (H, W) or (N, H, W), got shape {x.shape}")
        return [np.asarray(a) for a in x]

    p, t = as_list(preds, "predictions"), as_list(truths, "truths")
    if len(p) == 0:
        raise UserInputError("no images to evaluate")
    if len(p) != len(t):
        raise UserInputError(f"{len(p)} predictions but {len(t)} truth images")
    for i, (a, b) in enumerate(zip(p, t)):
        _check_2d(a, f"prediction {i}")
        _check_2d(b, f"truth {i}")
        if a.shape != b.shape:
            raise UserInputError(
                f"image {i}: prediction shape {a.shape} differs from truth shape {b.shape}"
            )
    return p, t


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    pred = _check_2d(pred, "prediction")
    truth = _check_2d(truth, "truth")
    if pred.shape != truth.shape:
        raise UserInputError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts:
        raise UserInputError("no thresholds given")
    for t in ts:
        if not (0.0 <= t <= 1.0):
            raise UserInputError(f"threshold {t} is outside [0, 1]")
    return ts


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


def _confusion(pred_fg: np.ndarray, truth_fg: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(pred_fg & truth_fg))
    fp = int(np.count_nonzero(pred_fg & ~truth_fg))
    fn = int(np.count_nonzero(~pred_fg & truth_fg))
    tn = pred_fg.size - tp - fp - fn
    return tp, fp, fn, tn


def _fiji_prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F-score as in Fiji ``ClassificationStatistics``.

    No false positives -> precision 1; no false negatives -> recall 1; F = 0 if P + R = 0.
    """
    p = 1.0 if fp == 0 else tp / (tp + fp)
    r = 1.0 if fn == 0 else tp / (tp + fn)
    f = 2.0 * p * r / (p + r) if (p + r) > 0 else 0.0
    return p, r, f


def pixel_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels whose class differs: mean of ``(pred > t) != (truth > 0)``.

    Fiji ``PixelError.getPixelErrorConcurrent`` (squared difference of binarised images,
    divided by width * height).  ``pred``, ``truth``: ``(H, W)``.  Returns a value in [0, 1].
    """
    _check_pair(pred, truth)
    fg = _prediction(pred).prob > threshold
    return float(np.count_nonzero(fg != _truth_fg(truth)) / fg.size)


def foreground_scores(
    pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Dice, IoU, precision and recall of the interior class at ``threshold``.

    dice = 2TP / (2TP + FP + FN), iou = TP / (TP + FP + FN), precision = TP / (TP + FP),
    recall = TP / (TP + FN).  A ratio whose denominator is 0 (nothing predicted / nothing
    true) is 1.0: there was nothing to get wrong.
    """
    _check_pair(pred, truth)
    fg = _prediction(pred).prob > threshold
    tp, fp, fn, _ = _confusion(fg, _truth_fg(truth))
    return _scores_from_counts(tp, fp, fn)


def _scores_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    def ratio(num: float, den: float) -> float:
        return 1.0 if den == 0 else num / den

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def dice(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Dice coefficient 2TP / (2TP + FP + FN) of the interior (see `foreground_scores`)."""
    return foreground_scores(pred, truth, threshold)["dice"]


def iou(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union TP / (TP + FP + FN) of the interior."""
    return foreground_scores(pred, truth, threshold)["iou"]


def precision(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Pixel precision TP / (TP + FP) of the interior."""
    return foreground_scores(pred, truth, threshold)["precision"]


def recall(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Pixel recall TP / (TP + FN) of the interior."""
    return foreground_scores(pred, truth, threshold)["recall"]


def class_scores(
    pred: np.ndarray, truth: np.ndarray, classes: Sequence[int] | None = None
) -> dict[int, dict[str, float]]:
    """Per-class dice / iou / precision / recall for multi-class maps (one-vs-rest).

    ``pred``: ``(H, W)`` integer class map, or ``(C, H, W)`` class scores (argmax over C is
    taken).  ``truth``: ``(H, W)`` integer class map.  ``classes`` defaults to every class
    present in either map.
    """
    pred = np.asarray(pred)
    truth = _check_2d(truth, "truth")
    if pred.ndim == 3:
        pred = np.argmax(pred, axis=0)
    _check_pair(pred, truth)
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(truth.dtype, np.integer)):
        raise UserInputError("class_scores needs integer class maps (or (C, H, W) scores)")
    if classes is None:
        classes = sorted(set(np.unique(pred).tolist()) | set(np.unique(truth).tolist()))
    out: dict[int, dict[str, float]] = {}
    for c in classes:
        tp, fp, fn, _ = _confusion(pred == c, truth == c)
        out[int(c)] = _scores_from_counts(tp, fp, fn)
    return out


# --------------------------------------------------------------------------------------
# Threshold sweeps
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """A metric swept over thresholds.

    value: the best value (max for scores, min for errors) of the stack-level metric;
    best_threshold: the first threshold reaching it (Fiji keeps the first strict optimum);
    curve: ``[(threshold, stack value), ...]``;
    per_image: each image's own value at ``best_threshold``.
    """

    value: float
    best_threshold: float
    curve: list[tuple[float, float]]
    per_image: list[float] = field(default_factory=list)


def _best(curve: list[tuple[float, float]], maximise: bool) -> tuple[float, float]:
    best_t, best_v = curve[0]
    for t, v in curve[1:]:
        if (v > best_v) if maximise else (v < best_v):
            best_t, best_v = t, v
    return best_t, best_v


def isbi_pixel_error(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
) -> SweepResult:
    """ISBI 2012 pixel error: 1 - maximal F1 of interior-pixel classification.

    For each threshold, TP/FP/FN of ``(pred > t)`` vs ``(truth > 0)`` are pooled over the
    stack, F1 is taken with Fiji ``ClassificationStatistics`` conventions, and the error is
    ``1 - max_t F1`` (Fiji ``PixelError.getPixelErrorMaximalFScore`` /
    ``getPrecisionRecallStats``).  ``per_image``: each image's own 1 - F1 at the best t.
    """
    p_list, t_list = _stack(preds, truths)
    ts = _check_thresholds(thresholds)
    probs = [_prediction(p).prob for p in p_list]
    fgs = [_truth_fg(t) for t in t_list]
    curve = []
    for t in ts:
        tp = fp = fn = 0
        for prob, fg in zip(probs, fgs):
            a, b, c, _ = _confusion(prob > t, fg)
            tp, fp, fn = tp + a, fp + b, fn + c
        curve.append((t, 1.0 - _fiji_prf(tp, fp, fn)[2]))
    best_t, best_v = _best(curve, maximise=False)
    per_image = []
    for prob, fg in zip(probs, fgs):
        a, b, c, _ = _confusion(prob > best_t, fg)
        per_image.append(1.0 - _fiji_prf(a, b, c)[2])
    return SweepResult(best_v, best_t, curve, per_image)


# --------------------------------------------------------------------------------------
# Foreground-restricted Rand and information scores
# --------------------------------------------------------------------------------------


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


def _rand_from_table(tab: _Table) -> RandScores:
    if tab.n == 0:
        # No truth foreground: nothing can be wrong.
        return RandScores(0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    s0 = float(tab.singletons)
    sum_a2 = float(np.dot(tab.rows, tab.rows))
    sum_b2 = float(np.dot(tab.cols, tab.cols)) + s0
    sum_ab2 = float(np.dot(tab.joint, tab.joint)) + s0
    tp, fp, fn = sum_ab2, sum_b2 - sum_ab2, sum_a2 - sum_ab2
    merge, split, f = _fiji_prf(tp, fp, fn)
    return RandScores(tp, fp, fn, merge, split, f)


def _xlogx(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0].astype(np.float64) / n
    return float(np.sum(p * np.log(p)))


def _info_from_table(tab: _Table) -> InfoScores:
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
    _check_pair(pred_ids, truth_ids)
    return _rand_from_table(_table(np.asarray(truth_ids), np.asarray(pred_ids)))


def foreground_restricted_info(truth_ids: np.ndarray, pred_ids: np.ndarray) -> InfoScores:
    """Foreground-restricted information scores of two label images (see `InfoScores`)."""
    _check_pair(pred_ids, truth_ids)
    return _info_from_table(_table(np.asarray(truth_ids), np.asarray(pred_ids)))


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
        markers = ndi.label(arr, structure=_FOUR)[0]
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


def _thinned(pred: _Prediction, threshold: float) -> np.ndarray:
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
    p_list, t_list = _stack(preds, truths)
    ts = _check_thresholds(thresholds)
    preds_n = [_prediction(p) for p in p_list]
    tids = [truth_labels(t) for t in t_list]
    curve = []
    per_t: dict[float, list[RandScores]] = {}
    for t in ts:
        scores = [foreground_restricted_rand(ti, _pred_components(pr, t))
                  for pr, ti in zip(preds_n, tids)]
        per_t[t] = scores
        tp = sum(s.tp for s in scores)
        fp = sum(s.fp for s in scores)
        fn = sum(s.fn for s in scores)
        curve.append((t, 1.0 - _fiji_prf(tp, fp, fn)[2]))
    best_t, best_v = _best(curve, maximise=False)
    return SweepResult(best_v, best_t, curve, [1.0 - s.fscore for s in per_t[best_t]])


def _thinned_tables(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float],
) -> tuple[tuple[float, ...], list[list[_Table]]]:
    p_list, t_list = _stack(preds, truths)
    ts = _check_thresholds(thresholds)
    preds_n = [_prediction(p) for p in p_list]
    tids = [truth_labels(t) for t in t_list]
    tables = [[_table(ti, _thinned(pr, t)) for pr, ti in zip(preds_n, tids)] for t in ts]
    return ts, tables


def _sweep_from_tables(
    ts: tuple[float, ...], tables: list[list[_Table]], score
) -> SweepResult:
    per = [[score(tab) for tab in row] for row in tables]
    curve = [(t, float(np.mean(vals))) for t, vals in zip(ts, per)]
    best_t, best_v = _best(curve, maximise=True)
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
    ts, tables = _thinned_tables(preds, truths, thresholds)
    return _sweep_from_tables(ts, tables, lambda tab: _rand_from_table(tab).fscore)


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
    ts, tables = _thinned_tables(preds, truths, thresholds)
    return _sweep_from_tables(ts, tables, lambda tab: _info_from_table(tab).fscore)


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

    _check_pair(pred, truth)
    tids = truth_labels(truth)
    pids = _pred_components(_prediction(pred), threshold)
    if not np.any(tids > 0):
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        are, _, _ = _skimage_are(tids, pids, ignore_labels=(0,))
    if math.isnan(are):
        # 0/0: neither image has two pixels in one cell, so both partitions of the truth
        # foreground are all singletons, i.e. identical.
        return 0.0
    return float(are)


# --------------------------------------------------------------------------------------
# Warping error
# --------------------------------------------------------------------------------------

# Neighbour k of a pixel is bit k of its 8-bit neighbourhood code.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _simple_table() -> bytes:
    """For every 8-neighbourhood, whether the centre is a simple point.

    Simple iff T4(foreground) = 1 and T8(background) = 1 (Bertrand & Malandain 1994; Fiji
    ``WarpingError.simple2DBertrand(patch, 4)``): T4 counts the 4-connected components of
    foreground neighbours that touch a 4-neighbour of the centre, T8 the 8-connected
    components of background neighbours; the centre itself is excluded, so the answer is the
    same for flipping 0 -> 1 and 1 -> 0.
    """
    pos = _NEIGHBOURS
    four_adj = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for b in pos] for a in pos]
    eight_adj = [[a != b and max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1 for b in pos]
                 for a in pos]
    is_four_nb = [abs(dy) + abs(dx) == 1 for dy, dx in pos]

    def components(members: list[int], adj: list[list[bool]]) -> list[set[int]]:
        left, comps = set(members), []
        while left:
            stack = [left.pop()]
            comp = set(stack)
            while stack:
                a = stack.pop()
                for b in list(left):
                    if adj[a][b]:
                        left.remove(b)
                        comp.add(b)
                        stack.append(b)
            comps.append(comp)
        return comps

    table = bytearray(256)
    for code in range(256):
        fg = [k for k in range(8) if code >> k & 1]
        bg = [k for k in range(8) if not code >> k & 1]
        t4 = sum(1 for c in components(fg, four_adj) if any(is_four_nb[k] for k in c))
        t8 = len(components(bg, eight_adj))
        table[code] = 1 if (t4 == 1 and t8 == 1) else 0
    return bytes(table)


_SIMPLE = _simple_table()


@dataclass(frozen=True)
class WarpResult:
    """Result of warping a binary truth toward a thresholded prediction.

    warped: ``(H, W)`` bool warped truth; error: fraction of pixels where it still differs
    from ``pred > threshold``; mismatches: ``(K, 2)`` (y, x) of those pixels; splits /
    mergers: number of split / merge errors among them (see `warp_truth`).
    """

    warped: np.ndarray
    error: float
    mismatches: np.ndarray
    splits: int
    mergers: int


def _warp(truth_fg: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """Simple-point warping of ``truth_fg`` toward ``prob > threshold`` (Fiji
    ``WarpingError.simplePointWarp2d``), returning the warped ``(H, W)`` bool image.

    Fiji sweeps the mismatching pixels in order of decreasing ``|p - threshold|`` (ties in
    x-major, then y order: Java's stable sort of its x/y scan), flips every simple one at
    once, and repeats until a sweep flips nothing.  A flipped pixel matches the target and is
    never touched again, and a pixel's simplicity only changes when a neighbour flips, so the
    same result is obtained by re-checking only pixels next to a flip: those ranked after the
    flip are re-checked in the same sweep (a heap), the others in the next sweep.
    """
    h, w = truth_fg.shape
    wp = w + 2
    src = np.zeros((h + 2, wp), dtype=np.uint8)
    src[1:-1, 1:-1] = truth_fg
    tgt = np.zeros_like(src)
    tgt[1:-1, 1:-1] = prob > threshold
    mism = np.flatnonzero(src != tgt)
    if mism.size == 0:
        return truth_fg.copy()
    ys, xs = np.divmod(mism, wp)
    # Fiji stores the key as a float: |float32 pixel - double threshold| cast to float.
    prob32 = prob.astype(np.float32).astype(np.float64)
    key = np.abs(prob32[ys - 1, xs - 1] - threshold).astype(np.float32)
    order = np.lexsort((ys, xs, -key))
    pts = mism[order].tolist()
    rank_arr = np.full(src.size, -1, dtype=np.int64)
    rank_arr[mism[order]] = np.arange(len(pts))
    rank = rank_arr.tolist()
    s = bytearray(src.tobytes())
    simple = _SIMPLE
    o0, o1, o2 = -wp - 1, -wp, -wp + 1
    o5, o6, o7 = wp - 1, wp, wp + 1
    offsets = (o0, o1, o2, -1, 1, o5, o6, o7)
    queued = bytearray(len(s))
    for q in pts:
        queued[q] = 1
    flipped = bytearray(len(s))
    heappop, heappush = heapq.heappop, heapq.heappush
    cur = list(range(len(pts)))  # already a heap: sorted
    while cur:
        nxt: list[int] = []
        while cur:
            r = heappop(cur)
            q = pts[r]
            queued[q] = 0
            code = (s[q + o0] | s[q + o1] << 1 | s[q + o2] << 2 | s[q - 1] << 3
                    | s[q + 1] << 4 | s[q + o5] << 5 | s[q + o6] << 6 | s[q + o7] << 7)
            if simple[code]:
                s[q] ^= 1
                flipped[q] = 1
                for o in offsets:
                    nb = q + o
                    rr = rank[nb]
                    if rr >= 0 and not flipped[nb] and not queued[nb]:
                        queued[nb] = 1
                        if rr > r:
                            heappush(cur, rr)
                        else:
                            nxt.append(rr)
        heapq.heapify(nxt)
        cur = nxt
    out = np.frombuffer(bytes(s), dtype=np.uint8).reshape(h + 2, wp)
    return out[1:-1, 1:-1].astype(bool)


# Mismatch classes of Fiji WarpingError.classifyMismatches2d.
_OBJECT_ADDITION, _OBJECT_DELETION, _HOLE_ADDITION, _HOLE_DELETION, _MERGE, _SPLIT = range(6)


def _classify_mismatches(warped: np.ndarray, mismatches: np.ndarray) -> np.ndarray:
    """Classify remaining mismatches (Fiji ``WarpingError.classifyMismatches2d``, radius -1).

    With the 4-connected components of the warped truth and the set U of component ids
    (0 = background) among the pixel's 8 neighbours inside the image:
    U = {0}: object deletion (pixel white) / addition (black); U = {c}: hole addition
    (white) / deletion (black); |U| = 2: black -> hole addition, white -> split if removing
    the pixel leaves more than 2 ids around it, else hole deletion; |U| > 2: merge (black) /
    split (white).
    """
    comps, _ = ndi.label(warped, structure=_FOUR)
    slices = ndi.find_objects(comps)
    h, w = warped.shape
    out = np.empty(len(mismatches), dtype=np.int8)
    for k, (y, x) in enumerate(mismatches.tolist()):
        ids = set()
        for dy, dx in _NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
                ids.add(int(comps[yy, xx]))
        own = int(comps[y, x])
        white = own != 0
        if ids == {0}:
            out[k] = _OBJECT_DELETION if white else _OBJECT_ADDITION
        elif len(ids) == 1:
            out[k] = _HOLE_ADDITION if white else _HOLE_DELETION
        elif len(ids) == 2:
            if not white:
                out[k] = _HOLE_ADDITION
            else:
                sl = slices[own - 1]
                sub = comps[sl] == own
                sy, sx = y - sl[0].start, x - sl[1].start
                sub[sy, sx] = False
                pieces, _ = ndi.label(sub, structure=_FOUR)
                around = set()
                for dy, dx in _NEIGHBOURS:
                    yy, xx = sy + dy, sx + dx
                    if 0 <= yy < sub.shape[0] and 0 <= xx < sub.shape[1] and pieces[yy, xx]:
                        around.add(int(pieces[yy, xx]))
                n_after = len(ids - {own}) + len(around)
                out[k] = _SPLIT if n_after > 2 else _HOLE_DELETION
        else:
            out[k] = _MERGE if not white else _SPLIT
    return out


def warp_truth(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> WarpResult:
    """Warp the binary truth toward ``pred > threshold`` and classify what still differs.

    Error = fraction of the ``H * W`` pixels where the warped truth differs from the
    thresholded prediction (Fiji ``simplePointWarp2d``: ``diff / (width * height)``).
    ``splits`` / ``mergers`` count split / merge *errors*: the remaining mismatching pixels
    classified as in Fiji ``classifyMismatches2d``, then grouped into 4-connected clusters
    (splits) and 8-connected clusters (mergers) as in ``clusterMismatchesByError``.
    """
    _check_pair(pred, truth)
    prob = _prediction(pred).prob
    fg = _truth_fg(truth)
    warped = _warp(fg, prob, float(threshold))
    diff = warped != (prob > threshold)
    ys, xs = np.nonzero(diff)
    mism = np.stack([ys, xs], axis=1)
    splits = mergers = 0
    if len(mism):
        cls = _classify_mismatches(warped, mism)
        for kind, struct in ((_SPLIT, _FOUR), (_MERGE, _EIGHT)):
            img = np.zeros_like(diff)
            sel = mism[cls == kind]
            img[sel[:, 0], sel[:, 1]] = True
            count = int(ndi.label(img, structure=struct)[1]) if len(sel) else 0
            if kind == _SPLIT:
                splits = count
            else:
                mergers = count
    return WarpResult(warped, float(np.count_nonzero(diff) / diff.size), mism, splits, mergers)


def warping_error(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = WARPING_THRESHOLDS,
) -> SweepResult:
    """Warping error (Jain et al. 2010; Fiji ``WarpingError.getMetricValue``), minimised
    over thresholds 0.0 ... 0.9.

    Per threshold: each slice's truth is warped by simple-point flips toward
    ``pred > t`` (see `warp_truth`), the slice error is the fraction of pixels still
    differing, and the stack error is the mean over slices.  Lower is better.
    """
    p_list, t_list = _stack(preds, truths)
    ts = _check_thresholds(thresholds)
    probs = [_prediction(p).prob for p in p_list]
    fgs = [_truth_fg(t) for t in t_list]
    per: list[list[float]] = []
    for t in ts:
        row = []
        for prob, fg in zip(probs, fgs):
            warped = _warp(fg, prob, t)
            row.append(float(np.count_nonzero(warped != (prob > t)) / warped.size))
        per.append(row)
    curve = [(t, float(np.mean(row))) for t, row in zip(ts, per)]
    best_t, best_v = _best(curve, maximise=False)
    return SweepResult(best_v, best_t, curve, per[ts.index(best_t)])


# --------------------------------------------------------------------------------------
# Whole-stack evaluation
# --------------------------------------------------------------------------------------

_SWEPT = ("isbi_pixel_error", "rand_error", "v_rand", "v_info", "warping_error")
METRIC_NAMES: tuple[str, ...] = (
    "pixel_error",
    "isbi_pixel_error",
    "rand_error",
    "adapted_rand_error",
    "v_rand",
    "v_info",
    "warping_error",
    "dice",
    "iou",
)


def evaluate_stack(
    probs: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    threshold: float = 0.5,
    names: Sequence[str] | None = None,
) -> dict:
    """Every metric on a stack, as a JSON-ready dict.

    ``probs``: N probability maps / masks / label images ``(H, W)`` (or one ``(N, H, W)``
    array); ``truths``: N truth images; ``threshold``: used by pixel_error,
    adapted_rand_error, dice and iou; ``names``: one name per image (default ``"0"``, ``"1"``,
    ...).  Returns::

        {"mean": {metric: value, ...},
         "best_threshold": {swept metric: t, ...},
         "curves": {swept metric: [[t, value], ...]},
         "images": [{"name": ..., metric: value, ...}, ...],
         "warping_topology": {"threshold": t, "splits": [...], "mergers": [...]}}

    For the swept metrics (isbi_pixel_error, rand_error, v_rand, v_info, warping_error)
    "mean" holds the stack value at the best threshold, as the challenge reports it, and each
    image entry its own value at that threshold (for the pooled isbi_pixel_error and
    rand_error the stack value is computed from pooled counts, not the mean of the images).
    The other metrics are per-image values at ``threshold`` and their plain mean.
    "warping_topology" gives the split / merge error counts left after warping each image at
    the warping error's best threshold.
    """
    p_list, t_list = _stack(probs, truths)
    if not (0.0 <= float(threshold) <= 1.0):
        raise UserInputError(f"threshold {threshold} is outside [0, 1]")
    if names is None:
        names = [str(i) for i in range(len(p_list))]
    names = list(names)
    if len(names) != len(p_list):
        raise UserInputError(f"{len(names)} names for {len(p_list)} images")

    sweeps: dict[str, SweepResult] = {
        "isbi_pixel_error": isbi_pixel_error(p_list, t_list),
        "rand_error": rand_error(p_list, t_list),
    }
    ts, tables = _thinned_tables(p_list, t_list, DEFAULT_THRESHOLDS)
    sweeps["v_rand"] = _sweep_from_tables(ts, tables, lambda tab: _rand_from_table(tab).fscore)
    sweeps["v_info"] = _sweep_from_tables(ts, tables, lambda tab: _info_from_table(tab).fscore)
    sweeps["warping_error"] = warping_error(p_list, t_list)

    images = []
    for i, (p, t) in enumerate(zip(p_list, t_list)):
        fs = foreground_scores(p, t, threshold)
        entry: dict = {"name": names[i]}
        for m in METRIC_NAMES:
            if m in sweeps:
                entry[m] = sweeps[m].per_image[i]
            elif m == "pixel_error":
                entry[m] = pixel_error(p, t, threshold)
            elif m == "adapted_rand_error":
                entry[m] = adapted_rand_error(p, t, threshold)
            else:
                entry[m] = fs[m]
        images.append(entry)

    mean = {
        m: (sweeps[m].value if m in sweeps else float(np.mean([e[m] for e in images])))
        for m in METRIC_NAMES
    }
    best_t = sweeps["warping_error"].best_threshold
    topo = [warp_truth(p, t, best_t) for p, t in zip(p_list, t_list)]
    return {
        "mean": mean,
        "best_threshold": {m: sweeps[m].best_threshold for m in _SWEPT},
        "curves": {m: [[t, v] for t, v in sweeps[m].curve] for m in _SWEPT},
        "images": images,
        "warping_topology": {
            "threshold": best_t,
            "splits": [r.splits for r in topo],
            "mergers": [r.mergers for r in topo],
        },
    }

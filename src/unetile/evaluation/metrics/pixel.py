"""Pixel metrics: pixel error, Dice, IoU, precision, recall, per-class scores, and the ISBI
2012 pixel error (1 - maximal F1 over thresholds, Fiji ``PixelError``)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ...errors import UserInputError
from .common import (
    DEFAULT_THRESHOLDS,
    SweepResult,
    best_on_curve,
    check_image,
    check_pair,
    check_thresholds,
    paired_stack,
    read_prediction,
    truth_foreground,
)


def confusion(pred_fg: np.ndarray, truth_fg: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(pred_fg & truth_fg))
    fp = int(np.count_nonzero(pred_fg & ~truth_fg))
    fn = int(np.count_nonzero(~pred_fg & truth_fg))
    tn = pred_fg.size - tp - fp - fn
    return tp, fp, fn, tn


def fiji_prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
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
    check_pair(pred, truth)
    fg = read_prediction(pred).prob > threshold
    return float(np.count_nonzero(fg != truth_foreground(truth)) / fg.size)


def foreground_scores(
    pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Dice, IoU, precision and recall of the interior class at ``threshold``.

    dice = 2TP / (2TP + FP + FN), iou = TP / (TP + FP + FN), precision = TP / (TP + FP),
    recall = TP / (TP + FN).  A ratio whose denominator is 0 (nothing predicted / nothing
    true) is 1.0: there was nothing to get wrong.
    """
    check_pair(pred, truth)
    fg = read_prediction(pred).prob > threshold
    tp, fp, fn, _ = confusion(fg, truth_foreground(truth))
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
    truth = check_image(truth, "truth")
    if pred.ndim == 3:
        pred = np.argmax(pred, axis=0)
    check_pair(pred, truth)
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(truth.dtype, np.integer)):
        raise UserInputError("class_scores needs integer class maps (or (C, H, W) scores)")
    if classes is None:
        classes = sorted(set(np.unique(pred).tolist()) | set(np.unique(truth).tolist()))
    out: dict[int, dict[str, float]] = {}
    for c in classes:
        tp, fp, fn, _ = confusion(pred == c, truth == c)
        out[int(c)] = _scores_from_counts(tp, fp, fn)
    return out


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
    p_list, t_list = paired_stack(preds, truths)
    ts = check_thresholds(thresholds)
    probs = [read_prediction(p).prob for p in p_list]
    fgs = [truth_foreground(t) for t in t_list]
    curve = []
    for t in ts:
        tp = fp = fn = 0
        for prob, fg in zip(probs, fgs):
            a, b, c, _ = confusion(prob > t, fg)
            tp, fp, fn = tp + a, fp + b, fn + c
        curve.append((t, 1.0 - fiji_prf(tp, fp, fn)[2]))
    best_t, best_v = best_on_curve(curve, maximise=False)
    per_image = []
    for prob, fg in zip(probs, fgs):
        a, b, c, _ = confusion(prob > best_t, fg)
        per_image.append(1.0 - fiji_prf(a, b, c)[2])
    return SweepResult(best_v, best_t, curve, per_image)



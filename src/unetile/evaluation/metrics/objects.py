"""Object metrics: cells matched one to one by their intersection over union (IoU).

A predicted cell and a true cell *match* at IoU threshold t when their IoU >= t and the
pairing is one to one: among all one-to-one pairings of cells with IoU >= t, the one with
the most pairs, and among those the largest summed IoU (StarDist's ``matching``, Cellpose's
``average_precision``; for t > 0.5 every cell has at most one partner, so the pairing is
unique). At each threshold, with TP matched pairs, FP unmatched predicted cells and FN
unmatched true cells:

- precision TP / (TP + FP), recall TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN);
- AP = TP / (TP + FP + FN): the 2018 Data Science Bowl's "average precision" at t, whose
  mean over t = 0.5, 0.55, ..., 0.95 is the challenge score (``mean_ap``);
- panoptic quality PQ = SQ x RQ (Kirillov et al. 2019): SQ the mean IoU of the matched
  pairs (``mean_matched_iou``), RQ = F1.

A ratio whose denominator is 0 is 1 where both images hold no cell (nothing to find,
nothing found) and 0 otherwise (StarDist gives 0 in both cases).

Merges and splits are counted by majority overlap, independently of any threshold: a true
cell is *merged* when the predicted cell holding more than half of its pixels also holds
more than half of another true cell's; a true cell is *split* when two or more predicted
cells each have more than half of their own pixels inside it.

Over a data set, counts (TP, FP, FN, summed IoU, merges, splits) are summed over the
images before any ratio is taken (StarDist's ``matching_dataset``), so large images with
many cells weigh more than small ones.

Cells come from `common.truth_labels` (truths: instance ids, or the 4-connected components
of a mask) and `common.prediction_labels` (a label image as it is, or the 4-connected
components of ``p > threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...errors import UserInputError
from .common import check_pair, paired_stack, prediction_labels, truth_labels
from .sizes import CellFates, equivalent_diameter, size_table

#: IoU thresholds of the 2018 Data Science Bowl score: 0.5, 0.55, ..., 0.95.
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class Overlaps:
    """Which true cell overlaps which predicted cell, and by how many pixels.

    ``true_ids`` / ``pred_ids``: the cells' ids (sorted); ``true_sizes`` / ``pred_sizes``
    their areas in px; ``pairs``: (K, 2) indices into those arrays of every overlapping
    pair, ``counts``: (K,) their shared pixels.
    """

    true_ids: np.ndarray
    true_sizes: np.ndarray
    pred_ids: np.ndarray
    pred_sizes: np.ndarray
    pairs: np.ndarray
    counts: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """(K,) IoU of each overlapping pair."""
        a = self.true_sizes[self.pairs[:, 0]]
        b = self.pred_sizes[self.pairs[:, 1]]
        return self.counts / (a + b - self.counts)


def overlaps(true_labels: np.ndarray, pred_labels: np.ndarray) -> Overlaps:
    """The sparse overlap table of two label images (H, W) (0 = no cell)."""
    t = np.asarray(true_labels).ravel().astype(np.int64)
    p = np.asarray(pred_labels).ravel().astype(np.int64)
    if t.min(initial=0) < 0 or p.min(initial=0) < 0:
        raise UserInputError("label images must not hold negative ids")
    k_true, k_pred = int(t.max(initial=0)) + 1, int(p.max(initial=0)) + 1
    if k_true * k_pred <= _DENSE_TABLE:  # small ids (as predictions and most truths have): count densely
        joint = np.bincount(t * k_pred + p, minlength=k_true * k_pred).reshape(k_true, k_pred)
        true_ids = np.flatnonzero(joint[1:].sum(axis=1)) + 1
        pred_ids = np.flatnonzero(joint[:, 1:].sum(axis=0)) + 1
        inner = joint[np.ix_(true_ids, pred_ids)]
        pairs = np.argwhere(inner)
        return Overlaps(true_ids, joint[true_ids].sum(axis=1), pred_ids, joint[:, pred_ids].sum(axis=0), pairs,
                        inner[pairs[:, 0], pairs[:, 1]])
    true_ids, true_sizes = np.unique(t[t > 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(p[p > 0], return_counts=True)
    both = (t > 0) & (p > 0)
    ti = np.searchsorted(true_ids, t[both])
    pi = np.searchsorted(pred_ids, p[both])
    keys, counts = np.unique(ti * max(len(pred_ids), 1) + pi, return_counts=True)
    pairs = np.stack([keys // max(len(pred_ids), 1), keys % max(len(pred_ids), 1)], axis=1)
    return Overlaps(true_ids, true_sizes, pred_ids, pred_sizes, pairs.reshape(-1, 2), counts)


_DENSE_TABLE = 4_000_000  # entries of the dense (true id x predicted id) table `overlaps` may count in


@dataclass(frozen=True)
class CellCounts:
    """Matched cells at one IoU threshold, for one image or summed over several."""

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    matched_iou: float  # the summed IoU of the matched pairs
    merged: int = 0  # true cells merged with another (majority overlap; no threshold)
    split: int = 0  # true cells split into several predicted cells

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    def _ratio(self, num: float, den: float) -> float:
        if den == 0:
            return 1.0 if self.n_true == 0 and self.n_pred == 0 else 0.0
        return float(num / den)

    @property
    def precision(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN): the Data Science Bowl's average precision at this threshold."""
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def mean_matched_iou(self) -> float:
        """SQ: the mean IoU of the matched pairs."""
        return self._ratio(self.matched_iou, self.tp)

    @property
    def pq(self) -> float:
        """Panoptic quality SQ x RQ (RQ = F1)."""
        return self.mean_matched_iou * self.f1

    def __add__(self, other: "CellCounts") -> "CellCounts":
        if other.threshold != self.threshold:
            raise ValueError(f"cannot pool counts at IoU {self.threshold} and {other.threshold}")
        return CellCounts(self.threshold, self.n_true + other.n_true, self.n_pred + other.n_pred, self.tp + other.tp,
                          self.matched_iou + other.matched_iou, self.merged + other.merged, self.split + other.split)

    def to_dict(self) -> dict:
        return {"iou_threshold": self.threshold, "n_true": self.n_true, "n_pred": self.n_pred, "tp": self.tp,
                "fp": self.fp, "fn": self.fn, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "ap": self.ap, "mean_matched_iou": self.mean_matched_iou, "pq": self.pq, "merged": self.merged,
                "split": self.split}


def match(table: Overlaps, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching at ``threshold`` -> (pairs (M, 2) of indices into the table's
    true and predicted cells, their IoU (M,)).

    Candidates are the overlapping pairs with IoU >= threshold. Groups of candidates linked
    through a shared cell (only possible for threshold <= 0.5) are paired by
    `scipy.optimize.linear_sum_assignment`: the most pairs, then the largest summed IoU.
    """
    iou = table.iou
    ok = iou >= threshold
    pairs, scores = table.pairs[ok], iou[ok]
    if len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])):
        return pairs, scores  # no cell in two candidates (always so above 0.5)
    n_true = len(table.true_sizes)
    n_cells = n_true + len(table.pred_sizes)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], n_true + pairs[:, 1])), shape=(n_cells, n_cells))
    group = connected_components(graph, directed=False)[1][pairs[:, 0]]
    keep = np.bincount(group)[group] == 1  # a candidate that shares no cell is a match
    for g in np.unique(group[~keep]):
        members = np.flatnonzero(group == g)
        keep[members[_assign(pairs[members], scores[members])]] = True
    return pairs[keep], scores[keep]


def _assign(pairs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the candidate pairs chosen among ``pairs`` (K, 2) that share cells."""
    rows, r = np.unique(pairs[:, 0], return_inverse=True)
    cols, c = np.unique(pairs[:, 1], return_inverse=True)
    n = min(len(rows), len(cols))
    gain = np.zeros((len(rows), len(cols)))
    # One more pair is worth more than any change of the summed IoU (at most n / (2 n) < 1).
    gain[r, c] = 1.0 + scores / (2 * n)
    chosen_r, chosen_c = linear_sum_assignment(gain, maximize=True)
    index = -np.ones_like(gain, dtype=np.int64)
    index[r, c] = np.arange(len(pairs))
    picked = index[chosen_r, chosen_c]
    return picked[picked >= 0]


def merged_and_split(table: Overlaps) -> tuple[np.ndarray, np.ndarray]:
    """(merged, split): (N_true,) bool, for each of the table's true cells, whether it is merged
    and whether it is split, by majority overlap (see the module docstring)."""
    counts, (ti, pi) = table.counts, table.pairs.T
    # The predicted cell holding more than half of each true cell, and vice versa.
    t_major = counts * 2 > table.true_sizes[ti]
    holder = np.full(len(table.true_sizes), -1)
    holder[ti[t_major]] = pi[t_major]
    holds_two = np.bincount(holder[holder >= 0], minlength=len(table.pred_sizes) + 1) > 1
    merged = (holder >= 0) & holds_two[holder]  # holder -1 reads the unused last entry: False
    p_major = counts * 2 > table.pred_sizes[pi]
    split = np.bincount(ti[p_major], minlength=len(table.true_sizes)) > 1
    return merged, split


def merges_and_splits(table: Overlaps) -> tuple[int, int]:
    """(merged, split) true cells by majority overlap (see the module docstring)."""
    merged, split = merged_and_split(table)
    return int(np.count_nonzero(merged)), int(np.count_nonzero(split))


def cell_fates(table: Overlaps, ndim: int = 2) -> CellFates:
    """The fate of each true cell of one image's (volume's, ``ndim`` 3) `overlaps` table."""
    found = np.zeros(len(table.true_sizes), dtype=bool)
    found[match(table, 0.5)[0][:, 0]] = True
    merged, _ = merged_and_split(table)
    return CellFates(equivalent_diameter(table.true_sizes, ndim), found, merged & ~found, ndim)


def cell_counts(truth_ids: np.ndarray, pred_ids: np.ndarray,
                iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> list[CellCounts]:
    """Matched cells of two label images (H, W) at each IoU threshold (0 = no cell)."""
    return table_counts(overlaps(truth_ids, pred_ids), iou_thresholds)


def table_counts(table: Overlaps, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> list[CellCounts]:
    """`cell_counts` of one image's `overlaps` table."""
    merged, split = merges_and_splits(table)
    out = []
    for t in iou_thresholds:
        _, scores = match(table, t)
        out.append(CellCounts(float(t), len(table.true_sizes), len(table.pred_sizes), len(scores),
                              float(scores.sum()), merged, split))
    return out


def check_iou_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts:
        raise UserInputError("no IoU thresholds given")
    for t in ts:
        if not 0.0 < t <= 1.0:
            raise UserInputError(f"IoU threshold {t} is outside (0, 1]")
    return ts


def cell_scores(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    threshold: float = 0.5,
    iou_thresholds: Iterable[float] = IOU_THRESHOLDS,
) -> dict:
    """Object metrics of a stack, per image and pooled, as a JSON-ready dict.

    ``preds``: label images (cells as they are) or maps (cells = 4-connected components of
    ``p > threshold``); ``truths``: instance ids or masks (see `common.truth_labels`).
    Returns::

        {"iou_thresholds": [0.5, ..., 0.95],
         "pooled": {"at": [CellCounts.to_dict() per IoU threshold], **summary},
         "images": [{"at": [...], **summary}, ...],
         "by_size": sizes.size_table(...)}

    where summary = ap_50, ap_75, mean_ap (AP averaged over the thresholds), f1_50,
    precision_50, recall_50, pq_50, mean_matched_iou_50, merged, split, n_true, n_pred
    ("_50": at IoU 0.5, or at the first threshold if 0.5 is not among them), and "by_size"
    the true cells of each size found at IoU 0.5, merged or missed: its "merged" counts only
    the merged cells left unmatched, so that its columns add up to the cells (the summary's
    ``merged`` counts every merged cell, matched or not).
    """
    p_list, t_list = paired_stack(preds, truths)
    ts = check_iou_thresholds(iou_thresholds)
    per_image, fates = [], []
    for p, t in zip(p_list, t_list):
        check_pair(p, t)
        table = overlaps(truth_labels(t), prediction_labels(p, threshold))
        per_image.append(table_counts(table, ts))
        fates.append(cell_fates(table))
    return {"iou_thresholds": list(ts), "pooled": summary(pooled(per_image)),
            "images": [summary(c) for c in per_image], "by_size": size_table(fates)}


def pooled(per_image: list[list[CellCounts]]) -> list[CellCounts]:
    """Each image's `cell_counts` -> the data set's, counts summed per IoU threshold."""
    return [sum(column[1:], column[0]) for column in zip(*per_image)]


def summary(counts: list[CellCounts]) -> dict:
    """The per-threshold counts and the headline numbers of one image or a data set."""
    at = {c.threshold: c for c in counts}
    first = at.get(0.5, counts[0])
    return {
        "ap_50": first.ap,
        "ap_75": at[0.75].ap if 0.75 in at else float("nan"),
        "mean_ap": float(np.mean([c.ap for c in counts])),
        "f1_50": first.f1,
        "precision_50": first.precision,
        "recall_50": first.recall,
        "pq_50": first.pq,
        "mean_matched_iou_50": first.mean_matched_iou,
        "merged": first.merged,
        "split": first.split,
        "n_true": first.n_true,
        "n_pred": first.n_pred,
        "at": [c.to_dict() for c in counts],
    }

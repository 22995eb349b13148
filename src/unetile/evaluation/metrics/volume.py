"""Metrics of volumes: objects are 3D, not a pile of 2D cells (issue 34, item 7).

A stack of planes (`evaluate_stack`) counts a nucleus cut by 20 sections as 20 cells and cannot
see two objects that touch in the next section. `evaluate_volumes` takes each (Z, Y, X)
volume whole: objects are face-connected (6 neighbours) components or the ids as given,
matched one to one by 3D IoU (`objects.cell_counts`: precision, recall, F1, AP at IoU
0.5-0.95, panoptic quality, merged and split objects), with the foreground-restricted
variation of information (its split and merge scores), scikit-image's adapted Rand error,
and Dice / IoU of the foreground; per volume, and pooled (object counts summed before the
ratios; the others averaged). The same functions as in 2D, on three axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import UserInputError
from .common import check_pair, prediction_labels, truth_labels
from .objects import IOU_THRESHOLDS, cell_fates, check_iou_thresholds, overlaps, pooled, summary, table_counts
from .pixel import foreground_scores
from .rand import adapted_rand_error, foreground_restricted_info
from .sizes import size_table

VOLUME_METRICS = ("voi_split", "voi_merge", "voi_fscore", "adapted_rand_error", "dice", "iou")


def evaluate_volumes(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    threshold: float = 0.5,
    names: Sequence[str] | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """Every 3D metric of N volumes (Z, Y, X), as a JSON-ready dict.

    ``preds``: probability maps / masks (objects: components of ``p > threshold``) or label
    volumes; ``truths``: instance ids or masks. Returns::

        {"mean": {metric: value}, "volumes": [{"name": ..., metric: value}, ...],
         "objects": {"iou_thresholds": [...], "pooled": {...}, "volumes": [{...}, ...],
                     "by_size": {...}}}

    where the object summaries are `objects.cell_scores`' (ap_50, ap_75, mean_ap, f1_50, ...)
    and "by_size" counts the true objects found, merged and missed by size (`sizes`, in 3D).
    """
    preds, truths = _volumes(preds, "predictions"), _volumes(truths, "truths")
    if len(preds) != len(truths) or not preds:
        raise UserInputError(f"{len(preds)} predicted volumes for {len(truths)} true ones (give the same number, > 0)")
    names = [str(i) for i in range(len(preds))] if names is None else list(names)
    ts = check_iou_thresholds(iou_thresholds)
    entries, counts, fates = [], [], []
    for name, pred, truth in zip(names, preds, truths):
        check_pair(pred, truth)
        true_ids, pred_ids = truth_labels(truth), prediction_labels(pred, threshold)
        table = overlaps(true_ids, pred_ids)
        counts.append(table_counts(table, ts))
        fates.append(cell_fates(table, ndim=3))
        entries.append({"name": name, **_voxel_metrics(pred, truth, true_ids, pred_ids, threshold)})
    mean = {m: float(np.mean([e[m] for e in entries])) for m in VOLUME_METRICS}
    return {"mean": mean, "volumes": entries,
            "objects": {"iou_thresholds": list(ts), "pooled": summary(pooled(counts)),
                        "volumes": [summary(c) for c in counts], "by_size": size_table(fates)}}


def _voxel_metrics(pred: np.ndarray, truth: np.ndarray, true_ids: np.ndarray, pred_ids: np.ndarray,
                   threshold: float) -> dict[str, float]:
    info = foreground_restricted_info(true_ids, pred_ids)
    fg = foreground_scores(pred, truth, threshold)
    return {"voi_split": info.split, "voi_merge": info.merge, "voi_fscore": info.fscore,
            "adapted_rand_error": adapted_rand_error(pred, truth, threshold), "dice": fg["dice"], "iou": fg["iou"]}


def _volumes(arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = [np.asarray(a) for a in ([arrays] if isinstance(arrays, np.ndarray) and arrays.ndim == 3 else arrays)]
    for i, a in enumerate(out):
        if a.ndim != 3:
            raise UserInputError(f"{what} {i}: a volume is (Z, Y, X), got shape {a.shape}")
    return out

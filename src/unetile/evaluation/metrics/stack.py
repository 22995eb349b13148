"""Every metric on a stack of images at once, as a JSON-ready dict (what `unetile evaluate` reports)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import UserInputError
from .common import DEFAULT_THRESHOLDS, SweepResult, paired_stack
from .objects import cell_scores
from .pixel import foreground_scores, isbi_pixel_error, pixel_error
from .rand import adapted_rand_error, info_from_table, rand_error, rand_from_table, sweep_from_tables, thinned_tables
from .warping import warp_truth, warping_error

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
         "warping_topology": {"threshold": t, "splits": [...], "mergers": [...]},
         "cells": objects.cell_scores(...)}

    For the swept metrics (isbi_pixel_error, rand_error, v_rand, v_info, warping_error)
    "mean" holds the stack value at the best threshold, as the challenge reports it, and each
    image entry its own value at that threshold (for the pooled isbi_pixel_error and
    rand_error the stack value is computed from pooled counts, not the mean of the images).
    The other metrics are per-image values at ``threshold`` and their plain mean.
    "warping_topology" gives the split / merge error counts left after warping each image at
    the warping error's best threshold. "cells" holds the object metrics (cells matched by
    IoU, per image and pooled; predicted cells of a map are its components at ``threshold``).
    """
    p_list, t_list = paired_stack(probs, truths)
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
    ts, tables = thinned_tables(p_list, t_list, DEFAULT_THRESHOLDS)
    sweeps["v_rand"] = sweep_from_tables(ts, tables, lambda tab: rand_from_table(tab).fscore)
    sweeps["v_info"] = sweep_from_tables(ts, tables, lambda tab: info_from_table(tab).fscore)
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
        "cells": cell_scores(p_list, t_list, threshold),
    }

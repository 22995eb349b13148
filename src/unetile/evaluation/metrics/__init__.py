"""Segmentation metrics for membrane / cell-interior maps (ISBI 2012 style), one family a module.

================  ===========================================================================
``common``        reading predictions and truths, threshold sweeps (`SweepResult`)
``pixel``         pixel error, Dice, IoU, precision, recall, class scores, ISBI pixel error
``rand``          Rand error, V_rand, V_info (Fiji), adapted Rand error (scikit-image)
``warping``       the warping error and its split / merge counts
``objects``       cells matched one to one by IoU: AP, F1, panoptic quality, merges and splits
``stack``         every metric on a stack at once (`evaluate_stack`, what `unetile evaluate` reports)
================  ===========================================================================

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

from .common import (
    DEFAULT_THRESHOLDS,
    WARPING_THRESHOLDS,
    SweepResult,
    as_probability,
    prediction_labels,
    truth_labels,
)
from .objects import IOU_THRESHOLDS, CellCounts, cell_counts, cell_scores, pooled
from .pixel import class_scores, dice, foreground_scores, iou, isbi_pixel_error, pixel_error, precision, recall
from .rand import (
    InfoScores,
    RandScores,
    adapted_rand_error,
    foreground_restricted_info,
    foreground_restricted_rand,
    rand_error,
    thin_boundaries,
    v_info,
    v_rand,
)
from .stack import METRIC_NAMES, evaluate_stack
from .volume import VOLUME_METRICS, evaluate_volumes
from .warping import WarpResult, warp_truth, warping_error

__all__ = [
    "DEFAULT_THRESHOLDS",
    "WARPING_THRESHOLDS",
    "IOU_THRESHOLDS",
    "METRIC_NAMES",
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
    "CellCounts",
    "cell_counts",
    "cell_scores",
    "pooled",
    "evaluate_stack",
    "VOLUME_METRICS",
    "evaluate_volumes",
]

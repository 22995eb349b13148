"""What every metric shares: reading predictions and truths, checking them, threshold sweeps.

The conventions (what a prediction and a truth may be) are in this package's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ...errors import UserInputError

#: Thresholds of the ISBI 2012 scripts (Fiji: ``min 0.0, max 1.0, step 0.1``).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: Thresholds over which the warping error is minimised (0.0 ... 0.9).
WARPING_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A prediction normalised to a probability map, plus its labels if it was a label image."""

    prob: np.ndarray  # (H, W) float64 in [0, 1]
    labels: np.ndarray | None  # (H, W) int64 cell ids (0 = boundary), or None


def check_image(array: np.ndarray, what: str, volumes: bool = False) -> np.ndarray:
    """``array`` as a 2-D (H, W) image, or with ``volumes`` also a 3-D (Z, Y, X) volume."""
    array = np.asarray(array)
    if array.ndim != 2 and not (volumes and array.ndim == 3):
        kind = "a 2-D (H, W) image or a 3-D (Z, Y, X) volume" if volumes else "a 2-D (H, W) image"
        raise UserInputError(f"{what} must be {kind}, got an array of shape {array.shape}")
    if array.size == 0:
        raise UserInputError(f"{what} is empty (shape {array.shape})")
    return array


def face_connected(ndim: int) -> np.ndarray:
    """Neighbours that share a face: `FOUR` in 2D, the 6 face neighbours in 3D."""
    return ndi.generate_binary_structure(ndim, 1)


def read_prediction(pred: np.ndarray, what: str = "prediction") -> Prediction:
    pred = check_image(pred, what, volumes=True)
    if pred.dtype == bool:
        return Prediction(pred.astype(np.float64), None)
    if pred.dtype == np.uint8:
        return Prediction(pred.astype(np.float64) / 255.0, None)
    if np.issubdtype(pred.dtype, np.integer):
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0:
            raise UserInputError(f"{what} is a label image with negative values (min {lo})")
        if hi <= 1:
            return Prediction(pred.astype(np.float64), None)
        labels = pred.astype(np.int64)
        return Prediction((labels > 0).astype(np.float64), labels)
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
        return Prediction(prob, None)
    raise UserInputError(f"{what} has unsupported dtype {pred.dtype}")


def as_probability(pred: np.ndarray) -> np.ndarray:
    """Return a prediction as a float64 ``(H, W)`` map in [0, 1] (uint8 is divided by 255)."""
    return read_prediction(pred).prob


def truth_labels(truth: np.ndarray) -> np.ndarray:
    """Cell ids of a truth image ``(H, W)`` (or volume ``(Z, Y, X)``), int64, 0 = boundary.

    Binary truth (one non-zero value) -> 4-connected components of ``truth > 0`` (Fiji
    ``Utils.connectedComponents(..., 4)`` as used by ``RandError``; 6-connected in 3D);
    several non-zero integer values -> taken as cell ids unchanged.
    """
    truth = check_image(truth, "truth", volumes=True)
    if truth.dtype == bool:
        return ndi.label(truth, structure=face_connected(truth.ndim))[0].astype(np.int64)
    values = np.unique(truth)
    nonzero = values[values != 0]
    if np.issubdtype(truth.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise UserInputError("truth contains NaN or infinite values")
    if nonzero.size <= 1:
        return ndi.label(truth > 0, structure=face_connected(truth.ndim))[0].astype(np.int64)
    if not np.issubdtype(truth.dtype, np.integer):
        if not np.all(nonzero == np.round(nonzero)):
            raise UserInputError(
                "truth must be binary (0 = boundary, one value for interior) or an integer "
                f"label image; got {nonzero.size} distinct non-integer values"
            )
    if np.any(nonzero < 0):
        raise UserInputError("truth label image has negative values")
    return truth.astype(np.int64)


def truth_foreground(truth: np.ndarray) -> np.ndarray:
    return check_image(truth, "truth", volumes=True) > 0


def prediction_components(pred: Prediction, threshold: float) -> np.ndarray:
    if pred.labels is not None:
        return pred.labels
    return ndi.label(pred.prob > threshold, structure=face_connected(pred.prob.ndim))[0].astype(np.int64)


def prediction_labels(pred: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Face-connected components of ``pred > threshold`` (4-connected in 2D, 6 in 3D; a
    label image is returned as is)."""
    return prediction_components(read_prediction(pred), threshold)


def paired_stack(
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
        check_image(a, f"prediction {i}")
        check_image(b, f"truth {i}")
        if a.shape != b.shape:
            raise UserInputError(
                f"image {i}: prediction shape {a.shape} differs from truth shape {b.shape}"
            )
    return p, t


def check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    """Two images (or two volumes) of one shape."""
    pred = check_image(pred, "prediction", volumes=True)
    truth = check_image(truth, "truth", volumes=True)
    if pred.shape != truth.shape:
        raise UserInputError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")


def check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts:
        raise UserInputError("no thresholds given")
    for t in ts:
        if not (0.0 <= t <= 1.0):
            raise UserInputError(f"threshold {t} is outside [0, 1]")
    return ts


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


def best_on_curve(curve: list[tuple[float, float]], maximise: bool) -> tuple[float, float]:
    best_t, best_v = curve[0]
    for t, v in curve[1:]:
        if (v > best_v) if maximise else (v < best_v):
            best_t, best_v = t, v
    return best_t, best_v



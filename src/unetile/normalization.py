"""Per-image intensity normalisation, the same in training and prediction.

Images of any bit depth (8/16-bit, float) are mapped per image and per channel so that the
``low`` percentile goes to 0 and the ``high`` percentile to 1. The settings are stored in
every checkpoint, so prediction normalises exactly as training did.

A nearly empty image (a nucleus or two in a field of noise) has its ``high`` percentile in the
noise: stretched to 1, the noise looks like cells to the net (on the DSB 2018 split one such
image gave 0-290 false nuclei, depending on the run). So prediction holds the upper value to at
least ``floor`` of the way from the low value to the ``peak`` percentile (the brightest objects;
`PredictOptions.normalization_floor`, 0.5). In an image with a fair share of bright objects the
``high`` percentile is above that and nothing changes (every ISBI 2012 slice, 84% of the DSB
fluorescence images). Training normalises without it (``floor`` 0), as before: with it in
training too, three runs scored what the prediction-only floor gives (docs/results.md). A field of
pure noise (no bright object: its 99.9th percentile is noise too) is not helped by the floor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Percentiles are estimated on at most this many pixels per image (a regular subsample),
# so that a 16384^2 image costs no full-size float copy.
_MAX_SAMPLES = 4_000_000


@dataclass(frozen=True)
class Normalization:
    low: float = 1.0  # percentile (0-100) mapped to 0
    high: float = 99.0  # percentile (0-100) mapped to 1
    # the value mapped to 1 is at least low + floor x (the peak percentile - low); 0: off
    floor: float = 0.0
    peak: float = 99.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100 percentiles, got {self.low}, {self.high}")
        if not (0.0 <= self.floor <= 1.0 and self.high <= self.peak <= 100.0):
            raise ValueError(f"need 0 <= floor <= 1 and high <= peak <= 100, got {self.floor}, {self.peak}")

    def to_dict(self) -> dict:
        return {"kind": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        """Checkpoints hold no floor (0): prediction sets it (`PredictOptions.normalization_floor`)."""
        return cls(low=float(d["low"]), high=float(d["high"]), floor=float(d.get("floor", 0.0)),
                   peak=float(d.get("peak", 99.9)))

    def statistics(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values of ``image`` (C, H, W) or a volume's (C, Z, Y, X);
        each array has shape (C,)."""
        c, spatial = image.shape[0], image.shape[1:]
        step = subsample_step(math.prod(spatial), _MAX_SAMPLES, len(spatial))
        return self.limits(np.asarray(image[(slice(None), *(slice(None, None, step),) * len(spatial))]).reshape(c, -1))

    def limits(self, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values, each (C,) float32, of a (C, N) sample of the pixels."""
        if self.floor == 0.0:
            lo, hi = np.percentile(sample, [self.low, self.high], axis=1).astype(np.float32)
            return lo, hi
        lo, hi, peak = np.percentile(sample, [self.low, self.high, self.peak], axis=1)
        # np.maximum returns hi itself where it is larger: those images normalise to the same bits
        return lo.astype(np.float32), np.maximum(hi, lo + self.floor * (peak - lo)).astype(np.float32)


def subsample_step(count: int, budget: int, dims: int) -> int:
    """Take every step-th sample along each of ``dims`` axes to keep ``count`` samples to about
    ``budget`` (1: all). Images take the square root, volumes the ``dims``-th root (kept apart:
    a cube root of a square can round the other way, and 2D numbers must not move)."""
    load = count / budget
    return max(1, math.ceil(math.sqrt(load) if dims == 2 else load ** (1 / dims)))


def apply_normalization(image: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(C, H, W) (or (C, Z, Y, X)) array of any dtype -> float32 with ``low`` at 0 and ``high``
    at 1 per channel."""
    scale = np.where(high > low, high - low, 1.0).astype(np.float32)
    per_channel = (slice(None),) + (None,) * (image.ndim - 1)
    out = image.astype(np.float32)  # a copy: the caller's array is never changed
    out -= low[per_channel]
    out /= scale[per_channel]
    return out


def normalize(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Normalise a whole (C, H, W) image (or (C, Z, Y, X) volume) with its own percentiles."""
    lo, hi = normalization.statistics(image)
    return apply_normalization(image, lo, hi)

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
training too, three runs scored what the prediction-only floor gives (docs/results.md).

A field of pure noise (no bright object: its 99.9th percentile is noise too) is not helped by that
floor, so prediction also holds the upper value at least ``noise_floor`` standard deviations of the
pixel noise above the low value (`noise_sd`; `PredictOptions.normalization_noise_floor`, 10). A
field of noise spans about 4-7 of them from its 1st to its 99.9th percentile (128 x 128 crops of
DSB 2018 background); every image of ISBI 2012 and DSB 2018 spans 18 or more, and their 99th
percentile is 16 or more above the 1st, so they normalise to the same bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Prediction's floors, the defaults of `PredictOptions.normalization_floor` and
# ``normalization_noise_floor`` and of the CLI (the model card's text says "half-way").
PREDICTION_FLOOR = 0.5
PREDICTION_NOISE_FLOOR = 10.0

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
    # the value mapped to 1 is at least low + noise_floor x the pixel noise's sd (`noise_sd`); 0: off
    noise_floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100 percentiles, got {self.low}, {self.high}")
        if not (0.0 <= self.floor <= 1.0 and self.high <= self.peak <= 100.0):
            raise ValueError(f"need 0 <= floor <= 1 and high <= peak <= 100, got {self.floor}, {self.peak}")
        if not 0.0 <= self.noise_floor < math.inf:
            raise ValueError(f"need 0 <= noise_floor < inf, got {self.noise_floor}")

    def to_dict(self) -> dict:
        return {"kind": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        """Checkpoints hold no floors (0): prediction sets them (`PredictOptions.normalization_floor`,
        ``normalization_noise_floor``)."""
        return cls(low=float(d["low"]), high=float(d["high"]), floor=float(d.get("floor", 0.0)),
                   peak=float(d.get("peak", 99.9)), noise_floor=float(d.get("noise_floor", 0.0)))

    def statistics(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values of ``image`` (C, H, W) or a volume's (C, Z, Y, X);
        each array has shape (C,)."""
        c, spatial = image.shape[0], image.shape[1:]
        step = subsample_step(math.prod(spatial), _MAX_SAMPLES, len(spatial))
        sample = np.asarray(image[(slice(None), *(slice(None, None, step),) * len(spatial))]).reshape(c, -1)
        noise = noise_sd([central_region(image, _MAX_SAMPLES)]) if self.noise_floor else None
        return self.limits(sample, noise)

    def limits(self, sample: np.ndarray, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values, each (C,) float32, of a (C, N) sample of the pixels;
        ``noise``: the pixel noise's sd per channel (C,) (`noise_sd`), needed with ``noise_floor``."""
        if self.floor == 0.0 and self.noise_floor == 0.0:
            lo, hi = np.percentile(sample, [self.low, self.high], axis=1).astype(np.float32)
            return lo, hi
        lo, hi, peak = np.percentile(sample, [self.low, self.high, self.peak], axis=1)
        # np.maximum returns hi itself where it is larger: those images normalise to the same bits
        hi = np.maximum(hi, lo + self.floor * (peak - lo))
        if self.noise_floor:
            hi = np.maximum(hi, lo + self.noise_floor * noise)
        return lo.astype(np.float32), hi.astype(np.float32)


def noise_sd(regions: list[np.ndarray]) -> np.ndarray:
    """The sd of the pixel noise per channel, (C,) float64, of regions (C, *spatial) of one image
    (Immerkaer 1996: the mean absolute response to the 3 x 3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]],
    which cancels planes and ramps, x sqrt(pi/2) / 6; volumes: in each plane). Edges and texture
    add to it, so it can only overstate the noise of a structured image (ISBI 2012 EM: 8-12 grey
    levels), never hide one. Written here because scikit-image's `estimate_sigma` needs PyWavelets
    and a full image, and the chunked path has only chunks."""
    total, count = None, 0
    for region in regions:
        # the kernel is the outer product of [1, -2, 1] with itself: second differences along y and x
        response = np.abs(np.diff(np.diff(np.asarray(region, np.float64), 2, axis=-2), 2, axis=-1))
        channel_sums = response.reshape(response.shape[0], -1).sum(axis=1)
        total = channel_sums if total is None else total + channel_sums
        count += response[0].size
    return total / max(count, 1) * math.sqrt(math.pi / 2) / 6


def central_region(image: np.ndarray, budget: int) -> np.ndarray:
    """The centre of ``image`` (C, *spatial) with at most about ``budget`` px (voxels), equal sides
    where the image allows: full resolution, for `noise_sd` (a strided sample has no neighbours)."""
    spatial = image.shape[1:]
    side = int(budget ** (1 / len(spatial)))
    lengths = [min(n, side) for n in spatial]
    crop = tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(spatial, lengths))
    return np.asarray(image[(slice(None), *crop)])


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

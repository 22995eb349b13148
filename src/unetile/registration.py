"""Sub-pixel registration of images to their labels.

Annotations are not always drawn on the image's own pixel grid: in the ISBI 2012 training
set the membrane labels sit about half a pixel above the dark membranes (and ~0.2 px to the
left). A net trained with flips and 90-degree rotations cannot learn such an offset (up and
down look alike to it), so its maps miss the labels by that half pixel at every edge.

The remedy here: estimate the offset once on the training data, resample every image onto
the labels' grid (cubic spline, mirror at the borders), and store the shift with the model
so that `unetile predict` resamples its inputs the same way. Every flip and rotation is then
a true symmetry of the (image, label) pairs again.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from .errors import UserInputError

# Tiles are shifted with this many extra px of context on each side: the cubic spline's
# prefilter is recursive, and its edge effect decays by 0.268 per px, so at 16 px a tile
# matches the whole-image result to ~1e-9 of the image's range.
TILE_HALO = 16
MAX_OFFSET = 2.0  # px; a larger estimate means the data are misregistered, not offset
MIN_OFFSET = 0.1  # px; a smaller estimate is left alone (within the estimate's noise)
MAX_IMAGES, MAX_SIDE = 16, 1024  # the estimate's sample


def estimate_label_offset(images: list[np.ndarray], foregrounds: list[np.ndarray]) -> tuple[float, float]:
    """The (dy, dx) px shift that moves the images onto their labels (median over images).

    ``images``: (C, H, W) float; ``foregrounds``: (H, W) bool, same H, W. The shift is the
    peak of the cross-correlation of the channel-mean image with the foreground, refined to
    1/20 px (`skimage.registration.phase_cross_correlation` with no phase normalisation: the
    binary foreground and the grey image share edges, not spectra). Dark or bright
    foreground both work (the peak of |correlation| is taken). Rounded to 0.05 px.
    """
    if not images:
        raise ValueError("no images to estimate the label offset from")
    # At most MAX_IMAGES images (evenly spaced), each at most MAX_SIDE px square (centre):
    # plenty for a median, and a bounded cost on large data sets.
    pick = np.unique(np.linspace(0, len(images) - 1, min(len(images), MAX_IMAGES)).round().astype(int))
    shifts = []
    for i in pick:
        grey, fg = _centre(images[i].mean(axis=0)), _centre(foregrounds[i])
        if fg.all() or not fg.any() or grey.std() == 0:
            continue  # nothing to align
        # Zero-mean both, so that the peak is the images' shared edges, not their mean levels.
        f = fg.astype(np.float32)
        s, _, _ = phase_cross_correlation(f - f.mean(), grey - grey.mean(), upsample_factor=20, normalization=None)
        shifts.append(s)
    if not shifts:
        return 0.0, 0.0
    dy, dx = np.median(np.array(shifts), axis=0)
    return round(float(dy) * 20) / 20, round(float(dx) * 20) / 20


def _centre(a: np.ndarray) -> np.ndarray:
    """The central MAX_SIDE x MAX_SIDE px of (H, W) ``a`` (all of it when smaller)."""
    y0, x0 = max(0, (a.shape[0] - MAX_SIDE) // 2), max(0, (a.shape[1] - MAX_SIDE) // 2)
    return a[y0 : y0 + MAX_SIDE, x0 : x0 + MAX_SIDE]


def shift_image(image: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """(C, H, W) -> (C, H, W) float32 with ``out[y, x] = image[y - dy, x - dx]`` (cubic spline,
    mirror extrapolation). A zero offset returns the image unchanged (as float32)."""
    dy, dx = offset
    image = np.asarray(image, dtype=np.float32)
    if dy == 0 and dx == 0:
        return image
    return np.stack([ndimage.shift(c, (dy, dx), order=3, mode="mirror") for c in image])


def tile_halo(offset: tuple[float, float]) -> int:
    """Extra px of context a tile needs on each side to be shifted as the whole image is."""
    if offset[0] == 0 and offset[1] == 0:
        return 0
    return TILE_HALO + math.ceil(max(abs(offset[0]), abs(offset[1])))


def parse_label_offset(text: str) -> str | tuple[float, float]:
    """``--label-offset``: "auto" (estimate on the training data), "none", or "DY,DX" in px."""
    text = str(text).strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        dy, dx = (float(v) for v in text.split(","))
    except ValueError:
        raise UserInputError(
            f"--label-offset {text}: use auto, none, or two numbers DY,DX in px (e.g. -0.5,0)") from None
    if not (abs(dy) <= MAX_OFFSET and abs(dx) <= MAX_OFFSET):
        raise UserInputError(f"--label-offset {text}: each shift must be within +-{MAX_OFFSET:g} px")
    return dy, dx

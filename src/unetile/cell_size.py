"""Object size: images rescaled so that their cells reach the net at one diameter.

Nuclei of one acquisition are 8 px across, of another 50: a net of a fixed receptive field
sees the first as specks that merge and the second as textures larger than its view. Cellpose's
answer, kept here: training measures the cells' diameters in each label image and rescales the
image (and its labels) so that its median cell is ``net_diameter`` px across; the diameter is
stored in the checkpoint, and prediction rescales each image the same way (the cells' diameter
given, ``--diameter``, or estimated from a first pass) and brings the result back to the image's
own size exactly.

A cell's diameter is that of the disc of its area; an image's is that of its median cell
(Cellpose's ``diameters``). Resizing is scikit-image's ``resize``: linear (anti-aliased when
shrinking) for images and probability maps, nearest for label images.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

__all__ = ["MIN_FACTOR", "MAX_FACTOR", "SAME_SCALE", "disc_diameter", "median_diameter", "scale_factor",
           "scaled_shape", "resize_image", "resize_labels"]

#: Rescaling is held to this range: past 4x a 256 x 256 image costs 16x the time, and below
#: 1/4 a nucleus of 100 px keeps too few pixels of its edge.
MIN_FACTOR, MAX_FACTOR = 0.25, 4.0
#: Factors this close to 1 (within 10%) count as 1: an image is not resampled for so little, and
#: prediction then keeps its first pass.
SAME_SCALE = 0.1


def disc_diameter(area: float | np.ndarray) -> float | np.ndarray:
    """A cell's diameter (px) from its area (px): that of the disc of that area."""
    return 2.0 * np.sqrt(area / np.pi)


def median_diameter(ids: np.ndarray) -> float | None:
    """Instance ids (H, W), 0 background -> the diameter (px) of the disc with the median cell's
    area; None where there is no cell."""
    areas = np.bincount(ids.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    return float(disc_diameter(np.median(areas)))


def scale_factor(diameter: float | None, net_diameter: float | None) -> float:
    """How much to enlarge an image whose cells are ``diameter`` px across so that they are
    ``net_diameter`` px: their ratio held to [MIN_FACTOR, MAX_FACTOR]; 1 where either is unknown
    or the ratio is within `SAME_SCALE` of 1."""
    if not diameter or not net_diameter:
        return 1.0
    factor = float(np.clip(net_diameter / diameter, MIN_FACTOR, MAX_FACTOR))
    return 1.0 if abs(factor - 1.0) <= SAME_SCALE else factor


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """An image's (H, W) enlarged by ``factor``, rounded, at least one pixel a side."""
    return tuple(max(1, round(n * factor)) for n in shape)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *shape) float32: linear, anti-aliased where it shrinks (images and
    probability maps)."""
    shrinks = any(new < old for new, old in zip(shape, image.shape[1:]))
    return resize(image.astype(np.float32, copy=False), (image.shape[0], *shape), order=1, mode="reflect",
                  anti_aliasing=shrinks, preserve_range=True).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) label image -> (*shape) of the same dtype: nearest, so every value is one of its own."""
    return resize(labels, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True).astype(labels.dtype)

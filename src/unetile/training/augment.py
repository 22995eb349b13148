"""Augmentation of training tiles: the paper's elastic deformation, flips, rotations, grey values.

Image, label and weight map are transformed together, so they stay aligned: the image
with bicubic interpolation, the label with nearest neighbour (order 0) so class ids stay
ids (or, for binary labels with ``soft_labels``, bilinearly into foreground fractions), the
weight map bilinearly. A tile's random choices (`AugmentDraw`) come from a NumPy Generator
in a fixed order, so its augmentation is a pure function of its seed (repeatable runs, exact
resume), and device_augment.py applies the very same choices to batches on a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import symmetries


@dataclass(frozen=True)
class Augmentation:
    elastic: bool = True  # the paper's elastic deformation
    elastic_grid: int = 3  # displacement vectors on a coarse grid x grid (paper: 3 x 3)
    elastic_sigma: float = 10.0  # std of the displacements in px (paper: 10)
    flips: str = "dihedral"  # random flips/rotations from this group (symmetries.GROUPS)
    grey: bool = True  # random brightness, contrast and gamma
    grey_strength: float = 0.15  # scale of the brightness/contrast/gamma changes
    # Binary labels only: warp the 0/1 label bilinearly into foreground fractions (float)
    # rather than nearest neighbour, whose staircase moves every boundary by up to 0.5 px.
    soft_labels: bool = False

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(elastic=False, flips="none", grey=False)


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one tile's augmentation (`draw_augmentation`)."""

    symmetry: symmetries.Symmetry = (0, False)  # the flip / rotation
    coarse: np.ndarray | None = None  # (2, grid, grid) elastic displacements, px; None: no deformation
    grey: tuple[float, float, float] | None = None  # (contrast, brightness, gamma); None: unchanged


def draw_augmentation(rng: np.random.Generator, aug: Augmentation) -> AugmentDraw:
    """Draw a tile's choices, always in this order: symmetry, displacements, grey values."""
    symmetry = draw_symmetry(rng, aug.flips) if aug.flips != "none" else (0, False)
    coarse = rng.normal(0.0, aug.elastic_sigma, size=(2, aug.elastic_grid, aug.elastic_grid)) if aug.elastic else None
    grey = draw_grey(rng, aug.grey_strength) if aug.grey else None
    return AugmentDraw(symmetry, coarse, grey)


def draw_symmetry(rng: np.random.Generator, flips: str) -> symmetries.Symmetry:
    choices = symmetries.group(flips)
    return choices[int(rng.integers(len(choices)))]


def draw_grey(rng: np.random.Generator, strength: float) -> tuple[float, float, float]:
    """(contrast x (1 +- s), brightness +- s, gamma 2^(+-s))."""
    contrast = 1.0 + rng.uniform(-strength, strength)
    brightness = rng.uniform(-strength, strength)
    gamma = 2.0 ** rng.uniform(-strength, strength)
    return contrast, brightness, gamma


def displacement_field(rng: np.random.Generator, size: int, grid: int, sigma: float) -> np.ndarray:
    """(2, size, size) per-pixel displacements (px): Gaussian vectors on a coarse grid,
    interpolated bicubically over the tile, as in the paper."""
    return upsample_displacements(rng.normal(0.0, sigma, size=(2, grid, grid)), size)


def upsample_displacements(coarse: np.ndarray, size: int) -> np.ndarray:
    """(2, grid, grid) displacements -> (2, size, size) float32 (`upsampling_matrix`)."""
    m = upsampling_matrix(size, coarse.shape[-1])
    return (m @ coarse @ m.T).astype(np.float32)


@functools.lru_cache(maxsize=16)
def upsampling_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) cubic-spline weights: ``m @ coarse @ m.T`` equals ``ndimage.zoom(coarse,
    size / grid, order=3, mode="nearest", grid_mode=True)`` (the grid cells spanning the tile).
    Spline zooming is separable, so the 2-D zoom is two small matrix products:
    microseconds instead of the ~9 ms per tile that zooming both fields took in the worker.
    """
    return np.stack(
        [ndimage.zoom(e, size / grid, order=3, mode="nearest", grid_mode=True)[:size] for e in np.eye(grid)], axis=1
    )


def elastic_coordinates(coarse: np.ndarray, size: int, margin: int) -> np.ndarray:
    """(2, size, size) sampling coordinates into a region of size + 2 * margin px, displaced
    by the (2, grid, grid) ``coarse`` displacements."""
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    d = upsample_displacements(coarse, size)
    # Keep samples inside the region so no edge padding is ever sampled.
    return np.clip(np.stack([yy + margin + d[0], xx + margin + d[1]]), 0, size + 2 * margin - 1)


def warp(arrays: np.ndarray, coords: np.ndarray, mode: str) -> np.ndarray:
    """Sample (C, S, S') arrays at (2, H, W) coordinates (px, row then column) -> (C, H, W) float32.

    ``mode`` is torch's: "bicubic" (cubic convolution), "bilinear" or "nearest"; beyond the
    edge the arrays are mirrored. Torch's ``grid_sample`` rather than
    ``scipy.ndimage.map_coordinates``: the B-spline prefilter of each region made SciPy's
    cubic warp 6x slower, and the worker doing it took a sixth of the training steps that
    2 cores manage in a fixed time.
    """
    sy, sx = arrays.shape[-2:]
    grid = np.stack([coords[1] * (2.0 / max(sx - 1, 1)) - 1, coords[0] * (2.0 / max(sy - 1, 1)) - 1], axis=-1)
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))[None],
                        torch.from_numpy(grid.astype(np.float32))[None], mode=mode, padding_mode="reflection",
                        align_corners=True)
    return out[0].numpy()


def flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator, flips: str = "dihedral") -> list[np.ndarray]:
    """Apply the same random symmetry of the group ``flips`` to each (..., H, W) array."""
    s = draw_symmetry(rng, flips)
    return [symmetries.apply(a, s) for a in arrays]


def grey_values(image: np.ndarray, grey: tuple[float, float, float]) -> np.ndarray:
    """Contrast, brightness and gamma (`draw_grey`) on a [0, 1]-ish image, relative to its range."""
    contrast, brightness, gamma = grey
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo if hi > lo else 1.0
    unit = (image - lo) / span
    unit = np.power(np.clip(unit, 0, 1), gamma, dtype=np.float32)
    return ((unit * span + lo) * contrast + brightness).astype(np.float32)


def augment_region(
    image: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    size: int,
    out_size: int,
    margin: int,
    aug: Augmentation,
    rng: np.random.Generator | AugmentDraw,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn a region (C, S, S) / (S, S) / (S, S), S = size + 2 * margin, into one training tile.

    ``rng``: the Generator to draw the choices from, or the choices (`draw_augmentation`).
    Returns the image tile (C, size, size) and the label and weight (out_size, out_size) at
    its centre (the net's output window).
    """
    draw = rng if isinstance(rng, AugmentDraw) else draw_augmentation(rng, aug)
    if draw.symmetry != (0, False):
        image, label, weight = (symmetries.apply(a, draw.symmetry) for a in (image, label, weight))
    lo = margin + (size - out_size) // 2
    if draw.coarse is not None:
        coords = elastic_coordinates(draw.coarse, size, margin)
        image = warp(image, coords, "bicubic")
        centre = coords[:, lo - margin : lo - margin + out_size, lo - margin : lo - margin + out_size]
        if aug.soft_labels:
            label = warp(label[None], centre, "bilinear")[0]
        else:  # class ids stay ids (exact in float32 below 2^24)
            label = warp(label[None], centre, "nearest")[0].astype(label.dtype)
        weight = warp(weight[None], centre, "bilinear")[0]
    else:
        image = image[:, margin : margin + size, margin : margin + size]
        label = label[lo : lo + out_size, lo : lo + out_size]
        weight = weight[lo : lo + out_size, lo : lo + out_size]
    image = image.astype(np.float32)
    if draw.grey is not None:
        image = grey_values(image, draw.grey)
    return image, np.ascontiguousarray(label), np.ascontiguousarray(weight, dtype=np.float32)

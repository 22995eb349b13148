"""Augmentation of training tiles: the paper's elastic deformation, flips, rotations, grey values.

Image, label and weight map are transformed together, so they stay aligned: the image
with bicubic interpolation, the label with nearest neighbour (order 0) so class ids stay
ids (or, for binary labels with ``soft_labels``, bilinearly into foreground fractions), the
weight map bilinearly. A tile's random choices (`AugmentDraw`) come from a NumPy Generator
in a fixed order, so its augmentation is a pure function of its seed (repeatable runs, exact
resume), and device_augment.py applies the very same choices to batches on a GPU.

Images may also be zoomed (``zoom`` > 1, off by default): each tile samples a region scaled
about its centre by a factor drawn log-uniform in [1/zoom, zoom], so one training set shows its
cells at several sizes (label and weight map sampled by the same coordinates; the room around
the tile grows to hold the largest region, `region_margins`). Drawn last, so that runs without
it draw exactly what they drew before.

Volumes (Z, Y, X) are augmented by the same steps on three axes (`Augmentation.spacing` set):
displacements on a coarse 3 x 3 x 3 grid whose spread is ``elastic_sigma`` in-plane px of
physical length on every axis (fewer voxels along a coarse z: `spacing.per_axis`), warped
trilinearly (torch has no tricubic ``grid_sample``; labels nearest, weights trilinear), the
in-plane flips and rotations plus a z flip, and swaps of z with y or x only where the voxels
are isotropic (`symmetries.volume_group`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import symmetries
from ..spacing import per_axis


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
    # Volumes only: each axis's voxel size in in-plane px (`spacing.relative_spacing`); None: 2D.
    spacing: tuple[float, ...] | None = None
    axis_swaps: bool = False  # volumes: swap z with y or x too (isotropic voxels, cubic tiles)
    # Images only: each tile's scale drawn log-uniform in [1/zoom, zoom] (1: off; > 1 shows more
    # of the image, smaller).
    zoom: float = 1.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.zoom < math.inf:
            raise ValueError(f"zoom must be >= 1, got {self.zoom}")
        if self.zoom != 1.0 and self.spacing is not None:
            raise ValueError("zoom is for 2D images")

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(elastic=False, flips="none", grey=False)


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one tile's augmentation (`draw_augmentation`)."""

    symmetry: symmetries.Symmetry | symmetries.VolumeSymmetry = (0, False)  # the flip / rotation
    coarse: np.ndarray | None = None  # (2, grid, grid) elastic displacements, px (volumes: (3, g, g, g),
    #                                   voxels); None: no deformation
    grey: tuple[float, float, float] | None = None  # (contrast, brightness, gamma); None: unchanged
    zoom: float = 1.0  # the region sampled per tile px (> 1: more of the image, smaller); 1: unscaled


def draw_augmentation(rng: np.random.Generator, aug: Augmentation) -> AugmentDraw:
    """Draw a tile's choices, always in this order: symmetry, displacements, grey values, zoom
    (drawn only where ``aug.zoom`` != 1)."""
    if aug.spacing is not None:
        return _draw_volume_augmentation(rng, aug)
    symmetry = draw_symmetry(rng, aug.flips) if aug.flips != "none" else (0, False)
    coarse = rng.normal(0.0, aug.elastic_sigma, size=(2, aug.elastic_grid, aug.elastic_grid)) if aug.elastic else None
    grey = draw_grey(rng, aug.grey_strength) if aug.grey else None
    zoom = math.exp(rng.uniform(-math.log(aug.zoom), math.log(aug.zoom))) if aug.zoom != 1.0 else 1.0
    return AugmentDraw(symmetry, coarse, grey, zoom)


def _draw_volume_augmentation(rng: np.random.Generator, aug: Augmentation) -> AugmentDraw:
    """`draw_augmentation` for a volume: a symmetry of `symmetries.volume_group`, (3, g, g, g)
    displacements in voxels with ``elastic_sigma`` in-plane px of spread on every axis."""
    choices = symmetries.volume_group(aug.flips, aug.axis_swaps)
    symmetry = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else symmetries.VOLUME_IDENTITY
    coarse = None
    if aug.elastic:
        sigmas = np.asarray(per_axis(aug.elastic_sigma, aug.spacing))
        coarse = rng.normal(0.0, 1.0, size=(3, *(aug.elastic_grid,) * 3)) * sigmas[:, None, None, None]
    grey = draw_grey(rng, aug.grey_strength) if aug.grey else None
    return AugmentDraw(symmetry, coarse, grey)


def elastic_margins(aug: Augmentation, ndim: int = 2) -> tuple[int, ...]:
    """Room (voxels per axis) around a tile for the elastic displacements: 4 standard deviations."""
    if not aug.elastic:
        return (0,) * ndim
    return tuple(int(np.ceil(4 * s)) for s in per_axis(aug.elastic_sigma, aug.spacing, ndim))


def region_margins(aug: Augmentation, tile_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Room (px per axis) around a tile of ``tile_shape``: the elastic displacements', plus, zoomed
    out by up to ``aug.zoom``, the larger region the tile then samples about its centre."""
    return tuple(e + math.ceil(n * (aug.zoom - 1) / 2)
                 for e, n in zip(elastic_margins(aug, len(tile_shape)), tile_shape))


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


def upsample_displacements(coarse: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """(A, grid, ...) displacements on A axes -> (A, *size) float32 (`upsampling_matrix` along
    each axis; ``size``: one per axis, or one for all)."""
    sizes = (size,) * (coarse.ndim - 1) if isinstance(size, int) else tuple(size)
    if coarse.ndim == 3 and sizes[0] == sizes[1]:  # 2D: the two products that 2D runs were made with
        m = upsampling_matrix(sizes[0], coarse.shape[-1])
        return (m @ coarse @ m.T).astype(np.float32)
    out = coarse
    for axis, n in enumerate(sizes, start=1):
        out = np.moveaxis(np.tensordot(upsampling_matrix(n, coarse.shape[axis]), out, axes=(1, axis)), 0, axis)
    return out.astype(np.float32)


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


def sampling_coordinates(coarse: np.ndarray | None, size: int | tuple[int, ...], margin: int | tuple[int, ...],
                         zoom: float = 1.0) -> np.ndarray:
    """(A, *size) sampling coordinates into a region of size + 2 * margin px per axis: the tile's
    grid scaled by ``zoom`` about its centre, displaced by the (A, grid, ...) ``coarse``
    displacements (A = 2 axes, or 3 for a volume; None: none)."""
    axes = coarse.shape[0] if coarse is not None else 2 if isinstance(size, int) else len(size)
    sizes = (size,) * axes if isinstance(size, int) else tuple(size)
    margins = (margin,) * axes if isinstance(margin, int) else tuple(margin)
    base = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in sizes), indexing="ij")
    if zoom != 1.0:
        base = [((b - (n - 1) / 2) * zoom + (n - 1) / 2).astype(np.float32) for b, n in zip(base, sizes)]
    d = upsample_displacements(coarse, sizes) if coarse is not None else np.zeros((axes, *sizes), np.float32)
    coords = np.stack([b + m + d[a] for a, (b, m) in enumerate(zip(base, margins))])
    # Keep samples inside the region so no edge padding is ever sampled.
    if len(set(sizes)) == 1 and len(set(margins)) == 1:
        return np.clip(coords, 0, sizes[0] + 2 * margins[0] - 1)
    upper = np.array([n + 2 * m - 1 for n, m in zip(sizes, margins)], np.float32)
    return np.clip(coords, 0, upper.reshape(-1, *(1,) * axes))


def warp(arrays: np.ndarray, coords: np.ndarray, mode: str) -> np.ndarray:
    """Sample (C, S, S') arrays at (2, H, W) coordinates (px, row then column) -> (C, H, W) float32;
    a volume's (C, Sz, Sy, Sx) at (3, Z, Y, X) coordinates (z, y, x) -> (C, Z, Y, X).

    ``mode`` is torch's: "bicubic" (cubic convolution, 2D only), "bilinear" (trilinear on a
    volume) or "nearest"; beyond the
    edge the arrays are mirrored. Torch's ``grid_sample`` rather than
    ``scipy.ndimage.map_coordinates``: the B-spline prefilter of each region made SciPy's
    cubic warp 6x slower, and the worker doing it took a sixth of the training steps that
    2 cores manage in a fixed time.
    """
    sizes = arrays.shape[1:]
    # grid_sample wants (x, y[, z]) in [-1, 1]: the axes reversed.
    grid = np.stack([coords[a] * (2.0 / max(sizes[a] - 1, 1)) - 1 for a in reversed(range(len(sizes)))], axis=-1)
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
    size: int | tuple[int, ...],
    out_size: int | tuple[int, ...],
    margin: int | tuple[int, ...],
    aug: Augmentation,
    rng: np.random.Generator | AugmentDraw,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn a region (C, S, S) / (S, S) / (S, S), S = size + 2 * margin, into one training tile;
    a volume's (C, Sz, Sy, Sx) / (Sz, Sy, Sx) likewise, with ``size``, ``out_size`` and
    ``margin`` one per axis (or one for all).

    ``rng``: the Generator to draw the choices from, or the choices (`draw_augmentation`).
    Returns the image tile (C, size, size) and the label and weight (out_size, out_size) at
    its centre (the net's output window).
    """
    draw = rng if isinstance(rng, AugmentDraw) else draw_augmentation(rng, aug)
    sizes, outs, margins = (_per_axis(v, label.ndim) for v in (size, out_size, margin))
    if draw.symmetry not in ((0, False), symmetries.VOLUME_IDENTITY):
        transform = symmetries.apply_volume if label.ndim == 3 else symmetries.apply
        image, label, weight = (transform(a, draw.symmetry) for a in (image, label, weight))
    # The output window in tile coordinates, and in region coordinates.
    centre_in_tile = tuple(slice((n - o) // 2, (n - o) // 2 + o) for n, o in zip(sizes, outs))
    centre_in_region = tuple(slice(m + c.start, m + c.stop) for m, c in zip(margins, centre_in_tile))
    if draw.coarse is not None or draw.zoom != 1.0:
        coords = sampling_coordinates(draw.coarse, sizes, margins, draw.zoom)
        image = warp(image, coords, "bicubic" if label.ndim == 2 else "bilinear")  # no tricubic in torch
        centre = coords[(slice(None), *centre_in_tile)]
        if aug.soft_labels:
            label = warp(label[None], centre, "bilinear")[0]
        else:  # class ids stay ids (exact in float32 below 2^24)
            label = warp(label[None], centre, "nearest")[0].astype(label.dtype)
        weight = warp(weight[None], centre, "bilinear")[0]
    else:
        image = image[(slice(None), *(slice(m, m + n) for m, n in zip(margins, sizes)))]
        label, weight = label[centre_in_region], weight[centre_in_region]
    image = image.astype(np.float32)
    if draw.grey is not None:
        image = grey_values(image, draw.grey)
    return image, np.ascontiguousarray(label), np.ascontiguousarray(weight, dtype=np.float32)


def _per_axis(value: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (value,) * ndim if isinstance(value, int) else tuple(value)

"""Synthetic EM-like images with exact labels, for the demo and the tests (no download).

Cells are a Voronoi tessellation of random seeds; membranes are dark lines of smoothly
varying thickness along the cell borders; cells get their own grey level, texture and
dark organelle-like blobs (which are *not* membranes, so the net must learn shape, not
just darkness); the whole image is blurred, unevenly lit and noisy. Labels follow the
ISBI 2012 convention: 255 = cell interior, 0 = membrane.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import write_image


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to [0, 1]."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def synthetic_em(rng: np.random.Generator, size: int = 256, cell_diameter: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label, both (size, size) uint8."""
    shape = (size, size)
    n_cells = max(2, int(size * size / (0.8 * cell_diameter**2)))
    seeds = np.zeros(shape, bool)
    seeds[rng.integers(size, size=n_cells), rng.integers(size, size=n_cells)] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    cells = iy * size + ix  # each pixel's nearest seed identifies its cell
    edges = np.zeros(shape, bool)
    edges[:-1] |= cells[:-1] != cells[1:]
    edges[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    distance = ndimage.distance_transform_edt(~edges)
    thickness = 0.6 + 2.2 * _smooth_noise(rng, shape, size / 8)  # half-width, px
    membrane = distance < thickness
    label = np.where(membrane, 0, 255).astype(np.uint8)

    _, cell_index = np.unique(cells, return_inverse=True)
    cell_index = cell_index.reshape(shape)
    levels = rng.uniform(0.5, 0.8, cell_index.max() + 1)
    image = levels[cell_index] + 0.08 * (_smooth_noise(rng, shape, 1.5) - 0.5)
    blobs = _smooth_noise(rng, shape, 2.0) > 0.75  # dark organelles inside cells
    image = np.where(blobs & ~membrane, image - 0.25, image)
    image = np.where(membrane, rng.uniform(0.12, 0.25) + 0.05 * rng.standard_normal(shape), image)
    image = ndimage.gaussian_filter(image, 1.0)
    image *= 0.75 + 0.5 * _smooth_noise(rng, shape, size / 3)  # uneven illumination
    image += 0.05 * rng.standard_normal(shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8), label


def write_dataset(folder: str | Path, n_images: int, size: int = 256, seed: int = 0) -> Path:
    """Write ``folder/images/NN.png`` and ``folder/labels/NN.png``; returns ``folder``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, label = synthetic_em(rng, size)
        write_image(folder / "images" / f"{i:02d}.png", image)
        write_image(folder / "labels" / f"{i:02d}.png", label)
    return folder

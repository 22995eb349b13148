"""Synthetic EM-like images with exact labels, for the demo and the tests (no download);
synthetic fluorescence nuclei with instance ids (`synthetic_nuclei`), for benchmarks; and a
U-Net wired by hand to find bright discs (`disc_detector`), for tests and benchmarks of
what comes after the net (cells, blocks) without training one.

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


def synthetic_em(rng: np.random.Generator, size: int = 256,
                 cell_diameter: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
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


def synthetic_nuclei(rng: np.random.Generator, size: int = 256, clusters: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescence-like nuclei in clusters, many touching: (image, instance ids), both (size, size) uint16.

    Each nucleus is an ellipse (semi-axes 6-13 px) with its own brightness, dimmer at its
    rim; where two overlap, each pixel goes to the nucleus whose centre is nearer in that
    ellipse's own scale, so touching nuclei meet along a line with no dark gap between them
    (only the brightness and shape change), as in light microscopy. Ids are 1..n, 0 =
    background. Shot and camera noise on a 16-bit scale.
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    ids = np.zeros((size, size), np.int64)
    nearest = np.full((size, size), np.inf)  # each pixel's radius in its current nucleus's scale
    brightness = np.zeros((size, size))
    centres = [c + rng.normal(0, 14, 2) for c in rng.uniform(20, size - 20, (clusters, 2)) for _ in range(5)]
    for k, (cy, cx) in enumerate(centres, start=1):
        a, b, angle = rng.uniform(7, 13), rng.uniform(6, 11), rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / a
        v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / b
        radius = np.hypot(u, v)
        take = (radius < 1) & (radius < nearest)
        ids[take], nearest[take] = k, radius[take]
        brightness[take] = rng.uniform(0.4, 1.0) * (1 - 0.3 * radius[take] ** 2)
    _, ids = np.unique(ids, return_inverse=True)  # 1..n for the nuclei that stayed visible
    ids = ids.reshape(size, size)
    image = brightness * (0.85 + 0.3 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 2))
    image = ndimage.gaussian_filter(image, 1.2) + 0.05
    image = rng.poisson(image * 300) + rng.normal(100, 5, image.shape)
    return np.clip(image * 20, 0, 65535).astype(np.uint16), ids.astype(np.uint16)


def disc_detector(width: int = 4, depth: int = 2):
    """A U-Net (eval mode) whose map is sigmoid(20 (x - 0.5)) of the normalised input x: every
    weight 0 but one path, the first channel of each level-0 convolution and the skip."""
    import torch

    from .nn.model import UNet

    model = UNet(width=width, depth=depth).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_()
            if name.endswith((".1.weight", ".4.weight")):  # batch norms: identity
                p.fill_(1.0)
        last_up = f"up.{depth - 1}.conv"
        for name in ("down.0.0", "down.0.3", f"{last_up}.0", f"{last_up}.3"):
            model.get_submodule(name).weight[0, 0, 1, 1] = 1.0  # the skip comes first in the concatenation
        model.head.weight[0, 0] = 20.0
        model.head.bias[0] = -10.0
    return model


def write_dataset(folder: str | Path, n_images: int, size: int = 256, seed: int = 0, kind: str = "em") -> Path:
    """Write ``folder/images/NN`` and ``folder/labels/NN``; returns ``folder``.

    ``kind``: ``"em"`` (`synthetic_em`, 8-bit PNGs, ISBI-style masks) or ``"nuclei"``
    (`synthetic_nuclei`, 16-bit TIFFs, instance ids).
    """
    make, suffix = {"em": (synthetic_em, "png"), "nuclei": (synthetic_nuclei, "tif")}[kind]
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, label = make(rng, size)
        write_image(folder / "images" / f"{i:02d}.{suffix}", image)
        write_image(folder / "labels" / f"{i:02d}.{suffix}", label)
    return folder

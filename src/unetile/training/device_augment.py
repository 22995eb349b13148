"""Training batches made on the device: the training set kept there, tiles cut, flipped,
elastically deformed, grey-shifted and their weight maps deformed in batches.

On a GPU, DataLoader workers on the CPU cannot keep up with the net (a deformed 572-px tile
costs the CPU milliseconds, the GPU microseconds per step of a batch). Here the CPU only
draws each tile's random choices (`TileDataset.draw`: a few numbers from the tile's own
generator, as the CPU path draws them), and the device does the rest for the whole batch at
once: a gather through the mirror index map, the flip / rotation, the paper's deformation
(the 3 x 3 grid of displacements upsampled by the same cubic-spline matrix and applied with
``grid_sample``: bicubic for the image, nearest for class ids, bilinear for soft labels and
the weight map) and the grey-value change. The same tile index gives the same tile as the
CPU path, to float rounding, so a run does not depend on where its tiles were made.

Not for ``--skeleton-recall`` (the skeleton of each deformed label is computed by
scikit-image on the CPU): such runs keep the DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import symmetries
from .augment import upsampling_matrix
from .data import EpochSampler, TileDataset, TileDraw


class DeviceTiles:
    """Batches of training tiles (image (N, C, T, T), label (N, O, O), weight (N, O, O)) made
    on ``device`` from ``dataset``'s images and choices."""

    def __init__(self, dataset: TileDataset, device: torch.device) -> None:
        if dataset.aug.zoom != 1.0:
            raise ValueError("zoomed tiles are made on the CPU (data.TileDataset), not by DeviceTiles")
        self.dataset, self.device = dataset, device
        self.images = [torch.from_numpy(it.image).to(device) for it in dataset.items]
        # Labels as float for grid_sample (class ids are exact in float32 below 2^24).
        self.labels = [torch.from_numpy(it.classes.astype(np.float32)).to(device) for it in dataset.items]
        self.weights = [torch.from_numpy(it.weight).to(device) for it in dataset.items]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ds = self.dataset
        draws = [ds.draw(i) for i in indices]
        regions = [self._region(d) for d in draws]
        image, label, weight = (torch.stack([r[k] for r in regions]) for k in range(3))
        size, out, margin = ds.tile_size, ds.out_size, ds.margin
        lo = margin + (size - out) // 2
        coarse = [d.augmentation.coarse for d in draws]
        if coarse[0] is not None:
            coords = self._elastic_coordinates(np.stack(coarse))
            image = _sample(image, coords, "bicubic")
            centre = coords[:, :, lo - margin : lo - margin + out, lo - margin : lo - margin + out]
            label = _sample(label[:, None], centre, "bilinear" if ds.aug.soft_labels else "nearest")[:, 0]
            weight = _sample(weight[:, None], centre, "bilinear")[:, 0]
        else:
            image = image[:, :, margin : margin + size, margin : margin + size]
            label, weight = label[:, lo : lo + out, lo : lo + out], weight[:, lo : lo + out, lo : lo + out]
        if draws[0].augmentation.grey is not None:
            image = _grey_values(image, torch.tensor([d.augmentation.grey for d in draws], device=self.device))
        label = label if ds.aug.soft_labels else label.round().long()
        return image.contiguous(), label.contiguous(), weight.contiguous()

    def _region(self, draw: TileDraw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tile's region (C, S, S), (S, S), (S, S) through the mirror map, weight 0 outside
        the image, flipped / rotated."""
        (r, c), inside = self.dataset.region_indices(draw)
        r, c = torch.from_numpy(r).to(self.device), torch.from_numpy(c).to(self.device)
        image = self.images[draw.item].index_select(1, r).index_select(2, c)
        label = self.labels[draw.item].index_select(0, r).index_select(1, c)
        weight = self.weights[draw.item].index_select(0, r).index_select(1, c)
        weight = weight * torch.from_numpy(inside).to(self.device)
        s = draw.augmentation.symmetry
        return symmetries.apply(image, s), symmetries.apply(label, s), symmetries.apply(weight, s)

    def _elastic_coordinates(self, coarse: np.ndarray) -> torch.Tensor:
        """(N, 2, grid, grid) displacements -> (N, 2, T, T) sampling coordinates in the region
        (as `augment.sampling_coordinates`, one matrix product per batch)."""
        size, margin = self.dataset.tile_size, self.dataset.margin
        m = torch.from_numpy(upsampling_matrix(size, coarse.shape[-1])).to(self.device)
        d = (m @ torch.from_numpy(coarse).to(self.device) @ m.T).float()  # float64 products, as on the CPU
        base = torch.arange(size, dtype=torch.float32, device=self.device)
        yy, xx = torch.meshgrid(base, base, indexing="ij")
        coords = torch.stack([yy + margin + d[:, 0], xx + margin + d[:, 1]], dim=1)
        return coords.clamp(0, size + 2 * margin - 1)


def _sample(arrays: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, C, S, S') sampled at (N, 2, H, W) coordinates (px, row then column), mirrored beyond
    the edge (as `augment.warp`, batched)."""
    sy, sx = arrays.shape[-2:]
    grid = torch.stack([coords[:, 1] * (2.0 / max(sx - 1, 1)) - 1, coords[:, 0] * (2.0 / max(sy - 1, 1)) - 1], dim=-1)
    return F.grid_sample(arrays, grid, mode=mode, padding_mode="reflection", align_corners=True)


def _grey_values(image: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with each tile's (contrast, brightness, gamma) of ``grey`` (N, 3), relative
    to the tile's range (as `augment.grey_values`)."""
    contrast, brightness, gamma = (grey[:, k].float()[:, None, None, None] for k in range(3))
    lo = image.amin(dim=(1, 2, 3), keepdim=True)
    hi = image.amax(dim=(1, 2, 3), keepdim=True)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    unit = ((image - lo) / span).clamp(0, 1).pow(gamma)
    return (unit * span + lo) * contrast + brightness


class DeviceLoader:
    """An epoch of batches from `DeviceTiles`, in the sampler's order (the indices a DataLoader
    with the same sampler would batch), so that runs and resumes match the CPU path."""

    def __init__(self, tiles: DeviceTiles, sampler: EpochSampler, batch_size: int) -> None:
        self.tiles, self.sampler, self.batch_size = tiles, sampler, batch_size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        indices = list(self.sampler)
        for i in range(0, len(indices), self.batch_size):
            yield self.tiles.batch(indices[i : i + self.batch_size])

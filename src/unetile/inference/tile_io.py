"""How tiles get into the net and their probabilities back out (used by `tiling.predict_tiled`).

Readers turn tile positions into a batch of network inputs (N, C, tile, tile) on the net's
device (volumes: (N, C, tz, ty, tx); a layout per spatial axis): the mirror-extended window of
the image, normalised with the whole image's percentiles. Two ways, the same numbers (both
normalise in float32 with the same operations):

* `HostTileReader` gathers each tile on the host through the mirror index map and copies the
  batch to the device. On a CPU that is all there is to do, and it keeps memory at one tile.
* `DeviceTileReader` (the default on CUDA) uploads one *band* of image rows per row of tiles
  (a volume: one slab of planes per layer of tiles; from a pinned buffer, without blocking) and
  cuts, mirrors and normalises the tiles on the device; a 100,000-px-wide slide costs one band
  (tile x width px) of device memory, not the image. The host's part per tile shrinks from a
  gather and a normalisation to nothing (on an H200 the host gather held a volume's prediction
  to a third of the net's speed).

`TileWriter` takes each batch of probabilities from the device and writes it into the output
array. On CUDA it copies into a pinned buffer without blocking and writes the *previous*
batch meanwhile, so the device computes batch i + 1 while the host writes batch i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import itertools

import numpy as np
import torch

from ..normalization import Normalization, apply_normalization
from ..registration import shift_image, tile_halo
from .layout import TileLayout

Position = tuple[int, ...]  # (y, x) or (z, y, x): image coordinates of a tile's first kept output pixel


def tile_positions(layouts: tuple[TileLayout, ...]) -> list[Position]:
    """Every tile's position, row by row (the last axis fastest)."""
    return list(itertools.product(*(layout.origins for layout in layouts)))


def reflect_indices(start: int, size: int, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` px for positions start..start+size-1, mirrored.

    Mirroring without repeating the edge pixel (NumPy's ``pad(mode="reflect")``), applied
    as often as needed, so a 1-px image or a tile far wider than the image still works.
    """
    idx = np.arange(start, start + size)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= length, period - idx, idx)


@dataclass(frozen=True)
class Window:
    """Where an array held in memory lies in its image: its first row and column (``top``,
    ``left``) and the whole image's ``height`` and ``width`` (px). Tiles are mirrored at the
    image's edges, not the window's."""

    top: int
    left: int
    height: int
    width: int


class HostTileReader:
    """Tiles gathered on the host: read through the mirror index map, normalised, resampled
    by the labels' sub-pixel offset (images only; with a halo, so it matches resampling the
    whole image).

    ``image`` (C, *spatial) is the whole image, or (``window``, images only) the part of it
    that the tiles read, with ``stats`` the whole image's percentiles."""

    def __init__(self, image: np.ndarray, layouts: tuple[TileLayout, ...],
                 stats: tuple[np.ndarray, np.ndarray] | None, input_shift: tuple[float, float],
                 device: torch.device, window: Window | None = None) -> None:
        self.image, self.layouts, self.input_shift, self.device = image, layouts, input_shift, device
        self.stats = stats
        self.halo = tile_halo(input_shift)
        self.origin = (window.top, window.left) if window else (0,) * len(layouts)
        self.extent = (window.height, window.width) if window else image.shape[1:]

    def tile(self, position: Position) -> np.ndarray:
        """One tile's network input (C, *tile) float32."""
        halo = self.halo
        index = [reflect_indices(at - layout.context - halo, layout.input_size + 2 * halo, length) - start
                 for at, layout, length, start in zip(position, self.layouts, self.extent, self.origin)]
        t = self.image[(slice(None), *np.ix_(*index))]
        t = apply_normalization(t, *self.stats) if self.stats is not None else t.astype(np.float32, copy=False)
        if halo:
            t = shift_image(t, self.input_shift)[(slice(None), *(slice(halo, halo + layout.input_size)
                                                                 for layout in self.layouts))]
        return t

    def batch(self, positions: list[Position]) -> torch.Tensor:
        """(N, C, *tile) float32 on the device."""
        return torch.from_numpy(np.stack([self.tile(position) for position in positions])).to(self.device)


class DeviceTileReader:
    """Tiles cut on the device from bands of the image's first spatial axis uploaded once: rows
    of an image, planes of a volume (no sub-pixel shift: `HostTileReader` does that)."""

    def __init__(self, image: np.ndarray, layouts: tuple[TileLayout, ...], normalization: Normalization | None,
                 device: torch.device) -> None:
        self.image, self.layouts, self.device = image, layouts, device
        stats = normalization.statistics(image) if normalization is not None else None
        self.low = self.scale = None
        if stats is not None:
            low, high = stats
            scale = np.where(high > low, high - low, 1.0).astype(np.float32)  # as apply_normalization
            per_channel = (slice(None), *(None,) * len(layouts))
            self.low = torch.from_numpy(low.astype(np.float32)).to(device)[per_channel]
            self.scale = torch.from_numpy(scale).to(device)[per_channel]
        self._bands: dict[int, torch.Tensor] = {}  # first coordinate -> (C, tile, ...) normalised band, the last two
        self._indices: dict[tuple[int, int], torch.Tensor] = {}  # (axis, coordinate) -> mirrored indices

    def band(self, y: int) -> torch.Tensor:
        """The normalised rows (C, tile, W) (a volume's planes (C, tile, Y, X)) float32 on the
        device that the tiles at ``y`` read."""
        if y not in self._bands:
            first = self.layouts[0]
            r = reflect_indices(y - first.context, first.input_size, self.image.shape[1])
            host = torch.from_numpy(np.ascontiguousarray(self.image[:, r], dtype=np.float32))
            if self.device.type == "cuda":
                host = host.pin_memory()
            band = host.to(self.device, non_blocking=True)
            if self.low is not None:
                band = (band - self.low) / self.scale
            if len(self._bands) >= 2:  # a batch spans at most the end of one band and the next
                self._bands.pop(next(iter(self._bands)))
            self._bands[y] = band
        return self._bands[y]

    def indices(self, axis: int, at: int) -> torch.Tensor:
        """The mirrored indices along spatial ``axis`` (1 or 2) of a tile whose kept output starts at ``at``."""
        if (axis, at) not in self._indices:
            layout = self.layouts[axis]
            index = reflect_indices(at - layout.context, layout.input_size, self.image.shape[1 + axis])
            self._indices[axis, at] = torch.from_numpy(index).to(self.device)
        return self._indices[axis, at]

    def tile(self, position: Position) -> torch.Tensor:
        """One tile (C, *tile) float32 on the device."""
        tile = self.band(position[0])
        for axis, at in enumerate(position[1:], start=1):
            tile = tile.index_select(axis + 1, self.indices(axis, at))
        return tile

    def batch(self, positions: list[Position]) -> torch.Tensor:
        """(N, C, *tile) float32 on the device."""
        return torch.stack([self.tile(position) for position in positions])


def tile_reader(image: np.ndarray, layouts: tuple[TileLayout, ...], normalization: Normalization | None,
                input_shift: tuple[float, float], device: torch.device, resident: bool | None):
    """The reader for this run: on the device where ``resident`` (None: on CUDA) and no
    sub-pixel shift is asked for, else on the host."""
    if resident is None:
        resident = device.type == "cuda"
    if resident and input_shift == (0.0, 0.0):
        return DeviceTileReader(image, layouts, normalization, device)
    stats = normalization.statistics(image) if normalization is not None else None
    return HostTileReader(image, layouts, stats, input_shift, device)


class TileWriter:
    """Writes batches of tile probabilities (N, C_out, *kept) into ``out`` (C_out, *spatial),
    whose first pixel is the image's ``origin`` (the image itself, or a block of it), each
    tile cut to ``out``; ``encode`` applied per tile. ``on_batch(k)`` is called once the first
    k batches are written (a resumable run records it)."""

    def __init__(self, out, layouts: tuple[TileLayout, ...], encode: Callable | None,
                 on_batch: Callable[[int], None] | None, on_tiles: Callable[[int], None],
                 origin: Position | None = None) -> None:
        self.out, self.layouts, self.encode = out, layouts, encode
        self.origin = origin or (0,) * len(layouts)
        self.on_batch, self.on_tiles = on_batch, on_tiles
        self._pending: tuple | None = None  # (batch number, positions, host tensor, copy-done event)
        self._buffers: list[torch.Tensor] = []  # two pinned buffers, alternating (CUDA)

    def put(self, index: int, positions: list[Position], probs: torch.Tensor) -> None:
        """Start copying batch ``index`` to the host; write the one before it meanwhile."""
        if probs.device.type == "cuda":
            host = self._buffer(index, probs).copy_(probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = probs, None
        self.flush()
        self._pending = (index, positions, host, done)

    def flush(self) -> None:
        """Write the batch still in flight, if any."""
        if self._pending is None:
            return
        index, positions, host, done = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()
        self._write(positions, host.numpy())
        if self.on_batch is not None:
            self.on_batch(index + 1)
        self.on_tiles(len(positions))

    def _buffer(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        slot = index % 2
        if len(self._buffers) < 2:
            self._buffers = [torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True) for _ in range(2)]
        if self._buffers[slot].shape != probs.shape:  # the last, smaller batch
            self._buffers[slot] = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
        return self._buffers[slot]

    def _write(self, positions: list[Position], probs: np.ndarray) -> None:
        extent = self.out.shape[1:]
        for position, p in zip(positions, probs):
            at = [q - o for q, o in zip(position, self.origin)]  # into ``out``, which starts at ``origin``
            start = [max(0, -a) for a in at]  # a tile may begin before a block
            stop = [min(layout.output_size, n - a) for layout, n, a in zip(self.layouts, extent, at)]
            p = p[(slice(None), *(slice(b, e) for b, e in zip(start, stop)))]
            where = (slice(None), *(slice(a + b, a + e) for a, b, e in zip(at, start, stop)))
            self.out[where] = self.encode(p) if self.encode is not None else p

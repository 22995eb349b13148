"""Block-wise prediction: an image (or volume) cut into blocks that are predicted one at a
time, anywhere.

A block is a rectangle of the output (a box (z, y, x) of a volume's) whose edges lie on a
multiple of each axis's tile stride, so that blocks are also the output store's chunks (no
two blocks write the same chunk). A block runs every tile of the *whole image's* layout
(`tiling.image_layouts`, one layout per spatial axis) that reaches into it, in the whole
image's order, and keeps the part inside it; it reads only the window of the image those
tiles need, mirrored at the image's edges (never at the block's), and normalises with the
whole image's percentiles. So each output pixel gets what one pass over the whole image gives
it (to float rounding; exactly, where batches match), whichever process, machine or order
predicts the blocks, and a block predicted twice (a worker that died, a resumed run) writes
the same values again.

Block sizes: ``block_px`` px a side of an image's block; a volume's block holds as many
voxels (``block_px ** (2/3)`` a side on every axis: 161 at the default 2048), so one block
costs the same memory in 2D and 3D. Either is rounded to whole tile strides.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .chunked import ChunkedImage, spatial_axes
from ..io import match_channels_first
from ..registration import tile_halo
from ..inference.tile_io import HostTileReader, Position, TileWriter, reflect_indices
from ..inference.layout import TileLayout
from ..inference.tiling import TileNet, image_layouts, run_tiles, tta_group

DEFAULT_BLOCK_PX = 2048  # about this many px a side; ~17 MB of float32 output per block


@dataclass(frozen=True)
class Block:
    """Output px [start, stop) along each spatial axis ((y, x), or (z, y, x) of a volume) of
    plane (or volume) ``plane``."""

    plane: int
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def name(self) -> str:
        return "-".join(map(str, (self.plane, *self.start)))

    @property
    def spans(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


@dataclass(frozen=True)
class BlockGrid:
    """The whole image's tile layout per spatial axis and the blocks (``sizes`` px per axis,
    multiples of the tile strides) that cut its planes (or volumes) of ``shape`` px."""

    layouts: tuple[TileLayout, ...]
    sizes: tuple[int, ...]
    planes: int
    shape: tuple[int, ...]
    axes: str = field(init=False)  # "yx" or "zyx"

    def __post_init__(self) -> None:
        for name in ("layouts", "sizes", "shape"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "axes", spatial_axes(len(self.shape)))

    @property
    def rows(self) -> TileLayout:
        return self.layouts[-2]

    @property
    def cols(self) -> TileLayout:
        return self.layouts[-1]

    @property
    def size(self) -> int:
        """An image's block side (px); a volume's in-plane side."""
        return self.sizes[-1]

    def blocks(self) -> list[Block]:
        """Plane by plane, then along each axis (the last fastest)."""
        starts = [range(0, length, size) for length, size in zip(self.shape, self.sizes)]
        return [Block(n, start, tuple(min(a + s, length) for a, s, length in zip(start, self.sizes, self.shape)))
                for n in range(self.planes) for start in itertools.product(*starts)]

    def positions(self, block: Block) -> list[Position]:
        """The tiles that write into ``block`` in the whole image's pass, in its order."""
        origins = [_writing_origins(layout, a, b) for layout, a, b in zip(self.layouts, block.start, block.stop)]
        return list(itertools.product(*origins))


def _writing_origins(layout: TileLayout, start: int, end: int) -> list[int]:
    """Origins of the tiles whose kept output reaches into [start, end) and is not wholly
    overwritten there by a later tile: the last tile beginning at or before ``start`` (it
    covers what earlier ones reach, to at least as far) and those after it."""
    reaching = [o for o in layout.origins if o < end and o + layout.output_size > start]
    first = max((o for o in reaching if o <= start), default=reaching[0])
    return [o for o in reaching if o >= first]


def block_grid(model_like, planes: int, height: int, width: int, tile_size: int | None = None,
               block_px: int = DEFAULT_BLOCK_PX) -> BlockGrid:
    """An image's blocks of about ``block_px`` px (a whole number of tile strides)."""
    return grid_of(model_like, planes, (height, width), tile_size, block_px)


def grid_of(model_like, planes: int, shape: tuple[int, ...], tile_size: int | tuple[int, ...] | None = None,
            block_px: int | tuple[int, ...] = DEFAULT_BLOCK_PX) -> BlockGrid:
    """Blocks over the tile layout of planes (H, W) or volumes (Z, Y, X) of ``shape``:
    ``block_px`` px a side (volumes: as many voxels, or one side per axis), rounded to whole
    tile strides of each axis; x as y (the tiles' y and x are alike: square blocks in 2D)."""
    layouts = image_layouts(model_like, shape, tile_size)
    sides = block_sides(block_px, len(shape))
    sizes = [max(1, round(side / _stride(layout))) * _stride(layout) for layout, side in zip(layouts, sides)]
    sizes[-1] = sizes[-2]
    return BlockGrid(layouts, tuple(sizes), planes, shape)


def block_sides(block_px: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    """The wished block side per axis: ``block_px`` per axis as given, or one number: a side
    of an image, the side of a cube of as many voxels (``block_px ** (2/3)``) of a volume."""
    if not isinstance(block_px, int):
        return tuple(block_px)
    return (block_px,) * 2 if dims == 2 else (max(1, round(block_px ** (2 / dims))),) * dims


def _stride(layout: TileLayout) -> int:
    return layout.origins[1] - layout.origins[0] if len(layout.origins) > 1 else layout.output_size


def read_window(grid: BlockGrid, positions: list[Position], input_shift: tuple[float, float]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The smallest window (start, stop per axis) of the image that the tiles at
    ``positions`` read (mirror included)."""
    halo = tile_halo(input_shift)
    start, stop = [], []
    for axis, (layout, length) in enumerate(zip(grid.layouts, grid.shape)):
        read = [reflect_indices(o - layout.context - halo, layout.input_size + 2 * halo, length)
                for o in {p[axis] for p in positions}]
        start.append(int(min(r.min() for r in read)))
        stop.append(int(max(r.max() for r in read)) + 1)
    return tuple(start), tuple(stop)


def predict_block(predictor, image: ChunkedImage, grid: BlockGrid, block: Block,
                  stats: tuple[np.ndarray, np.ndarray], out_dtype: np.dtype) -> np.ndarray:
    """One block -> (C_out, *block.shape) as the output stores it (calibrated map, mask or
    class probabilities, `Predictor.encode_tile`)."""
    positions = grid.positions(block)
    start, stop = read_window(grid, positions, predictor.input_shift)
    data = image.window(block.plane, *(slice(a, b) for a, b in zip(start, stop)))
    data = match_channels_first(data, predictor.config.in_channels, image.path, predictor.options.convert_channels)
    reader = HostTileReader(data, grid.layouts, stats, predictor.input_shift, predictor.device)
    # The array holds only the window: where it lies in the image, on every axis (tile_io's
    # `Window` names an image's rows and columns only).
    reader.origin, reader.extent = start, grid.shape
    channels = predictor.config.out_channels
    out = np.empty((channels, *block.shape), dtype=out_dtype)
    encode = predictor.encode_tile if channels == 1 else None
    writer = TileWriter(out, grid.layouts, encode, None, _ignore, origin=block.start)
    net = TileNet(predictor.model, grid.layouts, predictor.precision, predictor.channels_last)
    group = tta_group(predictor.flips, predictor.options.tta)
    tile = tuple(layout.input_size for layout in grid.layouts)
    run_tiles(net, reader, writer, positions, predictor.batch_size(tile), group)
    return out


def _ignore(_: int) -> None:
    """The tile counter of a block (blocks count themselves)."""

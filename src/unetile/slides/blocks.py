"""Block-wise prediction: an image cut into blocks that are predicted one at a time, anywhere.

A block is a rectangle of the output whose edges lie on a multiple of the tile stride, so
that blocks are also the output store's chunks (no two blocks write the same chunk). A
block runs every tile of the *whole image's* layout (`layout.tile_layout`) that reaches
into it, in the whole image's order, and keeps the part inside it; it reads only the window
of the image those tiles need, mirrored at the image's edges (never at the block's), and
normalises with the whole image's percentiles. So each output pixel gets what one pass over
the whole image gives it (to float rounding; exactly, where batches match), whichever
process, machine or order predicts the blocks, and a block predicted twice (a worker that
died, a resumed run) writes the same values again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chunked import ChunkedImage
from ..registration import tile_halo
from ..inference.tile_io import HostTileReader, Position, TileWriter, Window, reflect_indices
from ..inference.layout import TileLayout, default_tile_size, tile_layout
from ..inference.tiling import TileNet, run_tiles, tta_group

DEFAULT_BLOCK_PX = 2048  # about this many px a side; ~17 MB of float32 output per block


@dataclass(frozen=True)
class Block:
    """Output rows [top, bottom) x columns [left, right) of plane ``plane``."""

    plane: int
    top: int
    left: int
    bottom: int
    right: int

    @property
    def name(self) -> str:
        return f"{self.plane}-{self.top}-{self.left}"


@dataclass(frozen=True)
class BlockGrid:
    """The whole image's tile layout and the blocks (``size`` px a side, a multiple of the
    tile stride) that cut its planes of ``height`` x ``width`` px."""

    rows: TileLayout
    cols: TileLayout
    size: int
    planes: int
    height: int
    width: int

    def blocks(self) -> list[Block]:
        return [Block(n, top, left, min(top + self.size, self.height), min(left + self.size, self.width))
                for n in range(self.planes)
                for top in range(0, self.height, self.size) for left in range(0, self.width, self.size)]

    def positions(self, block: Block) -> list[Position]:
        """The tiles that write into ``block`` in the whole image's pass, in its order."""
        ys = _writing_origins(self.rows, block.top, block.bottom)
        xs = _writing_origins(self.cols, block.left, block.right)
        return [(y, x) for y in ys for x in xs]


def _writing_origins(layout: TileLayout, start: int, end: int) -> list[int]:
    """Origins of the tiles whose kept output reaches into [start, end) and is not wholly
    overwritten there by a later tile: the last tile beginning at or before ``start`` (it
    covers what earlier ones reach, to at least as far) and those after it."""
    reaching = [o for o in layout.origins if o < end and o + layout.output_size > start]
    first = max((o for o in reaching if o <= start), default=reaching[0])
    return [o for o in reaching if o >= first]


def block_grid(model_like, planes: int, height: int, width: int, tile_size: int | None = None,
               block_px: int = DEFAULT_BLOCK_PX) -> BlockGrid:
    """Blocks of about ``block_px`` px (a whole number of tile strides) over the tile layout."""
    tile = tile_size or default_tile_size(model_like, height, width)
    rows, cols = tile_layout(model_like, height, tile, -2), tile_layout(model_like, width, tile, -1)
    stride = rows.origins[1] - rows.origins[0] if len(rows.origins) > 1 else rows.output_size
    size = max(1, round(block_px / stride)) * stride
    return BlockGrid(rows, cols, size, planes, height, width)


def read_window(grid: BlockGrid, positions: list[Position], input_shift: tuple[float, float]) -> Window:
    """The smallest window of the image that the tiles at ``positions`` read (mirror included)."""
    halo = tile_halo(input_shift)
    rows = [reflect_indices(y - grid.rows.context - halo, grid.rows.input_size + 2 * halo, grid.height)
            for y in {p[0] for p in positions}]
    cols = [reflect_indices(x - grid.cols.context - halo, grid.cols.input_size + 2 * halo, grid.width)
            for x in {p[1] for p in positions}]
    top, left = min(r.min() for r in rows), min(c.min() for c in cols)
    bottom, right = max(r.max() for r in rows) + 1, max(c.max() for c in cols) + 1
    return Window(int(top), int(left), int(bottom - top), int(right - left))


def predict_block(predictor, image: ChunkedImage, grid: BlockGrid, block: Block,
                  stats: tuple[np.ndarray, np.ndarray], out_dtype: np.dtype) -> np.ndarray:
    """One block -> (C_out, h, w) as the output stores it (calibrated map, mask or class
    probabilities, `Predictor.encode_tile`)."""
    from ..io import match_channels

    positions = grid.positions(block)
    w = read_window(grid, positions, predictor.input_shift)
    data = image.window(block.plane, slice(w.top, w.top + w.height), slice(w.left, w.left + w.width))
    data = match_channels(data, predictor.config.in_channels, image.path, predictor.options.convert_channels)
    layouts = (grid.rows, grid.cols)
    reader = HostTileReader(data, layouts, stats, predictor.input_shift, predictor.device,
                            Window(w.top, w.left, grid.height, grid.width))
    channels = predictor.config.out_channels
    out = np.empty((channels, block.bottom - block.top, block.right - block.left), dtype=out_dtype)
    encode = predictor.encode_tile if channels == 1 else None
    writer = TileWriter(out, layouts, encode, None, _ignore, origin=(block.top, block.left))
    net = TileNet(predictor.model, layouts, predictor.precision, predictor.channels_last)
    group = tta_group(predictor.flips, predictor.options.tta)
    run_tiles(net, reader, writer, positions, predictor.batch_size(grid.rows.input_size), group)
    return out


def _ignore(_: int) -> None:
    """The tile counter of a block (blocks count themselves)."""

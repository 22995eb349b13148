"""Where the tiles go: their size and origins along one image axis, on the net's pooling grid.

`tiling.py` runs the tiles; `tile_io.py` reads and writes them; both take their layout from
here (so neither imports the other's layout code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserInputError

DEFAULT_TILE_SIZE = 572  # the paper's tile; rounded to the nearest valid size of each net
MAX_DEFAULT_TILE = 892  # largest tile the tool picks by itself (memory: ~0.5 GB per tile at width 64, bf16)


@dataclass(frozen=True)
class TileLayout:
    """Where tiles go along one image axis (all sizes in px).

    ``input_size``: network input per tile; ``output_size``: the part of its output that is
    kept; ``context``: input pixels before the first kept output pixel; ``origins``: the
    image coordinate of each tile's first kept output pixel.
    """

    input_size: int
    output_size: int
    context: int
    origins: tuple[int, ...]


def tile_layout(model_like, length: int, tile_size: int) -> TileLayout:
    """Lay tiles along an axis of ``length`` px, on the net's pooling grid.

    ``model_like`` needs ``config`` (depth, padding), ``halo`` and ``output_size(n)``.
    """
    cfg = model_like.config
    grid = 2**cfg.depth
    if not model_like.valid_input_size(tile_size) == tile_size:
        near = sorted({model_like.valid_input_size(tile_size, "down"), model_like.valid_input_size(tile_size, "up")})
        raise UserInputError(
            f"tile size {tile_size} is not a valid input for this net (every pooling must be exact); "
            f"use {' or '.join(map(str, near))}"
        )
    context, kept = _context_and_kept(model_like, tile_size)
    stride = (kept // grid) * grid
    if kept >= length:
        origins: list[int] = [0]
    else:
        if stride < grid:
            smallest = tile_size
            while _context_and_kept(model_like, smallest)[1] < grid:
                smallest = model_like.valid_input_size(smallest + 1, "up")
            raise UserInputError(
                f"tile size {tile_size} is too small: it keeps {max(kept, 0)} px of output per tile, "
                f"less than the pooling grid of {grid} px; use a tile size of at least {smallest}"
            )
        origins = list(range(0, length - kept + 1, stride))
        if origins[-1] + kept < length:
            # One last tile on the grid reaching the end (it may read a few mirrored px).
            origins.append(math.ceil((length - kept) / grid) * grid)
    return TileLayout(tile_size, kept, context, tuple(origins))


def default_tile_size(model_like, height: int, width: int, max_tile: int = MAX_DEFAULT_TILE) -> int:
    """The valid tile size (<= ``max_tile`` px) that computes the fewest input pixels in all.

    Larger tiles waste less on their halo (a 572 tile keeps 46% of its area, a 892 tile
    69%), but an image that fits one small tile should not pay for a large one. The cost
    counted is tiles x tile area, with the tile layout `predict_tiled` will really use.
    """
    best, best_cost = None, math.inf
    n = model_like.valid_input_size(1, "up")
    while n <= max(max_tile, model_like.valid_input_size(1, "up")):
        kept = _context_and_kept(model_like, n)[1]
        grid = 2**model_like.config.depth
        if kept >= grid or kept >= max(height, width):
            count = len(tile_layout(model_like, height, n).origins) * len(tile_layout(model_like, width, n).origins)
            cost = count * n * n
            if cost < best_cost:
                best, best_cost = n, cost
        n = model_like.valid_input_size(n + 1, "up")
    return best if best is not None else model_like.valid_input_size(DEFAULT_TILE_SIZE)


def _context_and_kept(model_like, tile_size: int) -> tuple[int, int]:
    """(input px before the first kept output px, kept output px) for one tile."""
    cfg = model_like.config
    if cfg.padding == "valid":
        return model_like.halo, model_like.output_size(tile_size)
    margin = same_padding_margin(model_like.halo, cfg.depth)
    return margin, tile_size - 2 * margin


def same_padding_margin(halo: int, depth: int) -> int:
    """px of each side of a same-padding tile that see its zero padding: more than ``halo``
    (the matching valid net's), rounded up to the pooling grid. The +1: at exactly ``halo``
    px the output still sees the padding (depth-2 tiles differed by 0.007 without it)."""
    grid = 2**depth
    return math.ceil((halo + 1) / grid) * grid

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
VOLUME_TILE_BYTES = 2**32  # estimated activations of the largest 3D tile the tool picks (measured: 3.2 GB in use, width 16 fp32)


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


def tile_layout(model_like, length: int, tile_size: int, axis: int = -1) -> TileLayout:
    """Lay tiles along spatial ``axis`` (-1 x, -2 y, -3 z) of ``length`` px, on the net's
    pooling grid of that axis.

    ``model_like`` needs ``config`` (padding), and per axis ``valid_input_size``,
    ``output_size``, ``axis_halo`` and ``grid`` (a `UNet`, or `export.OnnxModel`).
    """
    grid = model_like.grid(axis)
    if not model_like.valid_input_size(tile_size, "nearest", axis) == tile_size:
        near = sorted({model_like.valid_input_size(tile_size, "down", axis),
                       model_like.valid_input_size(tile_size, "up", axis)})
        raise UserInputError(
            f"tile size {tile_size} is not a valid input for this net (every pooling must be exact); "
            f"use {' or '.join(map(str, near))}"
        )
    context, kept = _context_and_kept(model_like, tile_size, axis)
    stride = (kept // grid) * grid
    if kept >= length:
        origins: list[int] = [0]
    else:
        if stride < grid:
            smallest = tile_size
            while _context_and_kept(model_like, smallest, axis)[1] < grid:
                smallest = model_like.valid_input_size(smallest + 1, "up", axis)
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
        grid = model_like.grid()
        if kept >= grid or kept >= max(height, width):
            count = len(tile_layout(model_like, height, n).origins) * len(tile_layout(model_like, width, n).origins)
            cost = count * n * n
            if cost < best_cost:
                best, best_cost = n, cost
        n = model_like.valid_input_size(n + 1, "up")
    return best if best is not None else model_like.valid_input_size(DEFAULT_TILE_SIZE)


def default_tile_shape(model_like, shape: tuple[int, ...], max_voxels: int | None = None) -> tuple[int, ...]:
    """A volume's tile (px per axis): the valid sizes that compute the fewest input voxels in all
    (tiles x tile voxels, with the layout `predict_tiled` will really use), a tile at most
    ``max_voxels`` (default `max_tile_voxels`); y and x alike, so that in-plane rotations (TTA)
    keep a tile's shape.

    Large tiles matter more in 3D than in 2D: a depth-3 net's halo is lost on every face, so a
    132^3 tile of a same-padding net keeps 36^3 of it, a 200^3 tile 104^3 (6x less waste).
    """
    cap = max_voxels or max_tile_voxels(model_like)
    z_sizes = _useful_sizes(model_like, shape[-3], -3)
    plane_sizes = _useful_sizes(model_like, max(shape[-2:]), -1)
    best, best_cost = (z_sizes[0], plane_sizes[0], plane_sizes[0]), math.inf
    for z in z_sizes:
        if z * plane_sizes[0] ** 2 > cap:
            break
        nz = len(tile_layout(model_like, shape[-3], z, -3).origins)
        for s in plane_sizes:
            if z * s * s > cap:
                break
            count = nz * len(tile_layout(model_like, shape[-2], s, -2).origins) * len(
                tile_layout(model_like, shape[-1], s, -1).origins)
            if count * z * s * s < best_cost:
                best, best_cost = (z, s, s), count * z * s * s
    return best


def _useful_sizes(model_like, length: int, axis: int) -> list[int]:
    """The valid tile sizes along ``axis`` that keep at least a pooling grid of output, up to
    the first whose kept output covers ``length`` px (a larger one only computes more)."""
    sizes = []
    n = model_like.valid_input_size(1, "up", axis)
    while True:
        kept = _context_and_kept(model_like, n, axis)[1]
        if kept >= model_like.grid(axis) or kept >= length:
            sizes.append(n)
        if kept >= length:
            return sizes
        n = model_like.valid_input_size(n + 1, "up", axis)


def max_tile_voxels(model_like) -> int:
    """The voxels of the largest 3D tile the tool picks by itself: `VOLUME_TILE_BYTES` of
    activations, estimated as `activation_bytes` does in fp32 (width 16: 203^3, width 32: 161^3;
    measured: a 200^3 tile of a width-16 net took 3.2 GB of resident memory in fp32)."""
    return int(VOLUME_TILE_BYTES // activation_bytes(model_like, 1, "fp32"))


def activation_bytes(model_like, samples: int, precision: str) -> int:
    """Estimated activation memory of one tile of ``samples`` px (voxels): 8 full-resolution maps
    of ``width`` channels. Measured: one 876-px tile of the paper's net (width 64) costs ~0.45 GB
    of resident memory in bf16; the estimate is a little above that."""
    width = getattr(model_like.config, "width", 64)
    return 8 * width * samples * (2 if precision in ("bf16", "fp16") else 4)


def _context_and_kept(model_like, tile_size: int, axis: int = -1) -> tuple[int, int]:
    """(input px before the first kept output px, kept output px) for one tile along ``axis``."""
    halo = model_like.axis_halo(axis)
    if model_like.config.padding == "valid":
        return halo, model_like.output_size(tile_size, axis)
    margin = same_padding_margin(halo, model_like.grid(axis))
    return margin, tile_size - 2 * margin


def same_padding_margin(halo: int, grid: int) -> int:
    """px of each side of a same-padding tile that see its zero padding: more than ``halo``
    (the matching valid net's), rounded up to the pooling ``grid`` (px). The +1: at exactly
    ``halo`` px the output still sees the padding (depth-2 tiles differed by 0.007 without it)."""
    return math.ceil((halo + 1) / grid) * grid

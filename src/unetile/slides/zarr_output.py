"""Results written as OME-Zarr (NGFF 0.5 on zarr v3, or 0.4 on zarr v2 to match a 0.4
input), one block at a time, resumably.

The store is built as ``.NAME.part.zarr`` beside its final name: level 0 is written block by
block (each block is a whole number of chunks, so writers never share a chunk), then a
small pyramid (each level every other pixel of the one above in y and x, as ome-zarr's
"nearest"; levels down to 64 px, at most 3) and the multiscales metadata (ome-zarr's writer),
and only then is it renamed into place: a store under the final name is always complete.

A volume's output is (t?, c, z, y, x), chunked in its blocks' boxes; its pyramid halves y and
x only (z is kept: microscopes' z is mostly coarser already, and a viewer's z slider stays on
the same planes at every level), and its scale holds the voxel size.

Progress lives beside it in ``.NAME.progress/``: the settings' fingerprint and one empty
file per finished block, written after the block's chunks. ``--resume`` skips the blocks
found there; blocks are formed the same way every run, so the result is bit-identical to
an uninterrupted run. Any process may write any block (the progress folder is shared).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .chunked import ChunkedImage, plane_key, spatial_axes
from ..errors import UserInputError
from ..io import atomic_path
from .blocks import Block, BlockGrid

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_SMALLEST_LEVEL = 64  # px: no pyramid level smaller than this
_MOST_LEVELS = 3  # below level 0


def zarr_format(ngff_version: str) -> int:
    """The zarr format of an NGFF version: 2 for 0.4, 3 from 0.5 on."""
    return 2 if ngff_version == "0.4" else 3


def ngff_format(ngff_version: str):
    """ome-zarr's format object of an NGFF version."""
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if ngff_version == "0.4" else FormatV05()


def output_layout(image: ChunkedImage, channels: int) -> tuple[str, tuple[int, ...]]:
    """(axes, shape) of the output: an OME-Zarr input's own axes (with c, ``channels`` of
    them), else c, y, x (and z for a stack of planes, or a volume)."""
    size = dict(zip(image.axes, image.array.shape))
    if image.kind == "ome-zarr":
        axes = image.axes if "c" in image.axes else _with_channel_axis(image.axes)
        size["c"] = channels
        return axes, tuple(size[a] for a in axes)
    n = math.prod(size[a] for a in image.axes if a not in "cyx")
    height, width = size["y"], size["x"]
    if n == 1:
        return "cyx", (channels, height, width)
    return "czyx", (channels, n, height, width)


def _with_channel_axis(axes: str) -> str:
    """NGFF's order: time, then channel, then space."""
    at = 1 if axes.startswith("t") else 0
    return axes[:at] + "c" + axes[at:]


def part_store(target: Path) -> Path:
    return target.parent / f".{target.name}.part.zarr"


def progress_folder(target: Path) -> Path:
    return target.parent / f".{target.name}.progress"


class ZarrOutput:
    """An OME-Zarr image being written block by block (see the module docstring)."""

    def __init__(self, target: Path, axes: str, grid: BlockGrid, ngff_version: str, scale: tuple[float, ...] | None):
        self.target, self.axes, self.grid = target, axes, grid
        self.ngff_version, self.scale = ngff_version, scale
        self.part, self.progress = part_store(target), progress_folder(target)

    def create(self, shape: tuple[int, ...], dtype: np.dtype, fingerprint: dict, resume: bool) -> None:
        """Create the part store (or, with ``resume``, reopen the one an interrupted run left
        with the same ``fingerprint``)."""
        import zarr

        fingerprint = {**fingerprint, "shape": list(shape), "block": list(self.grid.sizes), "axes": self.axes}
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples become lists)
        saved = self.progress / "fingerprint.json"
        if resume and self.part.exists() and saved.exists():
            if json.loads(saved.read_text()) != fingerprint:
                raise UserInputError(f"{self.target}: the unfinished output was made with other settings or another "
                                     "model; run without --resume (and with --overwrite) to start again")
            return
        shutil.rmtree(self.part, ignore_errors=True)
        shutil.rmtree(self.progress, ignore_errors=True)
        self.progress.mkdir(parents=True)
        group = zarr.open_group(str(self.part), mode="w", zarr_format=zarr_format(self.ngff_version))
        group.create_array("0", shape=shape, chunks=block_chunks(self.axes, self.grid, shape), dtype=dtype,
                           fill_value=0)
        _write_json(saved, fingerprint)

    def done(self, block: Block) -> bool:
        return (self.progress / block.name).exists()

    def write(self, block: Block, values: np.ndarray) -> None:
        """Write one block's (C, h, w) values (a volume's (C, d, h, w)), then mark it done."""
        import zarr

        write_block_values(zarr.open_array(str(self.part / "0"), mode="r+"), self.axes, block, values)
        (self.progress / block.name).touch()

    def finish(self) -> None:
        """The pyramid, the metadata, then the rename into place; the progress goes."""
        import zarr

        group = zarr.open_group(str(self.part), mode="r+")
        levels = write_pyramid(group, self.axes, self.grid)
        write_multiscales(group, self.axes, levels, self.ngff_version, self.scale, self.target.name)
        if self.target.exists():  # --overwrite: the plan allowed it
            shutil.rmtree(self.target)
        os.replace(self.part, self.target)
        shutil.rmtree(self.progress, ignore_errors=True)


def write_block_values(array, axes: str, block: Block, values: np.ndarray) -> None:
    """Write (C, *block.shape) ``values`` into ``block`` of the zarr ``array`` of ``axes``."""
    key = plane_key(axes, array.shape, block.plane, *block.spans)
    kept = [a for a in axes if a == "c" or a in spatial_axes(len(block.start))]
    array[key] = np.moveaxis(values, 0, kept.index("c")) if "c" in kept else values[0]


def block_chunks(axes: str, grid: BlockGrid, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of one block's extent and one plane (so that writers never share one)."""
    sizes = dict(zip(grid.axes, grid.sizes))
    return _clip(tuple(sizes.get(a, 1) for a in axes), shape)


def _clip(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))


def write_pyramid(group, axes: str, grid: BlockGrid) -> int:
    """Levels 1, 2, ... from level 0, each every other pixel of the one above in y and x, a
    block's rows and columns (a volume's: a block's box) at a time (memory: one block of
    every plane, or volume); returns the number of levels."""
    level, source = 0, group["0"]
    y, x = axes.index("y"), axes.index("x")
    at = [axes.index(a) for a in grid.axes]  # the blocks' axes: (y, x) or (z, y, x)
    halved = {y: 2, x: 2}
    while level < _MOST_LEVELS and min(source.shape[y], source.shape[x]) // 2 >= _SMALLEST_LEVEL:
        shape = tuple(math.ceil(s / 2) if i in (y, x) else s for i, s in enumerate(source.shape))
        level += 1
        target = group.create_array(str(level), shape=shape, chunks=_clip(source.chunks, shape),
                                    dtype=source.dtype, fill_value=0)
        for start in itertools.product(*(range(0, shape[i], step) for i, step in zip(at, grid.sizes))):
            key, out = [slice(None)] * len(shape), [slice(None)] * len(shape)
            for i, a, step in zip(at, start, grid.sizes):
                f = halved.get(i, 1)
                key[i], out[i] = slice(f * a, f * (a + step), f), slice(a, min(a + step, shape[i]))
            target[tuple(out)] = source[tuple(key)]
        source = target
    return level + 1


def write_multiscales(group, axes: str, levels: int, ngff_version: str, scale: tuple[float, ...] | None,
                    name: str) -> None:
    from ome_zarr.writer import write_multiscales_metadata

    base = list(scale) if scale and len(scale) == len(axes) else [1.0] * len(axes)
    datasets = []
    for level in range(levels):
        factors = [2.0**level if a in "yx" else 1.0 for a in axes]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [b * f for b, f in zip(base, factors)]}]})
    write_multiscales_metadata(group, datasets, fmt=ngff_format(ngff_version), axes=[_axis(a) for a in axes],
                               name=name)


def _axis(name: str) -> dict:
    kind = _AXIS_TYPES.get(name)
    return {"name": name, "type": kind} if kind else {"name": name}


def _write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value))

"""Cells of a whole slide (or volume), cut block by block, with one id per cell across block borders.

After the probability map is written (block_run.py), ``--instances`` cuts it into cells in
three passes over the same blocks; passes 1 and 3 are tasks that any process may run, and
run again (a worker that died, ``--resume``), with the same result:

1. **label**: each block's window of the map, widened by ``margin`` px on every side
   (clipped at the image's edges), is cut into cells as in memory (`InstanceSettings.labels`;
   a volume's in 3D with its voxel size); the block's own part is written with provisional
   ids 1..K, and K and the block's faces are kept (``.NAME.progress/cells/BLOCK.npz``): its
   four edge lines, or a box's six face planes.
2. **merge** (in the calling process; it reads only the faces): each block's ids get an
   offset; two non-zero pixels facing each other across a block border (a box's face) are
   linked; the connected components of the links (SciPy's ``csgraph``) are the cells,
   numbered 1..K in the order the blocks first meet them.
3. **relabel**: each block's provisional ids are mapped to the final ones and written into
   an NGFF labels image (uint32, 0 = background, its own small pyramid, ``image-label``
   metadata with colours and a link to its image).

Why this equals one pass over the whole image (up to the numbering): near a block, the
smoothing, the seeds and the watershed see what a whole-image pass sees whenever each cell,
together with the cells it touches, is smaller than ``margin``; then both sides of a border
carry the whole-image labels, in which distinct cells never touch (the watershed line or
the components' 4-connectivity (6 in a volume) keeps them apart), so two non-zero pixels
across a border are one cell. A larger cell is still one cell across borders, but its cut may differ from
a whole-image pass (as in dask-image's and Cellpose's distributed labelling).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chunked import ChunkedImage
from ..spacing import per_axis
from ..io import atomic_path
from .blocks import Block, BlockGrid
from ..inference.instances import InstanceSettings
from .zarr_output import block_chunks, ngff_format, write_block_values, write_multiscales, write_pyramid, zarr_format

LABEL_MARGIN = 128  # px of map read around a block: cells smaller than this are cut as in one pass
# In-plane voxels around a volume's block (fewer along a coarser z, `spacing.per_axis`): objects
# smaller than this are cut as in one pass. Smaller than an image's: the window is a box, and a
# 161-voxel block with 128 on each side would hold 17x its own voxels (with 48: 4x).
VOLUME_LABEL_MARGIN = 48
_MOST_COLOURS = 1024  # cells given a colour in the metadata; viewers choose the others


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to label or relabel any block of one image (small: it travels)."""

    probabilities: Path  # level 0 of the probability map (a zarr array)
    labels: Path  # the labels image's group being built
    work: Path  # the progress folder of the cells
    axes: str  # the probability map's
    label_axes: str  # the labels image's: its image's axes, with one channel where it has c
    grid: BlockGrid
    settings: InstanceSettings
    threshold: float  # a pixel is inside a cell above this calibrated probability
    margin: int | tuple[int, ...] = LABEL_MARGIN  # px around a block, on every axis or per axis
    voxel_size: tuple[float, float, float] | None = None  # volumes: (z, y, x) um, the watershed's smoothing

    def labelled(self, block: Block) -> Path:
        return self.work / f"{block.name}.npz"

    def relabelled(self, block: Block) -> Path:
        return self.work / f"{block.name}.final"

    @property
    def published(self) -> Path:
        return published_marker(self.work.parent)


def cell_margin(dims: int, voxel_size: tuple[float, float, float] | None) -> int | tuple[int, ...]:
    """px of map around a block: `LABEL_MARGIN` for images; `VOLUME_LABEL_MARGIN` in-plane
    voxels for volumes, the same physical length along each axis."""
    if dims == 2:
        return LABEL_MARGIN
    return tuple(math.ceil(m) for m in per_axis(VOLUME_LABEL_MARGIN, voxel_size))


def cells_work(progress: Path) -> Path:
    """The cells' part of an output's progress folder."""
    return progress / "cells"


def published_marker(progress: Path) -> Path:
    """Written once the labels image is listed beside its image: a resumed run is done."""
    return cells_work(progress) / "published"


def label_block(block: Block, job: CellJob) -> str:
    """Pass 1 (a task): cut ``block``'s window into cells; write its provisional ids."""
    import zarr

    if job.labelled(block).exists():
        return block.name
    array = zarr.open_array(str(job.probabilities), mode="r")
    prob_map = ChunkedImage(job.probabilities, array, job.axes, "zarr", spatial=job.grid.axes)
    margins = (job.margin,) * len(block.start) if isinstance(job.margin, int) else job.margin
    start = [max(0, a - m) for a, m in zip(block.start, margins)]
    stop = [min(length, b + m) for b, m, length in zip(block.stop, margins, job.grid.shape)]
    prob = prob_map.window(block.plane, *(slice(a, b) for a, b in zip(start, stop)))
    cells = job.settings.labels(prob, job.threshold, spacing=job.voxel_size)
    core = cells[tuple(slice(a - w, b - w) for a, b, w in zip(block.start, block.stop, start))]
    core, count = _renumbered(core)
    write_block_values(zarr.open_array(str(job.work / "provisional"), mode="r+"), job.label_axes, block, core[None])
    with atomic_path(job.labelled(block)) as tmp, open(tmp, "wb") as f:
        np.savez(f, count=count, **_faces(core))
    return block.name


def _faces(core: np.ndarray) -> dict[str, np.ndarray]:
    """A block's ids on its faces: ``low{i}`` / ``high{i}``, its first and last slice along
    axis i (an image's top/bottom rows, left/right columns; a box's six planes)."""
    faces = {}
    for axis in range(core.ndim):
        faces[f"low{axis}"] = np.take(core, 0, axis=axis)
        faces[f"high{axis}"] = np.take(core, -1, axis=axis)
    return faces


def relabel_block(block: Block, lut: np.ndarray, job: CellJob) -> str:
    """Pass 3 (a task): write ``block``'s final ids (``lut[provisional id]``)."""
    import zarr

    if job.relabelled(block).exists():
        return block.name
    provisional = zarr.open_array(str(job.work / "provisional"), mode="r")
    ids = ChunkedImage(job.work, provisional, job.label_axes, "zarr", spatial=job.grid.axes).window(
        block.plane, *block.spans)
    write_block_values(zarr.open_array(str(job.labels / "0"), mode="r+"), job.label_axes, block, lut[ids])
    job.relabelled(block).touch()
    return block.name


def merge_blocks(job: CellJob) -> tuple[list[np.ndarray], int]:
    """Pass 2: each block's table provisional id -> final id, and the number of cells."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    blocks = job.grid.blocks()
    edges = {b: _edges(job.labelled(b)) for b in blocks}
    counts = np.array([int(edges[b]["count"]) for b in blocks], dtype=np.int64)
    offsets = dict(zip(blocks, np.concatenate([[0], np.cumsum(counts)[:-1]])))
    at = {(b.plane, *b.start): b for b in blocks}
    links = []
    for b in blocks:
        for axis, stop in enumerate(b.stop):  # the neighbour after b along each axis
            other = at.get((b.plane, *b.start[:axis], stop, *b.start[axis + 1:]))
            if other is not None:
                links.append(_facing(edges[b][f"high{axis}"], offsets[b], edges[other][f"low{axis}"], offsets[other]))
    nodes = int(counts.sum()) + 1  # node 0: the background, never linked
    pairs = np.concatenate(links, axis=1) if links else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    final = _numbered_by_first_appearance(component)
    luts = [np.concatenate([[0], final[offsets[b] + 1 : offsets[b] + 1 + c]]).astype(np.uint32)
            for b, c in zip(blocks, counts)]
    return luts, int(final.max(initial=0))


def _edges(path: Path) -> dict[str, np.ndarray]:
    """A block's saved count and faces, read and the file closed (thousands of blocks)."""
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def _facing(mine: np.ndarray, my_offset: int, theirs: np.ndarray, their_offset: int) -> np.ndarray:
    """(2, n) global ids of the cells that face each other across one border."""
    both = (mine > 0) & (theirs > 0)
    return np.stack([mine[both].astype(np.int64) + my_offset, theirs[both].astype(np.int64) + their_offset])


def _numbered_by_first_appearance(component: np.ndarray) -> np.ndarray:
    """Node -> 1..K by the order of each component's first node; node 0 -> 0."""
    comps, first = np.unique(component[1:], return_index=True)
    number = np.empty(comps.size, dtype=np.int64)
    number[np.argsort(first)] = np.arange(1, comps.size + 1)
    final = np.zeros(component.size, dtype=np.int64)
    final[1:] = number[np.searchsorted(comps, component[1:])]
    return final


def _renumbered(cells: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..K of the cells present (a window's cells may lie outside the block)."""
    ids, inverse = np.unique(cells, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(cells.shape).astype(np.uint32), int(ids.size - (ids[0] == 0))


# --- the labels image: created, finished, published -------------------------------------------

def create_labels(job: CellJob, shape: tuple[int, ...], ngff_version: str, resume: bool) -> None:
    """The labels image's level 0 and the provisional ids (kept when resuming)."""
    import zarr

    if resume and job.work.exists() and (job.labels / "0").exists():
        return
    shutil.rmtree(job.work, ignore_errors=True)
    shutil.rmtree(job.labels, ignore_errors=True)
    job.work.mkdir(parents=True)
    chunks = block_chunks(job.label_axes, job.grid, shape)
    zarr.create_array(str(job.work / "provisional"), shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0,
                      zarr_format=zarr_format(ngff_version))
    group = zarr.open_group(str(job.labels), mode="w", zarr_format=zarr_format(ngff_version))
    group.create_array("0", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)


def finish_labels(job: CellJob, ngff_version: str, scale: tuple[float, ...] | None) -> None:
    """The labels image's pyramid and multiscales metadata (before it is listed anywhere)."""
    import zarr

    group = zarr.open_group(str(job.labels), mode="r+")
    levels = write_pyramid(group, job.label_axes, job.grid)
    write_multiscales(group, job.label_axes, levels, ngff_version, scale, job.labels.name)


def publish_labels(job: CellJob, image: Path, name: str, cells: int, ngff_version: str) -> Path:
    """Move the finished labels image to ``image``/labels/``name`` and list it there with its
    ``image-label`` metadata (colours, the link to its image), last of all; then mark the job
    published (a resumed run does nothing more)."""
    import zarr
    from ome_zarr.writer import add_metadata, get_metadata, write_label_metadata

    built = job.labels
    labels_group = zarr.open_group(str(image / "labels"), mode="a", zarr_format=zarr_format(ngff_version))
    target = image / "labels" / name
    if built != target:
        hidden = target.with_name(f".{name}.part")
        shutil.rmtree(hidden, ignore_errors=True)
        shutil.move(built, hidden)
        os.replace(hidden, target)
    fmt = ngff_format(ngff_version)
    listed = [n for n in get_metadata(labels_group).get("labels", []) if n != name]  # listed once, also on resume
    add_metadata(labels_group, {"labels": listed}, fmt=fmt)
    write_label_metadata(labels_group, name, colors=_colours(cells), fmt=fmt, source={"image": "../../"})
    job.published.touch()
    return target


def _colours(cells: int) -> list[dict]:
    """Background transparent; cells 1.. (up to `_MOST_COLOURS`) on well-spread hues."""
    import colorsys

    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    for i in range(1, min(cells, _MOST_COLOURS) + 1):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append({"label-value": i, "rgba": [round(255 * r), round(255 * g), round(255 * b), 255]})
    return colours

"""Chunked images read lazily: OME-Zarr (NGFF 0.4 and 0.5), plain zarr arrays, and compressed
or tiled TIFFs through tifffile's zarr interface. Nothing is loaded whole: a `ChunkedImage`
hands out windows of one plane (or, viewed as volumes for a 3D net, of one volume) as NumPy arrays.

Axes: an OME-Zarr image names them (``multiscales[0].axes``: t, c, z, y, x) and level 0 of
its pyramid is read; a TIFF's come from tifffile ('S' and 'C' are channels, any other axis
counts planes); a plain zarr array is (y, x), (c, y, x) or (n, c, y, x). Planes are every
combination of the axes other than c, y and x (e.g. t and z), in the array's order.

Volumes (`as_volumes`, for a 3D net): z joins y and x as a spatial axis and the planes become
volumes, every combination of the other axes (e.g. t). An OME-Zarr image must name z; a TIFF's
or a plain zarr array's z is its one plane axis (a TIFF stack's pages). The voxel size (z, y, x)
comes from level 0's NGFF scale, or a TIFF's OME/ImageJ metadata (`io.voxel_size`).

Percentiles for the normalisation come from a bounded sample of whole chunks spread evenly
over the plane or volume (`sample_statistics`), never from a full read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError, reading
from ..normalization import Normalization, noise_sd, subsample_step

ZARR_SUFFIX = ".zarr"
_MAX_SAMPLE_PIXELS = 4_000_000  # per plane or volume: as Normalization.statistics on images in memory


def spatial_axes(count: int) -> str:
    """The names of ``count`` spatial axes: "yx" (images) or "zyx" (volumes)."""
    return "zyx"[-count:]


@dataclass(frozen=True)
class ChunkedImage:
    """A chunked image on disk; ``array`` is indexed lazily (zarr) with one slice per axis."""

    path: Path
    array: Any  # a zarr.Array (or anything indexable with a tuple of slices and ints)
    axes: str  # one lower-case letter per array axis, e.g. "tczyx"; 'c' = channels
    kind: str  # "ome-zarr", "zarr" or "tiff"
    ngff_version: str | None = None  # OME-Zarr only: "0.4" or "0.5"
    scale: tuple[float, ...] | None = None  # level 0's scale per axis (OME-Zarr; a TIFF volume's voxel size)
    spatial: str = "yx"  # the axes a window spans: "yx" (planes) or "zyx" (volumes, `as_volumes`)

    @property
    def plane_axes(self) -> str:
        """The axes that count planes (or volumes): all but c and the spatial ones."""
        return "".join(a for a in self.axes if a != "c" and a not in self.spatial)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N planes, C channels, H, W); volumes: (N volumes, C, Z, Y, X)."""
        size = dict(zip(self.axes, self.array.shape))
        n = math.prod(size[a] for a in self.plane_axes)
        return n, size.get("c", 1), *(size[a] for a in self.spatial)

    @property
    def voxel_size(self) -> tuple[float, float, float] | None:
        """(z, y, x) of the scale where it is known and the image has z, else None."""
        if self.scale is None or "z" not in self.axes:
            return None
        size = dict(zip(self.axes, self.scale))
        return size["z"], size["y"], size["x"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunk_yx(self) -> tuple[int, int]:
        """The storage chunk's height and width (px)."""
        chunks = dict(zip(self.axes, self.array.chunks))
        return chunks["y"], chunks["x"]

    @property
    def spatial_chunks(self) -> tuple[int, ...]:
        """The storage chunk's size along each spatial axis (px)."""
        chunks = dict(zip(self.axes, self.array.chunks))
        return tuple(chunks[a] for a in self.spatial)

    def window(self, n: int, *spans: slice) -> np.ndarray:
        """Plane ``n``, rows ``ys``, columns ``xs`` -> (C, h, w) in the stored dtype; of volumes,
        volume ``n`` and one span per z, y, x -> (C, d, h, w).

        A chunk that cannot be decoded raises `UserInputError` naming it (`find_damaged_chunk`).
        """
        key = plane_key(self.axes, self.array.shape, n, *spans)
        try:
            out = np.asarray(self.array[key])
        except Exception:
            find_damaged_chunk(self, key)  # raises the one line naming the chunk
            raise  # every chunk reads alone: not the file's fault, a bug (keep its traceback)
        kept = [a for a in self.axes if a == "c" or a in self.spatial]  # the axes left after integer indexing
        if "c" not in kept:
            return out[None]
        return np.moveaxis(out, kept.index("c"), 0)

    def as_volumes(self) -> ChunkedImage:
        """This image seen as volumes (z, y, x) for a 3D net; one line where it has no z."""
        if self.spatial == "zyx":
            return self
        z = "z" if self.kind == "ome-zarr" else "".join(a for a in self.axes if a not in "cyx")
        if len(z) != 1 or z not in self.axes or dict(zip(self.axes, self.array.shape))[z] < 2:
            raise UserInputError(f"{self.path}: a 3D model segments volumes, and this image (axes '{self.axes}', "
                                 f"shape {tuple(self.array.shape)}) has no z axis of more than one plane")
        axes, scale = self.axes.replace(z, "z"), self.scale
        if self.kind == "tiff":
            from ..io import voxel_size

            voxel = voxel_size(self.path)
            scale = None if voxel is None else tuple(dict(zip("zyx", voxel)).get(a, 1.0) for a in axes)
        return replace(self, axes=axes, spatial="zyx", scale=scale)


def plane_key(axes: str, shape: tuple[int, ...], n: int, *spans: slice) -> tuple:
    """The index of plane ``n`` (counted over the axes other than c, y, x, in order), rows
    ``ys`` and columns ``xs``, all channels, in an array of ``axes`` and ``shape``; with three
    ``spans`` (z, y, x), of volume ``n`` (counted over the axes other than c, z, y, x)."""
    size = dict(zip(axes, shape))
    at = dict(zip(spatial_axes(len(spans)), spans))
    plane_axes = [a for a in axes if a != "c" and a not in at]
    where = dict(zip(plane_axes, (int(i) for i in np.unravel_index(n, [size[a] for a in plane_axes]))))
    return tuple(where[a] if a in where else at.get(a, slice(None)) for a in axes)


def find_damaged_chunk(image: ChunkedImage, key: tuple) -> None:
    """Read the storage chunks under ``key`` one at a time; the first that fails raises
    `UserInputError` naming it (its file in a zarr store) and the decoder's problem."""
    array = image.array
    unit = getattr(array, "shards", None) or array.chunks  # a shard is one file
    bounds = [(k, k + 1) if isinstance(k, int) else k.indices(size)[:2] for k, size in zip(key, array.shape)]
    spans = [range(start // c, -(-stop // c)) for (start, stop), c in zip(bounds, unit)]
    for coords in itertools.product(*spans):
        part = tuple(k if isinstance(k, int) else slice(max(start, i * c), min(stop, (i + 1) * c))
                     for k, (start, stop), i, c in zip(key, bounds, coords, unit))
        with reading(image.path, f"{_chunk_name(image, coords, unit)} cannot be read"):
            np.asarray(array[part])


def _chunk_name(image: ChunkedImage, coords: tuple[int, ...], unit: tuple[int, ...]) -> str:
    """'chunk s0/c/2/1 at rows 128-191, columns 64-127' (a zarr store's chunk file; a TIFF's
    tile or strip by its grid position), with the plane where there are several."""
    extent = {a: (i * c, min((i + 1) * c, size) - 1) for a, i, c, size in zip(image.axes, coords, unit,
                                                                                image.array.shape)}
    if image.kind == "tiff":
        name = f"chunk {tuple(coords)}"
    else:
        prefix = f"{image.array.path}/" if getattr(image.array, "path", "") else ""
        name = f"chunk {prefix}{image.array.metadata.encode_chunk_key(coords)}"
    size = dict(zip(image.axes, image.array.shape))
    spans = [(f"{a} {lo}" if lo == hi else f"{a} {lo}-{hi}") for a, (lo, hi) in extent.items()
             if a not in "cyx" and size[a] > 1]
    (top, bottom), (left, right) = extent["y"], extent["x"]
    return f"{name} at {', '.join(spans + [f'rows {top}-{bottom}', f'columns {left}-{right}'])}"


def is_zarr(path: Path) -> bool:
    """A folder that holds a zarr store (v2 or v3), or is named ``*.zarr``."""
    path = Path(path)
    if not path.is_dir():
        return False
    return path.suffix == ZARR_SUFFIX or any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


def open_chunked(path: Path, spatial: str = "yx") -> ChunkedImage:
    """A zarr store (OME-Zarr or plain array) or a TIFF, read lazily; with ``spatial`` "zyx"
    as volumes (`ChunkedImage.as_volumes`)."""
    path = Path(path)
    image = open_zarr(path) if is_zarr(path) else open_chunked_tiff(path)
    return image.as_volumes() if spatial == "zyx" else image


def open_zarr(path: Path) -> ChunkedImage:
    """An OME-Zarr image (level 0) or a plain zarr array; one clear error for anything else."""
    import zarr

    with reading(path, "not a zarr store, or its metadata (zarr.json, .zgroup, .zattrs) is damaged"):
        node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        axes = {2: "yx", 3: "cyx", 4: "ncyx"}.get(node.ndim)
        if axes is None:
            raise UserInputError(f"{path}: a plain zarr array of {node.ndim} dimensions; expected (y, x), (c, y, x) "
                                 "or (n, c, y, x), or an OME-Zarr image that names its axes")
        return ChunkedImage(path, node, axes, "zarr")
    attrs = dict(node.attrs)
    ome = attrs.get("ome", {})
    multiscales = ome.get("multiscales") or attrs.get("multiscales")
    if not multiscales:
        raise UserInputError(f"{path}: a zarr group without OME-Zarr multiscales metadata; give an OME-Zarr "
                             "image (NGFF 0.4 or 0.5) or a zarr array")
    with reading(path, "malformed OME-Zarr multiscales metadata"):
        first = multiscales[0]
        version = str(ome.get("version") or first.get("version") or "0.4")
        axes = "".join((a["name"] if isinstance(a, dict) else a).lower() for a in first["axes"])
        dataset = first["datasets"][0]
        level = str(dataset["path"])
        scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"),
                     None)
        scale = tuple(float(s) for s in scale) if scale else None
    _check_axes(path, axes)
    meta = f"{level}/{'zarr.json' if node.metadata.zarr_format == 3 else '.zarray'}"
    with reading(path, f"level 0: {meta} is missing or damaged"):
        array = node[level]
    if not isinstance(array, zarr.Array) or array.ndim != len(axes):
        raise UserInputError(f"{path}: level 0 ({level}) is not an array of the {len(axes)} axes '{axes}'")
    return ChunkedImage(path, array, axes, "ome-zarr", version, scale)


def open_chunked_tiff(path: Path) -> ChunkedImage:
    """A TIFF (any compression, tiled or striped) through tifffile's zarr store, level 0."""
    import tifffile
    import zarr

    from ..io import tiff_checked

    with reading(path, "cannot read the TIFF"), tiff_checked(path):
        with tifffile.TiffFile(path) as tif:
            series_axes = tif.series[0].axes
        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        if not isinstance(node, zarr.Array):  # a pyramid: level 0
            node = node["0"]
    axes = "".join("c" if a in "SC" else a.lower() if a in "YX" else "n" for a in series_axes)
    if axes.count("c") > 1:
        raise UserInputError(f"{path}: TIFF axes {series_axes} hold two channel axes; the model takes one")
    _check_axes(path, axes)
    return ChunkedImage(path, node, _unique_plane_axes(axes), "tiff")


def _unique_plane_axes(axes: str) -> str:
    """Rename repeated plane axes ('n', 'n') to distinct letters, so they index apart."""
    out, spare = [], iter("pqrsuvw")
    for a in axes:
        out.append(next(spare) if a == "n" and "n" in out else a)
    return "".join(out)


def _check_axes(path: Path, axes: str) -> None:
    if not axes.endswith("yx") or len(set(axes)) != len(axes):
        raise UserInputError(f"{path}: axes '{axes}' cannot be segmented: the last two must be y and x, "
                             "each axis named once")


def sample_statistics(image: ChunkedImage, n: int, normalization: Normalization,
                      max_pixels: int = _MAX_SAMPLE_PIXELS,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) values (`Normalization.limits`) of plane (or volume) ``n`` from whole chunks on a
    regular grid.

    At most ``max_pixels`` px (voxels) are read: every chunk where the plane is that small
    (then the result equals the full-image percentiles), else every k-th chunk along each axis
    of the chunk grid (k as small as the budget allows), so the sample spans the whole plane.
    Measured on a test image (tests/test_zarr.py): within 1% of the intensity range of the
    full-image percentiles. ``transform`` (C, *window) -> (C', *window) is applied to each
    chunk first (the model's channel conversion). With a ``noise_floor`` the pixel noise is
    measured in the same chunks (`noise_sd`); where every chunk is read, in the whole plane, as
    `Normalization.statistics` does in memory (the same values to the bit).
    """
    chunks = image.spatial_chunks
    grid = [math.ceil(length / c) for length, c in zip(image.shape[2:], chunks)]
    step = subsample_step(math.prod(grid) * math.prod(chunks), max_pixels, len(grid))
    if step == 1:  # every chunk: read as one window, so the noise is measured as on the image in memory
        windows = [image.window(n, *(slice(0, length) for length in image.shape[2:]))]
    else:
        windows = [image.window(n, *(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks)))
                   for coords in itertools.product(*(range(0, g, step) for g in grid))]
    windows = [transform(w) for w in windows] if transform is not None else windows
    sample = np.concatenate([w.reshape(w.shape[0], -1) for w in windows], axis=1)
    return normalization.limits(sample, noise_sd(windows) if normalization.noise_floor else None)

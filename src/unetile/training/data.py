"""Training data: image/label pairs from folders or stacks, label meaning, splits, random tiles.

Labels are read in one of three ways:
  - binary: 0 = background / membrane, any non-zero value = foreground (ISBI: 255 = interior);
  - class ids 0..N-1 with ``n_classes = N`` (``--classes N``);
  - instance ids (more than two values, no ``--classes``): one integer per cell, 0 =
    background; touching cells are kept apart by a 1-px background border, as the paper
    prepared its cell data, and the weight map's d1, d2 are computed from the ids.

Training tiles are drawn at random centres (every pixel can be a centre) from the images
extended by mirror reflection; the label and weight map are the net's output window at the
tile's centre. A tile is a pure function of ``(seed, index)``, so runs repeat exactly,
whatever the number of DataLoader workers, and resume exactly.

Volumes (``dims=3``): each TIFF volume (multi-page, ImageJ hyperstack or OME) and its label
volume of the same shape are one item, image (C, Z, Y, X) and label (Z, Y, X); tiles are cut
the same way on three axes. Sparse labels: voxels holding ``ignore_label`` are not annotated;
they weigh 0, count in no statistics, and are no cell (`without_ignored`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries
from torch.utils.data import Dataset, Sampler

from .. import symmetries
from ..cell_size import median_diameter, resize_image, resize_labels, scale_factor, scaled_shape
from ..errors import UserInputError
from ..flows import flow_field
from ..inference.instances import INTERIOR_SEEDED
from ..inference.tile_io import reflect_indices
from ..io import list_images, read_image
from ..neighbours import shifted
from ..normalization import Normalization, normalize
from .augment import Augmentation, AugmentDraw, augment_region, draw_augmentation, region_margins
from .weights import background_skeleton, border_weight_map, cells_from_mask, small_cell_weights


@dataclass
class LabelledImage:
    name: str
    image: np.ndarray  # (C, H, W) float32, normalised; a volume's (C, Z, Y, X)
    classes: np.ndarray  # (H, W) int64 class ids (binary: 0 background, 1 foreground); float32 distances
    #                      in [0, 1] for --cell-target distance (0 background); a volume's (Z, Y, X)
    weight: np.ndarray  # (H, W) float32 loss weight (the border weight map, or class balance); 0 where not annotated
    instances: np.ndarray | None = None  # (H, W) int32 the label's instance ids, where it holds them
    annotated: np.ndarray | None = None  # (H, W) bool, where the label is not --ignore-label; None: everywhere
    flows: np.ndarray | None = None  # (2, H, W) float32 --cell-target flows: the cells' flows (flows.flow_field)
    #: An image rescaled to the net's cell diameter (`at_net_scale`): how much it was enlarged, and its
    #: instance ids at its own size, where `unetile evaluate` scores the cells of `unetile predict`.
    net_scale: float = 1.0
    own_instances: np.ndarray | None = None  # (H0, W0) int32; None where net_scale is 1


def read_pairs(
    data: str | Path | None = None, images: str | Path | None = None, labels: str | Path | None = None,
    dims: int = 2,
) -> list[tuple[str, np.ndarray, np.ndarray, Path, Path]]:
    """Read (name, image (C, H, W), label (H, W), image path, label path) for every slice;
    with ``dims=3`` one (name, image (C, Z, Y, X), label (Z, Y, X), ...) per volume file.

    Either ``data`` (a folder with ``images/`` and ``labels/`` holding files of matching
    names) or ``images`` and ``labels`` (two files or folders: stacks match page by page).
    """
    if data is not None:
        data = Path(data)
        images, labels = data / "images", data / "labels"
        for p in (images, labels):
            if not p.is_dir():
                raise UserInputError(f"{p}: missing; --data needs a folder with images/ and labels/")
    if images is None or labels is None:
        raise UserInputError("give --data DIR, or both --images and --labels")
    image_files, label_files = list_images(images), list_images(labels)
    if Path(images).is_dir():
        by_stem = {p.stem: p for p in label_files}
        missing = [p.name for p in image_files if p.stem not in by_stem]
        if missing:
            raise UserInputError(f"{labels}: no label for image(s) {', '.join(missing[:5])}")
        label_files = [by_stem[p.stem] for p in image_files]
    elif len(image_files) != len(label_files):
        raise UserInputError(f"{labels}: {len(label_files)} label file(s) for {len(image_files)} image file(s)")
    pairs = []
    for ip, lp in zip(image_files, label_files):
        img, lab = read_image(ip), read_image(lp)
        if img.shape[0] != lab.shape[0]:
            raise UserInputError(f"{lp}: {lab.shape[0]} label slice(s) for {img.shape[0]} image slice(s) in {ip}")
        if lab.shape[1] != 1:
            raise UserInputError(f"{lp}: a label image must have one channel, not {lab.shape[1]}")
        if img.shape[-2:] != lab.shape[-2:]:
            raise UserInputError(f"{lp}: label size {lab.shape[-2:]} differs from the image's {img.shape[-2:]} ({ip})")
        if img.dtype.kind == "f" and not np.isfinite(img).all():
            raise UserInputError(f"{ip}: the image holds NaN or infinite values")
        if dims == 3 and img.shape[0] < 2:
            raise UserInputError(f"{ip}: one plane, not a volume; --dims 3 trains on TIFF volumes (stacks)")
        if dims == 3:  # (Z, C, Y, X) planes -> one volume (C, Z, Y, X)
            pairs.append((ip.stem, np.moveaxis(img, 1, 0), lab[:, 0], ip, lp))
            continue
        for k in range(img.shape[0]):
            name = ip.stem if img.shape[0] == 1 else f"{ip.stem}[{k}]"
            pairs.append((name, img[k], lab[k, 0], ip, lp))
    return pairs


def without_ignored(label: np.ndarray, ignore_label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A raw label with its not-annotated value ``ignore_label`` -> (the label with those pixels
    0, so that they are no cell and no class; bool mask of the annotated pixels, or None where
    all are). ``ignore_label`` None: the label as it is, None."""
    if ignore_label is None:
        return label, None
    annotated = label != ignore_label
    if annotated.all():
        return label, None
    return np.where(annotated, label, 0).astype(label.dtype), annotated


#: What a net learns from instance-id labels (``--cell-target``): "foreground" (cells, parted by
#: a 1-px background line where they touch), "boundary" (three classes: background, cell
#: interior, and a `BOUNDARY_WIDTH`-px band along each cell's edge), "touching" (three classes:
#: background, cell, and the band where two cells meet: `touching_classes`, the DSB 2018
#: winners' third channel), "flows" (Cellpose's: the cells, touching ones not parted, and each
#: pixel's flow towards its cell's centre, `flows.flow_field`; images only) or "distance" (each
#: cell pixel's distance to the background, divided by its cell's largest: `distance_target`).
#: ``--cell-target auto`` (the default) picks one of them: `setup.cell_target_of`.
CELL_TARGETS = ("foreground", "boundary", "touching", "flows", "distance")
BOUNDARY_WIDTH = 2  # px


def interpret_labels(label: np.ndarray, n_classes: int | None, source: str = "label",
                     cell_target: str = "foreground",
                     spacing: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A raw label (H, W) (or a volume's (Z, Y, X)) -> (target, cells int32 for the weight map).

    The target is int64 class ids, or for ``cell_target="distance"`` float32 distances in
    [0, 1] (physical with ``spacing``, a volume's voxel size); ``cell_target`` applies to
    instance-id labels only (see `CELL_TARGETS`)."""
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise UserInputError(f"{source}: label values must be integers")
        label = label.astype(np.int64)
    if label.min() < 0:
        raise UserInputError(f"{source}: negative label value {label.min()}")
    kind = label_kind(label, n_classes, source)
    if kind == "classes":
        if label.max() >= n_classes:
            raise UserInputError(
                f"{source}: label value {label.max()} but --classes {n_classes} allows 0..{n_classes - 1}")
        classes = label.astype(np.int64)
        return classes, cells_from_mask(classes > 0)
    if kind == "mask":
        foreground = label > 0
        return foreground.astype(np.int64), cells_from_mask(foreground)
    ids = label.astype(np.int64)
    n_ids = len(np.unique(ids[ids > 0]))
    pieces = connected_components(ids, background=0, connectivity=2).max()  # connected regions of one id
    if pieces > 2 * n_ids + 10:
        # Not one id per cell: most likely a mask saved with stray grey values (JPEG, a resize).
        raise UserInputError(f"{source}: {n_ids} label values in {pieces} separate pieces, not one id per cell; "
                             "save a mask with two values (0 and one other), or give --classes N for class ids")
    # Instance ids: separate touching cells by a background border before training (for the
    # weight map's border term, whichever the target).
    separated = np.where(touching_borders(ids), 0, ids)
    if cell_target == "boundary":
        return boundary_classes(ids), separated.astype(np.int32)
    if cell_target == "touching":
        return touching_classes(ids), separated.astype(np.int32)
    if cell_target == "flows":  # touching cells stay touching: their flows part them
        return (ids > 0).astype(np.int64), separated.astype(np.int32)
    if cell_target == "distance":
        return distance_target(separated, spacing), separated.astype(np.int32)
    return (separated > 0).astype(np.int64), separated.astype(np.int32)


def boundary_classes(ids: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Instance ids (H, W) -> classes 0 background, 1 cell interior, 2 the ``width``-px band
    along each cell's edge (where it meets the background or another cell)."""
    edge = find_boundaries(ids, connectivity=1, mode="inner")
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    classes = (ids > 0).astype(np.int64)
    classes[edge & (ids > 0)] = 2
    return classes


def touching_classes(ids: np.ndarray, width: int | None = None) -> np.ndarray:
    """Instance ids (H, W) -> classes 0 background, 1 cell, 2 where two cells meet: the pixels of
    a cell within ``width`` px (Euclidean) of another cell. ``width`` None: by the cells' size,
    their median diameter / 8 held to 1-3 px (cell_size.median_diameter).

    Seeds are then the cells without that band (`instances`: class 1), so two touching nuclei
    get two seeds even where no background separates them."""
    if width is None:
        width = int(np.clip(round((median_diameter(ids) or 0) / 8), 1, 3))
    padded = np.pad(ids, width)
    meets = np.zeros(ids.shape, bool)
    for dy, dx in itertools.product(range(-width, width + 1), repeat=2):
        if 0 < dy * dy + dx * dx <= width * width:
            nb = shifted(padded, (dy, dx), width)
            meets |= (nb > 0) & (nb != ids)
    classes = (ids > 0).astype(np.int64)
    classes[meets & (ids > 0)] = 2
    return classes


def distance_target(cells: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Cell ids (H, W), touching cells parted by background -> (H, W) float32 in [0, 1]: each
    cell pixel's Euclidean distance to the nearest pixel outside its cell (1 on its edge), divided
    by the largest in that cell, so every cell peaks at 1 whatever its size; 0 on background.

    A net that learns it marks each nucleus by a peak and two touching nuclei by two peaks
    with a valley between; `unetile predict --instances` seeds the watershed from the peaks.
    """
    inside = cells > 0
    distance = ndimage.distance_transform_edt(inside, sampling=spacing)  # only the ratio to the peak matters
    if not inside.any():
        return distance.astype(np.float32)
    peaks = np.asarray(ndimage.maximum(distance, cells, np.arange(cells.max() + 1)))
    peaks[0] = 1.0
    return (distance / peaks[cells]).astype(np.float32)


def label_kind(label: np.ndarray, n_classes: int | None, source: str = "label") -> str:
    """How `interpret_labels` reads a raw label (H, W): ``"classes"`` (``--classes N`` > 2),
    ``"mask"`` (at most two values) or ``"instances"`` (more values, no ``--classes``)."""
    if n_classes is not None and n_classes > 2:
        return "classes"
    n_values = len(np.unique(label))
    if n_values <= 2:
        return "mask"
    if n_classes == 2:
        raise UserInputError(f"{source}: {n_values} label values for --classes 2 (expected 0 and one other)")
    return "instances"


def touching_borders(ids: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch (8-neighbourhood; in a volume 26: faces, edges and corners) a
    cell with a smaller non-zero id.

    Removing them leaves a 1-px background line between every two touching cells.
    """
    padded = np.pad(ids, 1)
    border = np.zeros(ids.shape, bool)
    for offset in itertools.product((-1, 0, 1), repeat=ids.ndim):
        if not any(offset):
            continue
        nb = shifted(padded, offset)
        border |= (nb > 0) & (nb < ids)
    return border


@dataclass(frozen=True)
class Targets:
    """What `prepare` makes of each label: its classes, weight map and cell targets.

    ``n_classes`` is ``--classes``: ``None`` reads each label as a mask or as instance ids
    (``cell_target``: what is learnt from instance ids, `CELL_TARGETS`). ``w0`` and
    ``class_balance`` arrive decided (``"auto"`` is resolved before, by
    `setup.automatic_weight_map`). ``spacing``: a volume's voxel size (z, y, x), for physical
    distances; ``ignore_label``: the value of not-annotated pixels (`without_ignored`);
    ``net_diameter``: images with instance ids are first rescaled so that their median cell is
    this many px across (`at_net_scale`); ``small_cell_weight``: flows, the most a cell smaller
    than the image's median weighs (`weights.small_cell_weights`; 1: all cells weigh 1).
    """

    n_classes: int | None = None
    normalization: Normalization = dataclasses.field(default_factory=Normalization)
    weight_map: bool = True
    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True
    cell_target: str = "foreground"
    spacing: tuple[float, ...] | None = None
    ignore_label: int | None = None
    net_diameter: float | None = None
    small_cell_weight: float = 1.0


def prepare(pairs: list[tuple[str, np.ndarray, np.ndarray, Path, Path]], targets: Targets) -> list[LabelledImage]:
    """Normalise images, interpret labels and compute each image's weight map once (`Targets`)."""
    t = targets
    if t.weight_map and (isinstance(t.w0, str) or isinstance(t.class_balance, str)):
        raise ValueError(f"prepare needs a number for w0 and a bool for class_balance, not {t.w0!r}, "
                         f"{t.class_balance!r}")
    items = []
    for name, image, raw_label, _, label_path in pairs:
        label, annotated = without_ignored(raw_label, t.ignore_label)
        factor, own_ids = 1.0, None
        if t.net_diameter and label.ndim == 2 and label_kind(label, t.n_classes) == "instances":
            factor = scale_factor(median_diameter(label), t.net_diameter)
            # only fully labelled images: rescaling may drop small not-annotated patches
            own_ids = label.astype(np.int32) if factor != 1.0 and annotated is None else None
            image, raw_label = at_net_scale(image, raw_label, factor)
            label, annotated = without_ignored(raw_label, t.ignore_label)
        classes, cells = interpret_labels(label, t.n_classes, str(label_path), t.cell_target, t.spacing)
        is_ids = label_kind(label, t.n_classes) == "instances"
        # A flows run's labels with one cell (read as masks) get the flows of their mask's cells.
        flows = flow_field(label if is_ids else cells) if t.cell_target == "flows" else None
        if t.weight_map and flows is None:  # flows: the cells' probability needs no border weights
            n_out = 3 if is_ids and t.cell_target in INTERIOR_SEEDED else t.n_classes or 2
            ids = classes if classes.dtype.kind == "i" else (classes > 0).astype(np.int64)  # distances: in or out
            weight = border_weight_map(cells, t.w0, t.sigma, n_out, ids, t.class_balance, t.spacing, annotated)
        else:
            weight = np.ones(classes.shape, np.float32) if annotated is None else annotated.astype(np.float32)
            if flows is not None:
                weight *= small_cell_weights(label if is_ids else cells, t.small_cell_weight)
        items.append(LabelledImage(name, normalize(image, t.normalization), classes, weight,
                                   label.astype(np.int32) if is_ids else None, annotated, flows, factor, own_ids))
    return items


def at_net_scale(image: np.ndarray, raw_label: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, H, W), raw label (H, W)) enlarged by ``factor`` (`cell_size.scale_factor`: the
    one that brings the label's median cell to the net's diameter): linear for the image, nearest
    for the label."""
    if factor == 1.0:
        return image, raw_label
    shape = scaled_shape(raw_label.shape, factor)
    return resize_image(image, shape), resize_labels(raw_label, shape)


def split(items: list, val_fraction: float) -> tuple[list, list]:
    """The last ``round(val_fraction * n)`` items (at least one) validate, as the seed did."""
    if not 0 < val_fraction < 1:
        raise UserInputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(val_fraction * len(items)))
    if n_val >= len(items):
        raise UserInputError(f"{len(items)} labelled image(s) are too few to hold out {n_val} for validation; "
                             "give a validation folder with --val")
    return items[:-n_val], items[-n_val:]


def checksum(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files, in order (recorded in config.json)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class TileDraw:
    """One training tile's random choices (`TileDataset.draw`)."""

    item: int  # which training image
    origin: tuple[int, ...]  # the region's first row and column (volume: plane, row, column) in image
    #                          coordinates (may lie outside: mirrored)
    augmentation: AugmentDraw


class TileDataset(Dataset):
    """Training tiles: item ``index`` is a deterministic function of ``(seed, index)``.

    Random mode: an image chosen with probability proportional to its area and a centre
    uniform over its pixels. ``centre_crop`` mode (the seed's recipe): image
    ``index % n``, centred. Returns (image (C, T, T), label (O, O), weight (O, O)); the label
    is int64 class ids, or float32 foreground fractions with ``augmentation.soft_labels``.
    With ``skeleton``, also the label's background skeleton (O, O) float32 0/1, computed
    here in the worker, after the warp (skimage's thinning has no GPU/batched twin).
    Volumes alike: (C, Tz, Ty, Tx), (Oz, Oy, Ox); ``tile_size`` and ``out_size`` one per axis.
    """

    def __init__(
        self,
        items: list[LabelledImage],
        tile_size: int | tuple[int, ...],
        out_size: int | tuple[int, ...],
        augmentation: Augmentation,
        seed: int,
        centre_crop: bool = False,
        skeleton: bool = False,
    ):
        self.items, self.tile_size, self.out_size = items, tile_size, out_size
        self.aug, self.seed, self.centre_crop, self.skeleton = augmentation, seed, centre_crop, skeleton
        ndim = items[0].classes.ndim
        self.tile_shape = (tile_size,) * ndim if isinstance(tile_size, int) else tuple(tile_size)
        self.out_shape = (out_size,) * ndim if isinstance(out_size, int) else tuple(out_size)
        areas = np.array([it.classes.size for it in items], np.float64)
        self.p = areas / areas.sum()
        # Room for the elastic displacements (4 standard deviations) and the zoom around the tile.
        self.margins = region_margins(augmentation, self.tile_shape)
        self.margin = self.margins[-1]  # in-plane (device_augment.py: images only)
        self.region_shape = tuple(t + 2 * m for t, m in zip(self.tile_shape, self.margins))

    def __len__(self) -> int:
        return len(self.items)

    def draw(self, index: int) -> TileDraw:
        """Tile ``index``'s random choices: where it lies and how it is augmented."""
        rng = np.random.default_rng([self.seed, index])
        if self.centre_crop:
            item = index % len(self.items)
            centre = [n // 2 for n in self.items[item].classes.shape]
        else:
            item = int(rng.choice(len(self.items), p=self.p))
            centre = [int(rng.integers(n)) for n in self.items[item].classes.shape]
        origin = tuple(c - size // 2 for c, size in zip(centre, self.region_shape))
        return TileDraw(item, origin, draw_augmentation(rng, self.aug))

    def region_indices(self, draw: TileDraw) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(indices, inside): per axis the mirrored indices of the tile's region (with room for
        the elastic displacements), and (S, S) (volume: (Sz, Sy, Sx)) bool, True where the
        region is inside the image."""
        shape = self.items[draw.item].classes.shape
        indices = tuple(reflect_indices(o, size, n) for o, size, n in zip(draw.origin, self.region_shape, shape))
        along = [(o + np.arange(size) >= 0) & (o + np.arange(size) < n)
                 for o, size, n in zip(draw.origin, self.region_shape, shape)]
        inside = along[0]
        for axis in along[1:]:  # the outer "and" of the axes' masks
            inside = inside[..., None] & axis
        return indices, inside

    def __getitem__(self, index: int):
        draw = self.draw(index)
        item = self.items[draw.item]
        indices, inside = self.region_indices(draw)
        grid = np.ix_(*indices)
        image = item.image[(slice(None), *grid)]
        label = item.classes[grid]
        # Pixels outside the image (mirrored) carry no loss: labels are the image's own.
        weight = item.weight[grid] * inside
        image, label, weight = augment_region(
            image, label, weight, self.tile_shape, self.out_shape, self.margins, self.aug, draw.augmentation
        )
        if item.flows is not None:
            label = np.concatenate([(label > 0)[None].astype(np.float32), self.flows_tile(item, grid, draw)])
        label = label.astype(np.float32 if self.aug.soft_labels or item.flows is not None else np.int64)
        tensors = (torch.from_numpy(image), torch.from_numpy(label), torch.from_numpy(weight))
        if self.skeleton:
            tensors += (torch.from_numpy(background_skeleton(label).astype(np.float32)),)
        return tensors


    def flows_tile(self, item: LabelledImage, grid: tuple[np.ndarray, ...], draw: TileDraw) -> np.ndarray:
        """The flows (2, O, O) of the tile ``draw``: warped as its image was, their vectors turned
        with the tile's flip / rotation (`symmetries.turn_vectors`). The elastic warp's small local
        rotation of the vectors is not applied (its displacements vary over ~100 px)."""
        flows = item.flows[(slice(None), *grid)]
        unused = np.zeros(flows.shape[1:], np.float32)  # augment_region's label and weight
        flows, _, _ = augment_region(flows, unused, unused, self.tile_shape, self.out_shape, self.margins,
                                     self.aug, dataclasses.replace(draw.augmentation, grey=None))
        centre = tuple(slice((t - o) // 2, (t - o) // 2 + o) for t, o in zip(self.tile_shape, self.out_shape))
        return symmetries.turn_vectors(flows[(slice(None), *centre)], draw.augmentation.symmetry)


class EpochSampler(Sampler[int]):
    """Indices ``epoch * n .. epoch * n + n - 1`` (each a fresh tile), split across ranks.

    With ``num_replicas`` processes, rank r takes every num_replicas-th index, so the
    ranks together see exactly the tiles one process would.
    """

    def __init__(self, samples_per_epoch: int, rank: int = 0, num_replicas: int = 1):
        self.n, self.rank, self.replicas, self.epoch = samples_per_epoch, rank, num_replicas, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.n
        return iter(range(start + self.rank, start + self.n, self.replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.replicas))

"""From a probability map of cell interior to a label image (or volume) of cells.

Two methods:

* ``"components"``: the 4-connected components of ``prob > threshold``.  Any one-pixel gap
  in a membrane merges the two cells on either side.
* ``"watershed"``: a seeded watershed.  Seeds are the 4-connected components of the
  *smoothed* map (Gaussian, ``sigma`` pixels) above ``seed_threshold``: smoothing pulls a
  short break in a membrane below the threshold (the break is narrow, the membrane on both
  sides is dark), so the two cells get separate seeds.  The seeds then flood
  ``-smoothed`` inside the mask ``prob > threshold`` (in an image with a watershed line), so
  cells that touch through a gap are cut where the smoothed map is lowest.  Mask components
  that hold no seed (cells too small to survive smoothing) are kept as their own cells.

Both return ``uint32`` labels, 0 = boundary, cells numbered 1..K.

The map is what the net learnt (``metadata["cell_target"]``): the foreground probability; the
class probabilities of a three-class net (mask: not background; seeds: the interior class);
or a cell's distance to the background relative to its largest (``"distance"``), where the
seeds are the cores around each cell's peak and the flood runs down from them.

Choice of the default (watershed, sigma 2, seed threshold 0.75).  Measured on ISBI 2012
train slices 18-23 with synthetic maps (truth blurred with sigma 1, Gaussian noise 0.2,
blurred again, 8-bit), scored as label images with `unetile.metrics`:

================================  ========  ========  ==========
map                               method    V_rand    Rand error
================================  ========  ========  ==========
no gaps                           comps     0.9864    0.0166
no gaps                           watershed 0.9981    0.0047
60 faint 3x3 gaps per slice       comps     0.9696    0.0339
60 faint 3x3 gaps per slice       watershed 0.9982    0.0047
================================  ========  ========  ==========

These are synthetic maps, not network output; re-measure on real validation maps.

Volumes (Z, Y, X) are cut the same way in 3D (one id per object across the planes): face
connectivity (6 neighbours where images use 4), ``min_size`` in voxels, and ``sigma`` given in
in-plane px and converted per axis from the voxel size (`spacing.per_axis`), so the smoothing
reaches the same physical distance along a coarse z as in the plane. `choose_settings` picks
``sigma``, ``seed_threshold`` and ``min_size`` on validation images or volumes (`VOLUME_GRID`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import UserInputError
from ..flows import FLOW_ERROR, drop_by_flow_error, flow_errors, flows_to_instances
from ..neighbours import shifted
from ..evaluation.metrics import as_probability
from ..evaluation.metrics.common import face_connected
from ..evaluation.metrics.objects import cell_counts, pooled, summary
from ..spacing import per_axis

__all__ = ["METHODS", "DEFAULT_METHOD", "INTERIOR_SEEDED", "VOLUME_GRID", "InstanceSettings", "choose_settings", "drop_small_cells",
           "probabilities_to_instances"]

METHODS: tuple[str, ...] = ("components", "watershed")
#: Cell targets learnt as three classes (background, interior, a band): class 1 seeds the cells.
INTERIOR_SEEDED = ("boundary", "touching")
#: Chosen by measuring V_rand and Rand error on ISBI slices (see the package notes).
DEFAULT_METHOD = "watershed"

#: The seeded watershed's settings `choose_settings` tries on validation volumes: sigma in in-plane
#: px, seed levels as for images, min_size in voxels (a nucleus of radius 4 voxels holds ~270).
VOLUME_GRID = {"sigma": (0.0, 1.0, 2.0, 3.0), "seed_threshold": (0.6, 0.7, 0.75, 0.8, 0.9),
               "min_size": (0, 27, 64, 125, 216, 512)}


@dataclass(frozen=True)
class InstanceSettings:
    """How `unetile predict --instances` cuts a foreground map into cells.

    Training on instance-id labels chooses ``sigma``, ``seed_threshold`` and ``min_size`` (a flows
    net: ``flow_error`` and ``min_size``) on the validation images and stores them in the
    checkpoint (``metadata["instances"]``); without them the defaults below hold.
    """

    method: str = DEFAULT_METHOD  # "watershed" or "components"
    sigma: float = 2.0  # smoothing of the seed map, px (watershed)
    seed_threshold: float | None = None  # seeds: smoothed map above this; None: (1 + threshold) / 2
    min_size: int = 0  # cells smaller than this many px are dropped
    seeds: str = "foreground"  # the map seeds come from: "foreground", or "interior" (class 1 of a
    #                            three-class net trained with --cell-target boundary or touching); "flows":
    #                            a flows net's map (cell probability, flows y, x): cells follow the flows
    #                            (flows.py; ``method``, ``sigma`` and ``seed_threshold`` unused)
    flow_error: float | None = FLOW_ERROR  # flows only: cells whose flows disagree with their shape's
    #                                        more than this are dropped (flows.flow_errors; None: keep all)

    @classmethod
    def from_metadata(cls, method: str, metadata: dict) -> "InstanceSettings":
        """``method`` from the command line, the rest from a checkpoint's metadata (if it has them)."""
        stored = metadata.get("instances", {})
        known = {k: stored[k] for k in ("sigma", "seed_threshold", "min_size", "flow_error") if k in stored}
        target = metadata.get("cell_target")
        seeds = "interior" if target in INTERIOR_SEEDED else "flows" if target == "flows" else "foreground"
        return cls(method=method, seeds=seeds, **known)

    def at_scale(self, px_per_net_px: float) -> "InstanceSettings":
        """These settings for a map at another scale than the net's (cell_size.py: a map brought
        back to its image's own size): lengths times ``px_per_net_px``, areas times its square."""
        if px_per_net_px == 1.0:
            return self
        return dataclasses.replace(self, sigma=self.sigma * px_per_net_px,
                                   min_size=round(self.min_size * px_per_net_px ** 2))

    def to_dict(self) -> dict:
        chosen = {"sigma": self.sigma, "seed_threshold": self.seed_threshold, "min_size": self.min_size}
        return {**chosen, "flow_error": self.flow_error} if self.seeds == "flows" else chosen

    def labels(self, prob: np.ndarray, threshold: float = 0.5,
               spacing: tuple[float, float, float] | None = None) -> np.ndarray:
        """Probabilities -> uint32 cell labels (0 = background): (H, W) of an image, (Z, Y, X) of a volume.

        ``prob``: an image's (H, W) foreground, (1, H, W) foreground or (C, H, W) class
        probabilities; a volume's map is always 4-D, (C, Z, Y, X) (C = 1: foreground).
        Class maps: foreground = 1 - background; with ``seeds="interior"`` class 1 seeds the cells.
        ``spacing``: a volume's (z, y, x) voxel size (um; None = isotropic), for the smoothing.
        """
        prob = np.asarray(prob)
        if prob.ndim == 2:
            prob = prob[None]
        if self.seeds == "flows":
            return flows_to_instances(prob[0], prob[1:3], threshold, self.min_size, self.flow_error).astype(np.uint32)
        foreground = prob[0] if prob.shape[0] == 1 else 1.0 - prob[0]
        seed_map = prob[1] if self.seeds == "interior" and prob.shape[0] > 2 else None
        return probabilities_to_instances(foreground, self.method, threshold, self.sigma, self.seed_threshold,
                                          self.min_size, seed_map, spacing)


def probabilities_to_instances(
    prob: np.ndarray,
    method: str = DEFAULT_METHOD,
    threshold: float = 0.5,
    sigma: float = 2.0,
    seed_threshold: float | None = None,
    min_size: int = 0,
    seed_map: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Turn a cell-interior probability map into a label image (or a volume into a label volume).

    prob: ``(H, W)`` or ``(Z, Y, X)`` map in [0, 1] (float), or uint8 read as ``value / 255``, or bool.
    method: ``"components"`` or ``"watershed"`` (see the module docstring).
    threshold: a pixel is interior when ``prob > threshold``.
    sigma: Gaussian smoothing of the seed map in (in-plane) pixels (watershed only).
    seed_threshold: seeds are ``smoothed > seed_threshold``; default ``(1 + threshold) / 2``
        (0.75 at the default threshold), which cut more gaps than ``threshold`` itself in
        the measurement described in the module docstring.
    min_size: cells smaller than this many pixels (voxels) are set to 0 (boundary).
    seed_map: map of ``prob``'s shape to seed and flood from instead of ``prob`` (watershed
        only): the cell-interior class of a three-class net, low on the band between touching cells.
    spacing: the voxel size per axis (a volume's (z, y, x) um), None = isotropic: ``sigma``
        becomes ``spacing.per_axis(sigma, spacing)`` voxels along each axis.
    Returns uint32 labels of ``prob``'s shape, 0 = boundary, 1..K consecutive; cells are
    face-connected (4 neighbours in an image, 6 in a volume).
    """
    if method not in METHODS:
        raise UserInputError(f"unknown instance method {method!r}; choose one of {', '.join(METHODS)}")
    if not (0.0 <= float(threshold) <= 1.0):
        raise UserInputError(f"threshold {threshold} is outside [0, 1]")
    if sigma < 0:
        raise UserInputError(f"sigma must be >= 0, got {sigma}")
    if min_size < 0:
        raise UserInputError(f"min_size must be >= 0, got {min_size}")
    if np.ndim(prob) not in (2, 3):
        raise UserInputError(f"cells are cut from an image (H, W) or a volume (Z, Y, X) map; got shape {np.shape(prob)}")
    if spacing is not None and (len(spacing) != np.ndim(prob) or min(spacing) <= 0):
        raise UserInputError(f"spacing {tuple(spacing)}: give one positive size per axis of the map {np.shape(prob)}")
    p = as_probability(np.asarray(prob))
    mask = p > threshold

    if method == "components":
        labels = ndi.label(mask, structure=face_connected(p.ndim))[0]
    else:
        seed_t = (1.0 + threshold) / 2.0 if seed_threshold is None else float(seed_threshold)
        # Without a voxel size the scalar sigma smooths every axis alike (the 2D path, unchanged).
        sigmas = sigma if spacing is None else per_axis(sigma, spacing, p.ndim)
        labels = _seeded_watershed(p if seed_map is None else np.asarray(seed_map, np.float64), mask, sigmas, seed_t)

    return _sequential(drop_small_cells(labels, min_size))


def drop_small_cells(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the cells of fewer than ``min_size`` px set to 0 (not renumbered)."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def choose_settings(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], grid: dict = VOLUME_GRID,
                    base: InstanceSettings = InstanceSettings(), threshold: float = 0.5,
                    spacings: Sequence[tuple[float, float, float] | None] | None = None,
                    scales: Sequence[float] | None = None) -> tuple[InstanceSettings, float]:
    """The settings of ``grid`` (keys sigma, seed_threshold, min_size; flows seeds also
    flow_error) with the best mean AP over IoU 0.5:0.95, object counts pooled over the maps
    (`evaluate_volumes`' ``objects.pooled.mean_ap``) -> (settings, that mean AP).

    ``maps``: what `InstanceSettings.labels` takes, as `unetile predict` writes them (one-class
    maps calibrated, `predictor.calibrate_map`): a volume's (C, Z, Y, X), an image's (C, H, W);
    cells begin at ``threshold``. ``truths``: the matching instance ids (Z, Y, X) / (H, W).
    ``spacings``: each volume's (z, y, x) voxel size (um) or None. ``scales``: each map's px per
    net px (a map brought back to its image's own size; None: all 1): the grid is in the net's px,
    and each map's cells are cut with the settings `InstanceSettings.at_scale` gives for it, as
    `unetile predict` cuts them. ``base``: the method and the map seeds come from; the grid's
    settings replace the rest. Ties keep the first in grid order (the least smoothing and size
    filtering; for flow_error, the strictest cut: Cellpose's first).
    """
    spacings = [None] * len(maps) if spacings is None else list(spacings)
    scales = [1.0] * len(maps) if scales is None else list(scales)
    if not (len(maps) == len(truths) == len(spacings) == len(scales)) or not maps:
        raise ValueError(f"{len(maps)} maps, {len(truths)} truths, {len(spacings)} spacings and {len(scales)} "
                         "scales (give the same number)")
    best, best_score = base, -1.0
    for sigma in grid["sigma"]:
        for seed in grid["seed_threshold"]:
            # Cells are cut once with no filter; each cut (flow error, then size) is tried on them.
            trial = dataclasses.replace(base, sigma=sigma, seed_threshold=seed, min_size=0, flow_error=None)
            labels = [trial.at_scale(c).labels(m, threshold, s) for m, s, c in zip(maps, spacings, scales)]
            for flow_error, kept in _flow_error_cuts(labels, maps, grid, base):
                for min_size in grid["min_size"]:
                    counts = [cell_counts(np.asarray(t), drop_small_cells(lab, round(min_size * c ** 2)))
                              for lab, t, c in zip(kept, truths, scales)]
                    score = summary(pooled(counts))["mean_ap"]
                    if score > best_score:
                        best = dataclasses.replace(trial, min_size=min_size, flow_error=flow_error)
                        best_score = score
    return best, best_score


def _flow_error_cuts(labels: list[np.ndarray], maps: Sequence[np.ndarray], grid: dict, base: InstanceSettings):
    """For `choose_settings`: each flow-error cut of ``grid`` (flows seeds; others keep
    ``base.flow_error``) and ``labels`` without the cells it drops -> (cut, labels) pairs, one at a
    time. The cells' flow errors are computed once for all the cuts."""
    if base.seeds != "flows":
        yield base.flow_error, labels
        return
    errors = [flow_errors(lab, np.asarray(m)[1:3]) for lab, m in zip(labels, maps)]
    for cut in grid.get("flow_error", (base.flow_error,)):
        yield cut, [drop_by_flow_error(lab, e, cut) for lab, e in zip(labels, errors)]


def _seeded_watershed(p: np.ndarray, mask: np.ndarray, sigma: float | tuple[float, ...],
                      seed_threshold: float) -> np.ndarray:
    """``sigma``: one length for every axis, or one per axis (voxels). Distinct cells never touch:
    an image's are parted by skimage's watershed line, a volume's by `_part_touching_cells`. In
    line mode skimage pushes a line voxel's neighbours again each time that voxel comes off its
    heap, which compounds where lines are thick: on the noisy map of a weak 3D net one setting of
    the grid took minutes, where the flood without the line takes a second."""
    from skimage.measure import label as label_components
    from skimage.segmentation import watershed

    faces = face_connected(p.ndim)
    smoothed = ndi.gaussian_filter(p, sigma) if np.max(sigma) > 0 else p
    seeds, n_seeds = ndi.label((smoothed > seed_threshold) & mask, structure=faces)
    # Keep cells that smoothing erased entirely: each seedless mask component seeds itself.
    comps, n_comps = ndi.label(mask, structure=faces)
    if n_comps:
        has_seed = np.zeros(n_comps + 1, dtype=bool)
        has_seed[np.unique(comps[seeds > 0])] = True
        orphan = ~has_seed[comps] & mask
        if orphan.any():
            seeds = np.where(orphan, comps + n_seeds, seeds)
    if seeds.max() == 0:
        return np.zeros(p.shape, dtype=np.int64)
    basins = watershed(-smoothed, markers=seeds, mask=mask, connectivity=1, watershed_line=p.ndim == 2)
    if p.ndim == 3:
        basins = _part_touching_cells(basins, smoothed)
    # The watershed line can cut a basin into pieces that touch only at a corner (or not at
    # all); each face-connected piece is its own cell, as in the components method.
    return label_components(basins, connectivity=1, background=0)


def _part_touching_cells(basins: np.ndarray, smoothed: np.ndarray) -> np.ndarray:
    """``basins`` (any shape) with a line between touching cells: of two face neighbours in
    different cells, the one lower on ``smoothed`` goes to the background (both where they are
    level), i.e. a voxel goes where a face neighbour (`neighbours.shifted`) in another cell is
    at least as high. The rule reads the map, never the ids, so a block of a volume cut with a
    margin parts its cells as the whole volume does (slides/zarr_labels.py joins the cells that
    touch across block faces)."""
    ids, heights = np.pad(basins, 1), np.pad(smoothed, 1)
    parted = np.zeros(basins.shape, dtype=bool)
    for axis in range(basins.ndim):
        for step in (-1, 1):
            offset = tuple(step if a == axis else 0 for a in range(basins.ndim))
            neighbour = shifted(ids, offset)
            parted |= (neighbour > 0) & (neighbour != basins) & (smoothed <= shifted(heights, offset))
    out = basins.copy()
    out[parted & (basins > 0)] = 0
    return out


def _sequential(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[labels]

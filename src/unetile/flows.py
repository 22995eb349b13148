"""Cellpose-style flows: cells as the basins of a vector field (Stringer et al., Nature Methods 2021).

A flows net (``--cell-target flows``) predicts, besides each pixel's cell probability, the unit
vector (y, x) up the gradient of a field that peaks inside each cell: heat diffused from the
cell's centre (`flow_field`). Touching nuclei need no gap between them: their pixels flow to
two different sinks. `flows_to_instances` turns a prediction back into cells: the pixels above
the probability threshold follow the flows for `STEPS` Euler steps (`follow_flows`), pixels
whose paths end at one sink are one cell (`sinks`), and cells whose flows disagree with the flows
of their own shape (`flow_errors` above a cut: Cellpose's ``flow_threshold`` `FLOW_ERROR`, or
the one training chose on its validation images, `InstanceSettings.flow_error`) or with fewer
than ``min_size`` px are dropped.

Written here rather than imported from Cellpose: it is not a dependency of this tool (nor may
be: its package pulls its own GUI and model downloads), and its functions take its own net's
output layout. The steps and constants follow Cellpose 3 (``dynamics.py``, ``metrics.py``):
the field's iterations 2 (h + w) of the cell's box, log(1 + T), 200 steps, flow error 0.4.
How the endpoints are grouped differs (components of the occupied sinks, see `sinks`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from .neighbours import shifted
from .nn.model import FLOW_SCALE  # the net learns flows times this; `output_maps` divides it out

__all__ = ["FLOW_SCALE", "STEPS", "FLOW_ERROR", "flow_field", "follow_flows", "sinks",
           "flow_errors", "flows_to_instances", "drop_by_flow_error"]

STEPS = 200  # Euler steps of `follow_flows`; each moves at most about one px
FLOW_ERROR = 0.4  # cells whose mean squared flow error exceeds this are dropped
SINK_GAP = 2  # px: endpoints this close are one sink


def flow_field(ids: np.ndarray) -> np.ndarray:
    """Instance ids (H, W), 0 background -> (2, H, W) float32 unit vectors (y, x) pointing up
    the heat diffused from each cell's centre (its pixel nearest the median of its pixels),
    0 on background. All cells diffuse at once; heat never crosses from one cell into another."""
    ids = np.asarray(ids)
    field = np.zeros((2, *ids.shape), np.float32)
    objects = ndimage.find_objects(ids.astype(np.int64))
    boxes = [(k + 1, box) for k, box in enumerate(objects) if box is not None]
    if not boxes:
        return field
    centres = np.array([_centre(ids[box] == k, box) for k, box in boxes])
    iterations = 2 * max(sum(s.stop - s.start for s in box) for _, box in boxes)
    padded = np.pad(ids, 1)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    # same[k]: the neighbour at offset k is of the pixel's own cell (heat moves only within cells)
    same = (np.stack([shifted(padded, (dy, dx)) == ids for dy, dx in offsets]) & (ids > 0)) / 9.0
    # float64: in float32 the sums' rounding breaks the ties on a cell's axes of symmetry
    heat = np.zeros((ids.shape[0] + 2, ids.shape[1] + 2), np.float64)
    inner = np.empty(ids.shape, np.float64)
    for _ in range(iterations):
        np.multiply(same[0], shifted(heat, offsets[0]), out=inner)
        for k in range(1, len(offsets)):
            inner += same[k] * shifted(heat, offsets[k])
        heat[1:-1, 1:-1] = inner
        heat[centres[:, 0] + 1, centres[:, 1] + 1] += 1.0
    heat = np.log1p(heat)
    inside = ids > 0
    for axis, (d_pos, d_neg) in enumerate((((1, 0), (-1, 0)), ((0, 1), (0, -1)))):
        up, down = shifted(heat, d_pos), shifted(heat, d_neg)
        # A neighbour of another cell (or background) counts as the pixel itself: no slope across borders.
        up = np.where(shifted(padded, d_pos) == ids, up, heat[1:-1, 1:-1])
        down = np.where(shifted(padded, d_neg) == ids, down, heat[1:-1, 1:-1])
        field[axis] = np.where(inside, up - down, 0.0)
    norm = np.sqrt((field**2).sum(axis=0))
    return np.where(norm > 0, field / np.maximum(norm, 1e-20), 0.0).astype(np.float32)


def _centre(cell: np.ndarray, box: tuple[slice, slice]) -> tuple[int, int]:
    """The (y, x) of the pixel of ``cell`` (a bool crop at ``box``) nearest the median of its pixels."""
    ys, xs = np.nonzero(cell)
    nearest = np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2)
    return ys[nearest] + box[0].start, xs[nearest] + box[1].start


def follow_flows(flows: np.ndarray, mask: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """Move every pixel of ``mask`` (H, W) along ``flows`` (2, H, W) (y, x px per step, sampled
    bilinearly; 0 outside the mask) for ``steps`` Euler steps -> (2, N) float32 end points (y, x),
    in the order of ``np.nonzero(mask)``."""
    shape = mask.shape
    start = np.stack(np.nonzero(mask)).astype(np.float32)
    if start.shape[1] == 0:
        return start
    field = torch.from_numpy(np.ascontiguousarray(flows * mask, dtype=np.float32))[None]
    position = torch.from_numpy(start)
    scale = torch.tensor([2.0 / max(shape[0] - 1, 1), 2.0 / max(shape[1] - 1, 1)])[:, None]
    upper = torch.tensor([shape[0] - 1.0, shape[1] - 1.0])[:, None]
    for _ in range(steps):
        grid = (position * scale - 1.0).flip(0).T[None, None]  # grid_sample wants (x, y) in [-1, 1]
        step = F.grid_sample(field, grid, mode="bilinear", align_corners=True)[0, :, 0]
        position = torch.minimum(torch.clamp(position + step, min=0.0), upper)
    return position.numpy()


def sinks(ends: np.ndarray, shape: tuple[int, int], gap: int = SINK_GAP) -> np.ndarray:
    """(2, N) end points -> (N,) int64 ids: end points whose rounded positions lie within ``gap``
    px of each other (chains of them) are one sink, numbered from 1."""
    if ends.shape[1] == 0:
        return np.zeros(0, np.int64)
    rounded = np.rint(ends).astype(np.int64)
    occupied = np.zeros(shape, bool)
    occupied[rounded[0], rounded[1]] = True
    grown = ndimage.binary_dilation(occupied, iterations=gap) if gap > 0 else occupied
    basins, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
    return basins[rounded[0], rounded[1]].astype(np.int64)


def flow_errors(labels: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Per cell of ``labels`` (H, W) (ids 1..K), the mean over its pixels of the squared
    difference between ``flows`` (2, H, W) and the flows of its own shape (`flow_field`) ->
    (K + 1,) float64, index 0 unused (Cellpose's ``flow_error``)."""
    error = ((flow_field(labels) - flows) ** 2).sum(axis=0)
    count = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    return np.bincount(labels.ravel(), weights=error.ravel(), minlength=labels.max() + 1) / np.maximum(count, 1)


def flows_to_instances(probability: np.ndarray, flows: np.ndarray, threshold: float = 0.5, min_size: int = 0,
                       flow_error: float | None = FLOW_ERROR, steps: int = STEPS) -> np.ndarray:
    """A cell probability (H, W) and flows (2, H, W) (unit-scale vectors) -> (H, W) int64 cells
    1..K, 0 background: the pixels above ``threshold`` follow the flows; those whose paths end
    at one sink are one cell; cells with a mean squared flow error above ``flow_error`` (None:
    keep all) or fewer than ``min_size`` px are dropped, and the rest numbered 1..K."""
    mask = probability > threshold
    labels = np.zeros(mask.shape, np.int64)
    if not mask.any():
        return labels
    labels[mask] = sinks(follow_flows(flows, mask, steps), mask.shape)
    # A sink's pixels that are not face-connected to its largest piece belong to no cell.
    labels = _largest_pieces(labels)
    # Both cuts judge the cells as the sinks made them (the flow errors, then the sizes).
    labels = drop_by_flow_error(labels, flow_errors(labels, flows), flow_error) if flow_error is not None else labels
    small = np.bincount(labels.ravel()) < max(min_size, 1)
    small[0] = True
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0]


def drop_by_flow_error(labels: np.ndarray, errors: np.ndarray, flow_error: float | None) -> np.ndarray:
    """``labels`` (H, W) with the cells whose ``errors`` (`flow_errors` of these labels) exceed
    ``flow_error`` set to 0 (not renumbered); None keeps all. For choosing the cut: the errors
    are computed once and each cut tried on them."""
    if flow_error is None or labels.max() == 0:
        return labels
    drop = errors > flow_error
    drop[0] = False
    return np.where(drop[labels], 0, labels)


def _largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Each id kept on its largest face-connected piece only (its other pieces 0)."""
    pieces = connected_components(labels, connectivity=1, background=0)
    if pieces.max() == 0:
        return labels
    sizes = np.bincount(pieces.ravel())
    owner = np.zeros(pieces.max() + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    largest = np.zeros(labels.max() + 1, np.int64)  # per id, its largest piece
    for piece in np.argsort(sizes[1:], kind="stable") + 1:  # ascending: the largest is written last
        largest[owner[piece]] = piece
    keep = largest[owner] == np.arange(owner.size)
    keep[0] = False
    return np.where(keep[pieces], labels, 0)

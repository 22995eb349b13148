"""Cells in 3D (issue 34, item 6): the seeded watershed on volumes, anisotropy-aware."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetile.errors import UserInputError
from unetile.evaluation.metrics import evaluate_volumes
from unetile.inference.instances import InstanceSettings, choose_settings, probabilities_to_instances

SPACING = (2.0, 1.0, 1.0)  # z twice as coarse as y, x


def _balls(shape=(16, 24, 40), centres=((8, 12, 12), (8, 12, 28)), radius=8.0, spacing=SPACING) -> np.ndarray:
    """Instance ids of balls of ``radius`` in-plane px (ellipsoids in voxels: fewer along z), 0 outside."""
    grid = np.indices(shape).astype(np.float64)
    ids = np.zeros(shape, np.uint16)
    for i, centre in enumerate(centres, 1):
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
        ids[(d2 <= radius**2) & (ids == 0)] = i
    return ids


def test_touching_balls_are_split_in_3d_where_components_merge_them():
    truth = _balls()
    prob = (truth > 0).astype(np.float64)
    assert ndi.label(prob > 0.5, ndi.generate_binary_structure(3, 1))[1] == 1  # they touch: one component
    comps = probabilities_to_instances(prob, "components", spacing=SPACING)
    ws = probabilities_to_instances(prob, "watershed", sigma=2.0, spacing=SPACING)
    assert comps.shape == ws.shape == truth.shape and ws.dtype == np.uint32
    assert comps.max() == 1
    assert ws.max() == 2
    for i in (1, 2):  # each ball is one cell, the same id in every plane
        core = ndi.binary_erosion(truth == i, iterations=2)
        ids = np.unique(ws[core])
        assert ids.size == 1 and ids[0] > 0
        iou = np.count_nonzero((ws == ids[0]) & (truth == i)) / np.count_nonzero((ws == ids[0]) | (truth == i))
        assert iou > 0.85
    assert np.unique(ws[ndi.binary_erosion(truth == 1, iterations=2)]) != np.unique(ws[ndi.binary_erosion(truth == 2, iterations=2)])


def test_a_volumes_touching_cells_are_parted_by_a_line_on_their_lower_side():
    """Volumes are flooded without skimage's watershed line (its line mode can take minutes on a
    noisy map), then `_part_touching_cells` parts touching cells: no two face neighbours lie in
    different cells, and where the map is level both sides of the contact go."""
    from unetile.inference.instances import _part_touching_cells

    truth = _balls()
    ws = probabilities_to_instances((truth > 0).astype(np.float64), "watershed", sigma=2.0, spacing=SPACING)
    assert ws.max() == 2
    for axis in range(3):
        a, b = np.moveaxis(ws, axis, 0)[:-1], np.moveaxis(ws, axis, 0)[1:]
        assert not np.any((a > 0) & (b > 0) & (a != b))
    basins = np.zeros((1, 1, 6), np.int64)
    basins[..., :3], basins[..., 3:] = 1, 2
    sloped = np.array([0.9, 0.8, 0.7, 0.6, 0.8, 0.9]).reshape(1, 1, 6)
    assert _part_touching_cells(basins, sloped).ravel().tolist() == [1, 1, 1, 0, 2, 2]  # 0.6 < 0.7 goes
    assert _part_touching_cells(basins, np.ones((1, 1, 6))).ravel().tolist() == [1, 1, 0, 0, 2, 2]


def test_one_id_per_object_across_planes():
    """Balls apart in x and stacked in z: ids belong to objects, not planes (a 2D pass gives one per plane)."""
    truth = _balls(shape=(22, 16, 36), centres=((5, 8, 8), (15, 8, 8), (10, 8, 26)), radius=4.0, spacing=(1, 1, 1))
    ws = probabilities_to_instances((truth > 0).astype(np.float32), "watershed", sigma=1.0)
    assert ws.max() == 3
    ids = [np.unique(ws[truth == i]).tolist() for i in (1, 2, 3)]
    assert sorted(ids) == [[1], [2], [3]]  # each ball one id through all its planes
    assert np.array_equal(ws > 0, truth > 0)
    planes = sum(int(probabilities_to_instances((truth[z] > 0).astype(np.float32)).max()) for z in range(22))
    assert planes == 9 + 9 + 9  # what plane by plane counts: a cell in each plane of each ball


def _slab_with_neck(depth: int = 21, neck: float = 0.6) -> np.ndarray:
    """(Z, 8, 8) map of 1 with one plane of ``neck`` in the middle: in the mask (> 0.5), below the seed level."""
    prob = np.ones((depth, 8, 8))
    prob[depth // 2] = neck
    return prob


def test_spacing_scales_the_smoothing_along_z():
    """sigma 2 in-plane px: isotropic voxels blur z by 2 voxels, lifting the neck plane to
    1 - 0.4 * w0(2) = 0.92 > 0.75 (one seed, one cell); with z 4x coarser sigma_z = 0.5 voxel,
    1 - 0.4 * w0(0.5) = 0.685 < 0.75, so the neck stays a line between two cells."""
    prob = _slab_with_neck()
    iso = probabilities_to_instances(prob, "watershed", sigma=2.0, seed_threshold=0.75)
    assert np.array_equal(iso, np.ones(prob.shape, np.uint32))
    assert np.array_equal(probabilities_to_instances(prob, "watershed", sigma=2.0, spacing=(1, 1, 1)), iso)
    aniso = probabilities_to_instances(prob, "watershed", sigma=2.0, seed_threshold=0.75, spacing=(4.0, 1.0, 1.0))
    expected = np.zeros(prob.shape, np.uint32)
    expected[:10], expected[11:] = 1, 2
    assert np.array_equal(aniso, expected)
    # The same physical spacing in other units cuts the same cells.
    assert np.array_equal(probabilities_to_instances(prob, "watershed", sigma=2.0, spacing=(1.0, 0.25, 0.25)), aniso)


def test_seedless_blob_is_kept_and_min_size_counts_voxels():
    prob = np.zeros((12, 12, 12))
    prob[2:10, 2:6, 2:10] = 1.0  # 256 voxels
    prob[4:6, 8:10, 4:6] = 0.6  # 8 voxels: in the mask, never above the seed level
    labels = probabilities_to_instances(prob, "watershed", sigma=1.0)
    assert labels.max() == 2
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == [8, 256]
    kept = probabilities_to_instances(prob, "watershed", sigma=1.0, min_size=9)
    assert kept.max() == 1 and np.count_nonzero(kept) == 256


def test_settings_labels_take_4d_maps():
    truth = _balls()
    fg = (truth > 0).astype(np.float32)
    settings = InstanceSettings(sigma=2.0)
    direct = probabilities_to_instances(fg, "watershed", sigma=2.0, spacing=SPACING)
    assert np.array_equal(settings.labels(fg[None], 0.5, SPACING), direct)
    # Three classes (background, interior, boundary): the interior class seeds the cells.
    interior = fg.copy()
    interior[:, :, 19:22] = 0.0  # a band between the balls
    classes = np.stack([1 - fg, interior, fg - interior])
    cells = InstanceSettings(sigma=0.0, seeds="interior").labels(classes, 0.5, SPACING)
    assert cells.shape == truth.shape and cells.max() == 2
    assert InstanceSettings(sigma=0.0).labels(classes, 0.5, SPACING).max() == 1  # foreground seeds merge
    with pytest.raises(UserInputError):
        settings.labels(fg[None], 0.5, (2.0, 1.0))


def test_choose_settings_on_volumes_scores_like_evaluate_volumes():
    truth = _balls()
    prob = (truth > 0).astype(np.float32)
    prob[1:3, 1:3, 36:38] = 1.0  # a speck of 8 voxels, not a cell
    grid = {"sigma": (0.0, 2.0), "seed_threshold": (0.75,), "min_size": (0, 50)}
    best, score = choose_settings([prob[None]], [truth], grid, spacings=[SPACING])
    assert (best.sigma, best.seed_threshold, best.min_size) == (2.0, 0.75, 50)
    cells = best.labels(prob[None], 0.5, SPACING)
    assert cells.max() == 2
    assert score == pytest.approx(evaluate_volumes([cells], [truth])["objects"]["pooled"]["mean_ap"])
    assert score > 0.5


def test_distance_map_seeds_at_each_cells_core():
    """A "distance" net's map (each cell's distance to the background over its largest, measured
    in physical units): the cores seed, the flood runs down to the touching edge."""
    truth = _balls()
    dist = np.zeros(truth.shape)
    for i in (1, 2):
        d = ndi.distance_transform_edt(truth == i, sampling=SPACING)
        dist += d / d.max()
    settings = InstanceSettings(sigma=0.0, seed_threshold=0.5)
    assert probabilities_to_instances(dist, "components", threshold=0.05).max() == 1
    cells = settings.labels(dist[None], 0.05, SPACING)
    assert cells.max() == 2
    for i in (1, 2):
        ids, counts = np.unique(cells[truth == i], return_counts=True)
        assert counts[ids > 0].max() > 0.9 * np.count_nonzero(truth == i)

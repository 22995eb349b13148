"""The benchmark scripts still run (smoke) and score what they claim to."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unetile.io import write_image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tile_augmentation_runs():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "tile_augmentation.py"), "--tiles", "2", "--tile", "64"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch grid_sample" in done.stdout


@pytest.mark.parametrize("suffix", ["tif", "png"])
def test_touching_cells_scores_float_and_8_bit_maps(tmp_path, suffix):
    truth = np.zeros((20, 20), np.uint16)
    truth[2:10, 2:18], truth[10:18, 2:18] = 1, 2  # two touching cells
    prob = (truth > 0).astype(np.float32)  # right foreground, the two cells merged
    for sub, array, ext in (("labels", truth, "tif"), ("map", prob if suffix == "tif" else (prob * 255).astype(np.uint8),
                                                       suffix), ("cells", truth, "tif")):
        (tmp_path / sub).mkdir()
        write_image(tmp_path / sub / f"a.{ext}", array)
    dice, rand_map, rand_cells = _module("touching_cells").scores(tmp_path / "labels", tmp_path / "map",
                                                                  tmp_path / "cells")
    assert dice == pytest.approx(1.0) and rand_cells == pytest.approx(0.0)
    assert rand_map == pytest.approx(1 / 3, abs=0.01)  # precision 1/2, recall 1: 1 - F = 1/3


def _floor_case() -> tuple[np.ndarray, np.ndarray]:
    """A 4 x 4 truth (left half foreground) and a map wrong at two pixels: (1, 2) next to
    the boundary at 0.7, (0, 3) two pixels from it at 0.6."""
    truth = np.zeros((4, 4), bool)
    truth[:, :2] = True
    prob = np.where(truth, 0.9, 0.1)
    prob[1, 2], prob[0, 3] = 0.7, 0.6
    return truth, prob


def test_error_floor_scores_a_hand_computed_case():
    floor = _module("error_floor")
    truth, prob = _floor_case()
    s = floor.floor_scores([prob], [truth], near=1.5)
    assert s["pixel_error"] == pytest.approx(2 / 16)
    assert s["oracle"] == pytest.approx(0.0)  # any threshold in [0.7, 0.9) gets every pixel right
    assert s["near_share"] == pytest.approx(0.5)  # (1, 2) is 1 px from a foreground pixel, (0, 3) 2 px
    perfect = np.where(truth, 0.9, 0.1)
    [(a, b, averaged, singles)] = floor.pair_gains({"a": [prob], "b": [perfect]}, [truth])
    assert (a, b) == ("a", "b") and singles == pytest.approx(1 / 16) and averaged == pytest.approx(0.0)


def test_error_floor_reads_8_bit_maps(tmp_path):
    truth, prob = _floor_case()
    for sub, array in (("labels", truth.astype(np.uint8) * 255), ("a", np.round(prob * 255).astype(np.uint8)),
                       ("b", np.round(np.where(truth, 0.9, 0.1) * 255).astype(np.uint8))):
        (tmp_path / sub).mkdir()
        write_image(tmp_path / sub / "s.png", array)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "error_floor.py"), "--labels", str(tmp_path / "labels"),
                           str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"| {tmp_path / 'a'} | 0.12500 | 0.00000 | 0.50 |" in done.stdout
    assert "Every pair of runs (1): averaged maps 0.00000, their single runs 0.06250" in done.stdout


def test_object_misses_finds_each_objects_best_iou_and_the_false_cells():
    misses = _module("object_misses")
    truth = np.zeros((10, 10, 10), np.uint16)
    truth[2:5, 2:5, 2:5] = 1  # 27 voxels inside the volume
    truth[0:2, 6:9, 6:9] = 2  # 18 voxels on the z = 0 face
    cells = np.zeros_like(truth)
    cells[2:5, 2:5, 2:4] = 7  # 18 of object 1's voxels: IoU 18 / 27
    cells[6:8, 0:2, 0:2] = 9  # 8 voxels over no object, on the y = 0 and x = 0 faces
    table = misses.overlaps(truth, cells)
    rows = misses.object_rows(truth, {"a": table})
    assert [(r["id"], r["size"], r["border"]) for r in rows] == [(1, 27, False), (2, 18, True)]
    assert rows[0]["iou"]["a"] == pytest.approx(18 / 27) and rows[1]["iou"]["a"] == 0.0
    assert misses.false_cells(table, cells, 0.5) == [(8, True)]
    assert misses.false_cells(table, cells, 0.7) == [(18, False), (8, True)]  # 2/3 < 0.7: object 1's cell too


def test_cell_pictures_draws_one_row_per_image_and_two_per_volume(tmp_path):
    """An image: one overlay, the merged pair red under a yellow outline; a volume: z and y planes,
    the y plane drawn at z's physical length (voxel 2 x 1 x 1: each plane 2 px high)."""
    pictures = _module("cell_pictures")
    truth = np.zeros((20, 20), np.uint16)
    truth[2:10, 2:9], truth[2:10, 9:16], truth[12:18, 2:8] = 1, 2, 3
    pred = np.where(truth == 3, 2, 0).astype(np.uint16)  # 3 found
    pred[2:10, 2:17] = 1  # 1 and 2 merged: IoU 56 / 120 with each
    [flat] = pictures.panels(pred, truth, None, None)
    rgb = np.asarray(flat)
    assert rgb.shape == (20, 20, 3) and tuple(rgb[5, 5]) == (255, 60, 60) and tuple(rgb[2, 5]) == (255, 200, 0)
    assert tuple(rgb[12, 4]) == (0, 200, 80)  # the found cell's outline
    assert pictures.title("ours", pred, truth) == "ours: AP@0.5 0.250\n1/3 found, 1 false, 2 merged"
    volume = np.repeat(truth[None], 6, axis=0)
    z_plane, y_plane = pictures.panels(volume, volume, None, (2.0, 1.0, 1.0))
    assert z_plane.size == (20, 20) and y_plane.size == (20, 12)  # PIL: (width, height)
    out = tmp_path / "p.png"
    pictures.draw([("truth", [z_plane, y_plane]), ("ours", [z_plane, y_plane])], out)
    assert out.stat().st_size > 0


def test_cell_peers_table_gives_the_sample_sd_and_counts_without_decimals():
    """The spreads in docs/results.md are sample sds (over 2-3 seeds); the table must say the same."""
    sys.path.insert(0, str(BENCHMARKS))  # cell_peers imports its sibling scripts
    try:
        mean_std = _module("cell_peers").mean_std
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert mean_std([0.618, 0.541, 0.605]) == "0.588 ± 0.041"  # sd with ddof=1 (0.034 with ddof=0)
    assert mean_std([12]) == "12" and mean_std([0.746]) == "0.746"
    assert mean_std([95, 44]) == "69.5 ± 36.1"


def test_cell_groups_counts_true_cells_found_merged_and_missed_by_diameter(tmp_path):
    """A 4-px cell missed, two 8-px cells merged (not found), an 11-px cell found."""
    truth = np.zeros((40, 40), np.uint16)
    truth[2:6, 2:5] = 1  # 12 px: 3.9 px across
    truth[10:17, 2:9], truth[10:17, 10:17] = 2, 3  # 49 px each: 7.9 px across
    truth[25:35, 25:35] = 4  # 100 px: 11.3 px across
    pred = np.zeros_like(truth)
    pred[10:17, 2:17] = 1
    pred[25:35, 25:34] = 2  # IoU 0.9
    for folder, image in (("truth", truth), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_image(tmp_path / folder / "a.tif", image)
    rows = {(r["low"], r["high"]): r for r in _module("cell_groups").size_rows(tmp_path / "pred", tmp_path / "truth")}
    small, mid = rows[(0, 8)], rows[(10, 12)]
    assert (small["cells"], small["found"], small["merged"], small["missed"]) == (3, 0, 2, 1)
    assert (mid["cells"], mid["found"], mid["merged"]) == (1, 1, 0)
    assert sum(r["cells"] for r in rows.values()) == 4

"""The benchmark scripts still run (smoke) and score what they claim to."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unet.io import write_image

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

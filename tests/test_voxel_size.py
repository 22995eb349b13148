"""Voxel sizes read from the files microscopes and Fiji write (issue 34, item 3), and the
pooling plan they lead to."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetile.io import voxel_size, write_image
from unetile.nn.geometry import anisotropic_plan

PLANTSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "plantseg3d"


def test_imagej_spacing_and_resolution(tmp_path):
    volume = np.zeros((5, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", volume, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    assert voxel_size(tmp_path / "v.tif") == pytest.approx((1.5, 0.25, 0.25))
    tifffile.imwrite(tmp_path / "nm.tif", volume, imagej=True, resolution=(1 / 40, 1 / 40),
                     metadata={"spacing": 200, "unit": "nm", "axes": "ZYX"})
    assert voxel_size(tmp_path / "nm.tif") == pytest.approx((0.2, 0.04, 0.04))  # in micrometres


def test_ome_physical_sizes(tmp_path):
    volume = np.zeros((4, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "v.ome.tif", volume, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.3,
                               "PhysicalSizeZUnit": "\u00b5m", "PhysicalSizeYUnit": "nm", "PhysicalSizeXUnit": "nm"})
    assert voxel_size(tmp_path / "v.ome.tif") == pytest.approx((2.0, 0.0003, 0.0003))


def test_files_that_do_not_say_give_none(tmp_path):
    write_image(tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8))
    write_image(tmp_path / "image.png", np.zeros((8, 8), np.uint8))
    assert voxel_size(tmp_path / "plain.tif") is None and voxel_size(tmp_path / "image.png") is None


def test_the_plantseg_volumes_and_their_plans():
    nuclei = PLANTSEG / "nuclei_blobs" / "train" / "images" / "1135.tif"
    ovule = PLANTSEG / "ovule_cells" / "images" / "sample_ovule.tif"
    if not nuclei.is_file() or not ovule.is_file():
        pytest.skip("../shared/data/plantseg3d not present")
    assert voxel_size(nuclei) == pytest.approx((0.284, 0.127, 0.127), abs=1e-3)  # as its README says
    assert voxel_size(ovule) == pytest.approx((0.235, 0.15, 0.15))
    kernels, pools = anisotropic_plan(voxel_size(nuclei), depth=3)  # z 2.2x coarser: skipped at level 0
    assert pools[0] == (1, 2, 2) and kernels[0][0] == 1 and pools[1] == pools[2] == (2, 2, 2)
    assert anisotropic_plan(voxel_size(ovule), depth=3)[1] == ((2, 2, 2),) * 3  # 1.6x: isotropic plan

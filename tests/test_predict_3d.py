"""`unetile predict` and `Predictor` on volumes with a 3D net: the whole stack is one volume,
written as an OME-TIFF with the input's voxel size; 2D models keep segmenting stacks by plane."""

import itertools
import math

import numpy as np
import pytest
import tifffile
import torch

from unetile import save_model
from unetile.cli import main
from unetile.errors import UserInputError
from unetile.inference.layout import default_tile_shape, tile_layout
from unetile.inference.predictor import Predictor, PredictOptions, calibrate
from unetile.inference.tiling import predict_tiled
from unetile.io import read_image, voxel_size, write_volume
from unetile.nn.geometry import anisotropic_plan
from unetile.nn.model import UNet, UNetConfig, init_he
from unetile.normalization import Normalization

VOXEL = (0.5, 0.2, 0.2)  # z 2.5x coarser: the plan skips z at the first level


def _net_3d() -> UNet:
    torch.manual_seed(0)
    kernels, pools = anisotropic_plan(VOXEL, depth=2)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, spatial_dims=3, kernels=kernels, pools=pools)))
    return net.eval()


@pytest.fixture
def model_3d(tmp_path):
    path = tmp_path / "net3d.pt"
    save_model(_net_3d(), path, threshold=0.3, voxel_size=list(VOXEL), flips="dihedral")
    return path


@pytest.fixture
def volume(tmp_path, rng):
    vol = (rng.random((9, 30, 26)) * 60000).astype(np.uint16)
    path = tmp_path / "stack.tif"
    write_volume(path, vol, VOXEL)
    return path, vol


def test_a_volume_is_predicted_as_one_and_keeps_its_voxel_size(tmp_path, model_3d, volume):
    path, vol = volume
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_3d), "--input", str(path), "--out", str(out),
                 "--precision", "fp32"]) == 0
    written = out / "stack.tif"
    assert tifffile.TiffFile(written).series[0].axes == "ZYX" and voxel_size(written) == pytest.approx(VOXEL)
    got = read_image(written)[:, 0]
    # The same numbers as the tiled 3D net on the normalised volume (with prediction's floors: the
    # volume is noise, so the noise floor acts), calibrated to the stored 0.3.
    prediction_normalization = Normalization(floor=0.5, noise_floor=10.0)
    expected = predict_tiled(_net_3d(), vol, normalization=prediction_normalization, precision="fp32")[0]
    np.testing.assert_allclose(got, calibrate(expected, 0.3), atol=1e-5)
    assert got.shape == vol.shape


def test_volume_masks_and_tiles_per_axis(tmp_path, model_3d, volume, rng):
    path, vol = volume
    predictor = Predictor.load(model_3d, PredictOptions(tile_size=None, precision="fp32"))
    assert predictor.spatial_dims == 3 and predictor.voxel_size == VOXEL
    whole = predictor.probabilities(vol)
    small = Predictor.load(model_3d, PredictOptions(precision="fp32", batch_size=3))
    tiles = small.probabilities(vol[None], name=path)  # (C, Z, Y, X) too
    tile = small.tile_size(vol.shape)
    assert len(tile) == 3 and whole.shape == (1, *vol.shape)
    np.testing.assert_allclose(tiles, whole, atol=1e-5)
    out = tmp_path / "masks"
    assert main(["predict", "--model", str(model_3d), "--input", str(path), "--out", str(out), "--threshold", "0.5",
                 "--precision", "fp32"]) == 0
    mask = read_image(out / "stack.tif")[:, 0]
    np.testing.assert_array_equal(mask, np.where(calibrate(whole[0], 0.3) > 0.5, 255, 0))


def test_one_plane_for_a_3d_model_is_refused_in_one_line(tmp_path, model_3d, rng, capsys):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, (rng.random((20, 20)) * 255).astype(np.uint8))
    code = main(["predict", "--model", str(model_3d), "--input", str(flat), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flat.tif" in err[0] and "one plane" in err[0]
    assert not (tmp_path / "o" / "flat.tif").exists()


@pytest.mark.parametrize("shape", [(9, 30, 26), (40, 150, 90), (70, 70, 70)])
def test_default_volume_tile_computes_the_fewest_voxels_under_its_cap(shape):
    """The tool's 3D tile against every valid (z, y = x) tile under the cap, by brute force."""
    net, cap = _net_3d(), 36 * 48 * 48

    def computed(tile):
        tiles = math.prod(len(tile_layout(net, length, size, axis).origins)
                          for length, size, axis in zip(shape, tile, (-3, -2, -1)))
        return tiles * math.prod(tile)

    def valid(axis):
        return sorted({net.valid_input_size(n, "up", axis) for n in range(1, 200)})

    candidates = []
    for z, s in itertools.product(valid(-3), valid(-1)):
        try:
            if z * s * s <= cap:
                candidates.append((computed((z, s, s)), (z, s, s)))
        except UserInputError:  # keeps less than a pooling grid
            pass
    tile = default_tile_shape(net, shape, cap)
    assert math.prod(tile) <= cap and tile[1] == tile[2]
    assert computed(tile) == min(candidates)[0]

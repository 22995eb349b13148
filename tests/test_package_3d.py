"""3D nets exported: ONNX and TorchScript with dynamic z, y, x; a BioImage.IO package with z, y, x
axes (per-axis sizes and halos, the voxel size as scale) that bioimageio.core's test passes where
unetile cannot be imported; `unetile predict` through the .onnx and the .zip equal to the .pt."""

import io
import os
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

os.environ.setdefault("TQDM_DISABLE", "1")  # bioimageio.core's per-block bars
core = pytest.importorskip("bioimageio.core")
onnxruntime = pytest.importorskip("onnxruntime")

from unetile import save_model
from unetile.cli import main
from unetile.errors import UserInputError
from unetile.inference.predictor import Predictor, PredictOptions
from unetile.io import read_image, write_volume
from unetile.nn.geometry import anisotropic_plan
from unetile.nn.model import UNet, UNetConfig, init_he
from unetile.packaging.export import OnnxModel, export_model
from unetile.packaging.model_package import predict_with_core
from unetile.packaging.package_architecture import architecture_kwargs, packaged_net
from unetile.packaging.portable_check import check_without_unetile

VOXEL = (0.5, 0.2, 0.2)  # z 2.5x coarser: the plan skips z at the first level, so z's halo is smaller
AXES = (-3, -2, -1)
# Sides on each axis's grid (z 2, y and x 4): bioimageio.core moves its last block to end at the
# volume's edge, off the pooling grid unless the sides fit (as in 2D, test_model_package.py).
VOLUME = (30, 88, 76)


def _net_3d() -> UNet:
    torch.manual_seed(0)
    kernels, pools = anisotropic_plan(VOXEL, depth=2)
    return init_he(UNet(config=UNetConfig(width=4, depth=2, spatial_dims=3, kernels=kernels, pools=pools))).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One 3D checkpoint, a sample volume, and the package `unetile export` makes of them."""
    root = tmp_path_factory.mktemp("package3d")
    save_model(_net_3d(), root / "net3d.pt", threshold=0.3, voxel_size=list(VOXEL))
    rng = np.random.default_rng(3)
    sample = (rng.gamma(2.0, 300.0, size=(40, 60, 56))).astype(np.uint16)
    write_volume(root / "sample.tif", sample, VOXEL)
    assert main(["export", "--model", str(root / "net3d.pt"), "--format", "bioimageio", "--out",
                 str(root / "net3d.zip"), "--author", "A. Tester", "--sample", str(root / "sample.tif")]) == 0
    volume = (rng.random(VOLUME) * 60000).astype(np.uint16)
    write_volume(root / "volume.tif", volume, VOXEL)
    return root, sample, volume


def test_onnx_and_torchscript_take_any_valid_volume(exported):
    root, _, volume = exported
    assert main(["export", "--model", str(root / "net3d.pt"), "--format", "onnx", "--out", str(root / "net3d.onnx")]) == 0
    assert export_model(root / "net3d.pt", root / "net3d.ts", "torchscript") <= 1e-5  # on another size than traced
    onnx, net = OnnxModel(root / "net3d.onnx"), _net_3d()
    assert onnx.session.get_inputs()[0].shape == ["batch", 1, "depth", "height", "width"]
    assert [onnx.axis_halo(a) for a in AXES] == [net.axis_halo(a) for a in AXES] == [8, 20, 20]
    assert [onnx.grid(a) for a in AXES] == [2, 4, 4]
    assert [onnx.valid_input_size(31, "up", a) for a in AXES] == [net.valid_input_size(31, "up", a) for a in AXES]
    assert [onnx.output_size(48, a) for a in AXES] == [32, 8, 8]
    scripted = torch.jit.load(str(root / "net3d.ts"))
    batch = torch.randn(1, 1, 22, 48, 52)
    with torch.no_grad():
        assert scripted(batch).shape == (1, 1, 6, 8, 12)
        assert torch.allclose(scripted(batch), torch.sigmoid(net(batch)), atol=1e-5)
    for model in ("net3d.pt", "net3d.onnx"):
        assert main(["predict", "--model", str(root / model), "--input", str(root / "volume.tif"), "--out",
                     str(root / model.replace(".", "_")), "--precision", "fp32"]) == 0
    got, expected = (read_image(root / folder / "volume.tif") for folder in ("net3d_onnx", "net3d_pt"))
    assert got.shape == (*VOLUME[:1], 1, *VOLUME[1:])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_package_has_z_y_x_axes_with_their_own_halo_and_voxel_size(exported):
    root, sample, _ = exported
    with zipfile.ZipFile(root / "net3d.zip") as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        card = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
        sample_tensor = tifffile.imread(archive.open("sample_input.tif"))
        cover = _png_pixels(archive.read("cover.png"))
    image, probability = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id") for a in image["axes"]] == [None, None, "z", "y", "x"]
    space_in, space_out = image["axes"][2:], probability["axes"][2:]
    assert [a["size"] for a in space_in] == [{"min": 18, "step": 2}, {"min": 44, "step": 4}, {"min": 44, "step": 4}]
    assert [a["halo"] for a in space_out] == [8, 20, 20]
    # in nm: sizes times 0.2 (um) over 0.2 are not exact in floating point, times 200 over 200 are
    assert [a["scale"] for a in space_in] == [a["scale"] for a in space_out] == [500.0, 200.0, 200.0]
    assert {a["unit"] for a in space_in + space_out} == {"nanometer"}
    scale_range = next(p for p in image["preprocessing"] if p["id"] == "scale_range")
    assert scale_range["kwargs"]["axes"] == ["z", "y", "x"]
    assert "3d" in rdf["tags"] and "2d" not in rdf["tags"] and "segments volumes" in card
    # the test input: the sample volume's centre, 48 voxels a side at most (40 z -> 40, 60 -> 48, 56 -> 48)
    assert test_input.shape == (1, 1, 40, 48, 48)
    np.testing.assert_array_equal(test_input[0, 0], sample[:, 6:54, 4:52].astype(np.float32))
    assert sample_tensor.squeeze().shape == (40, 48, 48)
    # the cover: the middle plane of a wider crop (60 x 56, the whole sample's plane): 3 panels, 2 gaps
    assert cover.shape == (60, 3 * 56 + 2 * 8, 3)


def _png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def test_packaged_net_pads_a_valid_output_back_per_axis(exported):
    net = _net_3d()
    packaged = packaged_net(net, {"threshold": 0.3})
    assert architecture_kwargs(net, {})["halo"] == [8, 20, 20]
    batch = torch.randn(1, 1, 20, 48, 44)
    with torch.no_grad():
        got, prob = packaged(batch), torch.sigmoid(net(batch))
    assert got.shape == batch.shape
    inner = got[..., 8:-8, 20:-20, 20:-20]
    assert torch.allclose(inner, torch.where(prob <= 0.3, prob * 0.5 / 0.3, 0.5 + (prob - 0.3) * 0.5 / 0.7),
                          atol=1e-6)
    assert got.abs().sum() == inner.abs().sum()  # zeros outside
    with pytest.raises(UserInputError, match="input_shift"):  # 3D checkpoints have none; never dropped silently
        architecture_kwargs(net, {"input_shift": (0.0, 0.25, 0.0)})


def test_bioimageio_core_passes_the_package_without_unetile(exported):
    root, _, _ = exported
    status, checks = check_without_unetile(root / "net3d.zip")
    assert status == "passed", checks
    for weights in ("onnx", "pytorch_state_dict", "torchscript"):
        assert checks[f"Reproduce test outputs from test inputs ({weights})"][0] == "passed"


def test_predict_through_the_package_equals_the_checkpoint(exported):
    root, _, volume = exported
    for model in ("net3d.pt", "net3d.zip"):
        assert main(["predict", "--model", str(root / model), "--input", str(root / "volume.tif"), "--out",
                     str(root / f"by_{model.split('.')[1]}"), "--precision", "fp32"]) == 0
    from_zip, from_pt = (read_image(root / f"by_{kind}" / "volume.tif") for kind in ("zip", "pt"))
    np.testing.assert_array_equal(from_zip, from_pt)
    # bioimageio.core's own blockwise prediction: blocks of (18 + 2n, 44 + 4n, 44 + 4n) voxels at
    # n = 4, each cropped by the package's halo to (10, 20, 20): 3 x 5 x 4 blocks over the volume
    # without the noise floor, which the package's scale_range cannot hold (its card says so): the volume is noise
    options = PredictOptions(precision="fp32", normalization_noise_floor=0.0)
    calibrated = Predictor.load(root / "net3d.zip", options).predict(volume, ".tif")
    core_prob = predict_with_core(root / "net3d.zip", volume[None], "onnx", blocksize=4)
    difference = np.abs(core_prob[0] - calibrated).max()
    print(f"bioimageio.core (onnx, blockwise) vs Predictor: max |dprob| {difference:.2e}")  # measured: 9e-7
    assert core_prob.shape == (1, *VOLUME) and calibrated.shape == VOLUME and difference < 1e-5

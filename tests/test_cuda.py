"""The GPU paths: CUDA prediction and training with AMP (fp16 with a gradient scaler, bf16).

Skipped where no CUDA device exists (CI, laptops); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

import numpy as np
import pytest
import torch

from unetile import UNet, init_he, load_model, predict_tiled, save_model
from unetile.cli import main
from unetile.io import read_image, write_image
from unetile.synthetic import write_dataset
from unetile.training import train

from .conftest import tiny_train_config, tiny_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def exact_float32_convolutions():
    """TF32 convolutions (cuDNN's default) round to ~1e-3: compare against the CPU in true fp32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_tiled_prediction_on_cuda_equals_cpu_and_is_seamless(rng):
    net = tiny_unet(width=8)
    image = rng.random((300, 410)).astype(np.float32)
    on_cpu = predict_tiled(net, image, tile_size=252, device="cpu")
    a = predict_tiled(net, image, tile_size=252, batch_size=3, device="cuda")
    b = predict_tiled(net, image, tile_size=508, batch_size=1, device="cuda")
    assert a.shape == (1, 300, 410) and on_cpu.std() > 0.02  # He init: the output really varies
    assert np.abs(a - on_cpu).max() <= 1e-4
    assert np.abs(a - b).max() <= 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_prediction_on_cuda_is_close_to_fp32(rng, precision):
    net = tiny_unet(width=8)
    image = rng.random((200, 260)).astype(np.float32)
    exact = predict_tiled(net, image, tile_size=252, device="cuda")
    fast = predict_tiled(net, image, tile_size=252, device="cuda", precision=precision, channels_last=True)
    assert np.abs(fast - exact).mean() <= 0.01 and np.abs(fast - exact).max() <= 0.1


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_on_cuda_with_amp_then_predicting_on_cpu_and_cuda(tmp_path, precision):
    data = write_dataset(tmp_path / "syn", 5, 64, seed=0)
    run = train(tiny_train_config(data, tmp_path / "run", device="cuda", precision=precision, workers=1))
    model, meta = load_model(run / "best.pt")  # a GPU-trained checkpoint loads on the CPU
    assert next(model.parameters()).device.type == "cpu"
    assert all(torch.isfinite(p).all() for p in model.parameters()) and 0 < meta["threshold"] < 1
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and "nan" not in rows[-1]

    outs = {}
    for device in ("cpu", "cuda"):
        assert main(["predict", "--model", str(run / "best.pt"), "--input", str(data / "images"),
                     "--out", str(tmp_path / device), "--device", device, "--precision", "fp32"]) == 0
        outs[device] = read_image(tmp_path / device / "00.png").astype(int)
    assert np.abs(outs["cpu"] - outs["cuda"]).max() <= 1  # the same 8-bit map, to rounding


def test_cli_stack_prediction_on_cuda_with_default_precision(tmp_path, rng):
    save_model(tiny_unet(width=4, depth=3), tmp_path / "m.pt", threshold=0.5)
    stack = (rng.random((3, 140, 130)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.tif", stack, axes="QYX")
    assert main(["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "vol.tif"),
                 "--out", str(tmp_path / "o"), "--device", "cuda", "--format", "tif", "--tta"]) == 0
    out = read_image(tmp_path / "o" / "vol.tif")
    assert out.shape == (3, 1, 140, 130) and 0 <= out.min() and out.max() <= 1 and out.std() > 0


def test_tiles_cut_on_the_gpu_equal_the_cpu_path_and_the_whole_image(rng):
    """The device-resident path (the default on CUDA): fp32 equals the host path and a tile
    larger than the image to 1e-5; uint16 input normalised on the device."""
    from unetile import Normalization

    net = tiny_unet(width=8, in_channels=2)
    image = (rng.random((2, 700, 530)) * 4000).astype(np.uint16)
    norm = Normalization()
    host = predict_tiled(net, image, tile_size=252, batch_size=3, device="cuda", normalization=norm, resident=False)
    resident = predict_tiled(net, image, tile_size=252, batch_size=5, device="cuda", normalization=norm)
    whole = predict_tiled(net, image, tile_size=892, batch_size=1, device="cuda", normalization=norm)
    assert host.std() > 0.02 and np.abs(resident - host).max() <= 1e-5 and np.abs(resident - whole).max() <= 1e-5


def test_bf16_on_the_gpu_flips_few_pixels(rng):
    # The paper's net (He init): a tiny random net sits near 0.5 on noise and flips ~0.3%.
    torch.manual_seed(0)
    net = init_he(UNet(width=64)).eval()
    image = rng.random((1024, 1024)).astype(np.float32)
    exact = predict_tiled(net, image, device="cuda")
    fast = predict_tiled(net, image, device="cuda", precision="bf16", channels_last=True)
    assert ((fast > 0.5) != (exact > 0.5)).mean() < 0.001


def test_training_tiles_made_on_the_gpu_equal_the_cpu_tiles():
    from unetile.training.augment import Augmentation
    from unetile.training.data import TileDataset
    from unetile.training.device_augment import DeviceTiles

    from .test_device_augment import _items

    for aug in (Augmentation(), Augmentation(soft_labels=True)):
        dataset = TileDataset(_items(), 76, 36, aug, seed=5)
        image, label, weight = DeviceTiles(dataset, torch.device("cuda")).batch([3, 17, 4, 40])
        cpu = [dataset[i] for i in (3, 17, 4, 40)]
        torch.testing.assert_close(image.cpu(), torch.stack([t[0] for t in cpu]), atol=1e-4, rtol=0)
        assert (label.cpu() != torch.stack([t[1] for t in cpu])).float().mean() < 0.002  # nearest: ties may differ
        torch.testing.assert_close(weight.cpu(), torch.stack([t[2] for t in cpu]), atol=1e-3, rtol=0)


def test_training_on_cuda_makes_its_tiles_on_the_gpu(tmp_path, caplog):
    import logging

    data = write_dataset(tmp_path / "syn", 5, 64, seed=0)
    with caplog.at_level(logging.INFO):
        run = train(tiny_train_config(data, tmp_path / "run", device="cuda", precision="bf16"))
    assert "cut and augmented on cuda" in caplog.text
    model, meta = load_model(run / "best.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compiled_prediction_equals_eager_on_cuda(rng):
    from unetile.inference.predictor import compiled

    net = tiny_unet(width=8).cuda().eval()
    image = rng.random((300, 300)).astype(np.float32)
    eager = predict_tiled(net, image, batch_size=3)
    fast = predict_tiled(compiled(net, torch.device("cuda")), image, batch_size=3)  # a full and a short batch
    assert np.abs(fast - eager).max() < 1e-4


def test_benchmark_on_cuda_reports_gpu_memory(tmp_path, rng):
    import json

    from unetile.inference.benchmark import run_benchmark

    images = {"300x300": [rng.random((300, 300), dtype=np.float32)]}
    run_benchmark(width=4, json_path=tmp_path / "b.json", workloads=images, device="cuda",
                  methods=("reference", "predict_tiled", "limit"))
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["reference", "predict_tiled", "limit"]
    # width 4 on noise: many pixels sit near 0.5 (the paper's net flips < 0.1%, test above)
    assert rows[1]["peak_gpu_mb"] > 0 and rows[1]["flipped_fraction"] < 0.01


def _anisotropic_3d_net() -> UNet:
    """A He-initialised width-8 3D net with the plan of 0.5 x 0.2 x 0.2 um voxels (no z pooling first)."""
    from unetile.nn.geometry import anisotropic_plan
    from unetile.nn.model import UNetConfig

    torch.manual_seed(0)
    kernels, pools = anisotropic_plan((0.5, 0.2, 0.2), 2)
    return init_he(UNet(config=UNetConfig(width=8, depth=2, spatial_dims=3, kernels=kernels, pools=pools))).eval()


def test_3d_tiled_prediction_on_cuda_equals_cpu_and_is_seamless(rng):
    """Volumes on the GPU (issue 34): small tiles == one large tile == the CPU, in fp32; bf16 close."""
    from unetile.inference.layout import default_tile_shape

    net = _anisotropic_3d_net()
    volume = rng.random((22, 90, 70)).astype(np.float32)
    small = default_tile_shape(net, volume.shape, max_voxels=40**3)
    whole = default_tile_shape(net, volume.shape)
    assert small != whole  # two different tilings
    on_cpu = predict_tiled(net, volume, tile_size=whole, device="cpu")
    tiled = predict_tiled(net, volume, tile_size=small, batch_size=3, device="cuda")
    one = predict_tiled(net, volume, tile_size=whole, batch_size=1, device="cuda")
    assert tiled.shape == (1, 22, 90, 70) and on_cpu.std() > 0.02
    assert np.abs(tiled - on_cpu).max() <= 1e-4 and np.abs(tiled - one).max() <= 1e-4
    host = predict_tiled(net, volume, tile_size=small, batch_size=3, device="cuda", resident=False)
    assert np.abs(host - tiled).max() <= 1e-5  # tiles cut on the GPU (the default) == gathered on the host
    fast = predict_tiled(net, volume, tile_size=small, device="cuda", precision="bf16", channels_last=True)
    assert np.abs(fast - one).mean() <= 0.01
    # the GPU's own choice: a larger tile than the CPU's cap allows, the same numbers
    from unetile.inference.tiling import volume_tile_voxels

    assert volume_tile_voxels(net, "fp32", torch.device("cuda")) > volume_tile_voxels(net)
    assert np.abs(predict_tiled(net, volume, batch_size=1, device="cuda") - on_cpu).max() <= 1e-4


def test_3d_training_on_cuda_then_cells_of_a_volume(tmp_path):
    """A 3D run on the GPU whose checkpoint predicts a volume and cuts its 3D cells alike on the
    CPU and the GPU."""
    from .test_train_3d import blob_volume, write_volume

    for folder, seeds in (("train", (0, 1)), ("val", (2,))):
        for seed in seeds:
            image, ids = blob_volume(seed)
            write_volume(tmp_path / folder / "images" / f"v{seed}.tif", image, (0.5, 0.2, 0.2))
            write_volume(tmp_path / folder / "labels" / f"v{seed}.tif", ids, (0.5, 0.2, 0.2))
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--width", "4",
                 "--depth", "2", "--tile-size", "24", "--batch-size", "2", "--samples-per-epoch", "4", "--epochs",
                 "2", "--workers", "0", "--device", "cuda", "--out", str(run)]) == 0
    model, meta = load_model(run / "best.pt")
    assert model.config.spatial_dims == 3 and all(torch.isfinite(p).all() for p in model.parameters())
    outs = {}
    for device in ("cpu", "cuda"):
        assert main(["-q", "predict", "--model", str(run / "best.pt"), "--input", str(tmp_path / "val" / "images"),
                     "--out", str(tmp_path / device), "--device", device, "--precision", "fp32",
                     "--instances"]) == 0
        outs[device] = read_image(tmp_path / device / "v2.tif")[:, 0]  # (Z, 1, Y, X) as written
    assert outs["cpu"].shape == (16, 32, 32) and outs["cpu"].max() >= 1
    assert np.mean((outs["cpu"] > 0) != (outs["cuda"] > 0)) < 0.001  # one model, two devices: the same cells


def test_a_cluster_of_gpu_workers_plans_the_gpus_tiles(tmp_path, rng):
    """A client on the CPU plans a volume's blocks with the tile its GPU worker picks (larger
    than the CPU's), and what they write equals the client's own plan run on its CPU."""
    pytest.importorskip("ome_zarr")
    distributed = pytest.importorskip("distributed")
    from unetile.inference.predictor import PredictOptions, Predictor
    from unetile.slides import block_run
    from unetile.slides.chunked import open_chunked

    from .test_zarr_3d import smooth_volume, write_ome_volume

    model = tmp_path / "net3d.pt"
    save_model(_anisotropic_3d_net(), model)
    shape = (128, 512, 512)  # larger than the CPU's tile cap for this net (96 x 360 x 360)
    volume = smooth_volume(rng, shape)
    source = write_ome_volume(tmp_path / "vol.zarr", volume, chunks=(64, 256, 256))
    client_side = Predictor.load(model, PredictOptions(precision="fp32"), "cpu")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        tile = block_run.workers_tile(client_side, open_chunked(source, "zyx"), client, "cuda")
        assert np.prod(tile) > np.prod(client_side.tile_size(shape))
        block_run.predict_to_zarr(client_side, source, tmp_path / "out.zarr", client, progress=False,
                                  worker_device="cuda")
    import zarr

    block_run.predict_to_zarr(client_side, source, tmp_path / "here.zarr", progress=False)  # the CPU's tiles
    written, here = (zarr.open_group(str(tmp_path / name), mode="r")["0"][:] for name in ("out.zarr", "here.zarr"))
    assert written.shape == (1, *shape) and written.std() > 0.01 and np.abs(written - here).max() <= 1e-4

"""Volumes through the OME-Zarr block path with a 3D net: blocks are boxes cut along z, y and x,
each equal to one pass over the whole volume; cells with one id per 3D object across block faces."""

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")
pytest.importorskip("distributed")

from unetile import save_model
from unetile.cli import main
from unetile.inference.instances import InstanceSettings
from unetile.inference.predictor import PredictOptions, Predictor, calibrate
from unetile.io import read_image, write_volume
from unetile.nn.geometry import anisotropic_plan
from unetile.nn.model import UNet, UNetConfig, init_he
from unetile.slides import block_run
from unetile.slides.chunked import open_chunked
from unetile.slides.zarr_output import ZarrOutput

from .test_zarr_cells import blockwise_cells as cells_in_blocks
from .test_zarr_cells import same_up_to_numbering

VOXEL = (0.5, 0.2, 0.2)  # z 2.5x coarser: the plan skips z at the first level
TILE = 20  # voxels on every axis: keeps 16 in z, 4 in y and x (halo 2 and 8): several tiles per axis
SIDES = (8, 16, 16)  # block sides (tiles step by 4 on every axis): 3 blocks in z, 2 in y and x


@pytest.fixture
def model_3d(tmp_path):
    torch.manual_seed(0)
    kernels, pools = anisotropic_plan(VOXEL, depth=1)
    net = init_he(UNet(config=UNetConfig(width=4, depth=1, spatial_dims=3, kernels=kernels, pools=pools))).eval()
    path = tmp_path / "net3d.pt"
    save_model(net, path, threshold=0.4, voxel_size=list(VOXEL), flips="dihedral")
    return path


def smooth_volume(rng, shape):
    """uint16 (Z, Y, X): smooth waves plus noise (the net's output then has structure)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    waves = np.sin(z / 3.0) * np.sin(y / 7.0) * np.cos(x / 5.0) * 20000 + 30000
    return (waves + rng.normal(0, 2000, shape)).clip(0, 65535).astype(np.uint16)


def write_ome_volume(path, volume, scale=VOXEL, axes="zyx", chunks=(8, 16, 16)):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image as ome_write

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    ome_write(volume, group, axes=axes, fmt=FormatV05(), scale_factors=[],
              scale=dict(zip(axes, scale)), storage_options={"chunks": chunks})
    return path


def one_pass(model_path, volume, tile=TILE):
    """What one pass of the tiled net over the whole volume gives, calibrated (fp32, one thread)."""
    predictor = Predictor.load(model_path, PredictOptions(precision="fp32", tile_size=tile), "cpu")
    return calibrate(predictor.probabilities(volume), predictor.threshold)


def to_zarr(model_path, source, target, client=None, **options):
    predictor = Predictor.load(model_path, PredictOptions(precision="fp32", tile_size=TILE, **options), "cpu")
    block_run.predict_to_zarr(predictor, source, target, client, block_px=SIDES, progress=False)
    return zarr.open_group(str(target), mode="r")


def test_volume_blocks_equal_one_pass_here_and_on_a_cluster(tmp_path, model_3d, rng):
    volume = smooth_volume(rng, (20, 32, 32))
    source = write_ome_volume(tmp_path / "vol.zarr", volume)
    image = open_chunked(source, "zyx")
    assert image.shape == (1, 1, 20, 32, 32) and image.voxel_size == VOXEL
    job = block_run.plan(Predictor.load(model_3d, PredictOptions(tile_size=TILE)), image, tmp_path / "x.zarr", SIDES)
    grid = job.grid
    assert grid.sizes == (8, 16, 16) and [len(layout.origins) for layout in grid.layouts] == [2, 8, 8]
    assert len(grid.blocks()) == 3 * 2 * 2
    expected = one_pass(model_3d, volume)
    torch.set_num_threads(1)  # as each Dask worker (one thread): oneDNN's sums depend on the threads
    try:
        here = to_zarr(model_3d, source, tmp_path / "here.zarr", instances="watershed")
        with block_run.cluster_client("local:2") as client:
            there = to_zarr(model_3d, source, tmp_path / "there.zarr", client, instances="watershed")
    finally:
        torch.set_num_threads(2)
    prob = here["0"][:]
    assert prob.shape == (1, 20, 32, 32) and np.abs(prob - expected).max() < 1e-5
    assert np.array_equal(there["0"][:], prob)
    cells = here["labels"]["cells"]["0"][:]
    assert cells.shape == (1, 20, 32, 32) and cells.max() >= 2
    assert np.array_equal(there["labels"]["cells"]["0"][:], cells)
    # The margin (20 voxels in z, 48 in-plane) covers this volume: one watershed over the map.
    whole = InstanceSettings().labels(prob, 0.5, spacing=VOXEL)
    assert same_up_to_numbering(cells[0], whole)
    scale = here["labels"]["cells"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [1.0, *VOXEL]


class WorkerOfAnotherDevice:
    """`block_run._worker_state` on a worker whose device picks a tile of its own."""

    TILE = (20, 28, 28)

    def __init__(self):
        self.asked_on = []

    def state(self, *args):
        return self, None

    def tile_size(self, shape):
        from distributed import get_worker

        self.asked_on.append(get_worker().address)  # raises outside a Dask worker
        return self.TILE


def test_a_cluster_plans_the_tiles_its_workers_pick(tmp_path, model_3d, rng, monkeypatch):
    """A volume's tile is sized to the device that predicts (a GPU holds larger tiles than a
    CPU): on a cluster the plan asks a worker for its tile and cuts the blocks with it; without a
    cluster, or with a tile the user gave, the client's own choice holds."""
    from distributed import Client

    source = write_ome_volume(tmp_path / "vol.zarr", smooth_volume(rng, (20, 32, 32)))
    image = open_chunked(source, "zyx")
    own = Predictor.load(model_3d, PredictOptions(precision="fp32"), "cpu")
    given = Predictor.load(model_3d, PredictOptions(precision="fp32", tile_size=TILE), "cpu")
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert block_run.workers_tile(own, image, None, None) is None
        assert block_run.workers_tile(given, image, client, None) is None
        # the worker's real answer: on this CPU-only machine, the tile the client picks too
        assert block_run.workers_tile(own, image, client, None) == tuple(own.tile_size((20, 32, 32)))
        # a worker whose device picks another tile (a GPU's is larger): the plan is the worker's
        gpu_worker = WorkerOfAnotherDevice()
        monkeypatch.setattr(block_run, "_worker_state", gpu_worker.state)
        tile = block_run.workers_tile(own, image, client, None)
        assert tile == WorkerOfAnotherDevice.TILE and len(gpu_worker.asked_on) == 1
        grid = block_run.plan(own, image, tmp_path / "x.zarr", SIDES, tile).grid
        assert tuple(layout.input_size for layout in grid.layouts) == WorkerOfAnotherDevice.TILE


def test_tiff_volume_into_ome_zarr_resumes_and_equals_the_tiff_path(tmp_path, model_3d, rng, monkeypatch):
    """A TIFF stack (its voxel size in OME metadata) predicted into OME-Zarr in blocks, stopped
    after two blocks and resumed, equals the whole-volume TIFF output; the output is (c, z, y, x)
    with the voxel size as its scale and a pyramid in y and x."""
    volume = smooth_volume(rng, (8, 136, 136))
    write_volume(tmp_path / "stack.tif", volume, VOXEL)
    common = ["--model", str(model_3d), "--input", str(tmp_path / "stack.tif"), "--precision", "fp32",
              "--tile-size", "40"]  # keeps 36 in z (one tile), 24 in y and x (6 tiles)
    assert main(["predict", *common, "--out", str(tmp_path / "tif")]) == 0
    expected = read_image(tmp_path / "tif" / "stack.tif")[:, 0]
    written, real_write = [], ZarrOutput.write

    def write_then_die(self, block, values):
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(self, block, values)
        written.append(block)

    monkeypatch.setattr(ZarrOutput, "write", write_then_die)
    args = ["predict", *common, "--format", "zarr", "--block-size", "333",  # 333² px: as many voxels as 48³
            "--out", str(tmp_path / "z")]
    assert main(args) == 130
    monkeypatch.setattr(ZarrOutput, "write", real_write)
    assert main([*args, "--resume"]) == 0
    store = zarr.open_group(str(tmp_path / "z" / "stack.zarr"), mode="r")
    got = store["0"]
    assert got.shape == (1, 8, 136, 136) and got.chunks == (1, 8, 48, 48)
    assert np.abs(got[:][0] - expected).max() < 1e-5
    assert main([*args[:-1], str(tmp_path / "clean")]) == 0  # a run never stopped: the same, bit for bit
    assert np.array_equal(zarr.open_array(str(tmp_path / "clean" / "stack.zarr" / "0"), mode="r")[:], got[:])
    meta = store.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in meta["datasets"]]
    assert scales == [[1.0, 0.5, 0.2, 0.2], [1.0, 0.5, 0.4, 0.4]] and store["1"].shape == (1, 8, 68, 68)


def test_volumes_of_a_time_series_are_read_whole_per_time_point(tmp_path, rng):
    """(t, c, z, y, x): one volume per time point, windows (C, d, h, w) from any box; its NGFF
    scale gives the voxel size; as planes (2D nets) it is t x z planes as before."""
    data = rng.integers(0, 1000, (2, 3, 5, 12, 14)).astype(np.uint16)
    source = write_ome_volume(tmp_path / "t.zarr", data, scale=(60.0, 1.0, *VOXEL), axes="tczyx",
                              chunks=(1, 1, 2, 8, 8))
    planes, volumes = open_chunked(source), open_chunked(source, "zyx")
    assert planes.shape == (10, 3, 12, 14) and np.array_equal(planes.window(7, slice(2, 9), slice(0, 5)),
                                                              data[1, :, 2, 2:9, :5])
    assert volumes.shape == (2, 3, 5, 12, 14) and volumes.voxel_size == VOXEL
    assert np.array_equal(volumes.window(1, slice(1, 4), slice(3, 12), slice(5, 14)), data[1, :, 1:4, 3:12, 5:14])


def test_a_2d_model_still_reads_a_volume_plane_by_plane(tmp_path, rng):
    """A 2D net on an OME-Zarr (z, y, x): every plane predicted alone, as each plane in memory."""
    from .conftest import tiny_unet

    save_model(tiny_unet(width=4, depth=1), tmp_path / "m2d.pt", threshold=0.4)
    volume = smooth_volume(rng, (3, 40, 36))
    source = write_ome_volume(tmp_path / "vol.zarr", volume)
    predictor = Predictor.load(tmp_path / "m2d.pt", PredictOptions(precision="fp32", tile_size=28), "cpu")
    block_run.predict_to_zarr(predictor, source, tmp_path / "out.zarr", block_px=24, progress=False)
    got = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"]
    assert got.shape == (1, 3, 40, 36) and got.chunks == (1, 1, 24, 24)  # blocks of one plane, 2 tile steps
    for z in range(3):
        expected = calibrate(predictor.probabilities(volume[z]), predictor.threshold)[0]
        assert np.abs(got[0, z] - expected).max() < 1e-5


def test_a_3d_model_refuses_a_zarr_without_z_in_one_line(tmp_path, model_3d, rng, capsys):
    source = write_ome_volume(tmp_path / "flat.zarr", smooth_volume(rng, (1, 30, 30))[0], scale=(0.2, 0.2),
                              axes="yx", chunks=(16, 16))
    assert main(["predict", "--model", str(model_3d), "--input", str(source), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flat.zarr" in err[0] and "no z axis" in err[0]
    assert not (tmp_path / "o").exists()


def blockwise_cells(tmp_path, prob, sizes, margin):
    """`test_zarr_cells.blockwise_cells` over a volume's map (1, Z, Y, X) in blocks of ``sizes``."""
    return cells_in_blocks(tmp_path, prob, margin, sizes, VOXEL)


def crosses_faces(cells, axis, size):
    """Whether a cell holds voxels on both sides of a block face across ``axis`` (blocks of ``size``)."""
    before = np.take(cells, np.arange(size - 1, cells.shape[axis] - 1, size), axis)
    after = np.take(cells, np.arange(size, cells.shape[axis], size), axis)
    return bool(np.any((before > 0) & (before == after)))


def test_blockwise_3d_cells_equal_one_watershed_given_a_margin(tmp_path, rng):
    """Ellipsoidal cones (5 sections deep, 12 px in-plane: cells of half that, z 2.5x coarser),
    many touching, that the 3D watershed splits, many across block faces in z, y and x: with a
    margin wider than a cell the blocks give one watershed's cells (up to the numbering);
    without one, cells that touch near a face merge (seeds and floods cut at the faces)."""
    z, y, x = np.mgrid[:16, :64, :64]
    prob = np.zeros((16, 64, 64))
    for cz, cy, cx in rng.uniform((1, 3, 3), (15, 61, 61), size=(30, 3)):
        distance = np.sqrt(((z - cz) / 5.0) ** 2 + ((y - cy) / 12.0) ** 2 + ((x - cx) / 12.0) ** 2)
        prob = np.maximum(prob, np.clip(1 - distance, 0, 1))
    prob = np.clip(prob + rng.normal(0, 0.02, prob.shape), 0, 1).astype(np.float32)[None]
    expected = InstanceSettings().labels(prob, 0.5, spacing=VOXEL)
    sizes = (8, 16, 16)
    cells, count = blockwise_cells(tmp_path, prob, sizes, margin=(8, 24, 24))
    assert count == expected.max() >= 12 and same_up_to_numbering(cells, expected)
    assert np.unique(cells).size == count + 1  # numbered 1..K, no gaps
    assert all(crosses_faces(cells, axis, size) for axis, size in enumerate(sizes))  # across faces of every axis
    assert not same_up_to_numbering(blockwise_cells(tmp_path, prob, sizes, margin=0)[0], expected)

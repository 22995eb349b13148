"""Chunked inputs (OME-Zarr, zarr, compressed TIFF), OME-Zarr outputs in blocks, resume, Dask."""

import json
import os
import threading
import time

import numpy as np
import pytest
import tifffile
import torch

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")
distributed = pytest.importorskip("distributed")

from unetile import save_model
from unetile.slides.chunked import open_chunked, sample_statistics
from unetile.cli import main
from unetile.slides import block_run
from unetile.inference.predictor import PredictOptions, Predictor
from unetile.slides.zarr_output import ZarrOutput, part_store, progress_folder
from unetile.io import read_image, write_image
from unetile.normalization import Normalization

from .conftest import tiny_unet

BLOCK = 100  # px: small blocks and tiles, so that a small image has many of both
TILE = 76


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_model(tiny_unet(width=4, depth=2), path, threshold=0.4)
    return path


@pytest.fixture
def image(rng):
    """A 16-bit image with structure: smooth blobs plus noise, 300 x 260 px."""
    y, x = np.mgrid[:300, :260]
    blobs = np.sin(y / 17.0) * np.cos(x / 23.0) * 20000 + 30000
    return (blobs + rng.normal(0, 2000, blobs.shape)).clip(0, 65535).astype(np.uint16)


def write_ome_zarr(path, image, version="0.5", axes="yx", chunks=(64, 64)):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image as ome_write

    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    fmt = FormatV04() if version == "0.4" else FormatV05()
    ome_write(image, group, axes=axes, fmt=fmt, scale_factors=[2], storage_options={"chunks": chunks})
    return path


def tiff_path_result(tmp_path, model_path, image):
    """What `unetile predict` writes for the same image given as a plain TIFF."""
    (tmp_path / "plain").mkdir()
    write_image(tmp_path / "plain" / "img.tif", image)
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "plain" / "img.tif"),
                 "--out", str(tmp_path / "plain_out"), "--precision", "fp32"]) == 0
    return read_image(tmp_path / "plain_out" / "img.tif")[0]


def level0(path):
    return zarr.open_group(str(path), mode="r")["0"][:]


def test_blocks_run_each_tile_of_the_layout_once(model_path):
    from unetile.slides.blocks import block_grid

    grid = block_grid(Predictor.load(model_path).model, 1, 300, 260, TILE, BLOCK)
    assert grid.size == 108 and grid.rows.origins[-2:] == (252, 264)  # tiles every 36 px, the last one at 264
    per_block = [len(grid.positions(b)) for b in grid.blocks()]
    assert sum(per_block) == len(grid.rows.origins) * len(grid.cols.origins)


def test_sample_percentiles_match_the_full_image(tmp_path, image):
    write_ome_zarr(tmp_path / "a.zarr", image, chunks=(32, 32))
    chunked = open_chunked(tmp_path / "a.zarr")
    full = Normalization().statistics(image[None])
    exact = sample_statistics(chunked, 0, Normalization())  # 78,000 px: every chunk is read
    assert np.array_equal(exact[0], full[0]) and np.array_equal(exact[1], full[1])
    sampled = sample_statistics(chunked, 0, Normalization(), max_pixels=20_000)  # about every 2nd chunk
    span = float(full[1][0] - full[0][0])
    assert abs(sampled[0][0] - full[0][0]) < 0.01 * span and abs(sampled[1][0] - full[1][0]) < 0.01 * span


def test_the_noise_floor_is_measured_as_in_memory(tmp_path, rng):
    """A field of noise (the floor acts): every chunk read gives the in-memory values to the bit;
    every 2nd chunk the noise's sd within 2% (the chunks' edges have no response)."""
    noise = rng.normal(100.0, 5.0, (300, 260)).astype(np.float32)
    write_ome_zarr(tmp_path / "n.zarr", noise, chunks=(32, 32))
    chunked, floored = open_chunked(tmp_path / "n.zarr"), Normalization(noise_floor=10.0)
    full = floored.statistics(noise[None])
    assert full[1][0] > Normalization().statistics(noise[None])[1][0] + 10  # the floor acts: 10 sd, not 2.3
    exact = sample_statistics(chunked, 0, floored)
    assert np.array_equal(exact[0], full[0]) and np.array_equal(exact[1], full[1])
    sampled = sample_statistics(chunked, 0, floored, max_pixels=20_000)
    assert abs((sampled[1][0] - sampled[0][0]) / (full[1][0] - full[0][0]) - 1) < 0.02


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_in_ome_zarr_out_equals_the_tiff_path(tmp_path, model_path, image, version):
    write_ome_zarr(tmp_path / "img.zarr", image, version)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "img.zarr"), "--out", str(out),
                 "--precision", "fp32", "--block-size", str(BLOCK), "--tile-size", str(TILE)]) == 0
    result = out / "img.zarr"
    got = level0(result)
    assert got.shape == (1, 300, 260)
    assert np.abs(got - tiff_path_result(tmp_path, model_path, image)).max() < 1e-4
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(str(result)))())
    multiscales = next(n for n in nodes if n.load(Multiscales))
    assert [a["name"] for a in multiscales.metadata["axes"]] == ["c", "y", "x"]
    assert len(multiscales.data) >= 2 and multiscales.data[1].shape == (1, 150, 130)
    assert not part_store(result).exists() and not progress_folder(result).exists()


def test_compressed_tiled_tiff_is_read_in_chunks_and_matches(tmp_path, model_path, image):
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(64, 64), compression="zlib")
    chunked = open_chunked(tmp_path / "slide.tif")
    assert chunked.kind == "tiff" and chunked.chunk_yx == (64, 64)
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "slide.tif"), "--out",
                 str(tmp_path / "out"), "--format", "zarr", "--precision", "fp32", "--block-size", str(BLOCK), "--tile-size", str(TILE)]) == 0
    assert np.abs(level0(tmp_path / "out" / "slide.zarr") - tiff_path_result(tmp_path, model_path, image)).max() < 1e-4


def _single_process(tmp_path, model_path, source, name="single.zarr", **options):
    predictor = Predictor.load(model_path, PredictOptions(precision="fp32", tile_size=TILE, **options), "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Dask worker (one thread): oneDNN's sums depend on the threads
    try:
        block_run.predict_to_zarr(predictor, source, tmp_path / name, block_px=BLOCK, progress=False)
    finally:
        torch.set_num_threads(threads)
    return level0(tmp_path / name)


def test_dask_cluster_with_a_killed_worker_equals_one_process(tmp_path, model_path, image):
    write_ome_zarr(tmp_path / "img.zarr", image)
    expected = _single_process(tmp_path, model_path, tmp_path / "img.zarr")
    predictor = Predictor.load(model_path, PredictOptions(precision="fp32", tile_size=TILE), "cpu")
    target = tmp_path / "cluster.zarr"
    with block_run.cluster_client("local:2") as client:
        killer = threading.Thread(target=_kill_a_worker_after_the_first_block, args=(client, target))
        killer.start()
        block_run.predict_to_zarr(predictor, tmp_path / "img.zarr", target, client, block_px=BLOCK, progress=False)
        killer.join()
        assert killer.killed  # the run really lost a worker
    assert np.array_equal(level0(target), expected)


def _kill_a_worker_after_the_first_block(client, target):
    thread = threading.current_thread()
    thread.killed = False
    for _ in range(600):
        if progress_folder(target).exists() and len(os.listdir(progress_folder(target))) > 1:
            worker = sorted(client.scheduler_info()["workers"])[0]
            try:
                client.run(os._exit, 1, workers=[worker], wait=False)
            except Exception:  # the worker may be gone already
                pass
            thread.killed = True
            return
        time.sleep(0.05)


def test_interrupted_run_resumes_bit_identically(tmp_path, model_path, image, monkeypatch):
    write_ome_zarr(tmp_path / "img.zarr", image)
    expected = _single_process(tmp_path, model_path, tmp_path / "img.zarr")
    target = tmp_path / "out" / "img.zarr"
    written, real_write = [], ZarrOutput.write

    def write_then_die(self, block, values):
        if len(written) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C (or a kill) between two blocks
        real_write(self, block, values)
        written.append(block)

    monkeypatch.setattr(ZarrOutput, "write", write_then_die)
    args = ["predict", "--model", str(model_path), "--input", str(tmp_path / "img.zarr"), "--out",
            str(tmp_path / "out"), "--precision", "fp32", "--block-size", str(BLOCK), "--tile-size", str(TILE)]
    torch.set_num_threads(1)
    try:
        assert main(args) == 130
        assert not target.exists() and part_store(target).exists()
        assert main(args) == 2  # the unfinished output is not silently replaced
        monkeypatch.setattr(ZarrOutput, "write", real_write)
        assert main([*args, "--resume"]) == 0
    finally:
        torch.set_num_threads(2)
    assert np.array_equal(level0(target), expected)


def _bad_zarr_cases(tmp_path, image):
    no_meta = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w")
    no_meta.create_array("0", shape=(10, 10), dtype="uint8")
    five = zarr.open_array(str(tmp_path / "five.zarr"), mode="w", shape=(2, 2, 2, 10, 10), dtype="uint8")
    five[:] = 1
    good = write_ome_zarr(tmp_path / "good.zarr", image)
    swapped = write_ome_zarr(tmp_path / "swapped.zarr", image)
    meta_file = swapped / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"] = [{"name": "x", "type": "space"}, {"name": "y", "type": "space"}]
    meta_file.write_text(json.dumps(meta))
    return {
        "no multiscales": ([str(tmp_path / "nometa.zarr")], "multiscales"),
        "five axes": ([str(tmp_path / "five.zarr")], "5 dimensions"),
        "axes": ([str(swapped)], "axes"),
        "scheduler": ([str(good), "--cluster", "tcp://127.0.0.1:9"], "does not answer"),
        "cluster spec": ([str(good), "--cluster", "local:x"], "local:N"),
    }


@pytest.mark.parametrize("case", ["no multiscales", "five axes", "axes", "scheduler", "cluster spec"])
def test_bad_zarr_input_is_one_line_exit_2_nothing_written(tmp_path, model_path, image, capsys, case):
    source, message = _bad_zarr_cases(tmp_path, image)[case]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_path), "--input", *source, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_unwritable_output_folder_is_one_line(tmp_path, model_path, image, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    write_ome_zarr(tmp_path / "img.zarr", image)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "img.zarr"),
                 "--out", str(locked / "out")]) == 2
    assert "cannot create" in capsys.readouterr().err

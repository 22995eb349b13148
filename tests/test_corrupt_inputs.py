"""Damaged inputs: a chunk, tile or metadata file that cannot be decoded, a truncated file.

Each is one line on stderr naming the file and the damaged part, exit code 2; a run that
stopped at a damaged chunk resumes with ``--resume`` once the chunk is mended, to exactly
what a clean run writes. The runs whose stderr matters beyond our own print (Dask workers,
progress bars) run as a real process and are read as a terminal would show them.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")
pytest.importorskip("distributed")

from unetile import UserInputError
from unetile.slides.chunked import open_chunked, sample_statistics
from unetile.cli import main
from unetile.slides import block_run
from unetile.slides.zarr_output import ZarrOutput, part_store, progress_folder
from unetile.io import read_image, write_image
from unetile.normalization import Normalization

from .test_zarr import BLOCK, TILE, image, level0, model_path, write_ome_zarr  # noqa: F401 - fixtures (300 x 260 px: 5 x 5 chunks of 64 px)

SMALL_SAMPLE = 30_000  # px: every other chunk row and column (as on a large slide), so (3, 3) is not sampled
UNSAMPLED = (3, 3)  # rows and columns 192-255: the first block that reads it is the 5th of 9

# Run `unetile predict` with a smaller percentile sample (a large slide's), so that a damaged
# chunk is first read by a block, not by the sampling before the run.
DRIVER = """
import functools, sys
from unetile.slides.chunked import sample_statistics
from unetile.cli import main
from unetile.slides import block_run
if __name__ == "__main__":
    block_run.sample_statistics = functools.partial(sample_statistics, max_pixels=int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
"""


def chunk_file(store, coords):
    """The file of chunk ``coords`` of level 0 of the OME-Zarr ``store``, relative to it."""
    array = open_chunked(store).array
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"


def short_chunk(tmp_path, store):
    """A chunk that decodes with the store's own codecs, to 10 values instead of 64 x 64."""
    array = open_chunked(store).array
    fmt = array.metadata.zarr_format
    small = zarr.create_array(str(tmp_path / "short.zarr"), shape=(10,), chunks=(10,), dtype=array.dtype,
                              compressors=array.compressors, zarr_format=fmt)
    small[:] = 7
    return (tmp_path / "short.zarr" / ("c/0" if fmt == 3 else "0")).read_bytes()


def predict_args(model_path, source, out, *extra):
    return ["predict", "--model", str(model_path), "--input", str(source), "--out", str(out), "--precision", "fp32",
            "--block-size", str(BLOCK), "--tile-size", str(TILE), *extra]


def shown(stderr):
    """The lines a terminal shows of ``stderr``: a line's text after its last carriage return
    (a progress bar redrawn, or cleared), empty ones dropped."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n"))
    return [line for line in lines if line]


def run_unetile(tmp_path, argv):
    """`unetile` in its own process (one torch thread, as each Dask worker), small percentile sample."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(driver), str(SMALL_SAMPLE), *argv], capture_output=True, env=env,
                          timeout=300)
    return done.returncode, done.stderr.decode()  # as bytes: text mode would turn each "\r" into a new line


def block_grid_of(model_path):
    """The blocks of the 300 x 260 px image."""
    from unetile.slides.blocks import block_grid
    from unetile.inference.predictor import Predictor

    return block_grid(Predictor.load(model_path).model, 1, 300, 260, TILE, BLOCK).blocks()


def run_here(monkeypatch, argv):
    """`unetile` in this process, one torch thread, the same small percentile sample."""
    monkeypatch.setattr(block_run, "sample_statistics", functools.partial(sample_statistics, max_pixels=SMALL_SAMPLE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


# --- zarr chunks ----------------------------------------------------------------------------

@pytest.mark.parametrize("cluster", [None, "local:2"])
def test_damaged_chunk_in_a_block_is_one_line_and_resumes_bit_identically(tmp_path, model_path, image, monkeypatch,
                                                                          cluster):
    source = write_ome_zarr(tmp_path / "img.zarr", image)
    damaged = source / chunk_file(source, UNSAMPLED)
    good = damaged.read_bytes()
    damaged.write_bytes(b"not a zstd frame " * 20)
    target = tmp_path / "out" / "img.zarr"
    argv = predict_args(model_path, source, tmp_path / "out")
    code, stderr = run_unetile(tmp_path, argv + (["--cluster", cluster] if cluster else []))
    assert code == 2, stderr[-3000:]
    lines = shown(stderr)
    assert len(lines) == 1, lines
    assert "img.zarr" in lines[0] and chunk_file(source, UNSAMPLED) in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in stderr
    kept = [p.name for p in progress_folder(target).iterdir() if p.name[0].isdigit()]
    assert 0 < len(kept) < 9 and not target.exists()  # blocks before the damage were written and kept

    damaged.write_bytes(good)  # mended
    written, real_write = [], ZarrOutput.write
    monkeypatch.setattr(ZarrOutput, "write", lambda self, block, values: (written.append(block.name),
                                                                          real_write(self, block, values)))
    assert run_here(monkeypatch, [*argv, "--resume"]) == 0
    assert sorted(written + kept) == sorted(b.name for b in block_grid_of(model_path))  # resumed, not redone
    assert run_here(monkeypatch, predict_args(model_path, source, tmp_path / "clean")) == 0
    assert np.array_equal(level0(target), level0(tmp_path / "clean" / "img.zarr"))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("damage", ["garbage", "wrong size"])
def test_damaged_chunk_found_by_the_sampling_is_one_line_nothing_written(tmp_path, model_path, image, capsys,
                                                                         version, damage):
    source = write_ome_zarr(tmp_path / "img.zarr", image, version)
    damaged = source / chunk_file(source, (2, 1))
    damaged.write_bytes(b"\x00garbage" * 30 if damage == "garbage" else short_chunk(tmp_path, source))
    out = tmp_path / "out"
    assert main(predict_args(model_path, source, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"img.zarr: chunk {chunk_file(source, (2, 1))} at rows 128-191, columns 64-127 cannot be read" in err[0]
    assert not part_store(out / "img.zarr").exists() and not (out / "img.zarr").exists()


def _damage_metadata(store, case):
    """Damage one metadata file of the OME-Zarr ``store``; return the text the error must hold."""
    level = open_chunked(store).array.path
    v3 = (store / "zarr.json").exists()
    if case == "array metadata missing":
        (store / level / ("zarr.json" if v3 else ".zarray")).unlink()
        return f"{level}/{'zarr.json' if v3 else '.zarray'} is missing or damaged"
    if case == "array metadata garbled":
        (store / level / ("zarr.json" if v3 else ".zarray")).write_text("{ not json")
        return f"{level}/{'zarr.json' if v3 else '.zarray'} is missing or damaged"
    if case == "attributes garbled":
        (store / ("zarr.json" if v3 else ".zattrs")).write_text("{ not json")
        return "metadata"
    meta_file = store / ("zarr.json" if v3 else ".zattrs")  # "multiscales without axes": valid JSON, wrong shape
    meta = json.loads(meta_file.read_text())
    attrs = meta["attributes"]["ome"] if v3 else meta
    del attrs["multiscales"][0]["axes"]
    meta_file.write_text(json.dumps(meta))
    return "malformed OME-Zarr multiscales metadata"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("case", ["array metadata missing", "array metadata garbled", "attributes garbled",
                                  "multiscales without axes"])
def test_damaged_zarr_metadata_is_one_line(tmp_path, model_path, image, capsys, version, case):
    source = write_ome_zarr(tmp_path / "img.zarr", image, version)
    message = _damage_metadata(source, case)
    assert main(predict_args(model_path, source, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "img.zarr" in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


# --- TIFF tiles, truncated files ----------------------------------------------------------------

def _damage_tile(path, index):
    """Overwrite tile ``index`` of the first page's compressed bytes."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[index], tif.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


def test_damaged_tile_of_a_compressed_tiff_is_one_line(tmp_path, model_path, image, capsys):
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, image, tile=(64, 64), compression="zlib")
    _damage_tile(slide, 7)  # 5 tiles a row: the 2nd row's 3rd
    lazy = open_chunked(slide)  # the reader of chunked inputs, a tile at a time
    with pytest.raises(UserInputError) as caught:
        sample_statistics(lazy, 0, Normalization())
    assert str(caught.value).startswith(f"{slide}: chunk (1, 2) at rows 64-127, columns 128-191 cannot be read (")
    assert lazy.window(0, slice(0, 64), slice(0, 260)).shape == (1, 64, 260)  # the other tiles still read
    for extra in ([], ["--format", "zarr"]):
        assert main(predict_args(model_path, slide, tmp_path / "out", *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "slide.tif: cannot read the image (" in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _pil_stack(path, rng):
    """A 4-page TIFF as Pillow writes it (each page's directory after its data)."""
    pages = [Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)) for _ in range(4)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


@pytest.mark.parametrize("case", ["PNG", "TIFF stack", "Pillow TIFF stack"])
def test_truncated_file_is_one_line_without_reader_messages(tmp_path, model_path, rng, capsys, caplog, case):
    if case == "PNG":
        path, cut = tmp_path / "cut.png", 0.5
        write_image(path, (rng.random((64, 64)) * 255).astype(np.uint8))
    elif case == "TIFF stack":
        path, cut = tmp_path / "cut.tif", 1 / 3
        write_image(path, rng.random((4, 64, 64)).astype(np.float32), axes="QYX")
    else:  # cut after two whole pages: tifffile reads them and logs that the rest is missing
        path, cut = _pil_stack(tmp_path / "cut.tif", rng), 0.5
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UserInputError):  # never a shorter stack
        read_image(path)
    caplog.clear()
    assert main(predict_args(model_path, path, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unetile predict: error: {path}: "), err
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]  # not beside our line

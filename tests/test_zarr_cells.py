"""Cells of OME-Zarr outputs (--instances): one id per cell across block borders, NGFF labels."""

import json

import numpy as np
import pytest
zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")
pytest.importorskip("distributed")

from unetile import save_model
from unetile.cli import main
from unetile.slides import zarr_labels
from unetile.inference.instances import InstanceSettings
from unetile.io import read_image, write_image
from unetile.synthetic import disc_detector

from .test_zarr import BLOCK, TILE, write_ome_zarr

BORDER = 108  # the blocks' edges: BLOCK rounded to whole tile strides (36 px at TILE)
# Discs of radius 14 (centre y, x): four sit on a block border or corner; the last two face each
# other across a border, one px apart (they must stay two cells).
DISCS = [(BORDER, 60), (BORDER, 200), (2 * BORDER, BORDER), (50, BORDER), (240, 220), (30, 30), (270, 40),
         (150, BORDER - 14), (150, BORDER + 14)]


@pytest.fixture
def blob_model(tmp_path):
    path = tmp_path / "blobs.pt"
    save_model(disc_detector(width=4, depth=2), path, threshold=0.5)
    return path


@pytest.fixture
def discs(rng):
    """300 x 260 uint16: the discs of DISCS at 50000 on 5000, with noise."""
    y, x = np.mgrid[:300, :260]
    image = np.full((300, 260), 5000.0)
    for cy, cx in DISCS:
        image[(y - cy) ** 2 + (x - cx) ** 2 < 14**2] = 50000
    return (image + rng.normal(0, 1500, image.shape)).clip(0, 65535).astype(np.uint16)


def same_up_to_numbering(a, b):
    """Each label of ``a`` is exactly one label of ``b`` and back (0 with 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])) and (0, 0) in map(tuple, pairs.T)


def predict(model, source, out, *extra):
    return main(["predict", "--model", str(model), "--input", str(source), "--out", str(out), "--precision", "fp32",
                 "--block-size", str(BLOCK), "--tile-size", str(TILE), "--instances", *extra])


def test_a_cell_cut_by_block_borders_is_one_cell_as_in_memory(tmp_path, blob_model, discs):
    write_ome_zarr(tmp_path / "img.zarr", discs)
    assert predict(blob_model, tmp_path / "img.zarr", tmp_path / "out") == 0
    store = zarr.open_group(str(tmp_path / "out" / "img.zarr"), mode="r")
    cells = store["labels"]["cells"]["0"][:][0]
    assert cells.dtype == np.uint32 and cells.max() == len(DISCS)
    for cy, cx in DISCS:
        disc = cells[cy - 9 : cy + 10, cx - 9 : cx + 10]
        assert np.unique(disc).size == 1 and disc[0, 0] > 0  # one id, also where a border cuts it
    # The same as one pass over the whole map, and as the TIFF path on the same image.
    assert same_up_to_numbering(cells, InstanceSettings().labels(store["0"][:], 0.5))
    write_image(tmp_path / "img.tif", discs)
    assert predict(blob_model, tmp_path / "img.tif", tmp_path / "tif") == 0
    assert same_up_to_numbering(cells, read_image(tmp_path / "tif" / "img.tif")[0].squeeze())


def test_labels_open_as_labels_of_their_image(tmp_path, blob_model, discs):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    write_ome_zarr(tmp_path / "img.zarr", discs, version="0.4")
    assert predict(blob_model, tmp_path / "img.zarr", tmp_path / "out") == 0
    nodes = list(Reader(parse_url(str(tmp_path / "out" / "img.zarr" / "labels" / "cells")))())
    label = next(n for n in nodes if n.load(Label))
    assert label.load(Multiscales) and label.data[0].shape == (1, 300, 260) and len(label.data) >= 2
    image_label = label.zarr.root_attrs["image-label"]
    assert image_label["source"] == {"image": "../../"}
    assert image_label["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}
    assert len(image_label["colors"]) == len(DISCS) + 1
    parent = next(n for n in Reader(parse_url(str(tmp_path / "out" / "img.zarr")))() if n.load(Multiscales))
    assert parent.data[0].shape == (1, 300, 260)  # the source link leads to the probability map


def test_into_input_on_a_cluster_never_replaces_a_label_image(tmp_path, blob_model, discs, capsys):
    source = write_ome_zarr(tmp_path / "img.zarr", discs)
    assert predict(blob_model, source, tmp_path / "a", "--into-input", "--cluster", "local:2") == 0
    label_image = zarr.open_group(str(source), mode="r")["labels"]["cells"]
    cells = label_image["0"][:]  # the input's own axes (y, x): no channel axis added
    axes = label_image.attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["y", "x"] and cells.shape == (300, 260)
    expected = InstanceSettings().labels(zarr.open_group(str(tmp_path / "a" / "img.zarr"), mode="r")["0"][:], 0.5)
    assert same_up_to_numbering(cells, expected)
    assert json.loads((source / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"] == ["cells"]
    assert sorted(p.name for p in (source / "labels").iterdir()) == ["cells", "zarr.json"]
    assert not (tmp_path / "a" / "img.zarr" / "labels").exists()

    capsys.readouterr()
    assert predict(blob_model, source, tmp_path / "b", "--into-input") == 2  # a second run: never replaced
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a label image 'cells'" in err[0]
    assert not (tmp_path / "b").exists()
    assert predict(blob_model, source, tmp_path / "b", "--into-input", "--label-name", "cells-2") == 0
    labels_list = json.loads((source / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"]
    assert labels_list == ["cells", "cells-2"]


def test_cells_resume_after_an_interrupt(tmp_path, blob_model, discs, monkeypatch):
    write_ome_zarr(tmp_path / "img.zarr", discs)
    assert predict(blob_model, tmp_path / "img.zarr", tmp_path / "once") == 0
    labelled, real_label = [], zarr_labels.label_block

    def label_then_die(block, job):
        if len(labelled) == 4:
            raise KeyboardInterrupt  # as a Ctrl-C (or a kill) in the middle of the cells
        labelled.append(block)
        return real_label(block, job)

    monkeypatch.setattr("unetile.slides.block_run.label_block", label_then_die)
    assert predict(blob_model, tmp_path / "img.zarr", tmp_path / "twice") == 130
    assert not (tmp_path / "twice" / "img.zarr").exists()
    monkeypatch.setattr("unetile.slides.block_run.label_block", real_label)
    assert predict(blob_model, tmp_path / "img.zarr", tmp_path / "twice", "--resume") == 0
    once = zarr.open_group(str(tmp_path / "once" / "img.zarr"), mode="r")["labels"]["cells"]["0"][:]
    twice = zarr.open_group(str(tmp_path / "twice" / "img.zarr"), mode="r")["labels"]["cells"]["0"][:]
    assert np.array_equal(once, twice)


def test_into_input_resumes_after_an_interrupt_while_finishing(tmp_path, blob_model, discs, monkeypatch):
    """Killed after the labels went into the input but before the map was finished: --resume
    finishes without refusing its own label image, and lists it once."""
    from unetile.slides.zarr_output import ZarrOutput

    source = write_ome_zarr(tmp_path / "img.zarr", discs)
    real_finish = ZarrOutput.finish

    def die(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ZarrOutput, "finish", die)
    assert predict(blob_model, source, tmp_path / "out", "--into-input") == 130
    assert (source / "labels" / "cells").exists() and not (tmp_path / "out" / "img.zarr").exists()
    assert predict(blob_model, source, tmp_path / "out", "--into-input") == 2  # not silently redone
    monkeypatch.setattr(ZarrOutput, "finish", real_finish)
    assert predict(blob_model, source, tmp_path / "out", "--into-input", "--resume") == 0
    assert json.loads((source / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"] == ["cells"]
    assert (tmp_path / "out" / "img.zarr" / "0").exists()


@pytest.mark.parametrize("extra, message", [
    (["--instances", "--into-input"], "not one"),  # a TIFF input has no labels/ group
    (["--label-name", "x"], "add --instances"),
    (["--instances", "--format", "zarr", "--label-name", ".hidden"], "--label-name"),
])
def test_bad_label_options_are_one_line(tmp_path, blob_model, discs, capsys, extra, message):
    write_image(tmp_path / "img.tif", discs)
    args = ["predict", "--model", str(blob_model), "--input", str(tmp_path / "img.tif"), "--out", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def blockwise_cells(tmp_path, prob, margin, sizes=(64, 64), voxel_size=None):
    """The three passes of zarr_labels over ``prob`` (1, H, W) or a volume's (1, Z, Y, X) in blocks
    of ``sizes`` -> (cells, count)."""
    from unetile.slides.blocks import BlockGrid

    work = tmp_path / f"margin-{margin}"
    zarr.create_array(str(work / "prob"), shape=prob.shape, chunks=(1, *sizes), dtype=np.float32)[:] = prob
    grid = BlockGrid((None,) * len(sizes), tuple(sizes), 1, prob.shape[1:])
    axes = "c" + "zyx"[-len(sizes):]
    job = zarr_labels.CellJob(work / "prob", work / "cells", work / "work", axes, axes, grid, InstanceSettings(), 0.5,
                              margin=margin, voxel_size=voxel_size)
    zarr_labels.create_labels(job, prob.shape, "0.5", resume=False)
    for block in grid.blocks():
        zarr_labels.label_block(block, job)
    luts, count = zarr_labels.merge_blocks(job)
    for block, lut in zip(grid.blocks(), luts):
        zarr_labels.relabel_block(block, lut, job)
    return zarr.open_array(str(job.labels / "0"), mode="r")[:][0], count


def test_blockwise_cells_equal_one_pass_given_a_margin(tmp_path, rng):
    """60 cones of radius 16 (cells of radius 8), many touching, that the watershed splits:
    with a margin wider than a cell the three passes give what one pass over the whole map
    gives (up to the numbering); without one they do not (seeds and floods cut at borders)."""
    y, x = np.mgrid[:400, :400]
    prob = np.zeros((400, 400))
    for cy, cx in rng.uniform(12, 388, size=(60, 2)):
        prob = np.maximum(prob, np.clip(1 - np.hypot(y - cy, x - cx) / 16, 0, 1))
    prob = np.clip(prob + rng.normal(0, 0.02, prob.shape), 0, 1).astype(np.float32)[None]
    expected = InstanceSettings().labels(prob, 0.5)
    cells, count = blockwise_cells(tmp_path, prob, margin=40)
    assert count == expected.max() > 50 and same_up_to_numbering(cells, expected)
    assert np.unique(cells).size == count + 1  # numbered 1..K, no gaps
    assert not same_up_to_numbering(blockwise_cells(tmp_path, prob, margin=0)[0], expected)


def test_a_flows_model_writes_its_maps_and_cells_into_ome_zarr(tmp_path, discs):
    """--cell-target flows through the block path: the map holds the cell probability and the flows,
    the cells are cut from them block by block (as `InstanceSettings.labels` cuts the whole map)."""
    import torch

    from unetile import UNet, UNetConfig, init_he

    torch.manual_seed(0)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, padding="same", out_channels=3, flows=True))).eval()
    save_model(net, tmp_path / "flows.pt", cell_target="flows", threshold=0.5)
    write_ome_zarr(tmp_path / "img.zarr", discs)
    assert predict(tmp_path / "flows.pt", tmp_path / "img.zarr", tmp_path / "out") == 0
    store = zarr.open_group(str(tmp_path / "out" / "img.zarr"), mode="r")
    maps, cells = store["0"][:], store["labels"]["cells"]["0"][:][0]
    assert maps.shape == (3, 300, 260) and cells.shape == (300, 260) and cells.dtype == np.uint32
    whole = InstanceSettings(seeds="flows").labels(maps, 0.5)
    assert (cells > 0).sum() == (whole > 0).sum() and cells.max() == whole.max()

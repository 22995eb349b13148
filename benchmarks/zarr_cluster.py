"""A gigapixel OME-Zarr through `unetile predict` block by block: 1 and 2 Dask workers, and an
external scheduler with 2 workers; wall time, each worker's peak memory, chunks written.

    .venv/bin/python benchmarks/zarr_cluster.py [--side 32768] [--out runs/zarr_cluster]
    .venv/bin/python benchmarks/zarr_cluster.py --cells --side 8192 --runs local:1,local:2

With ``--cells`` the image is bright discs (radius 6-11 px on a jittered 24-px grid, some
touching) and the model `unetile.synthetic.disc_detector` (width 8, a net that finds them
without training), predicted with ``--instances``: the time then includes the three
passes that cut the cells and give each one id across blocks, and the cells found are
counted against the discs drawn.

The image (``--side`` px square, uint8, zstd-compressed OME-Zarr 0.5 in 1024-px chunks) is
smooth blobs with noise, made once chunk by chunk; the model is a He-initialised width-8
net (the speed is what is measured, not the segmentation). Each run writes a new OME-Zarr
(uint8 masks, ``--threshold 0.5``) with the tool's defaults otherwise (bf16 where the CPU
has it, 2048-px blocks). One run at a time; nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from unetile import UNet, init_he, save_model
from unetile.slides import block_run
from unetile.inference.predictor import PredictOptions, Predictor
from unetile.synthetic import disc_detector


def new_image(path: Path, side: int, chunk: int):
    """Level 0 of a new OME-Zarr 0.5 (uint8, ``chunk``-px chunks), to fill."""
    return zarr.open_group(str(path), mode="w", zarr_format=3).create_array(
        "0", shape=(side, side), chunks=(chunk, chunk), dtype="uint8")


def finish_image(path: Path) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="r+")
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [{"type": "scale",
                               "scale": [1.0, 1.0]}]}], fmt=FormatV05(), axes=["y", "x"])


def make_image(path: Path, side: int, chunk: int = 1024) -> int:
    """An OME-Zarr 0.5 image of side x side uint8 px, written chunk row by chunk row."""
    array = new_image(path, side, chunk)
    rng = np.random.default_rng(0)
    x = np.arange(side, dtype=np.float32)
    for top in range(0, side, chunk):
        y = np.arange(top, min(top + chunk, side), dtype=np.float32)[:, None]
        blobs = 100 + 60 * np.sin(y / 37.0) * np.cos(x[None, :] / 53.0)
        array[top : top + len(y)] = (blobs + rng.normal(0, 12, blobs.shape)).clip(0, 255).astype(np.uint8)
    finish_image(path)
    return 0


def make_discs(path: Path, side: int, chunk: int = 1024, spacing: int = 24) -> int:
    """An OME-Zarr 0.5 of bright discs on a dark ground (uint8), chunk row by chunk row; the
    number of discs drawn."""
    array = new_image(path, side, chunk)
    rng = np.random.default_rng(0)
    grid = np.arange(spacing // 2, side, spacing, dtype=np.float32)
    centres = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    centres += rng.uniform(-4, 4, centres.shape)
    radii = rng.uniform(6, 11, len(centres))
    x = np.arange(side, dtype=np.float32)
    for top in range(0, side, chunk):
        y = np.arange(top, min(top + chunk, side), dtype=np.float32)
        inside = np.zeros((len(y), side), bool)
        near = np.abs(centres[:, 0] - (top + chunk / 2)) < chunk / 2 + 14
        for (cy, cx), r in zip(centres[near], radii[near]):
            ys = slice(max(0, int(cy - r) - top), max(0, int(cy + r) + 2 - top))
            xs = slice(max(0, int(cx - r)), int(cx + r) + 2)
            inside[ys, xs] |= (y[ys, None] - cy) ** 2 + (x[None, xs] - cx) ** 2 < r * r
        array[top : top + len(y)] = np.where(inside, 200, 30) + rng.integers(0, 20, inside.shape, dtype=np.uint8)
    finish_image(path)
    return len(centres)


def worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_run(predictor: Predictor, image: Path, target: Path, client) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    block_run.predict_to_zarr(predictor, image, target, client)
    seconds = time.perf_counter() - t0
    peaks = list(client.run(worker_peak_mb).values())
    chunks = sum(1 for p in (target / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    result = {"seconds": round(seconds, 1), "worker_peak_mb": [round(p) for p in peaks], "chunks_level0": chunks}
    if (target / "labels").exists():
        labels = zarr.open_group(str(target / "labels" / "cells"), mode="r")["0"]
        result["cells"] = int(max(labels[:, top : top + 2048].max() for top in range(0, labels.shape[1], 2048)))
    return result


def external_cluster(workers: int):
    """`dask scheduler` and ``workers`` `dask worker` processes, as a user starts them."""
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen([*dask, "--port", "8786", "--no-dashboard"], stderr=subprocess.DEVNULL)
    time.sleep(3)
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "tcp://127.0.0.1:8786", "--nthreads", "1",
              "--no-dashboard", "--memory-limit", "0"]
    procs = [subprocess.Popen(worker, stderr=subprocess.DEVNULL) for _ in range(workers)]
    return scheduler, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=32768)
    parser.add_argument("--out", default="runs/zarr_cluster")
    parser.add_argument("--runs", default="local:1,local:2,external:2")
    parser.add_argument("--cells", action="store_true", help="discs, a disc detector and --instances")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = out / f"{'discs' if args.cells else 'image'}{args.side}.zarr"
    if not image.exists():
        t0 = time.perf_counter()
        drawn = make_discs(image, args.side) if args.cells else make_image(image, args.side)
        print(f"made {image} in {time.perf_counter() - t0:.0f} s ({drawn} discs)", flush=True)
    torch.manual_seed(0)
    if args.cells:
        save_model(disc_detector(width=8, depth=4), out / "discs8.pt")
        predictor = Predictor.load(out / "discs8.pt", PredictOptions(instances="watershed"), "cpu")
    else:
        save_model(init_he(UNet(width=8)).eval(), out / "width8.pt")
        predictor = Predictor.load(out / "width8.pt", PredictOptions(threshold=0.5), "cpu")
    results = {}
    for run in args.runs.split(","):
        kind, count = run.split(":")
        if kind == "local":
            with block_run.cluster_client(f"local:{count}") as client:
                results[run] = timed_run(predictor, image, out / f"pred-{kind}{count}.zarr", client)
        else:
            scheduler, workers = external_cluster(int(count))
            try:
                with block_run.cluster_client("tcp://127.0.0.1:8786") as client:
                    client.wait_for_workers(int(count), timeout=60)
                    results[run] = timed_run(predictor, image, out / f"pred-{kind}{count}.zarr", client)
            finally:
                for p in [*workers, scheduler]:
                    p.terminate()
        print(run, results[run], flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    first_run = args.runs.split(",")[0].replace(":", "")
    for array in ("0", "labels/cells/0") if args.cells else ("0",):
        first = zarr.open_group(str(out / f"pred-{first_run}.zarr"))[array][:, :4096, :4096]
        for run in results:
            b = zarr.open_group(str(out / f"pred-{run.replace(':', '')}.zarr"))[array][:, :4096, :4096]
            print(f"{run}: {array}, first 4096x4096 identical to {first_run}: {np.array_equal(first, b)}")
    if args.cells and args.side <= 8192:
        print(f"cells equal one pass over the whole map: {cells_as_in_memory(out / f'pred-{first_run}.zarr')}")


def cells_as_in_memory(prediction: Path) -> bool:
    """The labels written block by block against `InstanceSettings.labels` of the whole map,
    up to the numbering (each id pairs with exactly one id of the other)."""
    from unetile.inference.instances import InstanceSettings

    group = zarr.open_group(str(prediction), mode="r")
    t0 = time.perf_counter()
    expected = InstanceSettings().labels(group["0"][:], 0.5)
    print(f"one pass over the whole map: {time.perf_counter() - t0:.0f} s, peak {worker_peak_mb():.0f} MB")
    cells = group["labels/cells/0"][0]
    pairs = np.unique(cells.astype(np.uint64) << np.uint64(32) | expected.astype(np.uint64))
    return len(pairs) == len(np.unique(pairs >> np.uint64(32))) == len(np.unique(pairs & np.uint64(2**32 - 1)))


if __name__ == "__main__":
    main()

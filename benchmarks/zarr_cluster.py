"""A gigapixel OME-Zarr through `unet predict` block by block: 1 and 2 Dask workers, and an
external scheduler with 2 workers; wall time, each worker's peak memory, chunks written.

    .venv/bin/python benchmarks/zarr_cluster.py [--side 32768] [--out runs/zarr_cluster]

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

from unet import UNet, init_he, save_model
from unet.inference import block_run
from unet.inference.predictor import PredictOptions, Predictor


def make_image(path: Path, side: int, chunk: int = 1024) -> None:
    """An OME-Zarr 0.5 image of side x side uint8 px, written chunk row by chunk row."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array("0", shape=(side, side), chunks=(chunk, chunk), dtype="uint8")
    rng = np.random.default_rng(0)
    x = np.arange(side, dtype=np.float32)
    for top in range(0, side, chunk):
        y = np.arange(top, min(top + chunk, side), dtype=np.float32)[:, None]
        blobs = 100 + 60 * np.sin(y / 37.0) * np.cos(x[None, :] / 53.0)
        array[top : top + len(y)] = (blobs + rng.normal(0, 12, blobs.shape)).clip(0, 255).astype(np.uint8)
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [{"type": "scale",
                               "scale": [1.0, 1.0]}]}], fmt=FormatV05(), axes=["y", "x"])


def worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_run(predictor: Predictor, image: Path, target: Path, client) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    block_run.predict_to_zarr(predictor, image, target, client)
    seconds = time.perf_counter() - t0
    peaks = list(client.run(worker_peak_mb).values())
    chunks = sum(1 for p in (target / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    return {"seconds": round(seconds, 1), "worker_peak_mb": [round(p) for p in peaks], "chunks_level0": chunks}


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
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = out / f"image{args.side}.zarr"
    if not image.exists():
        t0 = time.perf_counter()
        make_image(image, args.side)
        print(f"made {image} in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.manual_seed(0)
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
    first = zarr.open_group(str(out / "pred-local1.zarr"))["0"][:, :4096, :4096]
    for run in results:
        kind, count = run.split(":")
        b = zarr.open_group(str(out / f"pred-{kind}{count}.zarr"))["0"][:, :4096, :4096]
        print(f"{run}: first 4096x4096 identical to local:1: {np.array_equal(first, b)}")


if __name__ == "__main__":
    main()

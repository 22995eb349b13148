"""Volumes larger than memory through the OME-Zarr block path: a 3D net predicts synthetic
OME-Zarr volumes of growing size block by block on a local Dask cluster; wall time, each
worker's peak memory (RSS) and the client's, which must not grow with the volume.

    .venv/bin/python benchmarks/zarr_volume.py [--shapes 64x1024x1024,128x2048x2048] [--workers 2] \
        [--device cpu|cuda] [--makers 1]

Each volume (uint8, zstd-compressed OME-Zarr 0.5 in 16 x 256 x 256 chunks, voxel size
(1.0, 0.5, 0.5) um) is smooth waves with noise, made by ``--makers`` child processes slab by slab
(so its memory is not the client's; each slab's noise seeded by its position); the model is a
He-initialised width-4 3D net of depth 2 with the
anisotropic plan of that voxel size (the speed and memory of the block path are measured, not
the segmentation). Each run writes uint8 masks (``--threshold 0.5``) with the tool's defaults
otherwise: a volume's blocks hold as many voxels as a 2048-px image block (161 a side, rounded
to tile strides), tiles by `layout.default_tile_shape`, the batch from the CPU's 1.5 GB budget.
Worker peaks come from ``ru_maxrss`` in each worker process (a fresh cluster per volume); the
client's is its own ``ru_maxrss`` (percentiles, the pyramid). While a run goes, the workers' peaks
are sampled every 10 s into OUT/peaks-SHAPE.jsonl, so a run stopped early still shows how its
memory grew. ``--device cuda``: the workers predict on the GPU (their host memory is measured;
several workers share one GPU). One run at a time.

What to expect: a worker holds one block (its read window, the uint8 output box) and one batch
of tiles (at most `layout.VOLUME_TILE_BYTES` of estimated activations), so its peak grows with
the volume only while a whole z fits in one block and one tile, and is flat beyond. Measured
alone on 2 cores (2 workers, fp32; docs/results.md, fourteenth session): 2.3 GB a worker at
256x512x512 and 256x1024x1024 (256^3 blocks), 3.1 GB at 512x2048x2048 (256x296x296 blocks: the
tile rule picks per volume the tile that computes least under the cap), 3.3-4.5 Mvoxel/s; the
client 0.47-0.67 GB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from unetile import UNet, init_he, save_model
from unetile.inference.predictor import PredictOptions, Predictor
from unetile.nn.geometry import anisotropic_plan
from unetile.nn.model import UNetConfig
from unetile.slides import block_run

VOXEL = (1.0, 0.5, 0.5)  # um: z twice the in-plane spacing, as many confocal stacks
CHUNKS = (16, 256, 256)


def make_volume(path: Path, shape: tuple[int, int, int], makers: int) -> None:
    """An OME-Zarr 0.5 volume (uint8) of ``shape``: ``makers`` child processes write its chunk
    slabs (16 planes each) side by side."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=shape, chunks=CHUNKS, dtype="uint8")
    fronts = list(range(0, shape[0], CHUNKS[0]))
    children = [multiprocessing.get_context("spawn").Process(target=write_slabs, args=(path, fronts[k::makers]))
                for k in range(makers)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": list(VOXEL)}]}], fmt=FormatV05(), axes=[
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"])


def write_slabs(path: Path, fronts: list[int]) -> None:
    """Smooth waves with noise into the slabs of 16 planes that start at ``fronts`` (256 rows at a time)."""
    array = zarr.open_group(str(path), mode="r+")["0"]
    shape = array.shape
    x = np.arange(shape[2], dtype=np.float32)
    for front in fronts:
        rng = np.random.default_rng(front)
        z = np.arange(front, min(front + CHUNKS[0], shape[0]), dtype=np.float32)[:, None, None]
        for top in range(0, shape[1], CHUNKS[1]):
            y = np.arange(top, min(top + CHUNKS[1], shape[1]), dtype=np.float32)[None, :, None]
            waves = 100 + 60 * np.sin(z / 9.0) * np.sin(y / 37.0) * np.cos(x[None, None, :] / 53.0)
            noisy = waves + rng.normal(0, 12, waves.shape).astype(np.float32)
            array[front : front + len(z), top : top + y.shape[1]] = noisy.clip(0, 255).astype(np.uint8)


def peak_mb() -> float:
    """This process's peak resident memory (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_peaks(client, log: Path, done: threading.Event, every: float = 10.0) -> None:
    """Append {"seconds", "worker_peak_mb"} to ``log`` every ``every`` seconds until ``done``."""
    t0 = time.perf_counter()
    while not done.wait(every):
        peaks = sorted(round(p) for p in client.run(peak_mb).values())
        with log.open("a") as f:
            f.write(json.dumps({"seconds": round(time.perf_counter() - t0), "worker_peak_mb": peaks}) + "\n")


def run(predictor: Predictor, image: Path, target: Path, workers: int, device: str | None, log: Path) -> dict:
    """One prediction on a fresh local cluster (fresh workers: their peaks are this run's)."""
    shutil.rmtree(target, ignore_errors=True)
    log.unlink(missing_ok=True)
    with block_run.cluster_client(f"local:{workers}") as client:
        done = threading.Event()
        sampler = threading.Thread(target=sample_peaks, args=(client, log, done), daemon=True)
        t0 = time.perf_counter()
        sampler.start()
        block_run.predict_to_zarr(predictor, image, target, client, progress=False, worker_device=device)
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        peaks = sorted(client.run(peak_mb).values())
    group = zarr.open_group(str(target), mode="r")
    blocks = int(np.prod([-(-s // c) for s, c in zip(group["0"].shape, group["0"].chunks)]))
    return {"seconds": round(seconds, 1), "worker_peak_mb": [round(p) for p in peaks],
            "chunks": [int(c) for c in group["0"].chunks], "blocks": blocks, "levels": len(list(group.arrays()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="64x1024x1024,128x2048x2048", help="volumes ZxYxX, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the workers' device: cpu or cuda (default: cpu)")
    parser.add_argument("--makers", type=int, default=1, help="processes that write a new volume (default: 1)")
    parser.add_argument("--out", default="runs/zarr_volume")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    kernels, pools = anisotropic_plan(VOXEL, depth=2)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, spatial_dims=3, kernels=kernels, pools=pools))).eval()
    save_model(net, out / "width4_3d.pt", voxel_size=list(VOXEL))
    predictor = Predictor.load(out / "width4_3d.pt", PredictOptions(threshold=0.5), "cpu")
    results = {}
    for text in args.shapes.split(","):
        shape = tuple(int(s) for s in text.split("x"))
        image = out / f"volume{text}.zarr"
        if not image.exists():
            t0 = time.perf_counter()
            make_volume(image, shape, args.makers)
            print(f"made {image} in {time.perf_counter() - t0:.0f} s", flush=True)
        result = run(predictor, image, out / f"pred{text}.zarr", args.workers, args.device, out / f"peaks-{text}.jsonl")
        voxels = int(np.prod(shape))
        result.update(device=args.device, mvoxels=round(voxels / 1e6, 1),
                      mvoxel_per_s=round(voxels / 1e6 / result["seconds"], 2),
                      client_peak_mb=round(peak_mb()))
        results[text] = result
        print(text, result, flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| volume (z x y x x) | Mvoxel | wall s | Mvoxel/s | worker peak RSS MB ({args.workers} workers) "
          "| client peak MB | blocks (chunk) |")
    print("|---|---|---|---|---|---|---|")
    for text, r in results.items():
        peaks, chunk = ", ".join(map(str, r["worker_peak_mb"])), "x".join(map(str, r["chunks"][-3:]))
        print(f"| {text} | {r['mvoxels']} | {r['seconds']} | {r['mvoxel_per_s']} | {peaks} | {r['client_peak_mb']} "
              f"| {r['blocks']} ({chunk}) |")


if __name__ == "__main__":
    main()

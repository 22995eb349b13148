"""3D U-Net against a 2D U-Net applied plane by plane, on the same volumes, split and clock.

    .venv/bin/python benchmarks/volumes_vs_planes.py --data ../shared/data/plantseg3d/nuclei_blobs \
        --minutes 15 --seeds 0,1,2 --out runs/volumes_vs_planes

For each seed, two runs train side by side for the same wall-clock limit (``--time-limit``), so
they share whatever the machine gives them; each run's CPU time (its processes and DataLoader
workers, from ``os.wait4``) is recorded and printed, the honest clock where cores are shared:

- ``3d``: ``unetile train --dims 3`` on the training volumes (one item per volume, anisotropic
  plan, physical weight map and elastic deformation), ``unetile predict --instances``: 3D cells;
- ``2d``: ``unetile train --dims 2`` on the planes of the same volumes, ``unetile predict`` of
  the validation volume plane by plane; its cells two ways: ``2d planes`` (``--instances``, cells
  cut in each plane: a 3D object becomes one cell per plane) and ``2d map + tuned 3D cells`` (the
  planes' probability maps stacked and cut by the same 3D watershed as the 3D model's, with the
  volume's voxel size, its settings chosen on the validation volumes as `unetile train` chooses
  the 3D model's (`volume_cells.py`): the strongest plane-by-plane baseline).

Every prediction is scored with ``unetile evaluate --dims 3`` on the validation labels (3D
objects: AP@0.5, AP@0.75, mean AP, VOI split / merge); a table with mean and spread is printed
and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from cpu_clock import wait_cpu
from volume_cells import UNETILE, score, summary_table, write_cells

ROWS = ["3d", "2d planes", "2d map + tuned 3D cells"]


def start_training(data: Path, out: Path, dims: int, minutes: float, seed: int,
                   options: list[str] | None = None) -> subprocess.Popen:
    """`unetile train` on DATA/train, validated on DATA/val, in the background (one compute thread),
    with ``options`` added; its log is OUT.log."""
    args = [*UNETILE, "train", "--data", str(data / "train"), "--val", str(data / "val"), "--dims", str(dims),
            "--time-limit", f"{minutes}m", "--seed", str(seed), "--out", str(out), "--overwrite", *(options or [])]
    log = open(out.with_suffix(".log"), "w")
    # One compute thread each: the two runs share two cores, and idle OpenMP threads spinning on an
    # oversubscribed core would count as CPU time that trained nothing.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def run(*args: str) -> None:
    subprocess.run([*UNETILE, *args], check=True)


def stacked_planes(maps: Path) -> dict[str, np.ndarray]:
    """The 2D model's calibrated maps of each volume's planes, stacked -> {name: (Z, Y, X) probabilities}."""
    from unetile.io import read_image

    return {path.name: read_image(path)[:, 0] for path in sorted(maps.glob("*.tif"))}


def one_seed(data: Path, out: Path, minutes: float, seed: int) -> dict:
    runs = {dims: out / f"seed{seed}_{dims}d" for dims in (3, 2)}
    started = time.time()
    trainings = {dims: start_training(data, folder, dims, minutes, seed) for dims, folder in runs.items()}
    cpu = {dims: wait_cpu(p) for dims, p in trainings.items()}
    wall = time.time() - started
    val_images, val_labels = data / "val" / "images", data / "val" / "labels"
    preds = {name: out / f"seed{seed}_pred_{name.replace(' ', '_').replace('+', '')}" for name in ROWS}
    run("predict", "--model", str(runs[3] / "best.pt"), "--input", str(val_images), "--out", str(preds["3d"]),
        "--instances", "--overwrite")
    run("predict", "--model", str(runs[2] / "best.pt"), "--input", str(val_images), "--out",
        str(preds["2d planes"]), "--instances", "--overwrite")
    maps = out / f"seed{seed}_maps_2d"
    run("predict", "--model", str(runs[2] / "best.pt"), "--input", str(val_images), "--out", str(maps),
        "--format", "tif", "--overwrite")
    write_cells(stacked_planes(maps), val_images, val_labels, preds["2d map + tuned 3D cells"], "tuned")
    scores = {name: score(preds[name], val_labels, out / f"seed{seed}_{name.replace(' ', '_')}.json")
              for name in ROWS}
    for name in ROWS:
        scores[name]["cpu_minutes"] = cpu[3 if name == "3d" else 2] / 60
    return {"seed": seed, "wall_minutes": wall / 60, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with train/ and val/ (images/, labels/ volumes)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training limit per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/volumes_vs_planes")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results.append(one_seed(Path(args.data), out, args.minutes, seed))
        print(json.dumps(results[-1]), flush=True)
        (out / "summary.json").write_text(json.dumps({"minutes": args.minutes, "results": results}, indent=1))
    print(f"\n{args.data}, {args.minutes} wall-minutes per run, two runs side by side, "
          f"seeds {args.seeds}; mean ± std over seeds\n")
    print(summary_table(results, ROWS))


if __name__ == "__main__":
    main()

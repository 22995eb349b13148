"""MONAI's 3D UNet beside ours on the same volumes, split and clock (MONAI in a venv of its own).

    .venv/bin/python benchmarks/monai_volumes.py --data runs/split_a --minutes 15 --seeds 0,1,2 \
        --out runs/monai_volumes [--venv runs/venvs/monai]

Creates the venv when missing (``torch==2.13.0 monai tifffile``; MONAI is never our dependency)
and runs `monai_volume_peer.py` in it: MONAI's tutorial recipe (its UNet with residual units,
DiceCE, Adam, pos/neg patches, ``sliding_window_inference``) trained from scratch for
``--minutes`` of wall clock per seed, one compute thread each, two seeds at a time on two cores
(as `volumes_vs_planes.py` runs ours). Each run's CPU time comes from ``os.wait4``.

Its foreground maps of the validation volumes are then cut into cells two ways
(`volume_cells.py`): connected components, and our 3D seeded watershed tuned on the same
validation volumes, as `unetile train` tunes it for a 3D model; scored with
``unetile evaluate --dims 3``. A table with mean ± std over seeds is printed and written to
OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import tifffile

from cpu_clock import wait_cpu
from peer_venv import ensure_venv
from volume_cells import score, summary_table, write_cells

ROWS = ["MONAI UNet + components", "MONAI UNet + tuned 3D cells"]
PEER = Path(__file__).with_name("monai_volume_peer.py")


def start_peer(python: Path, data: Path, out: Path, minutes: float, seed: int) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(python), str(PEER), "--train", str(data / "train"), "--val", str(data / "val"),
            "--minutes", str(minutes), "--seed", str(seed), "--out", str(out)]
    log = open(out / "train.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one compute thread per run: two runs share two cores
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def cells_and_scores(data: Path, run: Path, seed: int, cpu_seconds: float) -> dict:
    images, labels = data / "val" / "images", data / "val" / "labels"
    maps = {path.name: tifffile.imread(path) for path in sorted((run / "maps").glob("*.tif"))}
    scores, chosen = {}, {}
    for row, how in zip(ROWS, ("components", "tuned")):
        cells = run / how
        chosen[row] = write_cells(maps, images, labels, cells, how)
        scores[row] = score(cells, labels, run / f"{how}.json")
        scores[row]["cpu_minutes"] = cpu_seconds / 60
    log = json.loads((run / "log.json").read_text())
    return {"seed": seed, "scores": scores, "cells": chosen, "steps": log["steps"],
            "best_val_dice": log["best_val_dice"], "predict_seconds": log["predict_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder with train/ and val/ (images/, labels/)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training limit per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/monai_volumes"))
    parser.add_argument("--venv", type=Path, default=Path("runs/venvs/monai"))
    args = parser.parse_args()
    python = ensure_venv(args.venv, ["torch==2.13.0", "monai", "tifffile"])
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for pair in (seeds[i:i + 2] for i in range(0, len(seeds), 2)):
        runs = {seed: start_peer(python, args.data, args.out / f"seed{seed}", args.minutes, seed) for seed in pair}
        cpu = {seed: wait_cpu(process) for seed, process in runs.items()}
        for seed in pair:
            results.append(cells_and_scores(args.data, args.out / f"seed{seed}", seed, cpu[seed]))
            print(json.dumps(results[-1]), flush=True)
        (args.out / "summary.json").write_text(json.dumps({"minutes": args.minutes, "results": results}, indent=1))
    print(f"\n{args.data}, MONAI {args.minutes} wall-minutes per run, seeds {args.seeds}; mean ± std over seeds\n")
    print(summary_table(results, ROWS))


if __name__ == "__main__":
    main()

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
  cut in each plane: a 3D object becomes one cell per plane) and ``2d map + 3D cells`` (the
  planes' probability maps stacked and cut by the same 3D watershed as the 3D model's, with the
  volume's voxel size: the strongest plane-by-plane baseline).

Every prediction is scored with ``unetile evaluate --dims 3`` on the validation labels (3D
objects: AP@0.5, AP@0.75, mean AP, VOI split / merge); a table with mean and spread is printed
and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

UNETILE = [sys.executable, "-m", "unetile", "-q"]
ROWS = ("3d", "2d planes", "2d map + 3D cells")


def start_training(data: Path, out: Path, dims: int, minutes: float, seed: int) -> subprocess.Popen:
    args = [*UNETILE, "train", "--data", str(data / "train"), "--val", str(data / "val"), "--dims", str(dims),
            "--time-limit", f"{minutes}m", "--seed", str(seed), "--out", str(out), "--overwrite"]
    log = open(out.with_suffix(".log"), "w")
    # One compute thread each: the two runs share two cores, and idle OpenMP threads spinning on an
    # oversubscribed core would count as CPU time that trained nothing.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_cpu(process: subprocess.Popen) -> float:
    """Wait for ``process``; its CPU seconds (user + system, its waited-for children included)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} failed ({process.returncode}); see its log")
    return usage.ru_utime + usage.ru_stime


def run(*args: str) -> None:
    subprocess.run([*UNETILE, *args], check=True)


def planes_map_to_cells(map_path: Path, model: Path, volume: Path, out: Path) -> None:
    """The 2D model's stacked calibrated maps -> cells by the 3D watershed with the volume's voxel size."""
    from unetile.inference.instances import DEFAULT_METHOD, InstanceSettings
    from unetile.io import label_dtype, read_image, voxel_size, write_volume
    from unetile.nn.checkpoint import load_payload

    settings = InstanceSettings.from_metadata(DEFAULT_METHOD, load_payload(model).get("metadata", {}))
    stacked = read_image(map_path)[:, 0]  # (Z, Y, X) calibrated probabilities
    voxel = voxel_size(volume)
    cells = settings.labels(stacked[None], 0.5, spacing=voxel)
    write_volume(out, cells.astype(label_dtype(cells)), voxel)


def score(pred: Path, labels: Path, json_path: Path) -> dict:
    run("evaluate", "--pred", str(pred), "--labels", str(labels), "--dims", "3", "--json", str(json_path))
    result = json.loads(json_path.read_text())
    pooled = result["objects"]["pooled"]
    return {"ap_50": pooled["ap_50"], "ap_75": pooled["ap_75"], "mean_ap": pooled["mean_ap"],
            "voi_split": result["mean"]["voi_split"], "voi_merge": result["mean"]["voi_merge"]}


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
    preds["2d map + 3D cells"].mkdir(exist_ok=True)
    for volume in sorted(val_images.glob("*.tif")):
        planes_map_to_cells(maps / volume.name, runs[2] / "best.pt", volume, preds["2d map + 3D cells"] / volume.name)
    scores = {name: score(preds[name], val_labels, out / f"seed{seed}_{name.replace(' ', '_')}.json")
              for name in ROWS}
    for name in ROWS:
        scores[name]["cpu_minutes"] = cpu[3 if name == "3d" else 2] / 60
    return {"seed": seed, "wall_minutes": wall / 60, "scores": scores}


def summary_table(results: list[dict]) -> str:
    keys = ("ap_50", "ap_75", "mean_ap", "voi_split", "voi_merge", "cpu_minutes")
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name in ROWS:
        cells = []
        for key in keys:
            values = np.array([r["scores"][name][key] for r in results])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    print(summary_table(results))


if __name__ == "__main__":
    main()

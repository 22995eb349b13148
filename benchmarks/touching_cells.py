"""Touching cells: how the weight map's border term w0 changes cell separation.

    .venv/bin/python benchmarks/touching_cells.py [--minutes 4] [--seeds 0 1] [--w0 10 3]

Writes synthetic fluorescence nuclei (`unetile.synthetic.synthetic_nuclei`: 16-bit TIFFs,
instance ids, many nuclei touching with no dark gap between them) - 16 images to train
on, 6 held apart - then for each w0 and seed: ``unetile train --time-limit`` (the default
recipe otherwise), ``unetile predict --tta`` and ``unetile predict --tta --instances``. One row
each: foreground Dice and adapted Rand error (scikit-image's, truth background ignored)
of the map's 4-connected components at 0.5, and of the ``--instances`` label images.
The runs go one after another (each uses the whole machine); the folder is kept with
``--keep DIR``.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from skimage.metrics import adapted_rand_error

from unetile import metrics
from unetile.io import read_image
from unetile.synthetic import write_dataset


def unetile(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "unetile", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"unetile {args[0]} failed:\n{done.stderr[-2000:]}")


def scores(truth_dir: Path, map_dir: Path, instance_dir: Path) -> tuple[float, float, float]:
    """Mean (Dice, adapted Rand of the map's components, adapted Rand of the instances)."""
    rows = []
    for t in sorted(truth_dir.iterdir()):
        truth = read_image(t)[0, 0].astype(np.int64)
        prob = read_image(next(map_dir.glob(t.stem + ".*")))[0, 0]  # float32 TIFF, or 8-bit PNG
        prob = prob / 255.0 if prob.dtype == np.uint8 else prob
        cells = read_image(next(instance_dir.glob(t.stem + ".*")))[0, 0].astype(np.int64)
        rows.append((metrics.dice(prob, truth), metrics.adapted_rand_error(prob, truth),
                     adapted_rand_error(truth, cells, ignore_labels=(0,))[0]))
    return tuple(np.mean(rows, axis=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training time per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--w0", nargs="+", default=["10", "3"], help="values of --w0 to compare (or auto)")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        data = write_dataset(work / "train", 16, kind="nuclei", seed=0)
        test = write_dataset(work / "test", 6, kind="nuclei", seed=1)
        print("| --w0 | seed | foreground Dice | adapted Rand (components) | adapted Rand (--instances) |")
        print("|---|---|---|---|---|")
        for w0 in args.w0:
            for seed in args.seeds:
                run = work / f"w0_{w0}_seed_{seed}"
                print(f"training --w0 {w0} --seed {seed} for {args.minutes:g} min ...", file=sys.stderr, flush=True)
                unetile("train", "--data", str(data), "--out", str(run / "run"), "--overwrite", "--w0", w0,
                     "--seed", str(seed), "--time-limit", f"{args.minutes}m")
                for out, extra in (("map", []), ("cells", ["--instances"])):
                    unetile("predict", "--model", str(run / "run" / "best.pt"), "--input", str(test / "images"),
                         "--out", str(run / out), "--tta", "--overwrite", *extra)
                d, r_map, r_cells = scores(test / "labels", run / "map", run / "cells")
                print(f"| {w0} | {seed} | {d:.4f} | {r_map:.4f} | {r_cells:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""How well prediction's first pass estimates the cells' size (issue 35, cell_size.py).

For a model trained with a cell diameter: each test image's cells as its labels measure them
(`cell_size.median_diameter`) against the diameter `Predictor.cell_scale` estimates from a first
pass at the image's own size, and the time that pass costs beside the pass at the right scale.
One row per image size (the DSB 2018 acquisitions).

    .venv/bin/python benchmarks/cell_size_estimate.py runs/nuclei/auto/run/best.pt \\
        --data runs/nuclei/split/test
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from unetile.cell_size import median_diameter
from unetile.inference.predictor import PredictOptions, Predictor
from unetile.io import list_images, read_image


def measure(predictor: Predictor, image: np.ndarray, label: np.ndarray) -> dict:
    """One image: its true and estimated factor, and the seconds of the first and the second pass."""
    matched = predictor._matched(image, "image")
    estimating = predictor.options
    started = time.perf_counter()
    _, estimated = predictor.cell_scale(matched)
    first = time.perf_counter() - started
    predictor.options = dataclasses.replace(estimating, diameter=median_diameter(label) or 1.0)  # told the truth
    started = time.perf_counter()
    _, factor = predictor.at_cell_scale(matched)
    second = time.perf_counter() - started
    predictor.options = estimating
    return {"true": factor, "estimated": estimated, "first_s": first, "second_s": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="images/ and labels/")
    args = parser.parse_args()
    predictor = Predictor.load(args.model, PredictOptions(instances="watershed", precision="fp32"))
    groups = defaultdict(list)
    for path in list_images(args.data / "images"):
        image = read_image(path)[0]
        label = read_image(args.data / "labels" / path.name)[0, 0]
        groups["x".join(map(str, image.shape[-2:]))].append(measure(predictor, image, label))
    print(f"net diameter {predictor.net_diameter:.1f} px")
    print("| size | images | true factor (median) | estimated / true: median (5-95%) | first pass s | at scale s |")
    print("|---|---:|---:|---|---:|---:|")
    for size, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])) + [("all", sum(groups.values(), []))]:
        ratio = np.array([r["estimated"] / r["true"] for r in rows])
        lo, mid, hi = np.percentile(ratio, [5, 50, 95])
        print(f"| {size} | {len(rows)} | {np.median([r['true'] for r in rows]):.2f} | {mid:.2f} ({lo:.2f}-{hi:.2f}) | "
              f"{sum(r['first_s'] for r in rows):.1f} | {sum(r['second_s'] for r in rows):.1f} |")


if __name__ == "__main__":
    main()

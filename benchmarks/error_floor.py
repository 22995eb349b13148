"""How much of a pixel error is left for a better model to win? Three measurements on finished runs.

    .venv/bin/python benchmarks/error_floor.py --labels VAL/labels PRED_A PRED_B [PRED_C ...]

Each PRED is a folder of written maps (``unetile predict`` output, 8-bit PNG or float TIFF, one
per label image, same names). Foreground = map > 0.5, as the issue's scorer does. One table:

- per run: the pixel error; the error of the same map with each image's own best threshold
  (`unetile.training.validation.best_threshold` per image, 0.01 steps: an oracle no calibration can beat); the share of the error lying within
  ``--near`` px of a true boundary (where the annotator's stroke decides).
- every pair of runs: the error of their averaged map (the simplest ensemble) against the
  mean of the two single errors. If averaging gains nothing, the runs do not differ by
  independent noise that more runs or snapshots would average away.
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage

from unetile import metrics
from unetile.io import list_images, read_image
from unetile.training.validation import best_threshold


def read_map(folder: Path, stem: str) -> np.ndarray:
    """The (H, W) float64 probability map of that name in ``folder`` (8-bit maps / 255)."""
    found = sorted(folder.glob(stem + ".*"))
    if not found:
        raise SystemExit(f"{folder}: no map named {stem}.*")
    return metrics.as_probability(read_image(found[0])[0, 0])


def near_boundary(truth_fg: np.ndarray, distance: float) -> np.ndarray:
    """(H, W) bool: pixels within ``distance`` px of a pixel of the other class."""
    to_bg = ndimage.distance_transform_edt(truth_fg)
    to_fg = ndimage.distance_transform_edt(~truth_fg)
    return np.where(truth_fg, to_bg, to_fg) <= distance


def floor_scores(maps: list[np.ndarray], truths: list[np.ndarray], near: float) -> dict[str, float]:
    """Mean over images of the pixel error at 0.5, at each image's best threshold, and the
    mean share of the error within ``near`` px of a true boundary."""
    oracle, near_share = [], []
    for prob, fg in zip(maps, truths):
        oracle.append(metrics.pixel_error(prob, fg, best_threshold([prob], [fg])))
        wrong = (prob > 0.5) != fg
        near_share.append(wrong[near_boundary(fg, near)].sum() / max(wrong.sum(), 1))
    return {"pixel_error": mean_error(maps, truths), "oracle": float(np.mean(oracle)),
            "near_share": float(np.mean(near_share))}


def mean_error(maps: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """Mean over images of the pixel error at 0.5."""
    return float(np.mean([metrics.pixel_error(m, fg) for m, fg in zip(maps, truths)]))


def pair_gains(runs: dict[str, list[np.ndarray]], truths: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
    """(a, b, error of the averaged map, mean of a's and b's errors) for every pair."""
    single = {name: mean_error(maps, truths) for name, maps in runs.items()}
    rows = []
    for a, b in itertools.combinations(runs, 2):
        averaged = [(x + y) / 2 for x, y in zip(runs[a], runs[b])]
        rows.append((a, b, mean_error(averaged, truths), (single[a] + single[b]) / 2))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, required=True, help="folder of truth images (foreground > 0)")
    ap.add_argument("--near", type=float, default=1.5, help="boundary band half-width, px [1.5]")
    ap.add_argument("preds", type=Path, nargs="+", help="folders of written maps, one per run")
    args = ap.parse_args()
    label_paths = list_images(args.labels)
    truths = [read_image(p)[0, 0] > 0 for p in label_paths]
    runs = {str(d): [read_map(d, p.stem) for p in label_paths] for d in args.preds}

    print(f"| run | pixel error | per-image best threshold | share within {args.near:g} px of a boundary |")
    print("|---|---|---|---|")
    for name, maps in runs.items():
        s = floor_scores(maps, truths, args.near)
        print(f"| {name} | {s['pixel_error']:.5f} | {s['oracle']:.5f} | {s['near_share']:.2f} |")
    if len(runs) > 1:
        rows = pair_gains(runs, truths)
        ensembled, singles = np.mean([r[2] for r in rows]), np.mean([r[3] for r in rows])
        print(f"\nEvery pair of runs ({len(rows)}): averaged maps {ensembled:.5f}, their single runs {singles:.5f} "
              f"(gain {singles - ensembled:+.5f}; best pair {min(r[2] for r in rows):.5f})")


if __name__ == "__main__":
    main()
